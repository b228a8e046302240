"""RUN/trace.parquet: one row per job attempt, derived columns, and `run` writing it."""

from __future__ import annotations

import datetime as dt
import os
import sys

import pytest

from fmnist.io import FmnistError
from fmnist.pipeline import executor
from fmnist.pipeline.attempts import AttemptEnd
from fmnist.pipeline.executor import ProcessRun, run_local, trace_rows
from fmnist.pipeline.spec import Task
from fmnist.trace import COLUMNS, append_rows, read_trace, trace_row


def test_a_row_derives_queue_wait_and_run_time():
    submitted = dt.datetime(2026, 12, 6, 7, 0, 0, tzinfo=dt.UTC)
    start = submitted.timestamp() + 42.5
    row = trace_row(
        task_id="train:main", job_id="12.srv", attempt=2, node_type="icx", host="n1",
        submitted=submitted, started=start, ended=start + 100.25, cpu_s=180.123,
        peak_rss_mb=2048.04, exit_status=-9, signal="SIGKILL", cause="node-or-signal",
    )  # fmt: skip
    assert (row.queue_wait_s, row.run_s, row.cpu_s, row.peak_rss_mb) == (
        42.5,
        100.25,
        180.123,
        2048.0,
    )
    assert row.started == submitted + dt.timedelta(seconds=42.5)
    unknown = trace_row(
        task_id="report", job_id="13", attempt=1, node_type="local", host="n1", submitted=None,
        started=start, ended=start + 1, cpu_s=0.5, peak_rss_mb=50.0, exit_status=0,
        signal=None, cause="done",
    )  # fmt: skip
    assert unknown.queue_wait_s is None


def _run(element, returncode, cause, start=1000.0):
    end = AttemptEnd(cause, returncode, "SIGKILL" if returncode == -9 else None)
    return ProcessRun(start, start + 5, returncode, 1.5, 100.0, end, element)


def test_attempts_count_per_element():
    runs = [_run(0, -9, "node-or-signal"), _run(0, 0, "done"), _run(1, 0, "done")]
    rows = trace_rows("score:m", runs, lambda e: f"7[{e}]", "local", "h", 990.0)
    assert [(r.task_id, r.job_id, r.attempt, r.cause) for r in rows] == [
        ("score:m[0]", "7[0]", 1, "node-or-signal"),
        ("score:m[0]", "7[0]", 2, "done"),
        ("score:m[1]", "7[1]", 1, "done"),
    ]
    assert rows[0].signal == "SIGKILL" and rows[0].queue_wait_s == 10.0
    later = trace_rows("train:m", [_run(None, 0, "done")], lambda e: "9", "local", "h", None, 3)
    assert later[0].attempt == 3 and later[0].submitted is None


def test_rows_from_several_jobs_accumulate(tmp_path):
    first = trace_rows("a", [_run(None, 1, "code-error")], lambda e: "1", "local", "h", None)
    second = trace_rows("b", [_run(None, 0, "done")], lambda e: "2", "local", "h", 999.0)
    append_rows(tmp_path, first)
    append_rows(tmp_path, second)
    frame = read_trace(tmp_path)
    assert list(frame.columns) == list(COLUMNS)
    assert frame["task_id"].tolist() == ["a", "b"]
    assert frame["cause"].tolist() == ["code-error", "done"]
    assert frame["queue_wait_s"].isna().tolist() == [True, False]
    assert read_trace(tmp_path / "none").empty
    (tmp_path / "trace.parquet").write_text("not parquet")
    with pytest.raises(FmnistError, match="trace.parquet: not a readable trace"):
        read_trace(tmp_path)


def test_run_writes_a_row_per_attempt(tmp_path, monkeypatch):
    # A task that a signal ends once, then succeeds; one that fails with a code error.
    marker = tmp_path / "killed"
    flaky = (
        f"import os, pathlib, signal; m = pathlib.Path({str(marker)!r})\n"
        "if not m.exists(): m.touch(); os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    commands = {"flaky": flaky, "broken": "raise SystemExit(2)"}
    monkeypatch.setattr(
        executor, "cli_command", lambda args: [sys.executable, "-c", commands[args[0]]]
    )
    tasks = [
        Task("flaky", "flaky", ("flaky",), (tmp_path / "never",), (), {}, {"retries": 1}),
        Task("broken", "broken", ("broken",), (tmp_path / "never",), (), {}, {"retries": 3}),
    ]
    run_local(tasks, tmp_path, progress=lambda m: None)
    frame = read_trace(tmp_path)
    rows = frame[["task_id", "job_id", "attempt", "exit_status", "signal", "cause"]]
    assert rows.values.tolist() == [
        ["flaky", "local-flaky", 1, -9, "SIGKILL", "node-or-signal"],
        ["flaky", "local-flaky", 2, 0, "", "done"],
        ["broken", "local-broken", 1, 2, "", "code-error"],
    ]
    assert (frame["run_s"] > 0).all() and (frame["queue_wait_s"] >= 0).all()
    assert set(frame["host"]) == {os.uname().nodename}
