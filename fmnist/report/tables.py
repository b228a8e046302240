"""Merge runs into the report's tables: pure functions from ``RunData`` to tidy DataFrames.

The RESULTS table (the seed's, regenerated), accuracy changes, classification reports,
batch scoring and the environment live here; speed tables in ``report.speed``. Rendering
only formats and pivots the records, so the numbers on the page are the numbers in the
files.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import pandas as pd

from fmnist.engines.int8_check import MEAN_ABS_DP_COLUMN, Int8Check
from fmnist.evaluate import COMPARED_WITH_F32, F32_REFERENCE
from fmnist.manifest import MachineRecord
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
from fmnist.report.seed_reference import SEED_RESULTS, SeedResults
from fmnist.report.speed import latency_section, throughput_section, yardstick_section

# --------------------------------------------------------------------------- sections


def results_section(
    runs: list[RunData], ctxs: list[Context], models: list[str], variants: list[str]
) -> list[dict]:
    """The seed's RESULTS table, regenerated: one column per model x context, plus the seed's."""
    out: list[dict] = []
    for model in models:
        for ctx in ctxs:
            out += _measured_column(run_by_label(runs, ctx.run), ctx, model, variants)
        seed = SEED_RESULTS.get(model)
        if seed is not None:
            out += _seed_column(seed, model, variants)
    return out


# The RESULTS rows of a model besides its variants' figures: key -> (label, unit).
RESULT_ROWS = {
    "architecture": ("Architecture type", "text"),
    "parameters": ("Parameters", "count"),
    "training_time": ("Training time", "s"),
    "optimization": ("Type of optimization", "text"),
    "fastest": ("Fastest variant (batch-1 p50)", "text"),
}
# Why a run's column has no figure in one of those rows.
NO_ARCHITECTURE = "architecture not registered"
NO_PARAMETERS = "no model.keras to count"
NO_OPTIMIZATION = "no optimized variant evaluated or benchmarked"
NO_FASTEST = "no batch-1 latency measured"


def _result(
    model: str, ctx: Context | None, key: str, label: str = "", unit: str = "", **fields
) -> dict:
    """One RESULTS record of ``model`` in the column of ``ctx`` (None: the seed's column).

    ``label`` and ``unit`` default to those of ``RESULT_ROWS[key]``.
    """
    if not label:
        label, unit = RESULT_ROWS[key]
    if ctx is None:
        where = {"context": SEED_COLUMN}
    else:
        where = {"run": ctx.run, "node_type": ctx.node_type, "context": ctx.label}
    return record("results", key, label, unit, model=model, **where, **fields)


def _measured_column(run: RunData, ctx: Context, model: str, variants: list[str]) -> list[dict]:
    """A model's RESULTS column in one context: the figures of its run, or why they are gaps."""
    row = partial(_result, model, ctx)
    architecture = _architecture(model)
    params = run.params.get(model)
    seconds, detail, gap = training_figures(run, model)
    used = _optimizations_used(run, ctx, model, variants)
    fastest = _fastest(run, ctx, model, variants)
    return [
        row("architecture", text=architecture, gap=None if architecture else NO_ARCHITECTURE),
        row("parameters", value=params, gap=None if params is not None else NO_PARAMETERS),
        row("training_time", value=seconds, text=detail or None, gap=gap or None),
        *(line for variant in variants for line in _measured_variant(run, ctx, model, variant)),
        row("optimization", text="; ".join(used) or None, gap=None if used else NO_OPTIMIZATION),
        row("fastest", text=fastest or None, gap=None if fastest else NO_FASTEST),
    ]


def _seed_column(seed: SeedResults, model: str, variants: list[str]) -> list[dict]:
    """A model's RESULTS column of the seed report's own figures."""
    return [
        _result(model, None, "architecture", text=seed.architecture),
        _result(model, None, "parameters", value=seed.params),
        _result(model, None, "training_time", value=seed.training_seconds),
        *(row for variant in variants for row in _seed_variant(seed, model, variant)),
        _result(model, None, "optimization", text=seed.optimization),
        _result(model, None, "fastest", text="oneDNN (the only one timed)"),
    ]


def _architecture(model: str) -> str | None:
    """The registered description of ``model``, None for a name this installation lacks."""
    from fmnist.architectures import get_architecture

    try:
        return get_architecture(model).description
    except Exception:  # a model name this installation does not register
        return None


SEED_VARIANT_FIGURES = {
    # The seed's un-optimized figures are Keras predict with TensorFlow's defaults,
    # its optimized ones the same with oneDNN switched on; it measured means only.
    BASELINE: ("accuracy", "loss", "latency_ms"),
    ONEDNN_ON: ("optimized_accuracy", "optimized_loss", "optimized_latency_ms"),
}


def _variant_label(variant: str, what: str) -> str:
    """The row label of a variant's figure: un-optimized (the baseline) or optimized."""
    if variant == BASELINE:
        return f"Un-optimized {what} ({variant})"
    if variant == "keras-onednn-off":
        return f"{what.capitalize()} ({variant})"
    return f"Optimized {what} ({variant})"


def _variant_rows(variant: str) -> list[tuple[str, str, str]]:
    """(key, label, unit) of the RESULTS rows of one variant: accuracy, loss, latency."""
    rows = [("accuracy", "accuracy", "fraction"), ("loss", "loss", "loss")]
    if variant == BASELINE:
        rows.append(("latency_seed_measure", "latency, mean of model.predict", "ms"))
    rows.append(("latency_p50", "latency, batch-1 p50", "ms"))
    return [(key, _variant_label(variant, what), unit) for key, what, unit in rows]


def _measured_variant(run: RunData, ctx: Context, model: str, variant: str) -> list[dict]:
    """The rows of one variant in a run's column: its figures, or why they are gaps."""
    out = []
    for key, label, unit in _variant_rows(variant):
        if key in ("accuracy", "loss"):
            value, gap = metric_value(run, model, variant, key)
        else:
            column = "mean_ms" if key == "latency_seed_measure" else "p50_ms"
            lookup = find_timing(run, ctx.node_type, model, variant, "latency", 1)
            value, gap = timing_value(lookup, column, f"{column} latency")
        out.append(
            _result(model, ctx, key, label, unit, variant=variant, value=value, gap=gap or None)
        )
    return out


def _seed_variant(seed: SeedResults, model: str, variant: str) -> list[dict]:
    """The rows of one variant in the seed's column: its figures, or why it has none."""
    out = []
    for key, label, unit in _variant_rows(variant):
        value, text = _seed_figure(seed, variant, key)
        out.append(_result(model, None, key, label, unit, variant=variant, value=value, text=text))
    return out


def _seed_figure(seed: SeedResults, variant: str, key: str) -> tuple[float | None, str | None]:
    """The seed's figure for one RESULTS row of a variant, with a note; None and why if none."""
    names = SEED_VARIANT_FIGURES.get(variant)
    if names is None:
        return None, "not measured by the seed"
    accuracy, loss, latency = names
    if key == "latency_p50" and variant == ONEDNN_ON:
        # The seed timed means only: its oneDNN mean stands in for the p50, said so.
        return getattr(seed, latency), "a mean, not a p50"
    picked = {"accuracy": accuracy, "loss": loss, "latency_seed_measure": latency}.get(key)
    if picked is None:
        return None, "not measured by the seed"
    return getattr(seed, picked), None


def _optimizations_used(run: RunData, ctx: Context, model: str, variants: list[str]) -> list[str]:
    """The optimizations of the variants evaluated or timed at batch 1 in this context."""
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
    """The variant with the lowest batch-1 p50 latency in this context ("" if none)."""
    best: tuple[float, str] | None = None
    for variant in variants:
        lookup = find_timing(run, ctx.node_type, model, variant, "latency", 1)
        p50 = number(lookup.row, "p50_ms")
        if p50 is not None and (best is None or p50 < best[0]):
            best = (p50, variant)
    return best[1] if best else ""


F32, INT8 = F32_REFERENCE, "openvino-int8"


# A variant's own figures in the accuracy table: key, label, unit.
ACCURACY_FIGURES = (
    ("accuracy", "accuracy", "fraction"),
    ("loss", "loss", "loss"),
    ("mean_confidence", "mean confidence", "ratio"),
)
# Its changes against a reference variant: the figure, the reference.
ACCURACY_CHANGES = (("accuracy", BASELINE), ("loss", BASELINE), ("accuracy", F32))


def accuracy_section(runs: list[RunData], models: list[str], variants: list[str]) -> list[dict]:
    """Accuracy, loss and confidence of every variant and their change against keras-predict
    and, for bf16 and int8, against openvino-f32: loss change, mean |Δp|, the INT8 check."""
    out = []
    for run in runs:
        for model in models:
            references = {
                reference: {
                    figure: metric_value(run, model, reference, figure)[0]
                    for figure in ("accuracy", "loss")
                }
                for reference in (BASELINE, F32)
            }
            for variant in variants:
                out += _variant_accuracy(run, model, variant, references)
    return out


def _variant_accuracy(run: RunData, model: str, variant: str, references: dict) -> list[dict]:
    """The accuracy records of one variant: its figures, the precision it ran at, and how
    they compare with the references' (``references[variant][figure]``)."""
    where = {"run": run.label, "context": run.label, "model": model, "variant": variant}
    add = partial(record, "accuracy", **where)
    row, gap = metrics_summary(run, model, variant)
    figures = {key: metric_value(run, model, variant, key) for key, _, _ in ACCURACY_FIGURES}
    out = [
        add(key, label, unit, value=figures[key][0], gap=figures[key][1] or None)
        for key, label, unit in ACCURACY_FIGURES
    ]
    out.append(add("images", "test images", "count", value=number(row, "images"), gap=gap or None))
    precision = None if row is None else row.get("executed_precision")
    text = None if is_blank(precision) else str(precision)
    out.append(add("executed_precision", "executed precision", "text", text=text, gap=gap or None))
    mine = {key: value for key, (value, _) in figures.items()}
    for figure, reference in ACCURACY_CHANGES:
        if reference == F32 and variant not in COMPARED_WITH_F32:
            continue
        theirs = references[reference][figure]
        out.append(_change(figure, mine[figure], reference, theirs, gap, where))
    if variant in COMPARED_WITH_F32:
        f32_loss = references[F32]["loss"]
        out += _f32_agreement(run, model, variant, mine["loss"], f32_loss, row, gap, where)
    return out


def _change(
    figure: str, mine: float | None, reference: str, theirs: float | None, gap: str, where: dict
) -> dict:
    """The change of a variant's accuracy (in percentage points) or loss against a reference."""
    unit = "pp" if figure == "accuracy" else "loss_delta"
    if mine is None:
        value, why = None, gap or "no value"
    elif theirs is None:
        value, why = None, f"no {reference} evaluation to compare with"
    else:
        value, why = (mine - theirs) * (100 if unit == "pp" else 1), None
    key, label = f"delta_{figure}_vs_{reference}", f"{figure} change vs {reference}"
    return record("accuracy", key, label, unit, value=value, gap=why, **where)


def _f32_agreement(run, model, variant, loss, f32_loss, row, gap, where) -> list[dict]:
    """Loss change and mean |Δp| of a reduced precision against f32; the INT8 check."""
    add = partial(record, "accuracy", **where)
    if loss is None:
        value, why = None, gap or "no value"
    elif f32_loss is None or f32_loss <= 0:
        value, why = None, f"no {F32} loss to compare with"
    else:
        value, why = 100 * (loss / f32_loss - 1), None
    out = [
        add(f"loss_change_vs_{F32}", f"loss change vs {F32}", "percent_delta", value=value, gap=why)
    ]
    dp, dp_gap = metric_value(run, model, variant, MEAN_ABS_DP_COLUMN)
    if row is not None and dp is None:
        dp_gap = f"not compared with {F32} (evaluate again with its IR in place)"
    out.append(
        add(f"mean_abs_dp_vs_{F32}", f"mean |Δp| vs {F32}", "ratio", value=dp, gap=dp_gap or None)
    )
    if variant == INT8:
        text, why = _int8_verdict(run, model, row, gap)
        out.append(add("int8_check", "INT8 check", "text", text=text, gap=why))
    return out


def _int8_verdict(run: RunData, model: str, row, gap: str) -> tuple[str | None, str | None]:
    """The INT8 check of ``row`` (int8 metrics) against f32's: its verdict, or why there is none."""
    f32_row, _ = metrics_summary(run, model, F32)
    if row is None or f32_row is None:
        return None, gap or f"no {F32} evaluation to compare with"
    accepted, reason = Int8Check.from_metrics(f32_row, row).acceptable()
    return ("accepted" if accepted else f"rejected: {reason}"), None


def quantization_section(runs: list[RunData], models: list[str]) -> list[dict]:
    """How each INT8 IR was made: method, layers kept in f32, its check, its CPU needs."""
    out = []
    for run in runs:
        for model in models:
            where = {"run": run.label, "context": run.label, "model": model}
            int8 = run.manifest.int8(model)
            if not int8:
                gap = "no INT8 IR (optimize --int8 not run)"
                out.append(record("quantization", "method", "method", "text", gap=gap, **where))
                continue
            out += _quantization_records(int8, where)
    return out


def _quantization_records(int8: dict, where: dict) -> list[dict]:
    """The records of one model's ``openvino.<model>.int8`` manifest entry."""
    add = partial(record, "quantization", **where)
    check = int8.get("check") or {}
    f32_layers = sorted(n for n, p in (int8.get("layer_precisions") or {}).items() if p != "int8")
    lost, gained = check.get("lost"), check.get("gained")
    flips = None if lost is None or gained is None else f"{lost} lost, {gained} gained"
    verdict = "accepted" if int8.get("accepted") else f"not accepted: {int8.get('reason', '')}"
    needs = "VNNI or AMX" if int8.get("needs_int8_dot_product") else "any x86 CPU"
    drop = check.get("accuracy_drop")
    return [
        add("method", "method", "text", text=int8.get("method")),
        add("f32_layers", "compute layers in f32", "text", text=", ".join(f32_layers) or "none"),
        add(
            "validation_drop",
            "accuracy change on validation",
            "pp",
            value=None if drop is None else -100 * drop,
            text=flips,
            gap=None if drop is not None else "not recorded",
        ),
        add("verdict", "INT8 check", "text", text=verdict),
        add("runs_on", "runs on", "text", text=needs),
        add(
            "speedup",
            "int8/f32 at batch 256 (first look)",
            "x",
            value=int8.get("speedup_batch256"),
            gap=None if int8.get("speedup_batch256") else "not measured by this optimize",
        ),
    ]


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
        if run.scoring.empty:
            gap = "no batch scoring in this run (predictions/ is empty)"
            where = {"run": run.label, "context": run.label}
            out.append(record("scoring", "rows_read", "rows read", "count", gap=gap, **where))
            continue
        for (input_name, model), parts in _scoring_groups(run.scoring, models):
            where = {"run": run.label, "context": run.label, "model": model, "item": input_name}
            out += _scoring_records(parts, where)
    return out


# The sums over a scoring's success markers: marker field, label.
SCORING_TOTALS = (
    ("rows_read", "rows read"),
    ("rows_predicted", "rows scored"),
    ("rows_rejected", "rows rejected"),
    ("seconds", "shard seconds"),
)


def _scoring_groups(
    scoring: pd.DataFrame, models: list[str]
) -> list[tuple[tuple[str, str], pd.DataFrame]]:
    """The parts of each (input, model) scoring: inputs by name, models in report order."""
    groups = dict(list(scoring.groupby(["input", "model"], sort=True)))
    order = {m: i for i, m in enumerate(models)}
    keys = sorted(groups, key=lambda k: (k[0], order.get(k[1], 99), k[1]))
    return [(key, groups[key]) for key in keys]


def _scoring_records(parts: pd.DataFrame, where: dict) -> list[dict]:
    """Parts finished, the marker totals and the rate of one input scored by one model."""
    add = partial(record, "scoring", **where)
    expected = int(parts["part_total"].max())
    finished = parts[parts["has_marker"]]
    missing = expected - len(finished)
    gap = f"{missing} of {expected} parts have no success marker" if missing else None
    variants = ", ".join(sorted({str(v) for v in finished["variant"].dropna()})) or None
    out = [
        add(
            "parts",
            "parts finished",
            "count",
            value=len(finished),
            text=f"of {expected}",
            gap=gap,
            variant=variants,
        )
    ]
    totals = {}
    for key, label in SCORING_TOTALS:
        values = pd.to_numeric(finished[key], errors="coerce")
        complete = values.notna().all() and len(values) > 0
        totals[key] = float(values.sum()) if complete else None
        why = None if complete else gap or f"markers have no {key}"
        out.append(
            add(key, label, "s" if key == "seconds" else "count", value=totals[key], gap=why)
        )
    rate = None
    if totals["rows_read"] is not None and totals["seconds"]:
        rate = totals["rows_read"] / totals["seconds"]
    why = None if rate is not None else gap or "no rows or seconds in the markers"
    out.append(add("rows_per_second", "rows/s per process", "rate", value=rate, gap=why))
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
        machines = list(run.manifest.machines.values())
        machine = machines[0] if machines else MachineRecord()

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
            libraries = dict(machine.libraries)
        job_ids = joined("job_id") or ", ".join(sorted(run.manifest.jobs))
        rows.append(
            {
                "context": ctx.label,
                "run": ctx.run,
                "node type": ctx.node_type,
                "host": joined("host", machine.host),
                "CPU model": joined("cpu_model", machine.cpu_model),
                "ISA flags": joined("isa_flags", " ".join(machine.isa_flags)),
                "threads": joined("threads", machine.usable_cpus),
                "libraries": ", ".join(f"{k} {v}" for k, v in sorted(libraries.items())),
                "job ids": job_ids
                or (", ".join(sorted(set(timings["file"].dropna()))) if len(timings) else ""),
                "git revision": ", ".join(sorted({r[:12] for r in run.manifest.git_revisions()}))
                or _cell_text(machine.git_revision)[:12],
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
        *quantization_section(runs, models),
        *classification_section(runs, models),
    ]
    frame = pd.DataFrame(records, columns=RECORD_COLUMNS)
    frame["batch_size"] = frame["batch_size"].astype("Int64")
    return ReportTables(runs, ctxs, models, variants, frame, environment_table(runs, ctxs))
