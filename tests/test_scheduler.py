"""Scheduler dialects, node types, task selection and the submission plan (no scheduler needed).

The real Slurm cluster is exercised in test_scheduler_slurm.py; here the Torque and
PBS Pro command lines are checked against each qsub's own option grammar.
"""

from __future__ import annotations

import getopt
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from fmnist.cli import main
from fmnist.io import FmnistError
from fmnist.nodetypes import FLAVORS, load_node_types, parse_node_type_list
from fmnist.pipeline.scheduler import (
    BLOCKED,
    CANCELLED,
    COMPLETED,
    FAILED,
    FINISHED,
    QUEUED,
    RUNNING,
    Dependency,
    JobState,
    Submission,
    parse_job_id,
    parse_qstat_full,
    parse_sacct,
    parse_scontrol_jobs,
    submit_command,
)
from fmnist.pipeline.spec import load_pipeline
from fmnist.pipeline.step import select_tasks
from fmnist.pipeline.submit import task_statuses

PROJECT = Path(__file__).resolve().parent.parent

# A DAG shaped like the full pipeline: per-model training and evaluation, benchmark fanned
# out over node types, scoring as an array job, one report after everything.
SPEC = """
[profiles.quick]
models = ["main", "backup1"]
node_types = ["local"]
shards = 3
[profiles.quick.args]
train = "--epochs 1 --limit 300"

[[steps]]
name = "train"
for_each = { model = "models" }
command = "train --model {model} --out {run}"
outputs = ["models/{model}/model.keras"]
resources = { script = "pbs/train_{model}.sh", walltime = "00:20:00" }

[[steps]]
name = "evaluate"
for_each = { model = "models" }
needs = ["train"]
command = "evaluate --run {run} --model {model}"
outputs = ["metrics/{model}__keras-predict.parquet"]

[[steps]]
name = "benchmark"
for_each = { model = "models", node_type = "node_types" }
needs = ["train"]
command = "benchmark --run {run} --model {model} --node-type {node_type}"
outputs = ["timings/{model}__{node_type}.parquet"]
resources = { walltime = "00:15:00" }

[[steps]]
name = "score"
needs = ["train"]
command = "score test.csv --run {run} --model backup1 --shard auto/{shards}"
outputs = ["predictions/test/backup1/_SUCCESS"]
resources = { script = "pbs/score_array.sh", walltime = "00:30:00", array = "{shards}" }

[[steps]]
name = "report"
needs = ["evaluate", "benchmark", "score"]
command = "report {run} --out {run}/report"
outputs = ["report/report.html"]
"""

# qsub's options as each manual lists them (Torque 6 / PBS Pro 2022): a command line that
# getopt rejects would be rejected by that qsub.
TORQUE_QSUB_OPTIONS = "a:A:b:c:C:d:D:e:fF:hi:Ij:k:K:l:L:m:M:n:N:o:p:P:q:r:S:t:T:u:v:Vw:W:xXz"
PBSPRO_QSUB_OPTIONS = "a:A:c:C:e:fhIj:J:k:l:m:M:N:o:p:P:q:r:R:S:u:v:VW:Xz"


@pytest.fixture
def spec(tmp_path, monkeypatch) -> Path:
    path = tmp_path / "pipeline.toml"
    path.write_text(SPEC)
    monkeypatch.setenv("FMNIST_PIPELINE", str(path))
    for name in ("FMNIST_MODEL", "FMNIST_NODE_TYPE", "FMNIST_SHARDS", "FMNIST_NODE_TYPES"):
        monkeypatch.delenv(name, raising=False)
    return path


def dry_run(args: list[str]) -> list[str]:
    result = CliRunner().invoke(main, ["submit", "--dry-run", *args])
    assert result.exit_code == 0, result.output
    return result.output.splitlines()


def submissions(lines: list[str]) -> dict[str, list[str]]:
    """Task variable -> qsub/sbatch argv, with ${JOB_x} standing for x's job id."""
    jobs = {}
    for line in lines:
        match = re.fullmatch(r"(JOB_\w+)=\$\((.*)\)", line)
        if match:
            jobs[match.group(1)] = shlex.split(match.group(2))
    return jobs


# --------------------------------------------------------------------------- dialects


