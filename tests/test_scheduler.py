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
from fmnist.io import FmnistError, current_umask
from fmnist.pipeline.nodes import (
    Node,
    node_offers,
    parse_pbsnodes_json,
    parse_pbsnodes_text,
    parse_sinfo_nodes,
)
from fmnist.pipeline.nodetypes import (
    FLAVORS,
    NodeType,
    check_names,
    load_node_types,
    request_args,
    split_names,
)
from fmnist.pipeline.scheduler import (
    BLOCKED,
    CANCELLED,
    COMPLETED,
    FAILED,
    FINISHED,
    HELD,
    QUEUED,
    RUNNING,
    UNRUNNABLE,
    WAITING,
    Dependency,
    JobState,
    Submission,
    parse_job_id,
    parse_qstat_full,
    parse_sacct,
    parse_scontrol_jobs,
    pick,
    submit_command,
)
from fmnist.pipeline.spec import expand, load_pipeline
from fmnist.pipeline.status import status_summary, task_statuses
from fmnist.pipeline.step import select_tasks
from fmnist.scoring.shards import marker_name

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


def depend_of(argv: list[str]) -> str:
    """The ``depend=...`` value of a qsub command line."""
    [depend] = [word for word in argv if word.startswith("depend=")]
    return depend


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


# `qstat -f -t` of Torque 6.1 after 9 failed: its afterok dependents were deleted, the
# array's elements too (long values wrap onto tab-indented lines).
TORQUE_AFTER_FAILURE = """Job Id: 9.trqhost
    job_state = C
    depend = beforeok:10[].trqhost:10[0].trqhost:10[1].trqhost
    Hold_Types = n
    comment = Job started on Fri Nov 27 at 17:09
    exit_status = 3
Job Id: 10[0].trqhost
    job_state = C
    depend = afterok:9.trqhost
    Hold_Types = s
    comment = Job deleted as result of dependency on job 9.trqhost
    exit_status = 271
Job Id: 10[1].trqhost
    job_state = C
    Hold_Types = s
    comment = Job deleted as result of dependency on job 9.trqhost
    exit_status = 271
Job Id: 11.trqhost
    job_state = C
    Hold_Types = s
    comment = Job 11.trqhost deleted because its dependency of array 10[].trqh
\tost can never be satisfied
    exit_status = 271
Job Id: 12.trqhost
    job_state = H
    depend = afterokarray:10[].trqhost
    Hold_Types = s
Job Id: 13.trqhost
    job_state = H
    Hold_Types = u
Job Id: 16.trqhost
    job_state = H
    depend = afterok:11.trqhost
    Hold_Types = us
Job Id: 14.trqhost
    job_state = H
    depend = afterok:11.trqhost,afterokarray:10[].trqhost
    Hold_Types = s
    comment = Job deleted as result of dependency on job 11.trqhost
Job Id: 15.trqhost
    job_state = H
    depend = afterok:11.trqhost,afterokarray:10[].trqhost
    Hold_Types = s
    comment = Job 15.trqhost deleted because its dependency of array 10[].trqh
\tost can never be satisfied
"""

# `qstat -x -f -t` of OpenPBS 23.06 after 12 failed: PBS Pro deletes its afterok
# dependents, which end F without an Exit_status; 16's elements failed; 18 can never run.
PBSPRO_AFTER_FAILURE = """Job Id: 12.pbshost
    job_state = F
    comment = Job run at Fri Nov 27 at 17:09 on (pbshost:ncpus=1) and failed
    Exit_status = 3
Job Id: 13[].pbshost
    job_state = F
    depend = afterok:12.pbshost@pbshost,beforeok:14.pbshost@pbshost
    Hold_Types = s
    array = True
Job Id: 13[0].pbshost
    job_state = F
    comment = Subjob finished
Job Id: 14.pbshost
    job_state = F
    depend = afterok:13[].pbshost@pbshost
    Hold_Types = s
Job Id: 16[].pbshost
    job_state = F
    comment = Job Array Began at Fri Nov 27 at 17:09 and failed
    Exit_status = 1
Job Id: 16[0].pbshost
    job_state = F
    Exit_status = 0
Job Id: 16[1].pbshost
    job_state = F
    Exit_status = 2
Job Id: 17.pbshost
    job_state = H
    depend = afterok:16[].pbshost@pbshost
    Hold_Types = s
Job Id: 18.pbshost
    job_state = Q
    comment = Can Never Run: Insufficient amount of resource: cpu_type (spr != local
\t,icx)
"""


