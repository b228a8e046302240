"""Speed tables: batch-1 latency, throughput and the benchmark_app yardstick, per node type.

Pure functions from ``RunData`` to records (see ``lookup``).
"""

from __future__ import annotations

import pandas as pd

from fmnist.report.lookup import (
    BASELINE,
    LATENCY_METRICS,
    REFERENCES,
    YARDSTICK_SOURCES,
    Context,
    display_order,
    find_timing,
    is_blank,
    our_timings,
    record,
    run_by_label,
    speedup,
    timing_value,
)
from fmnist.report.runs import RunData


def _each_model(runs: list[RunData], ctxs: list[Context], models: list[str]):
    """(run, context, where-columns, model) for every model of every context."""
    for ctx in ctxs:
        run = run_by_label(runs, ctx.run)
        where = {"run": ctx.run, "node_type": ctx.node_type, "context": ctx.label}
        for model in models:
            yield run, ctx, where, model


def _references(run: RunData, ctx: Context, model: str, mode: str, batch: int) -> dict:
    """The timing rows of the reference variants for one model, mode and batch size."""
    return {ref: find_timing(run, ctx.node_type, model, ref, mode, batch).row for ref in REFERENCES}


def _speedups(
    section: str, references: dict, lookup, column: str, statistic: str | None, base: dict
) -> list[dict]:
    """Speedup records of one variant's ``column`` against every reference variant.

    ``statistic`` ("p50", "p99" or None) names the figure in the record's key and label.
    Latency speedups are reference / ours (a smaller time is faster); throughput ones
    are ours / reference.
    """
    direction = "slower" if section == "latency" else "faster"
    key = f"speedup_{statistic}_vs_" if statistic else "speedup_vs_"
    label = f"{statistic} speedup vs" if statistic else "speedup vs"
    out = []
    for ref in REFERENCES:
        value, gap = speedup(references[ref], lookup, column, ref, direction)
        out.append(
            record(
                section,
                f"{key}{ref}",
                f"{label} {ref}",
                "x",
                value=value,
                gap=gap,
                **base,
            )
        )
    return out


def latency_section(
    runs: list[RunData], ctxs: list[Context], models: list[str], variants: list[str]
) -> list[dict]:
    """Batch-1 latency percentiles of every variant and its speedups, per node type."""
    out = []
    for run, ctx, where, model in _each_model(runs, ctxs, models):
        references = _references(run, ctx, model, "latency", 1)
        for variant in variants:
            lookup = find_timing(run, ctx.node_type, model, variant, "latency", 1)
            base = {"model": model, "variant": variant, "batch_size": 1, **where}
            for column, name in LATENCY_METRICS:
                value, gap = timing_value(lookup, column, f"{name} latency")
                out.append(
                    record("latency", column, f"batch-1 {name}", "ms", value=value, gap=gap, **base)
                )
            precision = None if lookup.row is None else lookup.row["executed_precision"]
            out.append(
                record(
                    "latency",
                    "executed_precision",
                    "executed precision",
                    "text",
                    text=None if is_blank(precision) else str(precision),
                    gap=lookup.gap,
                    **base,
                )
            )
            for column, name in (("p50_ms", "p50"), ("p99_ms", "p99")):
                out += _speedups("latency", references, lookup, column, name, base)
    return out


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
    for run, ctx, where, model in _each_model(runs, ctxs, models):
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
            references = _references(run, ctx, model, "throughput", batch)
            for variant in variants:
                lookup = find_timing(run, ctx.node_type, model, variant, "throughput", batch)
                base = {"model": model, "variant": variant, "batch_size": batch, **where}
                value, gap = timing_value(lookup, "images_per_second", "throughput")
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
                out += _speedups("throughput", references, lookup, "images_per_second", None, base)
    return out


def yardstick_section(runs: list[RunData], ctxs: list[Context], models: list[str]) -> list[dict]:
    """Our harness beside OpenVINO's benchmark_app on the same IR, where both ran."""
    out = []
    for ctx in ctxs:
        run = run_by_label(runs, ctx.run)
        timings = run.timings
        if timings.empty:
            continue
        theirs = timings[timings["source"].fillna("").str.lower().isin(YARDSTICK_SOURCES)]
        theirs = theirs[theirs["node_type"].fillna(ctx.node_type) == ctx.node_type]
        keys = theirs[["model", "variant", "mode", "batch_size"]].drop_duplicates()
        keys = keys.sort_values(["model", "variant", "mode", "batch_size"], key=display_order)
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
            ours_value, ours_gap = timing_value(mine, column, column)
            yard_value, yard_gap = timing_value(yard, column, column)
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
