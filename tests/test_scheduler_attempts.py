"""Attempts on the real schedulers: a training that outlives its walltime, a task killed
from outside, a code error, and the trace every attempt leaves.

Each test runs on Slurm, OpenPBS and Torque (the ``cluster`` fixture) with a tiny DAG of
the project's job scripts: a short training (``backup1`` on a subset) given a one-minute
walltime, and a ``report`` step after it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_scheduler_real import one_cpu_catalog, submitted, wait_for_run  # noqa: F401

from fmnist.pipeline.attempts import walltime_warning
from fmnist.pipeline.submit import read_record
from fmnist.trace import read_trace

FMNIST = [sys.executable, "-m", "fmnist"]


def tiny_spec(directory: Path, train: str, report: str, retries: int = 1) -> Path:
    """A DAG of one training and a report step after it (the project's job scripts).

    The training asks for 2 GB, twice as much on each next attempt.
    """
    spec = directory / "pipeline.toml"
    spec.write_text(
        '[profiles.quick]\nmodels = ["backup1"]\nnode_types = ["local"]\n\n'
        '[[steps]]\nname = "train"\nfor_each = { model = "models" }\n'
        f'command = "{train}"\n'
        'outputs = ["models/{model}/model.keras"]\n'
        'resources = { script = "pbs/train_{model}.sh", walltime = "00:30:00", '
        f'retries = {retries}, memory = "2gb", grow = {{ memory = 2.0 }} }}\n\n'
        '[[steps]]\nname = "report"\nneeds = ["train"]\n'
        f'command = "{report}"\noutputs = ["after.csv"]\n'
        'resources = { walltime = "00:05:00", retries = 2 }\n'
    )
    return spec


def submit(cluster, tmp_path: Path, spec: Path, *extra: str) -> Path:
    run = tmp_path / "run"
    env = {
        **cluster.environ(),
        "FMNIST_PIPELINE": str(spec),
        "FMNIST_NODE_TYPES": str(one_cpu_catalog(tmp_path, cluster.flavor)),
    }
    command = [*FMNIST, "submit", "--scheduler", cluster.flavor, "--out", str(run), *extra]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return run


def status_text(cluster, run: Path) -> str:
    command = [*FMNIST, "status", str(run)]
    return subprocess.run(command, env=cluster.environ(), capture_output=True, text=True).stdout


TRAINING = "train --model {model} --recipe quick --limit 36000 --batch-size 128"
# A job's walltime in the continuation test (warned, and saving, a minute before).
WALLTIME_S = 120


@pytest.fixture(scope="module")
def epochs_for_two_windows(tmp_path_factory) -> int:
    """Epochs that last about 1.5 of a job's working window on this machine, now.

    An epoch takes 4.5 s on an idle 2-core EPYC and three times as long on a loaded one,
    so a fixed count either ends inside one job or takes many: measure an epoch here
    (in a job's stead) and size the training to need a second job, sometimes a third.
    The second epoch is the one timed: the first carries the graph's tracing (7-9 s where
    the rest take 4.5), which sized a training that ended inside one job on a quiet machine.
    """
    run = tmp_path_factory.mktemp("epoch")
    command = [*FMNIST, *TRAINING.format(model="backup1").split(), "--epochs", "2"]
    subprocess.run([*command, "--out", str(run)], check=True, capture_output=True)
    import pyarrow.parquet as pq

    seconds = pq.read_table(run / "models" / "backup1" / "history.parquet")["seconds"][1]
    window = WALLTIME_S - walltime_warning(WALLTIME_S)
    return max(3, min(40, round(1.5 * window / seconds.as_py())))


@pytest.mark.scheduler
@pytest.mark.slow
def test_training_outlives_its_walltime_and_its_dependents_wait_for_the_task(
    cluster,
    tmp_path,
    submitted,  # noqa: F811
    epochs_for_two_windows,
):
    jobs, runs = submitted
    epochs = epochs_for_two_windows
    train = f"{TRAINING} --epochs {epochs}"
    train += " --out {run}"
    spec = tiny_spec(tmp_path, train, "data to-csv --split test --limit 1 --out {run}/after.csv")
    walltime = f"train:backup1=00:{WALLTIME_S // 60:02d}:{WALLTIME_S % 60:02d}"
    run = submit(cluster, tmp_path, spec, "--walltime", walltime)
    runs.append(run)
    states = wait_for_run(run, timeout=1500)
    record = read_record(run)
    train_job = record["jobs"]["train:backup1"]
    logs = "".join(p.read_text() for p in (run / "logs").glob("*.log"))
    assert set(states.values()) == {"done"}, (states, logs)
    # It took more than one job, each but the last ended by its walltime having saved.
    history = train_job["history"]
    assert history and {h["cause"] for h in history} == {"walltime"}, (history, logs)
    assert train_job["attempt"] == len(history) + 1
    assert [h["attempt"] for h in reversed(history)] == list(range(1, len(history) + 1))
    import pyarrow.parquet as pq

    trained = pq.read_table(run / "models" / "backup1" / "history.parquet")["epoch"].to_pylist()
    assert trained == list(range(1, epochs + 1))
    # The report waited for the task, not for its first job.
    model = run / "models" / "backup1" / "model.keras"
    assert (run / "after.csv").stat().st_mtime >= model.stat().st_mtime
    assert train_job["job_id"] in record["jobs"]["report"]["after"]
    shown = status_text(cluster, run)
    # However many windows this machine's speed took: each attempt numbered, in order.
    windows = ", ".join(f"{n} walltime" for n in range(1, len(history) + 1))
    assert f"{windows}, {len(history) + 1} " in shown, shown
    # The trace: a row per attempt, written by each job, in the order they ran.
    trace = read_trace(run)
    training = trace[trace["task_id"] == "train:backup1"]
    assert training["attempt"].tolist() == list(range(1, len(history) + 2))
    assert training["cause"].tolist() == ["walltime"] * len(history) + ["done"]
    assert training["job_id"].tolist() == [h["job_id"] for h in reversed(history)] + [
        train_job["job_id"]
    ]
    assert (training["queue_wait_s"] >= 0).all() and (training["run_s"] > 0).all()
    assert (training["cpu_s"] > 0).all() and (training["peak_rss_mb"] > 100).all()
    assert set(trace["host"]) <= set(cluster.hosts) | {os.uname().nodename}, trace["host"]
    print(f"\n{cluster.flavor}: {epochs} epochs in {len(history) + 1} training jobs")


def _kill_training(run: Path, timeout: float = 300) -> int:
    """SIGKILL the training process of ``run`` once it runs (as the OOM killer would)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"train" in argv and str(run).encode() in argv and b"fmnist" in b" ".join(argv):
                os.kill(int(proc.name), signal.SIGKILL)
                return int(proc.name)
        time.sleep(0.5)
    pytest.fail(f"no training process of {run} within {timeout}s")


@pytest.mark.scheduler
@pytest.mark.slow
def test_a_task_killed_from_outside_is_retried_and_a_code_error_is_not(
    cluster,
    tmp_path,
    submitted,  # noqa: F811
):
    jobs, runs = submitted
    train = "train --model {model} --recipe quick --epochs 1 --limit 2000 --out {run}"
    spec = tiny_spec(tmp_path, train, "data info --data-dir {run}/nowhere")
    run = submit(cluster, tmp_path, spec)
    runs.append(run)
    _kill_training(run)
    states = wait_for_run(run, timeout=600)
    record = read_record(run)
    logs = "".join(p.read_text() for p in (run / "logs").glob("*.log"))
    assert states["train:backup1"] == "done", (states, logs)
    [killed] = record["jobs"]["train:backup1"]["history"]
    assert (killed["cause"], killed["signal"]) == ("node-or-signal", "SIGKILL"), killed
    # The retry asked its scheduler for the memory grown as the step says.
    assert "mem=2048" in " ".join(killed["command"]), killed["command"]
    assert "mem=4096" in " ".join(record["jobs"]["train:backup1"]["command"])
    # The code error stands, on its first attempt, though its step allows two retries.
    report = record["jobs"]["report"]
    assert states["report"] == "failed" and not report["history"], (states, report)
    assert report["end"]["cause"] == "code-error"
    shown = status_text(cluster, run)
    assert "1 node-or-signal, 2 done" in shown and "1 code-error" in shown, shown
    assert "not worth another attempt" in shown, shown
    trace = read_trace(run)
    rows = trace[["task_id", "attempt", "signal", "cause"]].values.tolist()
    assert rows == [
        ["train:backup1", 1, "SIGKILL", "node-or-signal"],
        ["train:backup1", 2, "", "done"],
        ["report", 1, "", "code-error"],
    ], trace