def test_torque_command_with_array_dependency():
    job = Submission(
        name="report",
        script="/p/pbs/report.sh",
        walltime="00:30:00",
        request=("-l", "nodes=1:spr:ppn=2"),
        env={"FMNIST_RUN": "/r", "FMNIST_PROFILE": "quick"},
        log="/r/logs/report.log",
        after=(Dependency("12.srv"), Dependency("13.srv"), Dependency("14[].srv", array=True)),
    )
    assert submit_command("torque", job) == [
        "qsub", "-N", "report", "-l", "walltime=00:30:00", "-l", "nodes=1:spr:ppn=2",
        "-j", "oe", "-o", "/r/logs/report.log", "-V",
        "-v", "FMNIST_RUN=/r,FMNIST_PROFILE=quick",
        "-W", "depend=afterok:12.srv:13.srv,afterokarray:14[].srv",
        "/p/pbs/report.sh",
    ]  # fmt: skip


def test_pbspro_array_job_and_dependency():
    job = Submission(
        name="score",
        script="s.sh",
        walltime="01:00:00",
        request=("-l", "select=1:ncpus=2:cpu_type=icx"),
        env={},
        log="/r/logs/score.log",
        array=4,
        after=(Dependency("7[].pbs", array=True), Dependency("8.pbs")),
    )
    command = submit_command("pbspro", job)
    assert command[command.index("-J") + 1] == "0-3"
    assert command[command.index("-o") + 1] == "/r/logs/score.^array_index^.log"
    assert command[command.index("-W") + 1] == "depend=afterok:7[].pbs:8.pbs"
    assert "-v" not in command and "-t" not in command


def test_slurm_command():
    job = Submission(
        name="score",
        script="s.sh",
        walltime="01:00:00",
        request=("--constraint=spr",),
        env={"FMNIST_RUN": "/r"},
        log="/r/logs/score.log",
        array=2,
        after=(Dependency("5"), Dependency("6", array=True)),
    )
    assert submit_command("slurm", job) == [
        "sbatch", "--parsable", "--job-name=score", "--time=01:00:00", "--constraint=spr",
        "--output=/r/logs/score.%a.log", "--export=ALL,FMNIST_RUN=/r", "--array=0-1",
        "--dependency=afterok:5:6", "s.sh",
    ]  # fmt: skip


def test_values_with_commas_are_refused():
    job = Submission("x", "s.sh", "01:00:00", (), {"FMNIST_RUN": "/a,b"}, "/l.log")
    with pytest.raises(FmnistError, match="commas"):
        submit_command("torque", job)


@pytest.mark.parametrize(
    "flavor, printed, expected",
    [
        ("torque", "1098.devcloud\n", "1098.devcloud"),
        ("torque", "1099[].devcloud\n", "1099[].devcloud"),
        ("pbspro", "107[].admin\n", "107[].admin"),
        ("torque", "42\n", "42"),  # Slurm's qsub wrapper
        ("slurm", "17\n", "17"),
        ("slurm", "18;fmnist\n", "18"),
    ],
)
def test_parse_job_id(flavor, printed, expected):
    assert parse_job_id(flavor, printed) == expected


@pytest.mark.parametrize("flavor", FLAVORS)
def test_parse_job_id_rejects_messages(flavor):
    with pytest.raises(FmnistError, match="not a job id|no job id"):
        parse_job_id(flavor, "qsub: submit error (Unknown queue)\n")


def test_parse_qstat_full():
    text = """Job Id: 12.devcloud
    Job_Name = train_main
    job_state = C
    exit_status = 0

Job Id: 13.devcloud
    job_state = C
    exit_status = 1
Job Id: 14[].admin
    job_state = F
    Exit_status = 0
Job Id: 15.devcloud
    job_state = Q
Job Id: 16.devcloud
    job_state = R
Job Id: 17
\tjob_state = C
"""
    states = parse_qstat_full(text)
    assert {k: v.state for k, v in states.items()} == {
        "12.devcloud": COMPLETED,
        "13.devcloud": FAILED,
        "14[].admin": COMPLETED,
        "15.devcloud": QUEUED,
        "16.devcloud": RUNNING,
        "17": FINISHED,  # Slurm's qstat wrapper reports no exit status
    }


def test_parse_scontrol_folds_array_elements():
    text = "\n".join(
        [
            "JobId=9 JobName=train JobState=COMPLETED Reason=None ExitCode=0:0",
            "JobId=11 ArrayJobId=10 ArrayTaskId=1 JobState=FAILED Reason=NonZeroExitCode",
            "JobId=10 ArrayJobId=10 ArrayTaskId=0 JobState=COMPLETED Reason=None",
            "JobId=12 JobName=report JobState=CANCELLED Reason=DependencyNeverSatisfied",
            "JobId=13 ArrayJobId=13 ArrayTaskId=0-3 JobState=PENDING Reason=Dependency",
            "JobId=14 JobState=PENDING Reason=DependencyNeverSatisfied",
        ]
    )
    states = parse_scontrol_jobs(text)
    assert states["9"].state == COMPLETED
    assert states["10"].state == FAILED
    assert states["10"].elements == {"0": COMPLETED, "1": FAILED}
    assert states["12"] == JobState(CANCELLED, "CANCELLED (DependencyNeverSatisfied)")
    assert states["13"].state == QUEUED
    assert states["14"].state == BLOCKED  # waits for a failed job: will never start


