"""The job environment read from Torque, PBS Pro, Slurm and the local executor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from fmnist.cli import main
from fmnist.io import FmnistError
from fmnist.pipeline.jobenv import parse_job_environment, scheduler_of

# Variables as each scheduler sets them (Torque and PBS Pro from their manuals, Slurm as
# observed in a job on the one-node test cluster).
TORQUE = {
    "PBS_JOBID": "1098[3].devcloud",
    "PBS_ARRAYID": "3",
    "PBS_JOBNAME": "score-3",
    "PBS_O_WORKDIR": "/home/u1/fmnist",
    "PBS_NUM_PPN": "2",
}
PBSPRO = {
    "PBS_JOBID": "107[5].admin",
    "PBS_ARRAY_INDEX": "5",
    "PBS_JOBNAME": "score",
    "PBS_O_WORKDIR": "/home/u2/fmnist",
    "PBS_JOBDIR": "/home/u2",
}
SLURM = {
    "SLURM_JOB_ID": "8",
    "SLURM_ARRAY_JOB_ID": "7",
    "SLURM_ARRAY_TASK_ID": "1",
    "SLURM_JOB_NAME": "score",
    "SLURM_SUBMIT_DIR": "/tmp/sx",
    "SLURM_JOB_CONSTRAINTS": "spr&avx512",
}


def test_torque_array_element():
    env = parse_job_environment(TORQUE, host="n1", pid=1)
    assert env.scheduler == "torque"
    assert (env.job_id, env.array_job_id, env.array_index) == (
        "1098[3].devcloud",
        "1098[].devcloud",
        3,
    )
    assert (env.job_name, env.submit_dir) == ("score-3", "/home/u1/fmnist")
    assert env.safe_job_id == "1098-3-.devcloud"


def test_torque_plain_job_without_array():
    env = parse_job_environment({"PBS_JOBID": "12.devcloud", "PBS_O_WORKDIR": "/w"}, host="n1")
    assert env.scheduler == "torque"
    assert env.array_index is None and env.array_job_id is None
    assert env.node_type == "local"


def test_pbspro_array_element():
    env = parse_job_environment(PBSPRO, host="n2")
    assert env.scheduler == "pbspro"
    assert (env.job_id, env.array_job_id, env.array_index) == ("107[5].admin", "107[].admin", 5)
    assert env.submit_dir == "/home/u2/fmnist"


def test_slurm_array_element_and_constraint():
    env = parse_job_environment(SLURM, host="vm", node_type_labels={"spr": "spr"})
    assert env.scheduler == "slurm"
    assert (env.job_id, env.array_job_id, env.array_index) == ("8", "7", 1)
    assert (env.job_name, env.submit_dir) == ("score", "/tmp/sx")
    assert env.node_type == "spr"  # picked out of the constraint expression
    # The constraint names a label: the catalog says which node type carries it.
    renamed = parse_job_environment(SLURM, host="vm", node_type_labels={"spr": "sapphire"})
    assert renamed.node_type == "sapphire"
    assert parse_job_environment(SLURM, host="vm").node_type == "local"


def test_node_type_from_submit_when_the_scheduler_does_not_say():
    env = parse_job_environment({"SLURM_JOB_ID": "9", "FMNIST_NODE_TYPE": "icx"}, host="vm")
    assert env.node_type == "icx"
    assert env.array_index is None and env.array_job_id is None


def test_local_executor_task_and_array_index():
    env = parse_job_environment(
        {"FMNIST_EXECUTOR": "local", "FMNIST_TASK_ID": "score:backup1", "FMNIST_ARRAY_INDEX": "2"},
        host="laptop",
    )
    assert env.scheduler == "local"
    assert env.job_id == "local-score-backup1-2"
    assert env.array_index == 2 and env.task_id == "score:backup1"


def test_plain_shell():
    env = parse_job_environment({}, host="laptop", pid=4242)
    assert env.scheduler == "none"
    assert env.job_id == "laptop-4242"
    assert env.array_index is None and env.node_type == "local"


@pytest.mark.parametrize(
    "variables, expected",
    [
        ({"SLURM_JOB_ID": "1", "PBS_JOBID": "2"}, "slurm"),  # Slurm's qsub wrapper
        ({"PBS_JOBID": "2", "PBS_ARRAYID": "0"}, "torque"),
        ({"PBS_JOBID": "2", "PBS_ARRAY_INDEX": "0"}, "pbspro"),
        ({"FMNIST_EXECUTOR": "local"}, "local"),
        ({}, "none"),
    ],
)
def test_scheduler_detection(variables, expected):
    assert scheduler_of(variables) == expected


def test_bad_array_index_is_a_clear_error():
    with pytest.raises(FmnistError, match="SLURM_ARRAY_TASK_ID='x'"):
        parse_job_environment({"SLURM_JOB_ID": "1", "SLURM_ARRAY_TASK_ID": "x"}, host="vm")


def test_jobenv_command_prints_and_saves(tmp_path, monkeypatch):
    for name in ("SLURM_JOB_ID", "PBS_JOBID", "FMNIST_NODE_TYPE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FMNIST_EXECUTOR", "local")
    monkeypatch.setenv("FMNIST_TASK_ID", "probe:local")
    monkeypatch.setenv("FMNIST_ARRAY_INDEX", "1")
    result = CliRunner().invoke(main, ["jobenv", "--json", "--save", str(tmp_path)])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    saved = json.loads((tmp_path / "probe__local.1.json").read_text())
    assert printed == saved
    assert saved["scheduler"] == "local" and saved["array_index"] == 1


def test_a_job_is_recorded_at_the_edge_only():
    """The CLI's commands and `step` record a job; no stage imports the recorder."""
    package = Path(__file__).resolve().parent.parent / "fmnist"
    callers = sorted(
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if "record_job(" in path.read_text() and path.name != "jobenv.py"
    )
    assert callers == ["cli.py", "pipeline/step.py"]


@pytest.mark.slow
def test_a_command_records_its_job_once(tmp_path, dataset_dir, monkeypatch):
    from fmnist.manifest import read_manifest
    from fmnist.train import TrainConfig, train_model

    monkeypatch.setenv("FMNIST_EXECUTOR", "local")
    monkeypatch.setenv("FMNIST_TASK_ID", "train:backup1")
    args = ["train", "--model", "backup1", "--epochs", "1", "--limit", "300"]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    [entry] = read_manifest(tmp_path / "cli").jobs.values()
    assert (entry.command, entry.task_id, entry.scheduler) == (
        "train backup1",
        "train:backup1",
        "local",
    )
    # The stage alone (a library call) leaves the job to its caller.
    config = TrainConfig("backup1", epochs=1, limit=300, data_dir=str(dataset_dir))
    train_model(config, tmp_path / "library", progress=lambda m: None)
    assert read_manifest(tmp_path / "library").jobs == {}
