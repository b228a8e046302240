"""Figures: training curves and confusion-matrix heatmaps (PNG, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fmnist.data import CLASS_NAMES
from fmnist.io import atomic_path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # batch jobs have no display
    import matplotlib.pyplot as plt

    return plt


def plot_training_curves(history: pd.DataFrame, title: str, out: Path) -> Path:
    """Loss and accuracy per epoch, train and validation, side by side."""
    plt = _pyplot()
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        ax.plot(history["epoch"], history[metric], marker="o", label=f"train {metric}")
        ax.plot(history["epoch"], history[f"val_{metric}"], marker="o", label=f"val {metric}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{title}: training curves")
    fig.tight_layout()
    return _save(fig, plt, out)


def plot_confusion_matrix(matrix: np.ndarray, title: str, out: Path) -> Path:
    """A labelled heatmap of a 10 x 10 confusion matrix (rows: true, columns: predicted)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 6.5))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, fraction=0.046)
    ticks = np.arange(len(CLASS_NAMES))
    ax.set_xticks(ticks, CLASS_NAMES, rotation=45, ha="right")
    ax.set_yticks(ticks, CLASS_NAMES)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, col), value in np.ndenumerate(matrix):
        ax.text(
            col,
            row,
            str(value),
            ha="center",
            va="center",
            fontsize=7,
            color="white" if value > threshold else "black",
        )
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, plt, out)


def _save(fig, plt, out: Path) -> Path:
    with atomic_path(out) as tmp:
        # No 'Software' text chunk: the same figure gives the same bytes on any version.
        fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    plt.close(fig)
    return out
