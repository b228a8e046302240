"""The cause of a job attempt's end and the retry rule: tables of what each flavor says."""

from __future__ import annotations

import pytest

from fmnist.io import FmnistError
from fmnist.pipeline.attempts import (
    CANCELLED,
    CODE_ERROR,
    CONTINUE_EXIT,
    DONE,
    MEMORY,
    NODE_OR_SIGNAL,
    WALLTIME,
    AttemptEnd,
    RetryPolicy,
    attempt_resources,
    classify_exit,
    classify_pbs,
    classify_slurm,
    format_walltime,
    memory_mb,
    retry_policy,
    task_attempt_resources,
    walltime_seconds,
    worth_retrying,
)


@pytest.mark.parametrize(
    "returncode, flags, expected",
    [
        (0, {}, AttemptEnd(DONE, 0)),
        (1, {}, AttemptEnd(CODE_ERROR, 1)),
        (2, {"at_walltime": True}, AttemptEnd(CODE_ERROR, 2)),  # it failed on its own
        (-9, {}, AttemptEnd(NODE_OR_SIGNAL, -9, "SIGKILL")),
        (137, {}, AttemptEnd(NODE_OR_SIGNAL, 137, "SIGKILL")),  # a shell's 128 + 9
        (-11, {}, AttemptEnd(NODE_OR_SIGNAL, -11, "SIGSEGV")),
        (-9, {"oom_killed": True}, AttemptEnd(MEMORY, -9, "SIGKILL")),
        (-15, {"at_walltime": True}, AttemptEnd(WALLTIME, -15, "SIGTERM")),
        (CONTINUE_EXIT, {"at_walltime": True}, AttemptEnd(WALLTIME, CONTINUE_EXIT)),
        (CONTINUE_EXIT, {}, AttemptEnd(CODE_ERROR, CONTINUE_EXIT)),
    ],
)
def test_classify_exit(returncode, flags, expected):
    assert classify_exit(returncode, **flags) == expected


@pytest.mark.parametrize(
    "state, exit_code, cause",
    [
        ("COMPLETED", "0:0", DONE),
        ("FAILED", "1:0", CODE_ERROR),
        ("FAILED", "0:9", NODE_OR_SIGNAL),
        ("TIMEOUT", "0:15", WALLTIME),
        ("OUT_OF_MEMORY", "0:125", MEMORY),
        ("NODE_FAIL", "0:0", NODE_OR_SIGNAL),
        ("CANCELLED by 0", "0:15", CANCELLED),
        ("FAILED", "", CODE_ERROR),
    ],
)
def test_classify_slurm(state, exit_code, cause):
    assert classify_slurm(state, exit_code).cause == cause


@pytest.mark.parametrize(
    "flavor, exit_status, deleted, cause",
    [
        ("pbspro", 0, False, DONE),
        ("pbspro", 1, False, CODE_ERROR),
        ("pbspro", -29, False, WALLTIME),
        ("pbspro", -27, False, MEMORY),
        ("pbspro", -11, False, NODE_OR_SIGNAL),  # JOB_EXEC_RERUN on PBS Pro
        ("pbspro", 265, False, NODE_OR_SIGNAL),  # 256 + SIGKILL
        ("pbspro", None, False, CANCELLED),  # deleted before it ran
        ("torque", -11, False, WALLTIME),  # JOB_EXEC_OVERLIMIT_WT on Torque
        ("torque", -10, False, MEMORY),
        ("torque", 271, True, CANCELLED),  # deleted for its dependency
        ("torque", 137, False, NODE_OR_SIGNAL),
    ],
)
def test_classify_pbs(flavor, exit_status, deleted, cause):
    assert classify_pbs(flavor, exit_status, deleted).cause == cause


def test_only_walltime_memory_and_node_failures_are_retried():
    assert [c for c in (DONE, CODE_ERROR, WALLTIME, MEMORY, NODE_OR_SIGNAL, CANCELLED)
            if worth_retrying(c)] == [WALLTIME, MEMORY, NODE_OR_SIGNAL]  # fmt: skip
    assert classify_pbs("pbspro", 265).retried and not classify_exit(1).retried


