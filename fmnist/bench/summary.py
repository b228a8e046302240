"""The text summary ``fmnist-batch benchmark`` prints: latency, throughput, speedups."""

from __future__ import annotations

import json

import pandas as pd

from fmnist.engines import VARIANTS


def _lookup(frame: pd.DataFrame, variant: str, source: str, mode: str, batch: int):
    hit = frame[
        (frame["variant"] == variant)
        & (frame["source"] == source)
        & (frame["mode"] == mode)
        & (frame["batch_size"] == batch)
        & (frame["status"] == "ok")
    ]
    return hit.iloc[0] if len(hit) else None


def round_spread(details: str) -> str:
    """'0.078-0.083': the lowest and highest median of a latency window's rounds ('-' if none)."""
    rounds = json.loads(details or "{}").get("round_p50_ms") or []
    return f"{min(rounds):.3f}-{max(rounds):.3f}" if rounds else "-"


def summary_table(frame: pd.DataFrame) -> str:
    """Text table: batch-1 latency and its rounds' spread, throughput, speedups, benchmark_app."""
    ours = frame[frame["source"] == "fmnist"]
    batches = sorted(int(b) for b in ours.loc[ours["mode"] == "throughput", "batch_size"].unique())
    variants = [v for v in VARIANTS if v in set(ours["variant"])]

    def p50(variant):
        row = _lookup(frame, variant, "fmnist", "latency", 1)
        return None if row is None else row["p50_ms"]

    baselines = {"x predict": p50("keras-predict"), "x onednn-on": p50("keras-onednn-on")}
    header = (
        f"{'variant':<18}{'precision':<11}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}"
        f"{'p50 rounds':>17}"
        + "".join(f"{f'bs{b} img/s':>13}" for b in batches)
        + "".join(f"{name:>13}" for name in baselines)
        + f"{'bm_app p50':>12}{f'bm_app bs{batches[-1]}' if batches else '':>15}"
    )
    lines = [header]
    for variant in variants:
        latency = _lookup(frame, variant, "fmnist", "latency", 1)
        if latency is None:
            status = ours[ours["variant"] == variant].iloc[0]
            lines.append(f"{variant:<18}{status['status']}: {status['reason']}")
            continue
        cells = f"{variant:<18}{latency['executed_precision']:<11}"
        cells += f"{latency['p50_ms']:>10.3f}{latency['p90_ms']:>10.3f}{latency['p99_ms']:>10.3f}"
        cells += f"{round_spread(latency['details']):>17}"
        for b in batches:
            row = _lookup(frame, variant, "fmnist", "throughput", b)
            cells += f"{row['images_per_second']:>13,.0f}" if row is not None else f"{'-':>13}"
        for base in baselines.values():
            speedup = base / latency["p50_ms"] if base else None
            digits = 1 if speedup is None or speedup >= 1 else 2
            cells += f"{speedup:>12.{digits}f}x" if speedup else f"{'-':>13}"
        yard = _lookup(frame, variant, "benchmark_app", "latency", 1)
        cells += f"{yard['p50_ms']:>12.3f}" if yard is not None else f"{'-':>12}"
        yard_tp = (
            _lookup(frame, variant, "benchmark_app", "throughput", batches[-1]) if batches else None
        )
        cells += f"{yard_tp['images_per_second']:>15,.0f}" if yard_tp is not None else f"{'-':>15}"
        lines.append(cells)
    return "\n".join(lines)