def test_parse_sacct():
    states = parse_sacct("9|COMPLETED\n10_0|COMPLETED\n10_1|RUNNING\n12|CANCELLED by 0\n")
    assert states["9"].state == COMPLETED
    assert states["10"].state == RUNNING
    assert states["12"].state == CANCELLED


# --------------------------------------------------------------------------- node types


def test_catalog_has_every_node_type_for_every_flavor():
    catalog = load_node_types()
    assert list(catalog) == ["skl", "clx", "icx", "spr", "local"]
    assert catalog["spr"].request("torque") == ("-l", "nodes=1:spr:ppn=2")
    assert catalog["spr"].request("pbspro") == ("-l", "select=1:ncpus=2:cpu_type=spr")
    assert catalog["spr"].request("slurm") == ("--constraint=spr",)
    assert catalog["local"].request("slurm") == ()


def test_adding_a_node_type_is_one_entry(tmp_path, monkeypatch):
    path = tmp_path / "node_types.toml"
    path.write_text(
        (PROJECT / "jobs" / "node_types.toml").read_text()
        + '\n[node_types.gnr]\ntorque = "-l nodes=1:gnr:ppn=2"\n'
        + 'pbspro = "-l select=1:ncpus=2:cpu_type=gnr"\nslurm = "--constraint=gnr"\n'
    )
    monkeypatch.setenv("FMNIST_NODE_TYPES", str(path))
    assert parse_node_type_list("spr,gnr", load_node_types()) == ["spr", "gnr"]


def test_node_type_without_a_flavor_is_an_error(tmp_path):
    path = tmp_path / "node_types.toml"
    path.write_text('[node_types.spr]\ntorque = "-l nodes=1:spr"\n')
    with pytest.raises(FmnistError, match="no request for pbspro, slurm"):
        load_node_types(path)


def test_unknown_node_type_names_the_catalog():
    with pytest.raises(FmnistError, match="unknown node type.*xyz.*known: skl"):
        parse_node_type_list("spr,xyz", load_node_types())


# --------------------------------------------------------------------------- step selection


def test_step_selects_by_task_id_and_environment(spec, tmp_path):
    pipeline = load_pipeline(spec)
    [task] = select_tasks(pipeline, "quick", tmp_path, "train:main", {})
    assert task.id == "train:main"
    assert task.args[-4:] == ("--epochs", "1", "--limit", "300")  # the profile's arguments
    tasks = select_tasks(pipeline, "quick", tmp_path, "evaluate", {})
    assert [t.id for t in tasks] == ["evaluate:main", "evaluate:backup1"]
    env = {"FMNIST_MODEL": "backup1", "FMNIST_NODE_TYPE": "spr"}
    [task] = select_tasks(pipeline, "quick", tmp_path, "benchmark", env)
    assert task.id == "benchmark:backup1:spr"  # a node type the profile does not list
    assert task.args[-2:] == ("--node-type", "spr")


def test_step_scalar_from_environment(spec, tmp_path):
    pipeline = load_pipeline(spec)
    [task] = select_tasks(pipeline, "quick", tmp_path, "score", {"FMNIST_SHARDS": "8"})
    assert task.resources["array"] == "8"
    assert "auto/8" in task.args


@pytest.mark.parametrize(
    "selector, message",
    [("nope", "no step 'nope'"), ("train:main:extra", "at most 1 value")],
)
def test_step_selection_errors(spec, tmp_path, selector, message):
    with pytest.raises(FmnistError, match=message):
        select_tasks(load_pipeline(spec), "quick", tmp_path, selector, {})


# --------------------------------------------------------------------------- dry runs


