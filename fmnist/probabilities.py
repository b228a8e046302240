"""Figures of predicted class probabilities: loss, confidence, and agreement of two engines.

Pure functions on ``(images, classes)`` arrays of probabilities, shared by evaluation
(metrics of one engine) and the INT8 check (an int8 engine against its f32 one).
"""

from __future__ import annotations

import numpy as np

# Probabilities are clipped here before the log: a confident miss costs log(1e7), not inf.
LOG_FLOOR = 1e-7


def cross_entropy(probabilities: np.ndarray, labels: np.ndarray) -> float:
    """Mean categorical cross-entropy of predicted probabilities against integer labels."""
    picked = probabilities[np.arange(len(labels)), np.asarray(labels, int)]
    return float(-np.mean(np.log(np.clip(picked, LOG_FLOOR, 1.0))))


def mean_confidence(probabilities: np.ndarray) -> float:
    """Mean top-1 probability: how sure the model is of what it predicts, on average."""
    return float(np.mean(np.max(probabilities, axis=1)))


def mean_abs_difference(probabilities: np.ndarray, reference: np.ndarray) -> float:
    """Mean |p - p_reference| over every image and class (0 when they agree exactly)."""
    if probabilities.shape != reference.shape:
        raise ValueError(f"probabilities {probabilities.shape} against {reference.shape}")
    return float(np.mean(np.abs(probabilities.astype(np.float64) - reference)))


def correctness_flips(
    probabilities: np.ndarray, reference: np.ndarray, labels: np.ndarray
) -> tuple[int, int]:
    """Images the reference classifies right and these probabilities wrong, and the reverse.

    The paired view of an accuracy change: only the images the two engines disagree on
    carry it, so these two counts say whether a change is more than chance.
    """
    if probabilities.shape != reference.shape:
        raise ValueError(f"probabilities {probabilities.shape} against {reference.shape}")
    labels = np.asarray(labels)
    right = probabilities.argmax(axis=1) == labels
    reference_right = reference.argmax(axis=1) == labels
    return int(np.sum(reference_right & ~right)), int(np.sum(right & ~reference_right))