def test_torque_deleted_dependents_are_cancelled_not_done():
    states = parse_qstat_full(TORQUE_AFTER_FAILURE, "torque")
    assert states["9.trqhost"].state == FAILED
    assert states["10[].trqhost"].state == CANCELLED  # the elements, folded
    assert states["10[].trqhost"].elements == {"0": CANCELLED, "1": CANCELLED}
    assert states["11.trqhost"] == JobState(
        CANCELLED,
        "C exit 271: Job 11.trqhost deleted because its dependency of array 10[].trqhost "
        "can never be satisfied",
        cause="cancelled",
    )
    assert states["9.trqhost"].cause == "code-error"
    assert states["12.trqhost"].state == WAITING  # the scheduler's hold, for afterokarray
    assert states["13.trqhost"].state == HELD  # a user's hold
    assert states["16.trqhost"].state == HELD  # a user's hold on a waiting job: held
    # Torque 6.1 sometimes deletes a dependent in name only: held for good, never to run.
    assert states["14.trqhost"].state == states["15.trqhost"].state == BLOCKED


def test_pbspro_deleted_dependents_and_jobs_that_can_never_run():
    states = parse_qstat_full(PBSPRO_AFTER_FAILURE, "pbspro")
    assert states["12.pbshost"].state == FAILED
    assert states["13[].pbshost"].state == CANCELLED
    assert states["14.pbshost"] == JobState(
        CANCELLED, "F: deleted before it ran", cause="cancelled"
    )
    assert states["16[].pbshost"].state == FAILED
    assert states["16[].pbshost"].cause == "code-error"  # its element 1 exited 2
    assert states["16[].pbshost"].elements == {"0": COMPLETED, "1": FAILED}
    assert states["17.pbshost"] == JobState(WAITING, "H (waits for afterok:16[].pbshost@pbshost)")
    assert states["18.pbshost"] == JobState(
        UNRUNNABLE,
        "Q: Can Never Run: Insufficient amount of resource: cpu_type (spr != local,icx)",
    )
    # The same text from another flavor's qstat: no exit status means only "ended".
    assert parse_qstat_full(PBSPRO_AFTER_FAILURE, "torque")["14.pbshost"].state == FINISHED


def test_pbs_array_waiting_for_its_dependency():
    text = (
        "Job Id: 20[].pbshost\n    job_state = H\n    Hold_Types = s\n"
        "    depend = afterok:19.pbshost@pbshost\n"
        "Job Id: 20[0].pbshost\n    job_state = Q\n"
        "Job Id: 20[1].pbshost\n    job_state = Q\n"
    )
    assert parse_qstat_full(text, "pbspro")["20[].pbshost"].state == WAITING


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
    assert states["12"] == JobState(
        CANCELLED, "CANCELLED (DependencyNeverSatisfied)", cause="cancelled"
    )
    assert (states["9"].cause, states["10"].cause) == ("done", "code-error")
    assert states["13"].state == WAITING  # behind its dependency
    assert states["14"].state == BLOCKED  # waits for a failed job: will never start


@pytest.mark.parametrize(
    "reason, state",
    [
        ("Resources", QUEUED),
        ("Priority", QUEUED),
        ("BadConstraints", UNRUNNABLE),
        ("ReqNodeNotAvail,_UnavailableNodes:vm", UNRUNNABLE),
        ("PartitionConfig", UNRUNNABLE),
    ],
)
def test_slurm_pending_reasons(reason, state):
    states = parse_scontrol_jobs(f"JobId=5 JobName=x JobState=PENDING Reason={reason}")
    assert states["5"] == JobState(state, f"PENDING ({reason})")


def test_parse_sacct():
    states = parse_sacct(
        "9|COMPLETED|0:0\n10_0|COMPLETED|0:0\n10_1|RUNNING|0:0\n12|CANCELLED by 0|0:15\n"
        "13|TIMEOUT|0:15\n14|OUT_OF_MEMORY|0:125\n15|FAILED|0:9\n"
    )
    assert [states[j].cause for j in ("9", "12", "13", "14", "15")] == [
        "done",
        "cancelled",
        "walltime",
        "memory",
        "node-or-signal",
    ]
    assert states["9"].state == COMPLETED
    assert states["10"].state == RUNNING
    assert states["12"].state == CANCELLED


# --------------------------------------------------------------------------- node types


def test_catalog_has_every_node_type_for_every_flavor():
    catalog = load_node_types()
    assert list(catalog) == ["skl", "clx", "icx", "spr", "local"]
    assert (catalog["spr"].cpus, catalog["spr"].label) == (2, "spr")
    assert (catalog["local"].cpus, catalog["local"].label) == (2, "")


