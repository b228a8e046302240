"""Merge runs into the report's tables: pure functions from ``RunData`` to tidy DataFrames.

Every figure the report prints is one record of a long table (``results.csv``): its
section, what it measures, where (run, node type, model, variant, batch size), the value
exactly as read from the Parquet files, and, where the value is missing, the reason.
Rendering only formats and pivots these records, so the numbers on the page are the
numbers in the files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fmnist.engines import VARIANTS
from fmnist.report_data import RunData
from fmnist.seed_reference import SEED_RESULTS

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
    jobs = run.manifest.get("jobs") or {}
    recorded = (
        sorted(
            {
                str(job["node_type"])
                for job in jobs.values()
                if isinstance(job, dict) and job.get("node_type")
            }
        )
        if isinstance(jobs, dict)
        else []
    )
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


def _run(runs: list[RunData], label: str) -> RunData:
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
    detail = "" if _blank(reason) or not str(reason) else f": {reason}"
    return Lookup(None, f"{row['status']}{detail}")


def _number(row: pd.Series | None, column: str) -> float | None:
    if row is None or column not in row.index:
        return None
    value = row[column]
    return None if value is None or pd.isna(value) else float(value)


def _timing_value(lookup: Lookup, column: str, what: str) -> tuple[float | None, str | None]:
    if lookup.row is None:
        return None, lookup.gap
    value = _number(lookup.row, column)
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
    return None, f"not evaluated (no metrics/{model}__{variant}.parquet)"


def _metric(run: RunData, model: str, variant: str, column: str) -> tuple[float | None, str]:
    row, gap = metrics_summary(run, model, variant)
    if row is None:
        return None, gap
    value = _number(row, column)
    return (value, "") if value is not None else (None, f"metrics file has no {column} column")


def training_figures(run: RunData, model: str) -> tuple[float | None, str, str]:
    """Training wall time in seconds, a short description of the training, or a gap."""
    entry = (run.manifest.get("models") or {}).get(model) or {}
    history = run.histories.get(model)
    seconds = entry.get("wall_seconds")
    if seconds is None and history is not None and "seconds" in history:
        seconds = float(history["seconds"].sum())
    if seconds is None:
        return None, "", f"{model} not trained in this run (no manifest entry, no history)"
    epochs = entry.get("epochs_run", len(history) if history is not None else None)
    images = entry.get("train_images")
    detail = []
    if epochs is not None:
        detail.append(f"{epochs} epoch{'s' if epochs != 1 else ''}")
    if images is not None:
        detail.append(f"{images:,} images")
    return float(seconds), ", ".join(detail), ""


# --------------------------------------------------------------------------- sections


def results_section(
    runs: list[RunData], ctxs: list[Context], models: list[str], variants: list[str]
) -> list[dict]:
    """The seed's RESULTS table, regenerated: one column per model x context, plus the seed's."""
    from fmnist.architectures import get_architecture

    out: list[dict] = []

    def add(key, label, unit, model, ctx: Context | None, **fields):
        where = (
            {"run": ctx.run, "node_type": ctx.node_type, "context": ctx.label}
            if ctx
            else {"context": SEED_COLUMN}
        )
        out.append(record("results", key, label, unit, model=model, **where, **fields))

    for model in models:
        seed = SEED_RESULTS.get(model)
        for ctx in [*ctxs, None]:
            if ctx is None and seed is None:
                continue
            run = _run(runs, ctx.run) if ctx else None
            if run is not None:
                try:
                    arch = get_architecture(model).description
                except Exception:  # a model name this installation does not register
                    arch = None
                add(
                    "architecture",
                    "Architecture type",
                    "text",
                    model,
                    ctx,
                    text=arch,
                    gap=None if arch else "architecture not registered",
                )
                params = run.params.get(model)
                add(
                    "parameters",
                    "Parameters",
                    "count",
                    model,
                    ctx,
                    value=params,
                    gap=None if params is not None else "no model.keras to count",
                )
                seconds, detail, gap = training_figures(run, model)
                add(
                    "training_time",
                    "Training time",
                    "s",
                    model,
                    ctx,
                    value=seconds,
                    text=detail or None,
                    gap=gap or None,
                )
            else:
                add(
                    "architecture", "Architecture type", "text", model, None, text=seed.architecture
                )
                add("parameters", "Parameters", "count", model, None, value=seed.params)
                add("training_time", "Training time", "s", model, None, value=seed.training_seconds)
            for variant in variants:
                _add_variant_rows(run, ctx, model, variant, seed, add)
            if run is not None:
                used = _optimizations_used(run, ctx, model, variants)
                add(
                    "optimization",
                    "Type of optimization",
                    "text",
                    model,
                    ctx,
                    text="; ".join(used) or None,
                    gap=None if used else "no optimized variant evaluated or benchmarked",
                )
                fastest = _fastest(run, ctx, model, variants)
                add(
                    "fastest",
                    "Fastest variant (batch-1 p50)",
                    "text",
                    model,
                    ctx,
                    text=fastest or None,
                    gap=None if fastest else "no batch-1 latency measured",
                )
            else:
                add(
                    "optimization",
                    "Type of optimization",
                    "text",
                    model,
                    None,
                    text=seed.optimization,
                )
                add(
                    "fastest",
                    "Fastest variant (batch-1 p50)",
                    "text",
                    model,
                    None,
                    text="oneDNN (the only one timed)",
                )
    return out


SEED_VARIANT_FIGURES = {
    # The seed's un-optimized figures are Keras predict with TensorFlow's defaults,
    # its optimized ones the same with oneDNN switched on; it measured means only.
    BASELINE: ("accuracy", "loss", "latency_ms"),
    ONEDNN_ON: ("optimized_accuracy", "optimized_loss", "optimized_latency_ms"),
}


def _variant_label(variant: str, what: str) -> str:
    if variant == BASELINE:
        return f"Un-optimized {what} ({variant})"
    if variant == "keras-onednn-off":
        return f"{what.capitalize()} ({variant})"
    return f"Optimized {what} ({variant})"


def _add_variant_rows(run, ctx, model, variant, seed, add) -> None:
    rows = [("accuracy", "accuracy", "fraction"), ("loss", "loss", "loss")]
    if variant == BASELINE:
        rows.append(("latency_seed_measure", "latency, mean of model.predict", "ms"))
    rows.append(("latency_p50", "latency, batch-1 p50", "ms"))
    for key, what, unit in rows:
        label = _variant_label(variant, what)
        if run is not None:
            if key in ("accuracy", "loss"):
                value, gap = _metric(run, model, variant, key)
            else:
                column = "mean_ms" if key == "latency_seed_measure" else "p50_ms"
                lookup = find_timing(run, ctx.node_type, model, variant, "latency", 1)
                value, gap = _timing_value(lookup, column, f"{column} latency")
            add(key, label, unit, model, ctx, variant=variant, value=value, gap=gap or None)
            continue
        names = SEED_VARIANT_FIGURES.get(variant)
        value, text = None, "not measured by the seed"
        if names:
            picked = {"accuracy": names[0], "loss": names[1]}.get(key)
            if key == "latency_seed_measure" or (key == "latency_p50" and variant == ONEDNN_ON):
                picked = names[2]
            if picked:
                value, text = getattr(seed, picked), None
            if key == "latency_p50" and variant == ONEDNN_ON:
                text = "a mean, not a p50"
        add(key, label, unit, model, None, variant=variant, value=value, text=text)


def _optimizations_used(run: RunData, ctx: Context, model: str, variants: list[str]) -> list[str]:
    used = []
    for variant in variants:
        if variant in (BASELINE, "keras-onednn-off"):
            continue
        evaluated = metrics_summary(run, model, variant)[0] is not None
        timed = find_timing(run, ctx.node_type, model, variant, "latency", 1).row is not None
        if evaluated or timed:
            used.append(OPTIMIZATION.get(variant, variant))
    return used


def _fastest(run: RunData, ctx: Context, model: str, variants: list[str]) -> str:
    best: tuple[float, str] | None = None
    for variant in variants:
        lookup = find_timing(run, ctx.node_type, model, variant, "latency", 1)
        p50 = _number(lookup.row, "p50_ms")
        if p50 is not None and (best is None or p50 < best[0]):
            best = (p50, variant)
    return best[1] if best else ""


def latency_section(
    runs: list[RunData], ctxs: list[Context], models: list[str], variants: list[str]
) -> list[dict]:
    """Batch-1 latency percentiles of every variant and its speedups, per node type."""
    out = []
    for ctx in ctxs:
        run = _run(runs, ctx.run)
        where = {"run": ctx.run, "node_type": ctx.node_type, "context": ctx.label}
        for model in models:
            references = {
                ref: find_timing(run, ctx.node_type, model, ref, "latency", 1).row
                for ref in REFERENCES
            }
            for variant in variants:
                lookup = find_timing(run, ctx.node_type, model, variant, "latency", 1)
                base = {"model": model, "variant": variant, "batch_size": 1, **where}
                for column, name in LATENCY_METRICS:
                    value, gap = _timing_value(lookup, column, f"{name} latency")
                    out.append(
                        record(
                            "latency", column, f"batch-1 {name}", "ms", value=value, gap=gap, **base
                        )
                    )
                precision = None if lookup.row is None else lookup.row["executed_precision"]
                out.append(
                    record(
                        "latency",
                        "executed_precision",
                        "executed precision",
                        "text",
                        text=None if _blank(precision) else str(precision),
                        gap=lookup.gap,
                        **base,
                    )
                )
                for column, name in (("p50_ms", "p50"), ("p99_ms", "p99")):
                    for ref in REFERENCES:
                        value, gap = _ratio(references[ref], lookup, column, ref, "slower")
                        out.append(
                            record(
                                "latency",
                                f"speedup_{name}_vs_{ref}",
                                f"{name} speedup vs {ref}",
                                "x",
                                value=value,
                                gap=gap,
                                **base,
                            )
                        )
    return out


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _ratio(
    reference: pd.Series | None, lookup: Lookup, column: str, ref: str, better: str
) -> tuple[float | None, str | None]:
    """Speedup of a measurement against a reference row: time ratio or throughput ratio."""
    if lookup.row is None:
        return None, lookup.gap
    if reference is None:
        return None, f"no {ref} measurement to compare with"
    mine, theirs = _number(lookup.row, column), _number(reference, column)
    if mine is None or theirs is None or mine <= 0 or theirs <= 0:
        return None, f"no {column} to compare"
    # Latency: reference time / our time; throughput: our rate / reference rate.
    return (theirs / mine, None) if better == "slower" else (mine / theirs, None)


def throughput_batch_sizes(run: RunData, node_type: str, model: str) -> list[int]:
    """Batch sizes measured in throughput mode for a model on a node type."""
    rows = our_timings(run.timings)
    rows = rows[(rows["model"] == model) & (rows["node_type"].fillna(node_type) == node_type)]
    if rows["mode"].notna().any():
        rows = rows[rows["mode"] == "throughput"]
    return sorted(int(b) for b in rows["batch_size"].dropna().unique())


def throughput_section(
    runs: list[RunData], ctxs: list[Context], models: list[str], variants: list[str]
) -> list[dict]:
    """Images per second of every variant at every batch size, and speedups, per node type."""
    out = []
    for ctx in ctxs:
        run = _run(runs, ctx.run)
        where = {"run": ctx.run, "node_type": ctx.node_type, "context": ctx.label}
        for model in models:
            sizes = throughput_batch_sizes(run, ctx.node_type, model)
            if not sizes:
                gap = find_timing(run, ctx.node_type, model, BASELINE, "throughput", None).gap
                keys = [("images_per_second", "images/s", "rate")] + [
                    (f"speedup_vs_{ref}", f"speedup vs {ref}", "x") for ref in REFERENCES
                ]
                for variant in variants:
                    for key, label, unit in keys:
                        out.append(
                            record(
                                "throughput",
                                key,
                                label,
                                unit,
                                model=model,
                                variant=variant,
                                gap=gap or "no throughput measurement",
                                **where,
                            )
                        )
                continue
            for batch in sizes:
                references = {
                    ref: find_timing(run, ctx.node_type, model, ref, "throughput", batch).row
                    for ref in REFERENCES
                }
                for variant in variants:
                    lookup = find_timing(run, ctx.node_type, model, variant, "throughput", batch)
                    base = {"model": model, "variant": variant, "batch_size": batch, **where}
                    value, gap = _timing_value(lookup, "images_per_second", "throughput")
                    out.append(
                        record(
                            "throughput",
                            "images_per_second",
                            "images/s",
                            "rate",
                            value=value,
                            gap=gap,
                            **base,
                        )
                    )
                    for ref in REFERENCES:
                        value, gap = _ratio(
                            references[ref], lookup, "images_per_second", ref, "faster"
                        )
                        out.append(
                            record(
                                "throughput",
                                f"speedup_vs_{ref}",
                                f"speedup vs {ref}",
                                "x",
                                value=value,
                                gap=gap,
                                **base,
                            )
                        )
    return out


def accuracy_section(runs: list[RunData], models: list[str], variants: list[str]) -> list[dict]:
    """Accuracy and loss of every variant and their change against keras-predict (and f32)."""
    out = []
    for run in runs:
        for model in models:
            base_acc, _ = _metric(run, model, BASELINE, "accuracy")
            base_loss, _ = _metric(run, model, BASELINE, "loss")
            f32_acc, _ = _metric(run, model, "openvino-f32", "accuracy")
            for variant in variants:
                where = {"run": run.label, "context": run.label, "model": model, "variant": variant}
                row, gap = metrics_summary(run, model, variant)
                acc, acc_gap = _metric(run, model, variant, "accuracy")
                loss, loss_gap = _metric(run, model, variant, "loss")
                images = _number(row, "images")
                out.append(
                    record(
                        "accuracy",
                        "accuracy",
                        "accuracy",
                        "fraction",
                        value=acc,
                        gap=acc_gap or None,
                        **where,
                    )
                )
                out.append(
                    record(
                        "accuracy",
                        "loss",
                        "loss",
                        "loss",
                        value=loss,
                        gap=loss_gap or None,
                        **where,
                    )
                )
                out.append(
                    record(
                        "accuracy",
                        "images",
                        "test images",
                        "count",
                        value=images,
                        gap=gap or None,
                        **where,
                    )
                )
                precision = None if row is None else row.get("executed_precision")
                out.append(
                    record(
                        "accuracy",
                        "executed_precision",
                        "executed precision",
                        "text",
                        text=None if _blank(precision) else str(precision),
                        gap=gap or None,
                        **where,
                    )
                )
                for key, label, mine, ref, ref_name in (
                    (
                        "delta_accuracy_vs_keras-predict",
                        "accuracy change vs keras-predict",
                        acc,
                        base_acc,
                        BASELINE,
                    ),
                    (
                        "delta_loss_vs_keras-predict",
                        "loss change vs keras-predict",
                        loss,
                        base_loss,
                        BASELINE,
                    ),
                    (
                        "delta_accuracy_vs_openvino-f32",
                        "accuracy change vs openvino-f32",
                        acc,
                        f32_acc,
                        "openvino-f32",
                    ),
                ):
                    if ref_name == "openvino-f32" and variant not in (
                        "openvino-bf16",
                        "openvino-int8",
                    ):
                        continue
                    unit = "pp" if "accuracy" in key else "loss_delta"
                    if mine is None:
                        value, why = None, gap or "no value"
                    elif ref is None:
                        value, why = None, f"no {ref_name} evaluation to compare with"
                    else:
                        value = (mine - ref) * (100 if unit == "pp" else 1)
                        why = None
                    out.append(record("accuracy", key, label, unit, value=value, gap=why, **where))
    return out


def classification_section(runs: list[RunData], models: list[str]) -> list[dict]:
    """Per-class precision, recall, F1 and support of every evaluated model x variant."""
    out = []
    for run in runs:
        metrics = run.metrics
        if metrics.empty or "name" not in metrics:
            continue
        for model in models:
            rows = metrics[metrics["model"] == model]
            for variant in sorted(rows["variant"].unique(), key=_variant_rank):
                for _, row in rows[rows["variant"] == variant].iterrows():
                    for column, unit in (
                        ("precision", "ratio"),
                        ("recall", "ratio"),
                        ("f1", "ratio"),
                        ("support", "count"),
                    ):
                        out.append(
                            record(
                                "classification",
                                column,
                                column,
                                unit,
                                run=run.label,
                                context=run.label,
                                model=model,
                                variant=variant,
                                item=str(row["name"]),
                                value=_number(row, column),
                            )
                        )
    return out


def _variant_rank(variant: str) -> tuple[int, str]:
    return (VARIANTS.index(variant) if variant in VARIANTS else len(VARIANTS), variant)


def scoring_section(runs: list[RunData]) -> list[dict]:
    """Rows scored and rejected and rows per second, per run, input and model."""
    out = []
    for run in runs:
        scoring = run.scoring
        if scoring.empty:
            out.append(
                record(
                    "scoring",
                    "rows_read",
                    "rows read",
                    "count",
                    run=run.label,
                    context=run.label,
                    gap="no batch scoring in this run (predictions/ is empty)",
                )
            )
            continue
        for (input_name, model), parts in scoring.groupby(["input", "model"], sort=True):
            where = {"run": run.label, "context": run.label, "model": model, "item": input_name}
            expected = int(parts["part_total"].max())
            finished = parts[parts["has_marker"]]
            missing = expected - len(finished)
            gap = None
            if missing:
                gap = f"{missing} of {expected} parts have no success marker"
            variants = sorted({str(v) for v in finished["variant"].dropna()})
            out.append(
                record(
                    "scoring",
                    "parts",
                    "parts finished",
                    "count",
                    value=len(finished),
                    text=f"of {expected}",
                    gap=gap,
                    variant=", ".join(variants) or None,
                    **where,
                )
            )
            totals = {}
            for key, label in (
                ("rows_read", "rows read"),
                ("rows_predicted", "rows scored"),
                ("rows_rejected", "rows rejected"),
                ("seconds", "shard seconds"),
            ):
                values = pd.to_numeric(finished[key], errors="coerce")
                complete = values.notna().all() and len(values) > 0
                totals[key] = float(values.sum()) if complete else None
                out.append(
                    record(
                        "scoring",
                        key,
                        label,
                        "s" if key == "seconds" else "count",
                        value=totals[key],
                        gap=None if complete else gap or f"markers have no {key}",
                        **where,
                    )
                )
            rate = None
            if totals["rows_read"] is not None and totals["seconds"]:
                rate = totals["rows_read"] / totals["seconds"]
            out.append(
                record(
                    "scoring",
                    "rows_per_second",
                    "rows/s per process",
                    "rate",
                    value=rate,
                    gap=None if rate is not None else gap or "no rows or seconds in the markers",
                    **where,
                )
            )
    return out


def yardstick_section(runs: list[RunData], ctxs: list[Context], models: list[str]) -> list[dict]:
    """Our harness beside OpenVINO's benchmark_app on the same IR, where both ran."""
    out = []
    for ctx in ctxs:
        run = _run(runs, ctx.run)
        timings = run.timings
        if timings.empty:
            continue
        theirs = timings[timings["source"].fillna("").str.lower().isin(YARDSTICK_SOURCES)]
        theirs = theirs[theirs["node_type"].fillna(ctx.node_type) == ctx.node_type]
        keys = theirs[["model", "variant", "mode", "batch_size"]].drop_duplicates()
        keys = keys.sort_values(["model", "variant", "mode", "batch_size"], key=_sort_key)
        for _, key in keys.iterrows():
            if key["model"] not in models:
                continue
            mode = key["mode"] or "latency"
            batch = None if pd.isna(key["batch_size"]) else int(key["batch_size"])
            yard = find_timing(
                run, ctx.node_type, key["model"], key["variant"], mode, batch, yardstick=True
            )
            mine = find_timing(run, ctx.node_type, key["model"], key["variant"], mode, batch)
            column = "p50_ms" if mode == "latency" else "images_per_second"
            unit = "ms" if mode == "latency" else "rate"
            base = {
                "run": ctx.run,
                "node_type": ctx.node_type,
                "context": ctx.label,
                "model": key["model"],
                "variant": key["variant"],
                "batch_size": batch,
                "item": mode,
            }
            ours_value, ours_gap = _timing_value(mine, column, column)
            yard_value, yard_gap = _timing_value(yard, column, column)
            out.append(
                record(
                    "yardstick",
                    f"ours_{column}",
                    f"ours ({column})",
                    unit,
                    value=ours_value,
                    gap=ours_gap,
                    **base,
                )
            )
            out.append(
                record(
                    "yardstick",
                    f"benchmark_app_{column}",
                    f"benchmark_app ({column})",
                    unit,
                    value=yard_value,
                    gap=yard_gap,
                    **base,
                )
            )
            ratio, gap = None, ours_gap or yard_gap
            if ours_value and yard_value:
                ratio = ours_value / yard_value if mode == "latency" else yard_value / ours_value
            out.append(
                record(
                    "yardstick",
                    "ratio",
                    "ours / benchmark_app (time)",
                    "x",
                    value=ratio,
                    gap=None if ratio is not None else gap,
                    **base,
                )
            )
    return out