def test_torque_dry_run_follows_torque_syntax(spec, tmp_path):
    lines = dry_run(["--scheduler", "torque", "--node-type", "icx,spr", "--out", str(tmp_path)])
    jobs = submissions(lines)
    assert list(jobs) == [
        "JOB_train_main", "JOB_train_backup1", "JOB_evaluate_main", "JOB_evaluate_backup1",
        "JOB_benchmark_main_icx", "JOB_benchmark_main_spr", "JOB_benchmark_backup1_icx",
        "JOB_benchmark_backup1_spr", "JOB_score", "JOB_report",
    ]  # fmt: skip
    for name, argv in jobs.items():
        assert argv[0] == "qsub"
        options, operands = getopt.getopt(argv[1:], TORQUE_QSUB_OPTIONS)
        assert len(operands) == 1 and Path(operands[0]).is_file(), name
        opts = {}
        for flag, value in options:
            opts.setdefault(flag, []).append(value)
        assert opts["-j"] == ["oe"] and "-V" in opts
        assert re.fullmatch(r"walltime=\d\d:\d\d:\d\d", opts["-l"][0])
        nodes = opts["-l"][1]
        node_type = "spr" if name.endswith("_spr") else "icx"  # the others: the first type
        assert nodes == f"nodes=1:{node_type}:ppn=2", name
        variables = dict(v.split("=", 1) for v in opts["-v"][0].split(","))
        assert variables["FMNIST_RUN"] == str(tmp_path)
        assert variables["FMNIST_NODE_TYPE"] == node_type
        for clause in opts.get("-W", [""])[0].removeprefix("depend=").split(","):
            if clause:
                assert re.fullmatch(r"afterok(array)?(:\$\{JOB_\w+\})+", clause)
    assert jobs["JOB_evaluate_main"][-3:-1] == ["-W", "depend=afterok:${JOB_train_main}"]
    score = jobs["JOB_score"]
    assert score[score.index("-t") + 1] == "0-2"
    assert score[-1].endswith("pbs/score_array.sh")
    report_depend = jobs["JOB_report"][jobs["JOB_report"].index("-W") + 1]
    assert report_depend.endswith(",afterokarray:${JOB_score}")  # Torque's array dependency
    assert report_depend.count("${JOB_benchmark_") == 4
    assert subprocess.run(["bash", "-n"], input="\n".join(lines), text=True).returncode == 0


def test_pbspro_dry_run_follows_pbspro_syntax(spec, tmp_path):
    lines = dry_run(["--scheduler", "pbspro", "--node-type", "spr", "--out", str(tmp_path)])
    jobs = submissions(lines)
    for name, argv in jobs.items():
        options, operands = getopt.getopt(argv[1:], PBSPRO_QSUB_OPTIONS)
        assert len(operands) == 1, name
        resources = [v for flag, v in options if flag == "-l"]
        assert resources[1] == "select=1:ncpus=2:cpu_type=spr"
        assert "-t" not in argv  # Torque's array option; PBS Pro's is -J
    score = jobs["JOB_score"]
    assert score[score.index("-J") + 1] == "0-2"
    assert score[score.index("-o") + 1].endswith("logs/score.^array_index^.log")
    report_depend = jobs["JOB_report"][jobs["JOB_report"].index("-W") + 1]
    assert re.fullmatch(r"depend=afterok(:\$\{JOB_\w+\})+", report_depend)
    assert "${JOB_score}" in report_depend and "afterokarray" not in report_depend


def test_slurm_dry_run(spec, tmp_path):
    lines = dry_run(["--scheduler", "slurm", "--node-type", "spr", "--out", str(tmp_path)])
    assert lines[2] == f"mkdir -p {tmp_path / 'logs'}"
    jobs = submissions(lines)
    assert "--constraint=spr" in jobs["JOB_train_main"]
    assert "--array=0-2" in jobs["JOB_score"]
    assert "--dependency=afterok:${JOB_train_main}" in jobs["JOB_evaluate_main"]


def test_dry_run_leaves_out_complete_tasks(spec, tmp_path):
    model = tmp_path / "models" / "main" / "model.keras"
    model.parent.mkdir(parents=True)
    model.write_text("trained")
    lines = dry_run(["--scheduler", "slurm", "--out", str(tmp_path)])
    assert "# train:main: outputs complete, no job" in lines
    evaluate = submissions(lines)["JOB_evaluate_main"]
    assert not any(arg.startswith("--dependency") for arg in evaluate)


def test_dry_run_tasks_are_the_tasks_of_run(spec, tmp_path):
    result = CliRunner().invoke(main, ["run", "--dry-run", "--out", str(tmp_path)])
    run_ids = [line.split(": fmnist-batch")[0] for line in result.output.splitlines()]
    submitted = list(submissions(dry_run(["--scheduler", "slurm", "--out", str(tmp_path)])))
    assert submitted == ["JOB_" + task_id.replace(":", "_") for task_id in run_ids]
    assert len(submitted) == 8  # two models x (train, evaluate, benchmark), score, report


# --------------------------------------------------------------------------- submit errors