@pytest.mark.parametrize(
    "flavor, cpus, label, expected",
    [
        ("torque", 2, "spr", ("-l", "nodes=1:spr:ppn=2")),
        ("torque", 1, "", ("-l", "nodes=1:ppn=1")),
        ("pbspro", 2, "spr", ("-l", "select=1:ncpus=2:cpu_type=spr")),
        ("pbspro", 4, "", ("-l", "select=1:ncpus=4")),
        ("slurm", 2, "spr", ("--ntasks=2", "--constraint=spr")),
        ("slurm", 1, "", ("--ntasks=1",)),
    ],
)
def test_request_args(flavor, cpus, label, expected):
    assert request_args(flavor, NodeType("t", "", cpus, label)) == expected


@pytest.mark.parametrize(
    "flavor, expected",
    [
        ("torque", ("-l", "nodes=1:spr:ppn=2", "-l", "mem=3072mb")),
        ("pbspro", ("-l", "select=1:ncpus=2:cpu_type=spr:mem=3072mb")),  # a chunk resource
        ("slurm", ("--ntasks=2", "--constraint=spr", "--mem=3072M")),
    ],
)
def test_request_args_with_memory(flavor, expected):
    assert request_args(flavor, NodeType("spr", "", 2, "spr"), 3072) == expected


def test_a_steps_memory_grows_in_its_attempts_requests(tmp_path):
    from fmnist.pipeline.spec import Task
    from fmnist.pipeline.submit import SubmitSettings, plan_jobs, task_memory_mb

    resources = {"memory": "2gb", "retries": 2, "grow": {"memory": 1.5}}
    resources["script"] = "pbs/train_main.sh"
    task = Task("train:main", "train", (), (), (), {"model": "main"}, resources)
    assert [task_memory_mb(task, attempt) for attempt in (1, 2, 3)] == [2048, 3072, 4608]
    assert task_memory_mb(Task("report", "report", (), (), (), {}, {})) is None
    settings = SubmitSettings("slurm", "quick", ["local"], str(tmp_path), str(tmp_path))
    catalog = load_node_types()
    [first] = plan_jobs([task], settings, catalog, attempt=1)
    [third] = plan_jobs([task], settings, catalog, attempt=3)
    assert "--mem=2048M" in first.submission.request
    assert "--mem=4608M" in third.submission.request
    bad = Task("train:main", "train", (), (), (), {}, {"memory": "lots"})
    with pytest.raises(FmnistError, match="task train:main: memory 'lots'"):
        task_memory_mb(bad)


def test_pbspro_label_resource_is_the_catalogs(tmp_path):
    path = tmp_path / "node_types.toml"
    path.write_text(
        '[flavors.pbspro]\nlabel_resource = "arch_gen"\n[node_types.spr]\ncpus = 4\nlabel = "spr"\n'
    )
    spr = load_node_types(path)["spr"]
    assert spr.request("pbspro") == ("-l", "select=1:ncpus=4:arch_gen=spr")
    assert node_offers(Node("n", 8, {"arch_gen": frozenset({"spr"})}), "pbspro", spr)
    assert not node_offers(Node("n", 8, {"cpu_type": frozenset({"spr"})}), "pbspro", spr)


def test_adding_a_node_type_is_one_entry(tmp_path, monkeypatch):
    path = tmp_path / "node_types.toml"
    path.write_text(
        (PROJECT / "jobs" / "node_types.toml").read_text()
        + '\n[node_types.gnr]\ncpus = 2\nlabel = "gnr"\n'
    )
    monkeypatch.setenv("FMNIST_NODE_TYPES", str(path))
    catalog = load_node_types()
    assert check_names(split_names("spr,gnr,spr"), catalog) == ["spr", "gnr"]
    assert catalog["gnr"].request("torque") == ("-l", "nodes=1:gnr:ppn=2")


@pytest.mark.parametrize(
    "text, message",
    [
        ('[node_types.spr]\nlabel = "spr"\n', "node type 'spr' has no cpus"),
        ("[node_types.spr]\ncpus = 0\n", "cpus must be a whole number of at least 1, not 0"),
        ('[node_types.spr]\ncpus = "2"\n', "cpus must be a whole number"),
        ('[node_types.spr]\ncpus = 2\ntorque = "-l x"\n', "unknown key.*torque"),
        ('[node_types.spr]\ncpus = 2\nlabel = "a b"\n', "label 'a b' must be"),
        ("[flavors.pbspro]\n", "no \\[node_types.<name>\\] entries"),
    ],
)
def test_bad_catalog_entry_is_one_line_naming_the_file(tmp_path, text, message):
    path = tmp_path / "node_types.toml"
    path.write_text(text)
    with pytest.raises(FmnistError, match=message) as error:
        load_node_types(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)


