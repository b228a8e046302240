"""The INT8 acceptance rule: is an INT8 model close enough to f32 to use in its place?

Accuracy alone cannot tell a faithful INT8 model from one that predicts the same
classes with confidences shifted by 0.2, so :class:`Int8Check` also compares loss, mean
top-1 confidence and mean |p_int8 - p_f32|. ``optimize`` redoes quantization until the
check holds, ``score`` picks INT8 by default only when it holds, and the report shows
the same verdict: this module is the rule's one owner.

The accuracy bound is judged on the images the two engines disagree on (a paired test,
McNemar's): a drop past the bound fails only when those images show INT8 is worse than
f32 beyond chance. On 3,000 validation images a net 10 images is a third of a point,
and default quantization of a model that kept its test accuracy to 0.01 points was
measured that far below; without the paired test that noise sent the model to
accuracy control, which kept a convolution in f32 and lost INT8's whole speed-up.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from fmnist.probabilities import (
    correctness_flips,
    cross_entropy,
    mean_abs_difference,
    mean_confidence,
)

# The INT8 acceptance bounds. Quantization is redone until they hold, ``score`` picks
# INT8 by default only when they hold, and the report shows the same verdict.
INT8_MAX_DROP = 0.003  # accuracy: at most 0.3 points below f32
# ... unless the drop is within chance: the paired z of images lost against images gained
# must exceed this (one-sided 5 %) for a drop past the bound to fail.
INT8_DROP_SIGNIFICANCE_Z = 1.645
INT8_MAX_LOSS_CHANGE = 0.05  # loss: within 5 % of f32's, either way
INT8_MAX_CONFIDENCE_CHANGE = 0.01  # mean top-1 confidence: within 0.01 of f32's
# mean |p_int8 - p_f32| over images and classes. Default post-training quantization
# measured 0.002-0.0035 (main, backup1, backup2, a few epochs each); full bias correction
# 0.007 on backup1, where it also moved the mean confidence by 0.03.
INT8_MAX_MEAN_ABS_DP = 0.005
# The metrics column (``fmnist.evaluate``) holding an engine's mean |Δp| against openvino-f32.
MEAN_ABS_DP_COLUMN = "mean_abs_dp_vs_f32"
# The metrics columns holding the images openvino-f32 classifies right and an engine
# wrong (lost), and the reverse (gained): the paired accuracy test reads them.
LOST_COLUMN, GAINED_COLUMN = "lost_vs_f32", "gained_vs_f32"


@dataclass(frozen=True)
class Int8Bounds:
    """How far INT8 may be from f32 and still be used in its place."""

    max_drop: float = INT8_MAX_DROP
    drop_significance_z: float = INT8_DROP_SIGNIFICANCE_Z
    max_loss_change: float = INT8_MAX_LOSS_CHANGE
    max_confidence_change: float = INT8_MAX_CONFIDENCE_CHANGE
    max_mean_abs_dp: float = INT8_MAX_MEAN_ABS_DP

    def describe(self) -> str:
        """The bounds in words, for reports and help texts."""
        return (
            f"accuracy at most {100 * self.max_drop:.1f} points below f32 (or a drop within "
            f"chance: paired z at most {self.drop_significance_z:g}), loss within "
            f"{100 * self.max_loss_change:g} %, mean confidence within "
            f"{self.max_confidence_change:g}, mean |Δp| at most {self.max_mean_abs_dp:g}"
        )


@dataclass(frozen=True)
class Int8Check:
    """INT8 against f32 on the same labelled images: the figures and the acceptance rule.

    A figure is ``None`` where it was not measured (older metrics files); a check with
    a missing figure is not acceptable, since it cannot show INT8 keeps it.
    """

    f32_accuracy: float | None
    int8_accuracy: float | None
    f32_loss: float | None = None
    int8_loss: float | None = None
    f32_confidence: float | None = None  # mean top-1 probability
    int8_confidence: float | None = None
    mean_abs_dp: float | None = None  # mean |p_int8 - p_f32| over images and classes
    f32_images: int | None = None
    int8_images: int | None = None
    lost: int | None = None  # images f32 classifies right and int8 wrong
    gained: int | None = None  # images int8 classifies right and f32 wrong

    @classmethod
    def from_probabilities(cls, f32: np.ndarray, int8: np.ndarray, labels: np.ndarray) -> Int8Check:
        """The check of two engines' probabilities on the same labelled images."""
        labels = np.asarray(labels)
        lost, gained = correctness_flips(int8, f32, labels)
        return cls(
            f32_accuracy=float(np.mean(f32.argmax(axis=1) == labels)),
            int8_accuracy=float(np.mean(int8.argmax(axis=1) == labels)),
            f32_loss=cross_entropy(f32, labels),
            int8_loss=cross_entropy(int8, labels),
            f32_confidence=mean_confidence(f32),
            int8_confidence=mean_confidence(int8),
            mean_abs_dp=mean_abs_difference(int8, f32),
            f32_images=len(labels),
            int8_images=len(labels),
            lost=lost,
            gained=gained,
        )

    @classmethod
    def from_metrics(cls, f32: Mapping, int8: Mapping) -> Int8Check:
        """The check of two evaluations' overall metrics rows (``fmnist.evaluate``).

        Reads accuracy, loss, mean_confidence and images of each, and the int8 row's
        mean |Δp| and images lost and gained against openvino-f32
        (:data:`MEAN_ABS_DP_COLUMN`, :data:`LOST_COLUMN`, :data:`GAINED_COLUMN`).
        """
        return cls(
            f32_accuracy=_figure(f32, "accuracy"),
            int8_accuracy=_figure(int8, "accuracy"),
            f32_loss=_figure(f32, "loss"),
            int8_loss=_figure(int8, "loss"),
            f32_confidence=_figure(f32, "mean_confidence"),
            int8_confidence=_figure(int8, "mean_confidence"),
            mean_abs_dp=_figure(int8, MEAN_ABS_DP_COLUMN),
            f32_images=_count(f32, "images"),
            int8_images=_count(int8, "images"),
            lost=_count(int8, LOST_COLUMN),
            gained=_count(int8, GAINED_COLUMN),
        )

    @property
    def accuracy_drop(self) -> float | None:
        """f32 accuracy minus int8 accuracy (positive: int8 is worse)."""
        if self.f32_accuracy is None or self.int8_accuracy is None:
            return None
        return self.f32_accuracy - self.int8_accuracy

    @property
    def drop_z(self) -> float | None:
        """The paired (McNemar) z of the drop: (lost - gained) / sqrt(lost + gained).

        Positive when int8 loses more images than it gains; above 1.645 the loss is
        more than chance at 5 %. ``None`` without the counts.
        """
        if self.lost is None or self.gained is None:
            return None
        flips = self.lost + self.gained
        return 0.0 if flips == 0 else (self.lost - self.gained) / math.sqrt(flips)

    def drop_within_chance(self, bounds: Int8Bounds = Int8Bounds()) -> bool:
        """Whether the images lost and gained show no drop beyond chance (False: unknown)."""
        z = self.drop_z
        return z is not None and z <= bounds.drop_significance_z

    @property
    def loss_change(self) -> float | None:
        """int8 loss relative to f32's, minus 1 (0.05: 5 % higher)."""
        if self.f32_loss is None or self.int8_loss is None:
            return None
        if self.f32_loss <= 0:
            return 0.0 if self.int8_loss <= 0 else float("inf")
        return self.int8_loss / self.f32_loss - 1

    @property
    def confidence_change(self) -> float | None:
        """int8 mean confidence minus f32's."""
        if self.f32_confidence is None or self.int8_confidence is None:
            return None
        return self.int8_confidence - self.f32_confidence

    def failures(self, bounds: Int8Bounds = Int8Bounds()) -> list[str]:
        """What keeps INT8 from standing in for f32, one short phrase each (empty: nothing)."""
        out = []
        if self.f32_images is not None and self.int8_images not in (None, self.f32_images):
            images = f"{self.f32_images} vs {self.int8_images}"
            out.append(f"f32 and int8 figures are of different images ({images})")
        drop = self.accuracy_drop
        if drop is None:
            out.append("no accuracy figures to compare")
        elif self._drop_past_bound(bounds) and not self.drop_within_chance(bounds):
            out.append(
                f"int8 accuracy {self.int8_accuracy:.4f} more than {100 * bounds.max_drop:.1f} "
                f"points below f32 {self.f32_accuracy:.4f}{self._flips_text()}"
            )
        change = self.loss_change
        if change is None:
            out.append("no loss figures to compare")
        elif abs(change) > bounds.max_loss_change:
            out.append(
                f"int8 loss {self.int8_loss:.4f} is {100 * change:+.1f} % against f32 "
                f"{self.f32_loss:.4f} (bound {100 * bounds.max_loss_change:.0f} %)"
            )
        shift = self.confidence_change
        if shift is None:
            out.append("no mean confidence figures to compare (evaluate again)")
        elif abs(shift) > bounds.max_confidence_change:
            out.append(
                f"int8 mean confidence {self.int8_confidence:.4f} against f32 "
                f"{self.f32_confidence:.4f} (bound {bounds.max_confidence_change:g})"
            )
        if self.mean_abs_dp is None:
            out.append("no mean |Δp| against f32 (evaluate again)")
        elif self.mean_abs_dp > bounds.max_mean_abs_dp:
            out.append(
                f"mean |Δp| {self.mean_abs_dp:.4f} against f32 above {bounds.max_mean_abs_dp:g}"
            )
        return out

    def _drop_past_bound(self, bounds: Int8Bounds) -> bool:
        # 1e-12: a drop of exactly the bound passes.
        return self.accuracy_drop is not None and self.accuracy_drop > bounds.max_drop + 1e-12

    def _flips_text(self) -> str:
        if self.drop_z is None:
            return ""
        return f" ({self.lost} images lost, {self.gained} gained: paired z {self.drop_z:.2f})"

    def acceptable(self, bounds: Int8Bounds = Int8Bounds()) -> tuple[bool, str]:
        """Whether INT8 may be used in place of f32, and why (one line)."""
        failures = self.failures(bounds)
        if failures:
            return False, "; ".join(failures)
        accuracy = (
            f"{self.int8_accuracy:.4f} within {100 * bounds.max_drop:.1f} points of f32 "
            f"{self.f32_accuracy:.4f}"
        )
        if self._drop_past_bound(bounds):
            accuracy = (
                f"{self.int8_accuracy:.4f} {100 * self.accuracy_drop:.2f} points below f32 "
                f"{self.f32_accuracy:.4f}, within chance{self._flips_text()}"
            )
        return True, (
            f"int8 keeps f32's figures: accuracy {accuracy}, loss "
            f"{100 * self.loss_change:+.1f} %, mean confidence {self.confidence_change:+.4f}, "
            f"mean |Δp| {self.mean_abs_dp:.4f}"
        )

    def record(self, bounds: Int8Bounds = Int8Bounds()) -> dict:
        """The figures, the derived changes and the verdict, ready for the JSON manifest."""
        accepted, why = self.acceptable(bounds)
        return {
            **asdict(self),
            "accuracy_drop": self.accuracy_drop,
            "loss_change": self.loss_change,
            "confidence_change": self.confidence_change,
            "drop_z": self.drop_z,
            "accepted": accepted,
            "reason": why,
        }


def _figure(row: Mapping, key: str) -> float | None:
    value = row.get(key)
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _count(row: Mapping, key: str) -> int | None:
    value = _figure(row, key)
    return None if value is None else int(value)
