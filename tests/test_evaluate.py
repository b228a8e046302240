"""Metrics against hand-computed values, and the report text."""

from __future__ import annotations

import numpy as np
import pytest

from fmnist.engines.int8_check import GAINED_COLUMN, LOST_COLUMN, MEAN_ABS_DP_COLUMN
from fmnist.evaluate import (
    classification_report,
    confusion_matrix,
    cross_entropy,
    evaluate_probabilities,
    metrics_frame,
    per_class_metrics,
)


def test_confusion_matrix_counts_true_rows_predicted_columns():
    matrix = confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 2, 0]), n=3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_per_class_metrics_by_hand():
    # Hand-computed from the matrix above:
    # class 0: tp 1, predicted 2, support 2 -> p 0.5, r 0.5, f1 0.5
    # class 1: tp 1, predicted 2, support 1 -> p 0.5, r 1.0, f1 2/3
    # class 2: tp 2, predicted 2, support 3 -> p 1.0, r 2/3, f1 0.8
    matrix = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    frame = per_class_metrics(matrix, names=("a", "b", "c")).set_index("name")
    assert frame.loc[["a", "b", "c"], "precision"].tolist() == pytest.approx([0.5, 0.5, 1.0])
    assert frame.loc[["a", "b", "c"], "recall"].tolist() == pytest.approx([0.5, 1.0, 2 / 3])
    assert frame.loc[["a", "b", "c"], "f1"].tolist() == pytest.approx([0.5, 2 / 3, 0.8])
    assert frame.loc[["a", "b", "c"], "support"].tolist() == [2, 1, 3]
    assert frame.loc["macro avg", "f1"] == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)
    assert frame.loc["weighted avg", "recall"] == pytest.approx((2 * 0.5 + 1 + 3 * 2 / 3) / 6)
    assert frame.loc["weighted avg", "support"] == 6


def test_never_predicted_class_has_zero_precision_not_nan():
    frame = per_class_metrics(np.array([[2, 0], [1, 0]]), names=("a", "b")).set_index("name")
    assert frame.loc["b", "precision"] == 0.0 and frame.loc["b", "f1"] == 0.0


def test_cross_entropy_and_report():
    probabilities = np.full((4, 10), 0.05, dtype=np.float32)
    probabilities[np.arange(4), [0, 1, 2, 3]] = 0.55
    labels = np.array([0, 1, 2, 0])
    assert cross_entropy(probabilities, labels) == pytest.approx(
        -(3 * np.log(0.55) + np.log(0.05)) / 4, rel=1e-5
    )
    evaluation = evaluate_probabilities(probabilities, labels, "m", "keras-predict")
    assert evaluation.accuracy == 0.75
    text = classification_report(evaluation)
    assert "T-shirt/top" in text and "weighted avg" in text and "Accuracy: 0.7500" in text


def test_confidence_and_agreement_with_f32_in_the_metrics():
    probabilities = np.full((4, 10), 0.05, dtype=np.float32)
    probabilities[np.arange(4), [0, 1, 2, 3]] = 0.55
    labels = np.array([0, 1, 2, 0])
    reference = probabilities.copy()
    reference[0, 0], reference[0, 5] = 0.45, 0.15  # one image less sure in f32
    evaluation = evaluate_probabilities(
        probabilities, labels, "m", "openvino-int8", reference=reference
    )
    assert evaluation.mean_confidence == pytest.approx(0.55)
    assert evaluation.mean_abs_dp_vs_f32 == pytest.approx(0.2 / 40)
    frame = metrics_frame(evaluation)
    assert frame["mean_confidence"].iloc[0] == pytest.approx(0.55)
    assert frame[MEAN_ABS_DP_COLUMN].iloc[0] == pytest.approx(0.005)
    assert "Mean |Δp| vs openvino-f32: 0.0050" in classification_report(evaluation)
    # Both miss image 3 (label 0, predicted 3): no image flips either way.
    assert evaluation.flips_vs_f32 == (0, 0)
    reference[1, 1], reference[1, 7] = 0.05, 0.55  # f32 misses image 1, int8 gets it
    flipped = evaluate_probabilities(
        probabilities, labels, "m", "openvino-int8", reference=reference
    )
    assert flipped.flips_vs_f32 == (0, 1)
    assert metrics_frame(flipped)[[LOST_COLUMN, GAINED_COLUMN]].iloc[0].tolist() == [0, 1]
    assert "Images vs openvino-f32: 0 lost, 1 gained" in classification_report(flipped)
    # Without a reference there is nothing to compare: NaN, and no line in the report.
    alone = evaluate_probabilities(probabilities, labels, "m", "keras-predict")
    assert np.isnan(metrics_frame(alone)[MEAN_ABS_DP_COLUMN].iloc[0])
    assert "Mean confidence: 0.5500" in classification_report(alone)
    assert "Mean |Δp|" not in classification_report(alone)
    assert np.isnan(metrics_frame(alone)[LOST_COLUMN].iloc[0])
    assert "lost" not in classification_report(alone)
