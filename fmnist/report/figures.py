"""The report's figures: training curves, confusion heatmaps, latency and throughput charts.

Each figure is drawn from the merged tables (or a run's history and confusion files) and
saved as PNG without a 'Software' text chunk, so the same input gives the same bytes.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fmnist.data import CLASS_NAMES
from fmnist.engines import VARIANTS
from fmnist.io import atomic_path
from fmnist.plots import _pyplot, _save, plot_confusion_matrix, plot_training_curves
from fmnist.report.runs import RunData
from fmnist.report.tables import BASELINE, Context, ReportTables

HISTORY_NEEDS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")
# File names of the report's figures start with their kind: "curves__run__main.png".
FIGURE_KINDS = ("curves__", "confusion__", "latency__", "throughput__", "timeline__")


@dataclass(frozen=True)
class Figure:
    """A figure file of the report and what it shows."""

    kind: str  # curves | confusion | latency | throughput | timeline
    path: Path  # relative to the report directory
    caption: str
    model: str | None = None
    run: str | None = None
    context: str | None = None


def slug(text: str) -> str:
    """A file-name-safe version of a run or context label."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "x"


def variant_color(variant: str) -> str:
    """One fixed colour per variant, the same in every chart."""
    palette = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3"]
    index = VARIANTS.index(variant) if variant in VARIANTS else len(VARIANTS)
    return palette[index % len(palette)]


def confusion_matrix_of(frame: pd.DataFrame) -> np.ndarray | None:
    """The 10 x 10 counts of a confusion Parquet (rows true, columns predicted), or None."""
    columns = [c for c in CLASS_NAMES if c in frame.columns]
    if len(columns) != len(CLASS_NAMES) or len(frame) != len(CLASS_NAMES):
        return None
    if "true_label" in frame.columns:
        frame = frame.sort_values("true_label")
    return frame[columns].to_numpy(dtype=np.int64)


def confusion_variant(run: RunData, model: str) -> str | None:
    """The variant whose confusion matrix represents a model: the baseline when evaluated."""
    variants = sorted(v for m, v in run.confusions if m == model)
    if not variants:
        return None
    return BASELINE if BASELINE in variants else variants[0]


def _copy_or_draw(source: Path, target: Path, draw) -> None:
    # Training and evaluation already drew these from the same files: copying them is
    # faster than drawing again and gives the same bytes for the same run.
    if source.is_file():
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
    else:
        draw(target)


def draw_run_figures(run: RunData, models: list[str], out: Path) -> list[Figure]:
    """Training curves and the confusion heatmap of every model of one run."""
    figures = []
    for model in models:
        for draw in (_curves_figure, _confusion_figure):
            figure = draw(run, model, out)
            if figure is not None:
                figures.append(figure)
    return figures


def _curves_figure(run: RunData, model: str, out: Path) -> Figure | None:
    """The training curves of one model, None without a usable history."""
    history = run.histories.get(model)
    if history is None or not all(c in history.columns for c in HISTORY_NEEDS) or not len(history):
        return None
    path = Path("figures") / f"curves__{slug(run.label)}__{model}.png"
    _copy_or_draw(
        run.layout.figures_dir / f"{model}__curves.png",
        out / path,
        lambda target: plot_training_curves(history, model, target),
    )
    return Figure("curves", path, f"{model}: training curves ({run.label})", model, run.label)


def _confusion_figure(run: RunData, model: str, out: Path) -> Figure | None:
    """The confusion heatmap of one model's representative variant, None without one."""
    variant = confusion_variant(run, model)
    if variant is None:
        return None
    matrix = confusion_matrix_of(run.confusions[(model, variant)])
    if matrix is None:
        return None
    accuracy = np.trace(matrix) / matrix.sum() if matrix.sum() else 0.0
    path = Path("figures") / f"confusion__{slug(run.label)}__{model}__{variant}.png"
    title = f"{model} ({variant}): accuracy {accuracy:.4f}"
    _copy_or_draw(
        run.layout.figures_dir / f"{model}__{variant}__confusion.png",
        out / path,
        lambda target: plot_confusion_matrix(matrix, title, target),
    )
    caption = f"{model}: confusion matrix, {variant} ({run.label})"
    return Figure("confusion", path, caption, model, run.label)