def _sort_key(column: pd.Series) -> pd.Series:
    if column.name == "model":
        order = {m: i for i, m in enumerate(SEED_RESULTS)}
        return column.map(lambda m: (order.get(m, len(order)), m))
    if column.name == "variant":
        return column.map(_variant_rank)
    return column.fillna("" if column.dtype == object else -1)


# --------------------------------------------------------------------------- environment


def environment_table(runs: list[RunData], ctxs: list[Context]) -> pd.DataFrame:
    """One row per context: where and with what software the numbers were measured."""
    rows = []
    for ctx in ctxs:
        run = _run(runs, ctx.run)
        timings = run.timings
        if not timings.empty and timings["node_type"].notna().any():
            timings = timings[timings["node_type"] == ctx.node_type]
        machines = list((run.manifest.get("machine") or {}).values())
        machine = machines[0] if machines and isinstance(machines[0], dict) else {}

        def joined(column: str, fallback: Any = None, frame: pd.DataFrame = timings) -> str:
            values = sorted({_cell_text(v) for v in frame[column]} - {""})
            if values:
                return ", ".join(values)
            return _cell_text(fallback)

        library_columns = sorted(
            c
            for c in timings.columns
            if c.endswith(("_version", "version")) and c not in TIMING_KEYS
        )
        libraries = {}
        for column in library_columns:
            value = joined(column)
            if value:
                libraries[column.removesuffix("_version").removesuffix("version")] = value
        for column in ("versions", "libraries", "library_versions"):
            if column in timings.columns:
                for value in timings[column].dropna():
                    libraries.update(_dict_items(value))
        if not libraries:
            libraries = dict(machine.get("libraries") or {})
        job_ids = joined("job_id")
        if not job_ids:
            jobs = run.manifest.get("jobs") or {}
            job_ids = ", ".join(sorted(str(k) for k in jobs)) if isinstance(jobs, dict) else ""
        rows.append(
            {
                "context": ctx.label,
                "run": ctx.run,
                "node type": ctx.node_type,
                "host": joined("host", machine.get("host")),
                "CPU model": joined("cpu_model", machine.get("cpu_model")),
                "ISA flags": joined("isa_flags", " ".join(machine.get("isa_flags") or [])),
                "threads": joined("threads", machine.get("usable_cpus")),
                "libraries": ", ".join(f"{k} {v}" for k, v in sorted(libraries.items())),
                "job ids": job_ids
                or (", ".join(sorted(set(timings["file"].dropna()))) if len(timings) else ""),
                "git revision": _cell_text(machine.get("git_revision"))[:12],
            }
        )
    return pd.DataFrame(rows)


