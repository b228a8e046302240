"""The report's "How the runs went": the timeline figure, the trace table, the totals."""

from __future__ import annotations

import datetime as dt

import pandas as pd

from fmnist.report import build_report
from fmnist.report.timeline import lanes, trace_order, trace_totals
from fmnist.trace import append_rows, read_trace, trace_row

T0 = dt.datetime(2026, 12, 6, 7, 0, 0, tzinfo=dt.UTC)


def _row(task, attempt, host, submitted, started, ended, cause, cpu=10.0):
    base = T0.timestamp()
    return trace_row(
        task_id=task, job_id=f"{task}-{attempt}", attempt=attempt, node_type="local", host=host,
        submitted=T0 + dt.timedelta(seconds=submitted), started=base + started,
        ended=base + ended, cpu_s=cpu, peak_rss_mb=300.0, exit_status=0 if cause == "done" else -15,
        signal=None if cause == "done" else "SIGTERM", cause=cause,
    )  # fmt: skip


ROWS = [
    _row("train:main", 1, "n1", 0, 30, 90, "walltime", cpu=100),
    _row("train:main", 2, "n1", 89, 120, 150, "done", cpu=50),
    _row("evaluate:main", 1, "n2", 150, 150, 400, "done", cpu=400),
    _row("report", 1, "n1", 150, 410, 420, "done", cpu=5),
]


def test_totals_order_and_lanes(tmp_path):
    append_rows(tmp_path, ROWS)
    trace = read_trace(tmp_path)
    totals = trace_totals(trace)
    assert totals["wall_s"] == 420 and totals["attempts"] == 4 and totals["tasks"] == 3
    assert totals["retried"] == 1  # train:main's first attempt
    assert totals["cpu_hours"] == (100 + 50 + 400 + 5) / 3600
    assert totals["queue_hours"] == (30 + 31 + 0 + 260) / 3600
    # The retried task's attempts first (slowest first), then the slowest others.
    assert trace_order(trace)[["task_id", "attempt"]].values.tolist() == [
        ["train:main", 1], ["train:main", 2], ["evaluate:main", 1], ["report", 1],
    ]  # fmt: skip
    assert lanes(trace)["host"].tolist() == ["n1", "n1", "n1", "n2"]
    assert trace_totals(pd.DataFrame()) == {}


def test_the_report_shows_how_the_run_went(tmp_path):
    run = tmp_path / "run"
    (run / "models").mkdir(parents=True)
    append_rows(run, ROWS)
    files = build_report([run], tmp_path / "out")
    markdown = files.markdown.read_text()
    assert "## How the runs went" in markdown
    assert (
        "3 tasks in 4 job attempts (1 followed by another attempt); wall time 0:07:00, "
        "0.154 CPU hours, 0.089 hours waiting in queues" in markdown
    )
    table = markdown[markdown.index("| task | attempt |") :]
    order = [line.split("|")[1].strip(" *") for line in table.splitlines()[2:6]]
    assert order == ["train:main", "train:main", "evaluate:main", "report"]
    first = table.splitlines()[2]
    assert first.endswith(
        "| 1 | train:main-1 | n1 | 30.0 s | 60.0 s | 100.0 s | 300 MB | SIGTERM | walltime |"
    ), first
    figure = tmp_path / "out" / "figures" / "timeline__run.png"
    assert figure.stat().st_size > 5000
    assert "timeline__run.png" in markdown and "data:image/png" in files.html.read_text()
