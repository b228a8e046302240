"""The seed report's own figures, copied from its RESULTS table, for side-by-side display.

These are not measurements of this code: they are what the seed report printed, measured
once in a notebook on Intel DevCloud. The report shows them labelled as the seed's, next
to the figures regenerated from a run directory.
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE = "the seed report's RESULTS table (a notebook on Intel DevCloud)"


@dataclass(frozen=True)
class SeedResults:
    """One column of the seed's RESULTS table (plus the parameter count of its layer table)."""

    model: str
    seed_name: str
    architecture: str
    params: int
    training_seconds: float
    accuracy: float  # un-optimized: model.predict, TensorFlow defaults
    loss: float
    latency_ms: float  # mean of model.predict on one image
    optimized_accuracy: float  # with TF_ENABLE_ONEDNN_OPTS=1
    optimized_loss: float
    optimized_latency_ms: float
    optimization: str
    note: str = ""


SEED_RESULTS: dict[str, SeedResults] = {
    "main": SeedResults(
        model="main",
        seed_name="Model 1 (MAIN_Fashionmnistcnn)",
        architecture="CNN model built from scratch",
        params=13_017_770,
        training_seconds=10_400,
        accuracy=0.93,
        loss=0.1911,
        latency_ms=83.5,
        optimized_accuracy=0.9358,
        optimized_loss=0.1769,
        optimized_latency_ms=77.7,
        optimization="Intel DevCloud integrated oneDNN",
        note="optimized accuracy 'reached 93.99 % once'; un-optimized figures on 6,000 images",
    ),
    "backup1": SeedResults(
        model="backup1",
        seed_name="Model 2 (1stBackup)",
        architecture="CNN model built from scratch",
        params=114_890,
        training_seconds=1_200,
        accuracy=0.9032,
        loss=0.3726,
        latency_ms=87.5,
        optimized_accuracy=0.9032,
        optimized_loss=0.3726,
        optimized_latency_ms=53.0,
        optimization="Intel DevCloud integrated oneDNN",
    ),
    "backup2": SeedResults(
        model="backup2",
        seed_name="Model 3 (2ndBackup)",
        architecture="CNN model built from scratch",
        params=840_586,
        training_seconds=4_900,
        accuracy=0.9096,
        loss=0.235,
        latency_ms=151.2,
        optimized_accuracy=0.9269,
        optimized_loss=0.209,
        optimized_latency_ms=74.1,
        optimization="Intel DevCloud integrated oneDNN",
        note="optimized accuracy 'reached 93.55 % once'",
    ),
}
