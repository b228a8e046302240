"""``RUN/trace.parquet``: one row per job attempt, as Nextflow's trace file has them.

Every job writes its own rows when its attempt ends (``fmnist-batch step`` in a scheduler
job, ``fmnist-batch run`` for its local tasks), under a lock, so no process has to stay
alive to collect them. The columns (docs/scheduler.md, "The trace"):

==================  ===========================================================
``task_id``         the pipeline task (``train:main``; an array element ``score:main[1]``)
``job_id``          the scheduler's job id (``local-<task>`` under ``run``)
``attempt``         1 for the first attempt of the task, then 2, 3, ...
``node_type``       the node type the job asked for
``host``            the host it ran on
``submitted``       when the job was submitted (UTC)
``started``         when the attempt started on its host (UTC)
``ended``           when it ended (UTC)
``queue_wait_s``    ``started - submitted``
``run_s``           ``ended - started``
``cpu_s``           user + system CPU seconds of the task's processes
``peak_rss_mb``     the largest resident set of one of its processes, MB
``exit_status``     the exit status (negative: the signal's number, as Python has it)
``signal``          the signal that ended it (``SIGKILL``), else empty
``cause``           done, code-error, walltime, memory, node-or-signal, cancelled
==================  ===========================================================

This module owns the file: it writes, reads and checks it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from fmnist.io import FmnistError, atomic_path, file_lock

TRACE_FILE = "trace.parquet"


@dataclass(frozen=True)
class TraceRow:
    """One job attempt of one task (see the module's column table)."""

    task_id: str
    job_id: str
    attempt: int
    node_type: str
    host: str
    submitted: dt.datetime | None
    started: dt.datetime
    ended: dt.datetime
    queue_wait_s: float | None
    run_s: float
    cpu_s: float
    peak_rss_mb: float
    exit_status: int | None
    signal: str
    cause: str


COLUMNS = tuple(f.name for f in fields(TraceRow))


def utc(seconds: float) -> dt.datetime:
    """Epoch seconds as an aware UTC datetime."""
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def parse_time(text: str | None) -> dt.datetime | None:
    """An ISO 8601 time (``2026-12-06T07:00:00+00:00``), or None for none or a bad one."""
    if not text:
        return None
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def trace_row(
    *,
    task_id: str,
    job_id: str,
    attempt: int,
    node_type: str,
    host: str,
    submitted: dt.datetime | None,
    started: float,
    ended: float,
    cpu_s: float,
    peak_rss_mb: float,
    exit_status: int | None,
    signal: str | None,
    cause: str,
) -> TraceRow:
    """A row from an attempt's measurements (times in epoch seconds); derived columns
    computed here (pure)."""
    start = utc(started)
    wait = (start - submitted).total_seconds() if submitted is not None else None
    return TraceRow(
        task_id=task_id,
        job_id=job_id,
        attempt=attempt,
        node_type=node_type,
        host=host,
        submitted=submitted,
        started=start,
        ended=utc(ended),
        queue_wait_s=None if wait is None else max(0.0, round(wait, 3)),
        run_s=round(ended - started, 3),
        cpu_s=round(cpu_s, 3),
        peak_rss_mb=round(peak_rss_mb, 1),
        exit_status=exit_status,
        signal=signal or "",
        cause=cause,
    )


def _table(rows: list[dict]):
    import pyarrow as pa

    time = pa.timestamp("us", tz="UTC")
    schema = pa.schema(
        [
            ("task_id", pa.string()),
            ("job_id", pa.string()),
            ("attempt", pa.int32()),
            ("node_type", pa.string()),
            ("host", pa.string()),
            ("submitted", time),
            ("started", time),
            ("ended", time),
            ("queue_wait_s", pa.float64()),
            ("run_s", pa.float64()),
            ("cpu_s", pa.float64()),
            ("peak_rss_mb", pa.float64()),
            ("exit_status", pa.int32()),
            ("signal", pa.string()),
            ("cause", pa.string()),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def append_rows(run: Path | str, rows: list[TraceRow]) -> Path:
    """Add ``rows`` to ``RUN/trace.parquet`` (written atomically, under a lock)."""
    import pyarrow.parquet as pq

    path = Path(run) / TRACE_FILE
    if not rows:
        return path
    with file_lock(path):
        old = pq.read_table(path).to_pylist() if path.exists() else []
        table = _table(old + [asdict(row) for row in rows])
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
    return path


def read_trace(run: Path | str):
    """``RUN/trace.parquet`` as a DataFrame (no rows when there is none); checked."""
    import pandas as pd
    import pyarrow.parquet as pq

    path = Path(run) / TRACE_FILE
    if not path.exists():
        return pd.DataFrame(columns=list(COLUMNS))
    try:
        frame = pq.read_table(path).to_pandas()
    except Exception as exc:  # pyarrow raises several kinds for a damaged file
        raise FmnistError(f"{path}: not a readable trace ({exc})") from exc
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise FmnistError(f"{path}: trace without column(s) {', '.join(missing)}")
    return frame[list(COLUMNS)]
