"""One inference interface over every way of running a model.

An engine turns a float32 batch (N, 28, 28, 1), scaled to [0, 1], into class
probabilities (N, 10). Evaluation, benchmarks and batch scoring only see this
interface, so each optimized variant plugs in by registering a factory.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from fmnist.io import FmnistError, RunLayout

VARIANTS = (
    "keras-predict",
    "keras-onednn-off",
    "keras-onednn-on",
    "openvino-f32",
    "openvino-bf16",
    "openvino-int8",
)


class Engine(Protocol):
    """What every variant provides."""

    variant: str
    info: EngineInfo

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, 10) for a float32 batch (N, 28, 28, 1)."""
        ...


@dataclass
class EngineInfo:
    """What actually ran: recorded beside every metric and timing."""

    variant: str
    model_path: str
    executed_precision: str
    threads: int | None = None
    details: dict = field(default_factory=dict)


# A factory builds an engine from (run layout, model name, mode); mode is "latency"
# (one request at a time, batch 1 is the common case) or "throughput" (large batches).
EngineFactory = Callable[[RunLayout, str, str], Engine]
MODES = ("latency", "throughput")
_FACTORIES: dict[str, EngineFactory] = {}


def register_engine(variant: str):
    """Decorator registering the factory that builds ``variant`` for (layout, model, mode)."""

    def wrap(factory: EngineFactory) -> EngineFactory:
        _FACTORIES[variant] = factory
        return factory

    return wrap


def check_variant(variant: str) -> str:
    """``variant`` if it is known, else an error listing the valid ones."""
    if variant not in VARIANTS:
        raise FmnistError(f"unknown variant {variant!r}; valid variants: {', '.join(VARIANTS)}")
    return variant


def create_engine(
    run: Path | str, model: str, variant: str = "keras-predict", mode: str = "latency"
) -> Engine:
    """Build the engine running ``model`` of ``run`` as ``variant`` in ``mode``."""
    check_variant(variant)
    if mode not in MODES:
        raise FmnistError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
    if variant not in _FACTORIES:
        raise FmnistError(f"variant {variant!r} is not available in this installation")
    return _FACTORIES[variant](RunLayout(Path(run)), model, mode)


def predict_in_batches(engine: Engine, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Probabilities for any number of images, fed to the engine ``batch_size`` at a time."""
    parts = [engine.predict(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return np.concatenate(parts) if parts else np.empty((0, 10), dtype=np.float32)


def load_keras_model(path: Path):
    """Load a saved Keras model, with a clear error for a missing or corrupt file."""
    if not path.is_file():
        raise FmnistError(f"{path}: model file not found (train the model first)")
    import keras

    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for a damaged zip/h5
        raise FmnistError(f"{path}: cannot load Keras model ({type(exc).__name__}: {exc})") from exc


def onednn_setting() -> str | None:
    """The oneDNN setting this process runs with, as TensorFlow read it at import."""
    return os.environ.get("TF_ENABLE_ONEDNN_OPTS")


class KerasEngine:
    """A Keras model run in this process (TensorFlow's default oneDNN setting unless set)."""

    def __init__(self, model_path: Path, variant: str = "keras-predict"):
        self.variant = variant
        self.model = load_keras_model(model_path)
        self.info = EngineInfo(
            variant=variant,
            model_path=str(model_path),
            executed_precision="f32",
            details={"TF_ENABLE_ONEDNN_OPTS": onednn_setting()},
        )

    def predict(self, batch: np.ndarray) -> np.ndarray:
        # predict_on_batch skips Keras' per-call dataset machinery; the seed's own
        # `model.predict` measure is reproduced separately by the benchmark.
        return np.asarray(self.model.predict_on_batch(batch), dtype=np.float32)


@register_engine("keras-predict")
def _keras_predict(layout: RunLayout, model: str, mode: str) -> Engine:
    return KerasEngine(layout.keras_model(model), "keras-predict")


# The optimized variants live in their own modules and register themselves on import.
from fmnist import onednn, openvino_engines  # noqa: E402, F401