def test_submit_refuses_to_submit_twice(spec, tmp_path):
    (tmp_path / "jobs.json").write_text(json.dumps({"settings": {}, "jobs": {}}))
    result = CliRunner().invoke(main, ["submit", "--scheduler", "slurm", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "already submitted" in result.output and "--resume" in result.output


def test_resume_needs_a_submission(spec, tmp_path):
    args = ["submit", "--scheduler", "slurm", "--out", str(tmp_path), "--resume"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and "nothing submitted yet" in result.output


def test_missing_job_script_is_named(spec, tmp_path):
    spec.write_text(SPEC.replace('script = "pbs/score_array.sh", ', 'script = "pbs/nope.sh", '))
    result = CliRunner().invoke(main, ["submit", "--dry-run", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "pbs/nope.sh not found" in result.output


def test_status_combines_scheduler_and_disk(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.keras").write_text("x")
    record = {
        "order": ["train", "evaluate", "score", "report"],
        "jobs": {
            "report": {"job_id": "3", "outputs": ["report/report.html"]},
            "train": {"job_id": "1", "outputs": ["models/m.keras"]},
            "evaluate": {"job_id": "2", "outputs": ["metrics/m.parquet"]},
            "score": {"job_id": "4", "outputs": []},  # no outputs declared: the job decides
        },
    }
    states = {
        "1": JobState(FINISHED, "C"),
        "2": JobState(FAILED, "FAILED"),
        "4": JobState(COMPLETED, "COMPLETED"),
    }
    statuses = task_statuses(tmp_path, states, record)
    assert [(s.task_id, s.state) for s in statuses] == [
        ("train", "done"),
        ("evaluate", FAILED),
        ("score", "done"),
        ("report", "unknown"),
    ]
    assert (statuses[0].outputs_present, statuses[0].outputs_total) == (1, 1)


# --------------------------------------------------------------------------- local equivalence

PROBE_SPEC = """
[profiles.quick]
node_types = ["local"]
parts = 2

[[steps]]
name = "train"
for_each = { node_type = "node_types" }
command = "jobenv --save {run}/jobenv"
outputs = ["jobenv/train__{node_type}.json"]

[[steps]]
name = "score"
needs = ["train"]
command = "jobenv --save {run}/jobenv"
outputs = ["jobenv/score.0.json", "jobenv/score.1.json"]
resources = { script = "pbs/score_array.sh", array = "{parts}" }
"""


@pytest.mark.slow
def test_run_and_job_scripts_leave_the_same_layout(tmp_path):
    """`run` and `bash pbs/score_array.sh` run array elements alike, with their indices."""
    spec = tmp_path / "pipeline.toml"
    spec.write_text(PROBE_SPEC)
    env = {**os.environ, "FMNIST_PIPELINE": str(spec), "FMNIST_VENV": sys.prefix}
    for name in ("SLURM_JOB_ID", "PBS_JOBID", "FMNIST_EXECUTOR", "FMNIST_NODE_TYPE"):
        env.pop(name, None)
    local = tmp_path / "local"
    fmnist = [sys.executable, "-m", "fmnist"]
    subprocess.run([*fmnist, "run", "--out", str(local)], env=env, check=True, cwd=PROJECT)
    scripted = tmp_path / "scripted"
    env["FMNIST_RUN"] = str(scripted)
    subprocess.run([*fmnist, "step", "train:local"], env=env, check=True, cwd=PROJECT)
    subprocess.run(["bash", "pbs/score_array.sh"], env=env, check=True, cwd=PROJECT)

    def layout(root):
        return sorted(str(p.relative_to(root)) for p in root.rglob("*.json"))

    assert (
        layout(local)
        == layout(scripted)
        == [
            "jobenv/score.0.json",
            "jobenv/score.1.json",
            "jobenv/train__local.json",
        ]
    )
    assert sorted(p.name for p in (local / "logs").iterdir()) == [
        "score.0.log",
        "score.1.log",
        "train__local.log",
    ]
    for root, scheduler in ((local, "local"), (scripted, "none")):
        for index in (0, 1):
            element = json.loads((root / f"jobenv/score.{index}.json").read_text())
            assert (element["scheduler"], element["array_index"]) == (scheduler, index)
            assert element["task_id"] == "score"
    # Run again: every output is complete, nothing runs.
    rerun = subprocess.run(
        ["bash", "pbs/score_array.sh"], env=env, cwd=PROJECT, capture_output=True, text=True
    )
    assert rerun.returncode == 0 and "[skip]    score (outputs complete)" in rerun.stderr