TIMING_KEYS = ("file",)


def _dict_items(value: Any) -> dict[str, str]:
    import json

    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return {}
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items() if v is not None}
    return {}


def _cell_text(value: Any) -> str:
    if value is None or value is pd.NA:
        return ""
    if isinstance(value, float):
        if np.isnan(value):
            return ""
        return str(int(value)) if value.is_integer() else str(value)
    return str(value)


# --------------------------------------------------------------------------- everything


@dataclass
class ReportTables:
    """All merged tables of a report: the long records and the environment table."""

    runs: list[RunData]
    contexts: list[Context]
    models: list[str]
    variants: list[str]
    records: pd.DataFrame  # RECORD_COLUMNS; results.csv
    environment: pd.DataFrame

    def section(self, name: str) -> pd.DataFrame:
        return self.records[self.records["section"] == name]


def build_tables(runs: list[RunData]) -> ReportTables:
    """Merge the runs into every table of the report."""
    ctxs = contexts(runs)
    models = model_order(runs)
    variants = variant_order(runs)
    records = [
        *results_section(runs, ctxs, models, variants),
        *accuracy_section(runs, models, variants),
        *latency_section(runs, ctxs, models, variants),
        *throughput_section(runs, ctxs, models, variants),
        *yardstick_section(runs, ctxs, models),
        *scoring_section(runs),
        *classification_section(runs, models),
    ]
    frame = pd.DataFrame(records, columns=RECORD_COLUMNS)
    frame["batch_size"] = frame["batch_size"].astype("Int64")
    return ReportTables(runs, ctxs, models, variants, frame, environment_table(runs, ctxs))