def draw_latency_chart(tables: ReportTables, ctx: Context, out: Path) -> Figure | None:
    """Batch-1 p50 latency of every model x variant on one node type (bars; p99 ticks)."""
    latency = tables.section("latency")
    latency = latency[latency["context"] == ctx.label]
    p50 = latency[latency["key"] == "p50_ms"].dropna(subset=["value"])
    if p50.empty:
        return None
    p99 = latency[latency["key"] == "p99_ms"].set_index(["model", "variant"])["value"]
    plt = _pyplot()
    models = [m for m in tables.models if m in set(p50["model"])]
    variants = [v for v in tables.variants if v in set(p50["variant"])]
    fig, ax = plt.subplots(figsize=(10, 4.2))
    width = 0.8 / max(1, len(variants))
    for i, variant in enumerate(variants):
        rows = p50[p50["variant"] == variant].set_index("model")["value"]
        xs = [m_i + (i - (len(variants) - 1) / 2) * width for m_i in range(len(models))]
        heights = [rows.get(m, np.nan) for m in models]
        ax.bar(xs, heights, width, label=variant, color=variant_color(variant))
        tops = [p99.get((m, variant), np.nan) for m in models]
        ax.scatter(xs, tops, marker="_", color="black", s=60, zorder=3)
    ax.set_yscale("log")
    ax.set_xticks(range(len(models)), models)
    ax.set_ylabel("ms per image (log)")
    ax.set_title(f"Batch-1 latency on {ctx.label}: p50 bars, p99 ticks")
    ax.grid(axis="y", alpha=0.3, which="both")
    ax.legend(fontsize=8, ncol=min(3, len(variants)))
    fig.tight_layout()
    path = Path("figures") / f"latency__{slug(ctx.label)}.png"
    _save(fig, plt, out / path)
    return Figure("latency", path, f"Batch-1 latency on {ctx.label}", context=ctx.label)


def draw_throughput_chart(tables: ReportTables, ctx: Context, out: Path) -> Figure | None:
    """Images per second against batch size, one panel per model, one line per variant."""
    rate = tables.section("throughput")
    rate = rate[(rate["context"] == ctx.label) & (rate["key"] == "images_per_second")]
    rate = rate.dropna(subset=["value", "batch_size"])
    if rate.empty:
        return None
    plt = _pyplot()
    models = [m for m in tables.models if m in set(rate["model"])]
    fig, axes = plt.subplots(1, len(models), figsize=(4.2 * len(models), 3.8), squeeze=False)
    for ax, model in zip(axes[0], models, strict=True):
        rows = rate[rate["model"] == model]
        for variant in [v for v in tables.variants if v in set(rows["variant"])]:
            line = rows[rows["variant"] == variant].sort_values("batch_size")
            ax.plot(
                line["batch_size"].astype(int),
                line["value"],
                marker="o",
                label=variant,
                color=variant_color(variant),
            )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("images/s (log)")
        ax.set_title(model)
        ax.grid(alpha=0.3, which="both")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Throughput on {ctx.label}")
    fig.tight_layout()
    path = Path("figures") / f"throughput__{slug(ctx.label)}.png"
    _save(fig, plt, out / path)
    return Figure("throughput", path, f"Throughput on {ctx.label}", context=ctx.label)


def draw_figures(tables: ReportTables, out: Path) -> list[Figure]:
    """Every figure of the report, written under ``out/figures``."""
    figures: list[Figure] = []
    for run in tables.runs:
        figures += draw_run_figures(run, tables.models, out)
    for ctx in tables.contexts:
        for draw in (draw_latency_chart, draw_throughput_chart):
            figure = draw(tables, ctx, out)
            if figure is not None:
                figures.append(figure)
    return figures