def test_resources_grow_per_attempt():
    policy = retry_policy("train:main", {"retries": 2, "grow": {"walltime": 2, "memory": 1.5}})
    assert policy == RetryPolicy(2, 2.0, 1.5)
    assert attempt_resources("00:01:40", "2gb", policy, 1) == ("00:01:40", "2048mb")
    assert attempt_resources("00:01:40", "2gb", policy, 3) == ("00:06:40", "4608mb")
    assert attempt_resources("01:00:00", None, RetryPolicy(), 2) == ("01:00:00", None)
    assert [policy.attempts_left(a) for a in (1, 2, 3)] == [True, True, False]


def test_a_tasks_resources_come_from_its_override_else_the_declared_walltime():
    """The one resolution both `submit` (declared: the step's walltime) and a running job
    (declared: none, so Torque's own PBS_WALLTIME counts) use."""
    resources = {"memory": "4gb", "retries": 2, "grow": {"walltime": 2, "memory": 2.0}}
    overrides = {"train": "00:10:00", "train:main": "00:30:00"}
    resolve = task_attempt_resources
    assert resolve("train:main", "train", resources, overrides, "", 1) == ("00:30:00", "4096mb")
    assert resolve("train:backup1", "train", resources, overrides, "", 2) == ("00:20:00", "8192mb")
    assert resolve("report", "report", {}, overrides, "01:00:00", 1) == ("01:00:00", None)
    assert resolve("report", "report", {}, {}, "", 3) == (None, None)
    with pytest.raises(FmnistError, match=r"^task train:main: memory 'lots' is not a number"):
        resolve("train:main", "train", {"memory": "lots"}, {}, "", 1)
    with pytest.raises(FmnistError, match=r"^task train:main: memory '' is not a number"):
        resolve("train:main", "train", {"memory": ""}, {}, "", 1)  # declared, though empty
    with pytest.raises(FmnistError, match=r"^task report: walltime '1h' is not"):
        resolve("report", "report", {}, {"report": "1h"}, "", 1)


@pytest.mark.parametrize(
    "resources, message",
    [
        ({"retries": -1}, "resources.retries must be 0 or more"),
        ({"retries": "2"}, "resources.retries must be 0 or more"),
        ({"grow": {"cpus": 2}}, "resources.grow takes walltime and memory"),
        ({"grow": {"walltime": 0.5}}, "grow.walltime must be a factor of at least 1"),
    ],
)
def test_bad_policy_names_the_task(resources, message):
    with pytest.raises(FmnistError, match=message) as error:
        retry_policy("train:main", resources)
    assert "task train:main" in str(error.value)


def test_walltime_and_memory_units():
    assert [walltime_seconds(t) for t in ("01:02:03", "02:03", "45")] == [3723, 123, 45]
    assert format_walltime(3723) == "01:02:03"
    assert (memory_mb("2gb"), memory_mb("512M"), memory_mb("1t")) == (2048, 512, 1048576)
    for bad in ("1:2:3:4", "ab", "00:00"):
        with pytest.raises(FmnistError, match="walltime"):
            walltime_seconds(bad)
    with pytest.raises(FmnistError, match="memory '2 apples'"):
        memory_mb("2 apples")


def test_every_step_of_the_project_declares_a_valid_policy():
    from fmnist.pipeline.spec import expand, load_pipeline
    from fmnist.pipeline.submit import task_walltime

    pipeline = load_pipeline()
    for profile in pipeline.profiles:
        for task in expand(pipeline, profile, "RUN", {"node_types": ["local"]}):
            policy = retry_policy(task.id, task.resources)
            assert policy.retries >= 1, task.id  # a native crash gets another attempt
            walltime_seconds(task_walltime(task, {}, attempt=policy.retries + 1))