def test_unknown_node_type_names_the_catalog():
    with pytest.raises(FmnistError, match="unknown node type.*xyz.*known: skl"):
        check_names(split_names("spr,xyz"), load_node_types())
    with pytest.raises(FmnistError, match="give at least one node type"):
        split_names(" , ")


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
        assert opts["-W"][0] == f"umask={current_umask():03o}"  # the submitter's
        depend = [w for w in opts["-W"][1:] if w.startswith("depend=")]
        for clause in (depend or [""])[0].removeprefix("depend=").split(","):
            if clause:
                assert re.fullmatch(r"afterok(array)?(:\$\{JOB_\w+\})+", clause)
    assert jobs["JOB_evaluate_main"][-3:-1] == ["-W", "depend=afterok:${JOB_train_main}"]
    score = jobs["JOB_score"]
    assert score[score.index("-t") + 1] == "0-2"
    assert score[-1].endswith("pbs/score_array.sh")
    report_depend = depend_of(jobs["JOB_report"])
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
    report_depend = depend_of(jobs["JOB_report"])
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


def test_missing_job_script_is_named(spec, tmp_path, monkeypatch):
    spec.write_text(SPEC.replace('script = "pbs/score_array.sh", ', 'script = "pbs/nope.sh", '))
    # On a machine without any scheduler the script is still what the error names.
    monkeypatch.setenv("PATH", str(tmp_path / "no-scheduler-here"))
    result = CliRunner().invoke(main, ["submit", "--dry-run", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "pbs/nope.sh not found" in result.output


def test_no_scheduler_is_named_once_the_dag_is_fine(spec, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-scheduler-here"))
    result = CliRunner().invoke(main, ["submit", "--dry-run", "--out", str(tmp_path)])
    assert result.exit_code == 1 and "no scheduler found" in result.output


def test_status_combines_scheduler_and_disk(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "m.keras").write_text("x")
    record = {
        "order": ["train", "evaluate", "score", "probe", "report"],
        "jobs": {
            "report": {"job_id": "3", "outputs": ["report/report.html"]},
            "train": {"job_id": "1", "outputs": ["models/m.keras"]},
            "evaluate": {"job_id": "2", "outputs": ["metrics/m.parquet"]},
            "score": {"job_id": "4", "outputs": []},  # no outputs declared: the job decides
            "probe": {"job_id": "5", "outputs": []},
        },
    }
    states = {
        "1": JobState(FINISHED, "C"),
        "2": JobState(FAILED, "FAILED"),
        "4": JobState(COMPLETED, "COMPLETED"),
        "5": JobState(FINISHED, "C"),  # ended, exit status unknown: not known to be done
    }
    statuses = task_statuses(tmp_path, states, record)
    assert [(s.task_id, s.state) for s in statuses] == [
        ("train", "done"),
        ("evaluate", FAILED),
        ("score", "done"),
        ("probe", "incomplete"),
        ("report", "unknown"),
    ]
    assert (statuses[0].outputs_present, statuses[0].outputs_total) == (1, 1)


# What PBS Pro left of a quick DAG whose score array failed: the jobs after it were
# deleted (F, no exit status), and job history is what still knows them.
FAILED_RUN = {
    "settings": {"scheduler": "pbspro"},
    "order": ["train", "score", "score-verify", "report"],
    "jobs": {
        "train": {"job_id": "1.s", "needs": [], "outputs": ["m.keras"], "log": "logs/t.log"},
        "score": {
            "job_id": "2[].s",
            "needs": ["train"],
            "array": 2,
            "outputs": ["p/part-0.success.json", "p/part-1.success.json"],
            "log": "logs/score.log",
        },
        "score-verify": {"job_id": "3.s", "needs": ["score"], "outputs": ["p.parquet"]},
        "report": {"job_id": "4.s", "needs": ["train", "score", "score-verify"], "outputs": ["r"]},
    },
}


def test_status_of_a_failed_run_names_the_failure_and_what_never_ran(tmp_path):
    (tmp_path / "m.keras").write_text("x")
    states = parse_qstat_full(
        "Job Id: 1.s\n    job_state = F\n    Exit_status = 0\n"
        "Job Id: 2[].s\n    job_state = F\n    Exit_status = 1\n"
        "Job Id: 2[0].s\n    job_state = F\n    Exit_status = 1\n"
        "Job Id: 2[1].s\n    job_state = F\n    Exit_status = 1\n"
        "Job Id: 3.s\n    job_state = F\n    depend = afterok:2[].s@s\n"
        "Job Id: 4.s\n    job_state = F\n    depend = afterok:1.s@s:2[].s@s:3.s@s\n",
        "pbspro",
    )
    statuses = task_statuses(tmp_path, states, FAILED_RUN)
    by_id = {s.task_id: s for s in statuses}
    assert [s.state for s in statuses] == ["done", FAILED, CANCELLED, CANCELLED]
    assert by_id["score"].note == "see logs/score.^array_index^.log".replace("^array_index^", "<i>")
    assert by_id["score-verify"].note == "never ran: score failed"
    assert by_id["report"].note == "never ran: score failed"  # the cause, not the chain
    assert status_summary(statuses).splitlines() == [
        "1/4 tasks done",
        "failed: score (failed)",
        "never ran: score-verify, report",
        "fix the cause, then `fmnist-batch submit --out RUN --resume`",
    ]


def test_status_when_the_scheduler_has_forgotten_the_jobs(tmp_path):
    """Job history off (PBS Pro) or past keep_completed (Torque): the outputs decide."""
    (tmp_path / "m.keras").write_text("x")
    statuses = {s.task_id: s for s in task_statuses(tmp_path, {}, FAILED_RUN)}
    assert statuses["train"].state == "done"
    assert "no longer knows the job" in statuses["train"].detail
    assert statuses["score"].state == "unknown"
    assert "outputs are incomplete" in statuses["score"].detail


# --------------------------------------------------------------------------- nodes

PBSNODES_JSON = """{"nodes": {"pbshost": {"state": "free", "resources_available": {
    "arch": "linux", "cpu_type": "local,icx", "host": "pbshost", "ncpus": 2}}}}"""
TORQUE_PBSNODES = """trqhost
     state = free
     np = 2
     properties = local,icx
     ntype = cluster

"""


@pytest.mark.parametrize(
    "flavor, listing, parse",
    [
        ("pbspro", PBSNODES_JSON, parse_pbsnodes_json),
        ("torque", TORQUE_PBSNODES, parse_pbsnodes_text),
        ("slurm", "vm|2|local,icx\n", parse_sinfo_nodes),
    ],
)
def test_node_types_a_cluster_offers(flavor, listing, parse):
    [node] = parse(listing)
    assert node.cpus == 2
    catalog = load_node_types()
    offered = [name for name, node_type in catalog.items() if node_offers(node, flavor, node_type)]
    assert offered == ["icx", "local"]
    assert not node_offers(node, flavor, NodeType("big", "", cpus=4, label="icx"))


# --------------------------------------------------------------------------- array outputs


def test_score_array_outputs_are_its_shard_markers(tmp_path):
    tasks = {t.id: t for t in expand(load_pipeline(), "quick", tmp_path, {"shards": "3"})}
    score = tasks["score:main"]
    shards = tmp_path / "predictions" / "test" / "main"
    assert score.outputs == tuple(shards / marker_name(i, 3) for i in range(3))
    assert score.element_outputs[1] == (shards / marker_name(1, 3),)
    assert not score.complete()
    shards.mkdir(parents=True)
    (shards / marker_name(1, 3)).write_text("{}")
    assert score.complete(1) and not score.complete(0) and not score.complete()


def test_element_placeholders_need_an_array_step(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text(
        '[profiles.quick]\n[[steps]]\nname = "x"\ncommand = "jobenv"\n'
        'outputs = ["{shard_marker}"]\n'
    )
    with pytest.raises(FmnistError, match="no array"):
        expand(load_pipeline(path), "quick", tmp_path)


def test_pbs_jobs_get_the_submitters_umask(spec, tmp_path):
    old = os.umask(0o002)
    try:
        jobs = submissions(dry_run(["--scheduler", "pbspro", "--out", str(tmp_path)]))
    finally:
        os.umask(old)
    for argv in jobs.values():
        assert "umask=002" in argv and "FMNIST_UMASK=002" in argv[argv.index("-v") + 1]
    slurm = submissions(dry_run(["--scheduler", "slurm", "--out", str(tmp_path)]))
    assert not any("umask" in word for argv in slurm.values() for word in argv[:-1])


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


def test_pick_finds_jobs_by_id_or_number():
    states = {"12.srv": JobState(RUNNING), "13[].srv": JobState(QUEUED), "14": JobState(FAILED)}
    assert pick(states, ["12.srv", "13[].srv", "14.srv", "15.srv"]) == {
        "12.srv": JobState(RUNNING),
        "13[].srv": JobState(QUEUED),
        "14.srv": JobState(FAILED),  # the wrapper's qstat prints ids without the server
    }
