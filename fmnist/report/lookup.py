"""The building blocks of the report's tables: names, contexts, records and lookups.

Every figure the report prints is one record of a long table (``results.csv``): its
section, what it measures, where (run, node type, model, variant, batch size), the value
exactly as read from the Parquet files, and, where the value is missing, the reason.
The lookups here find the row behind a cell, or say why there is none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fmnist.engines import VARIANTS
from fmnist.manifest import TrainingRecord
from fmnist.report.runs import RunData
from fmnist.report.seed_reference import SEED_RESULTS

BASELINE = "keras-predict"
ONEDNN_ON = "keras-onednn-on"
REFERENCES = (BASELINE, ONEDNN_ON)  # every speedup is against these two
YARDSTICK_SOURCES = ("benchmark_app",)
OK_STATUSES = ("", "ok", "done", "success", "succeeded", "measured", "completed", "none", "nan")
SEED_COLUMN = "seed"

OPTIMIZATION = {
    "keras-predict": "none",
    "keras-onednn-off": "none (oneDNN off)",
    "keras-onednn-on": "oneDNN in TensorFlow",
    "openvino-f32": "OpenVINO IR f32",
    "openvino-bf16": "OpenVINO IR, bf16 execution",
    "openvino-int8": "OpenVINO IR, NNCF INT8",
}
RECORD_COLUMNS = [
    "section",
    "key",
    "label",
    "run",
    "node_type",
    "context",
    "model",
    "variant",
    "batch_size",
    "item",
    "value",
    "text",
    "unit",
    "gap",
]
LATENCY_METRICS = (("p50_ms", "p50"), ("p90_ms", "p90"), ("p99_ms", "p99"), ("mean_ms", "mean"))


@dataclass(frozen=True)
class Context:
    """Where timings were measured: one node type within one run."""

    run: str
    node_type: str
    label: str


@dataclass(frozen=True)
class Lookup:
    """A timing row found for a cell, or the reason there is none."""

    row: pd.Series | None
    gap: str | None


def record(section: str, key: str, label: str, unit: str, **fields: Any) -> dict[str, Any]:
    """One record of the long results table; unspecified fields are empty."""
    out = dict.fromkeys(RECORD_COLUMNS)
    out.update(section=section, key=key, label=label, unit=unit, **fields)
    if out["value"] is not None and not isinstance(out["value"], str):
        out["value"] = float(out["value"])
        if np.isnan(out["value"]):
            out["value"] = None
    return out


# --------------------------------------------------------------------------- names


def model_order(runs: list[RunData]) -> list[str]:
    """Models of any run: the seed's three first, in the seed's order, then the rest."""
    found = set().union(*(set(r.models) for r in runs)) if runs else set()
    seed = [m for m in SEED_RESULTS if m in found]
    return seed + sorted(found - set(seed))


def variant_order(runs: list[RunData]) -> list[str]:
    """Every registered variant (so a missing one shows as a gap), then any other found."""
    found: set[str] = set()
    for run in runs:
        if len(run.metrics):
            found |= set(run.metrics["variant"].dropna())
        found |= set(run.timings["variant"].dropna())
    return list(VARIANTS) + sorted(found - set(VARIANTS))


def run_node_types(run: RunData) -> list[str]:
    """Node types the run's timings were measured on, else the manifest's, else 'unknown'."""
    found = sorted(set(run.timings["node_type"].dropna()))
    if found:
        return found
    # Without timings: the node types the run's jobs recorded in the manifest.
    recorded = run.manifest.node_types()
    return ["+".join(recorded)] if recorded else ["unknown"]


def contexts(runs: list[RunData]) -> list[Context]:
    """Every (run, node type) pair, labelled as briefly as keeps them apart."""
    pairs = [(run.label, node) for run in runs for node in run_node_types(run)]
    nodes = [node for _, node in pairs]
    labels = [run for run, _ in pairs]
    if len(set(nodes)) == len(pairs) and "unknown" not in nodes:
        names = nodes
    elif len(set(labels)) == len(pairs):
        names = labels
    else:
        names = [f"{run} · {node}" for run, node in pairs]
    return [Context(run, node, name) for (run, node), name in zip(pairs, names, strict=True)]


def run_by_label(runs: list[RunData], label: str) -> RunData:
    return next(r for r in runs if r.label == label)


# --------------------------------------------------------------------------- lookups


def _is_ok(status: Any) -> bool:
    return status is None or str(status).strip().lower() in OK_STATUSES


def our_timings(timings: pd.DataFrame) -> pd.DataFrame:
    """Rows measured by our harness (not a yardstick such as benchmark_app)."""
    source = timings["source"].fillna("").str.lower()
    return timings[~source.isin(YARDSTICK_SOURCES)]


def find_timing(
    run: RunData,
    node_type: str,
    model: str,
    variant: str,
    mode: str,
    batch_size: int | None,
    yardstick: bool = False,
) -> Lookup:
    """The timing row of one cell, or why it is missing.

    Re-runs append rows; the last one (files in name order, rows in file order) wins.
    """
    key = ("timing", node_type, model, variant, mode, batch_size, yardstick)
    if key not in run.cache:
        run.cache[key] = _find_timing(run, node_type, model, variant, mode, batch_size, yardstick)
    return run.cache[key]


def _find_timing(
    run: RunData,
    node_type: str,
    model: str,
    variant: str,
    mode: str,
    batch_size: int | None,
    yardstick: bool,
) -> Lookup:
    timings = run.timings
    if timings.empty:
        return Lookup(None, "no benchmark in this run (timings/ is empty)")
    rows = timings if yardstick else our_timings(timings)
    if yardstick:
        rows = rows[rows["source"].fillna("").str.lower().isin(YARDSTICK_SOURCES)]
    if timings["node_type"].notna().any():
        rows = rows[rows["node_type"] == node_type]
    if rows.empty:
        return Lookup(None, f"no benchmark on node type {node_type}")
    rows = rows[rows["model"] == model]
    if rows.empty:
        return Lookup(None, f"{model} not benchmarked on {node_type}")
    rows = rows[rows["variant"] == variant]
    if rows.empty:
        return Lookup(None, f"{variant} not benchmarked")
    # A skipped or failed variant is recorded once; that reason holds for every mode.
    if not any(_is_ok(status) for status in rows["status"]):
        return _status_gap(rows.iloc[-1])
    if rows["mode"].notna().any():
        rows = rows[rows["mode"] == mode]
    elif mode == "latency":
        batch_size = 1
    if batch_size is not None:
        rows = rows[rows["batch_size"] == batch_size]
    if rows.empty:
        where = f"{mode} mode" + (f", batch {batch_size}" if batch_size is not None else "")
        return Lookup(None, f"{variant} has no {where} measurement")
    row = rows.iloc[-1]
    return Lookup(row, None) if _is_ok(row["status"]) else _status_gap(row)


def _status_gap(row: pd.Series) -> Lookup:
    reason = row["reason"]
    detail = "" if is_blank(reason) or not str(reason) else f": {reason}"
    return Lookup(None, f"{row['status']}{detail}")


def number(row: pd.Series | None, column: str) -> float | None:
    if row is None or column not in row.index:
        return None
    value = row[column]
    return None if value is None or pd.isna(value) else float(value)


def timing_value(lookup: Lookup, column: str, what: str) -> tuple[float | None, str | None]:
    if lookup.row is None:
        return None, lookup.gap
    value = number(lookup.row, column)
    return (value, None) if value is not None else (None, f"the benchmark recorded no {what}")


def metrics_summary(run: RunData, model: str, variant: str) -> tuple[pd.Series | None, str]:
    """The overall metrics row (accuracy, loss, ...) of a model x variant, or why none."""
    key = ("metrics", model, variant)
    if key not in run.cache:
        run.cache[key] = _metrics_summary(run, model, variant)
    return run.cache[key]


def _metrics_summary(run: RunData, model: str, variant: str) -> tuple[pd.Series | None, str]:
    metrics = run.metrics
    if len(metrics):
        rows = metrics[(metrics["model"] == model) & (metrics["variant"] == variant)]
        if len(rows):
            return rows.iloc[0], ""
    if model not in run.models:
        return None, f"{model} not in this run"
    precision = "int8" if variant == "openvino-int8" else "f32"
    if variant.startswith("openvino") and not run.has_ir(model, precision):
        return None, f"never optimized (no models/{model}/openvino/{precision}/model.xml)"
    skipped = run.manifest.evaluation(model, variant).skipped
    if skipped:
        return None, f"skipped: {skipped}"
    return None, f"not evaluated (no metrics/{model}__{variant}.parquet)"


def metric_value(run: RunData, model: str, variant: str, column: str) -> tuple[float | None, str]:
    row, gap = metrics_summary(run, model, variant)
    if row is None:
        return None, gap
    value = number(row, column)
    return (value, "") if value is not None else (None, f"metrics file has no {column} column")


def training_figures(run: RunData, model: str) -> tuple[float | None, str, str]:
    """Training wall time in seconds, a short description of the training, or a gap."""
    entry = run.manifest.models.get(model) or TrainingRecord()
    history = run.histories.get(model)
    seconds = entry.wall_seconds
    if seconds is None and history is not None and "seconds" in history:
        seconds = float(history["seconds"].sum())
    if seconds is None:
        return None, "", f"{model} not trained in this run (no manifest entry, no history)"
    epochs = entry.epochs_run
    if epochs is None and history is not None:
        epochs = len(history)
    images = entry.train_images
    detail = []
    if epochs is not None:
        detail.append(f"{epochs} epoch{'s' if epochs != 1 else ''}")
    if images is not None:
        detail.append(f"{images:,} images")
    return float(seconds), ", ".join(detail), ""


def is_blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def speedup(
    reference: pd.Series | None, lookup: Lookup, column: str, ref: str, better: str
) -> tuple[float | None, str | None]:
    """Speedup of a measurement against a reference row: time ratio or throughput ratio."""
    if lookup.row is None:
        return None, lookup.gap
    if reference is None:
        return None, f"no {ref} measurement to compare with"
    mine, theirs = number(lookup.row, column), number(reference, column)
    if mine is None or theirs is None or mine <= 0 or theirs <= 0:
        return None, f"no {column} to compare"
    # Latency: reference time / our time; throughput: our rate / reference rate.
    return (theirs / mine, None) if better == "slower" else (mine / theirs, None)


def variant_rank(variant: str) -> tuple[int, str]:
    return (VARIANTS.index(variant) if variant in VARIANTS else len(VARIANTS), variant)


def display_order(column: pd.Series) -> pd.Series:
    if column.name == "model":
        order = {m: i for i, m in enumerate(SEED_RESULTS)}
        return column.map(lambda m: (order.get(m, len(order)), m))
    if column.name == "variant":
        return column.map(variant_rank)
    return column.fillna("" if column.dtype == object else -1)
