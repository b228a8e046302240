"""A job's attempt under its walltime: whether a next attempt follows, and what counts as
progress (pure parts; the real schedulers run the rest in test_scheduler_attempts.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from fmnist.pipeline.attempts import AttemptEnd
from fmnist.pipeline.handover import (
    WalltimeGuard,
    decide,
    job_walltime,
    progressed,
    snapshot,
)
from fmnist.pipeline.spec import Task


@pytest.mark.parametrize(
    "cause, moved, attempt, retries, verdict",
    [
        ("done", False, 1, 0, "done"),
        ("walltime", True, 7, 0, "next"),  # a continuation: as long as it gets on
        ("walltime", False, 3, 5, "attempt 3 reached its walltime without changing anything: "
                                  "not continued"),
        ("node-or-signal", False, 1, 1, "next"),
        ("memory", False, 2, 1, "attempt 2 ended (memory) and the step's 1 retries are used"),
        ("code-error", True, 1, 5, "attempt 1 ended (code-error): not worth another attempt"),
        ("cancelled", False, 1, 5, "attempt 1 ended (cancelled): not worth another attempt"),
    ],
)  # fmt: skip
def test_decide(cause, moved, attempt, retries, verdict):
    assert decide(AttemptEnd(cause), moved, attempt, retries) == verdict


def test_progress_is_a_new_or_changed_file_not_bookkeeping(tmp_path):
    (tmp_path / "models").mkdir()
    config = tmp_path / "models" / "config.json"
    config.write_text('{"epochs": 3}')
    before = snapshot(tmp_path)
    time.sleep(0.01)
    config.write_text('{"epochs": 3}')  # rewritten unchanged at every start
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "train.log").write_text("epoch 1")
    (tmp_path / "trace.parquet").write_text("rows")
    (tmp_path / "jobs.json").write_text("{}")
    assert not progressed(before, snapshot(tmp_path))
    config.write_text('{"epochs": 4}')
    assert progressed(before, snapshot(tmp_path))
    (tmp_path / "models" / "position.json").write_text("{}")
    assert not progressed(snapshot(tmp_path), snapshot(tmp_path))
    assert progressed({}, snapshot(tmp_path))


def test_job_walltime_from_the_variable_grown_per_attempt():
    task = Task("train:main", "train", (), (), (), {}, {"retries": 2, "grow": {"walltime": 2}})
    assert job_walltime({"FMNIST_WALLTIME": "00:01:40"}, task) == 100
    assert job_walltime({"FMNIST_WALLTIME": "00:01:40"}, task, attempt=3) == 400
    entries = {"FMNIST_WALLTIME": "train=01:00:00 train:main=00:02:00"}
    assert job_walltime(entries, task) == 120
    assert job_walltime({"FMNIST_WALLTIME": "report=00:10:00"}, task) is None
    assert job_walltime({"PBS_WALLTIME": "3600"}, task) == 3600  # Torque tells its jobs
    assert job_walltime({}, task) is None


def test_the_guard_stops_the_task_before_the_walltime_and_tells_a_cancel_apart():
    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    with WalltimeGuard(walltime_s=31) as guard:  # warned 30 s before: stop after ~1 s
        process = subprocess.Popen(sleeper)
        guard.attach(process)
        assert process.wait(timeout=20) == -signal.SIGTERM
    assert guard.at_walltime and not guard.cancelled
    with WalltimeGuard(walltime_s=3600) as guard:  # a SIGTERM long before: qdel, scancel
        process = subprocess.Popen(sleeper)
        guard.attach(process)
        os.kill(os.getpid(), signal.SIGTERM)
        assert process.wait(timeout=20) == -signal.SIGTERM
    assert guard.cancelled and not guard.at_walltime
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
