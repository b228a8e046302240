"""Merge runs into the report's tables: pure functions from ``RunData`` to tidy DataFrames.

The RESULTS table (the seed's, regenerated), accuracy changes, classification reports,
batch scoring and the environment live here; speed tables in ``report.speed``. Rendering
only formats and pivots the records, so the numbers on the page are the numbers in the
files.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from fmnist.engines.int8_check import MEAN_ABS_DP_COLUMN, Int8Check
from fmnist.evaluate import COMPARED_WITH_F32, F32_REFERENCE
from fmnist.report.lookup import (
    BASELINE,
    ONEDNN_ON,
    OPTIMIZATION,
    RECORD_COLUMNS,
    SEED_COLUMN,
    Context,
    contexts,
    find_timing,
    is_blank,
    metric_value,
    metrics_summary,
    model_order,
    number,
    record,
    run_by_label,
    timing_value,
    training_figures,
    variant_order,
    variant_rank,
)
from fmnist.report.runs import RunData
from fmnist.report.seed_reference import SEED_RESULTS
from fmnist.report.speed import latency_section, throughput_section, yardstick_section

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
            run = run_by_label(runs, ctx.run) if ctx else None
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
                value, gap = metric_value(run, model, variant, key)
            else:
                column = "mean_ms" if key == "latency_seed_measure" else "p50_ms"
                lookup = find_timing(run, ctx.node_type, model, variant, "latency", 1)
                value, gap = timing_value(lookup, column, f"{column} latency")
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
        p50 = number(lookup.row, "p50_ms")
        if p50 is not None and (best is None or p50 < best[0]):
            best = (p50, variant)
    return best[1] if best else ""


F32, INT8 = F32_REFERENCE, "openvino-int8"


def accuracy_section(runs: list[RunData], models: list[str], variants: list[str]) -> list[dict]:
    """Accuracy, loss and confidence of every variant and their change against keras-predict
    and, for bf16 and int8, against openvino-f32: loss change, mean |Δp|, the INT8 check."""
    out = []
    for run in runs:
        for model in models:
            base_acc, _ = metric_value(run, model, BASELINE, "accuracy")
            base_loss, _ = metric_value(run, model, BASELINE, "loss")
            f32_acc, _ = metric_value(run, model, F32, "accuracy")
            f32_loss, _ = metric_value(run, model, F32, "loss")
            for variant in variants:
                where = {"run": run.label, "context": run.label, "model": model, "variant": variant}
                row, gap = metrics_summary(run, model, variant)
                acc, acc_gap = metric_value(run, model, variant, "accuracy")
                loss, loss_gap = metric_value(run, model, variant, "loss")
                confidence, confidence_gap = metric_value(run, model, variant, "mean_confidence")
                images = number(row, "images")
                for key, label, unit, value, why in (
                    ("accuracy", "accuracy", "fraction", acc, acc_gap),
                    ("loss", "loss", "loss", loss, loss_gap),
                    ("mean_confidence", "mean confidence", "ratio", confidence, confidence_gap),
                    ("images", "test images", "count", images, gap),
                ):
                    out.append(
                        record("accuracy", key, label, unit, value=value, gap=why or None, **where)
                    )
                precision = None if row is None else row.get("executed_precision")
                out.append(
                    record(
                        "accuracy",
                        "executed_precision",
                        "executed precision",
                        "text",
                        text=None if is_blank(precision) else str(precision),
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
                        F32,
                    ),
                ):
                    if ref_name == F32 and variant not in COMPARED_WITH_F32:
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
                if variant in COMPARED_WITH_F32:
                    out += _f32_agreement(run, model, variant, loss, f32_loss, row, gap, where)
    return out


def _f32_agreement(run, model, variant, loss, f32_loss, row, gap, where) -> list[dict]:
    """Loss change and mean |Δp| of a reduced precision against f32; the INT8 check."""
    if loss is None:
        value, why = None, gap or "no value"
    elif f32_loss is None or f32_loss <= 0:
        value, why = None, f"no {F32} loss to compare with"
    else:
        value, why = 100 * (loss / f32_loss - 1), None
    out = [
        record(
            "accuracy",
            f"loss_change_vs_{F32}",
            f"loss change vs {F32}",
            "percent_delta",
            value=value,
            gap=why,
            **where,
        )
    ]
    dp, dp_gap = metric_value(run, model, variant, MEAN_ABS_DP_COLUMN)
    if row is not None and dp is None:
        dp_gap = f"not compared with {F32} (evaluate again with its IR in place)"
    out.append(
        record(
            "accuracy",
            f"mean_abs_dp_vs_{F32}",
            f"mean |Δp| vs {F32}",
            "ratio",
            value=dp,
            gap=dp_gap or None,
            **where,
        )
    )
    if variant == INT8:
        f32_row, _ = metrics_summary(run, model, F32)
        if row is None or f32_row is None:
            text, why = None, gap or f"no {F32} evaluation to compare with"
        else:
            accepted, reason = Int8Check.from_metrics(f32_row, row).acceptable()
            text, why = ("accepted" if accepted else f"rejected: {reason}"), None
        out.append(
            record("accuracy", "int8_check", "INT8 check", "text", text=text, gap=why, **where)
        )
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
            for variant in sorted(rows["variant"].unique(), key=variant_rank):
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
                                value=number(row, column),
                            )
                        )
    return out


def scoring_section(runs: list[RunData], models: list[str]) -> list[dict]:
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
        groups = dict(list(scoring.groupby(["input", "model"], sort=True)))
        order = {m: i for i, m in enumerate(models)}
        for input_name, model in sorted(groups, key=lambda k: (k[0], order.get(k[1], 99), k[1])):
            parts = groups[(input_name, model)]
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


# --------------------------------------------------------------------------- environment


def environment_table(runs: list[RunData], ctxs: list[Context]) -> pd.DataFrame:
    """One row per context: where and with what software the numbers were measured."""
    rows = []
    for ctx in ctxs:
        run = run_by_label(runs, ctx.run)
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
        *scoring_section(runs, models),
        *classification_section(runs, models),
    ]
    frame = pd.DataFrame(records, columns=RECORD_COLUMNS)
    frame["batch_size"] = frame["batch_size"].astype("Int64")
    return ReportTables(runs, ctxs, models, variants, frame, environment_table(runs, ctxs))
