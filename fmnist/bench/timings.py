"""The timings table (``RUN/timings/<job-id>.parquet``): its schema, rows, writer and reader.

Rows record what actually ran: executed precision, threads, CPU, ISA flags, library
versions, and the job and node type that measured them.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from fmnist.bench.config import BenchConfig
from fmnist.bench.latency import LatencyStats
from fmnist.io import file_lock, write_parquet_atomic
from fmnist.system import machine_info

# Library versions recorded in every row, as <name>_version columns.
VERSION_COLUMNS = ("openvino", "nncf", "tensorflow", "keras", "numpy")
ISA_COLUMNS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx")
COLUMNS = (
    ["run", "job_id", "node_type", "host", "cpu_model", "isa_flags", *ISA_COLUMNS]
    + ["usable_cpus", "threads", "model", "variant", "executed_precision", "source", "measure"]
    + ["mode", "batch_size", "iterations", "p50_ms", "p90_ms", "p99_ms", "mean_ms"]
    + ["images_per_second", "status", "reason", "details", "timestamp"]
    + [f"{name}_version" for name in VERSION_COLUMNS]
)
NUMBER_COLUMNS = ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "images_per_second")
COUNT_COLUMNS = ("iterations", "threads", "batch_size", "usable_cpus")
TEXT_COLUMNS = ("reason", "details", "measure", "executed_precision")


def measured_row(
    variant: str,
    engine,
    measure: str,
    mode: str,
    batch: int,
    stats: LatencyStats,
    details: dict | None = None,
) -> dict:
    """The row of one measurement; ``details`` adds to the engine's own (JSON column).

    The medians of the window's rounds, when measured, go into the details as
    ``round_p50_ms`` beside the p50/p90/p99 columns.
    """
    figures = asdict(stats)
    rounds = figures.pop("round_p50_ms")
    extra = {**({"round_p50_ms": list(rounds)} if rounds else {}), **(details or {})}
    return {
        "variant": variant,
        "source": "fmnist",
        "measure": measure,
        "mode": mode,
        "batch_size": batch,
        **figures,
        "executed_precision": engine.info.executed_precision,
        "threads": engine.info.threads,
        "status": "ok",
        "reason": "",
        "details": json.dumps({**engine.info.details, **extra}, sort_keys=True, default=str),
    }


def failed_row(variant: str, status: str, reason: str) -> dict:
    """The one row recording a variant that was skipped or failed, and why."""
    return {
        "variant": variant,
        "source": "fmnist",
        "measure": "",
        "mode": "latency",
        "batch_size": 1,
        "status": status,
        "reason": reason,
    }


def local_job_id(host: str, pid: int, now: datetime | None = None) -> str:
    """The id of a benchmark no job named: local-<host>-<pid>-<UTC time>, unique per call."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%S")
    return f"local-{host}-{pid}-{stamp}"


def job_columns(config: BenchConfig, job_id: str) -> dict:
    """The columns every row of one benchmark job shares: job, node type, machine, versions."""
    machine = machine_info()
    flags = set(machine.isa_flags)
    return {
        "run": str(Path(config.run).resolve()),
        "job_id": job_id,
        "node_type": config.node_type or "local",
        "host": machine.host,
        "cpu_model": machine.cpu_model,
        "isa_flags": " ".join(machine.isa_flags),
        **{flag: flag in flags for flag in ISA_COLUMNS if flag != "amx"},
        "amx": any(flag.startswith("amx") for flag in flags),
        "usable_cpus": machine.usable_cpus,
        "model": config.model,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        **{f"{n}_version": machine.libraries.get(n, "") for n in VERSION_COLUMNS},
        "tensorflow_version": machine.libraries.get("tensorflow")
        or machine.libraries.get("tensorflow-cpu", ""),
    }


def timings_frame(rows: list[dict], job: dict) -> pd.DataFrame:
    """The timings table: one row per variant x mode x batch size x source, DESIGN columns."""
    frame = pd.DataFrame([{**job, **row} for row in rows])
    for column in COLUMNS:
        if column not in frame:
            frame[column] = None
    return conform(frame[COLUMNS])


def conform(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with every timings column (missing ones empty) in its type.

    A file written before a column existed reads with that column empty; a column of
    another name is not guessed at.
    """
    frame = frame.copy()
    for column in COLUMNS:
        if column not in frame:
            frame[column] = None
    for column in NUMBER_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    for column in COUNT_COLUMNS:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("Int64")
    for column in TEXT_COLUMNS:
        frame[column] = frame[column].fillna("").astype(str)
    return frame


def read_timings(path: Path) -> pd.DataFrame:
    """One timings file, conformed to the schema (:func:`conform`)."""
    return conform(pd.read_parquet(path))


def write_timings(path: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """Write the job's timings; rows this job wrote earlier for other models are kept.

    One job may benchmark several models (one file per job): a re-run of a model
    replaces that model's rows only.
    """
    with file_lock(path):
        if path.exists():
            previous = pd.read_parquet(path)
            keep = previous[~previous["model"].isin(frame["model"].unique())]
            frame = pd.concat([keep, frame], ignore_index=True) if len(keep) else frame
        write_parquet_atomic(path, frame)
    return frame
