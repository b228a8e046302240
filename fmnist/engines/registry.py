"""The engine registry: one inference interface over every way of running a model.

An engine turns a float32 batch (N, 28, 28, 1), scaled to [0, 1], into class
probabilities (N, 10). Evaluation, benchmarks and batch scoring only see this
interface. Each implementation module (``keras``, ``openvino``) registers its
variants' factories; the package ``__init__`` imports them, so importing
``fmnist.engines`` gives a full registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from fmnist.architectures import get_architecture
from fmnist.io import FmnistError, RunLayout
from fmnist.manifest import check_model_files

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

# The artifact each variant executes: the Keras model, or one of the OpenVINO IRs
# (bf16 is an execution precision of the f32 IR, not a file of its own).
VARIANT_ARTIFACT = {
    "keras-predict": "keras",
    "keras-onednn-off": "keras",
    "keras-onednn-on": "keras",
    "openvino-f32": "f32",
    "openvino-bf16": "f32",
    "openvino-int8": "int8",
}


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
    """Build the engine running ``model`` of ``run`` as ``variant`` in ``mode``.

    The files the variant executes must have the SHA-256 the run's manifest recorded
    (:func:`fmnist.manifest.check_model_files`): the model that was recorded, or nothing.
    """
    check_variant(variant)
    get_architecture(model)  # an unknown name lists the valid ones
    if mode not in MODES:
        raise FmnistError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
    if variant not in _FACTORIES:
        raise FmnistError(f"variant {variant!r} is not available in this installation")
    artifact = variant_artifact(run, model, variant)
    if artifact.is_file():  # else the variant's factory says what is missing, in its words
        check_model_files(run, artifact)
    return _FACTORIES[variant](RunLayout(Path(run)), model, mode)


def available_variants() -> tuple[str, ...]:
    """The variants this installation can build engines for, in ``VARIANTS`` order."""
    return tuple(variant for variant in VARIANTS if variant in _FACTORIES)


def variant_artifact(run: Path | str, model: str, variant: str) -> Path:
    """The file ``variant`` executes: model.keras, or an IR's model.xml (model.bin beside it)."""
    layout = RunLayout(Path(run))
    artifact = VARIANT_ARTIFACT[check_variant(variant)]
    if artifact == "keras":
        return layout.keras_model(model)
    return layout.openvino_ir(model, artifact)


def predict_in_batches(engine: Engine, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Probabilities for any number of images, fed to the engine ``batch_size`` at a time."""
    parts = [engine.predict(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    return np.concatenate(parts) if parts else np.empty((0, 10), dtype=np.float32)
