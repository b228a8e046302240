"""Keras engines: ``keras-predict`` and the ``keras-onednn-*`` variants, and the process rule.

TensorFlow reads ``TF_ENABLE_ONEDNN_OPTS`` once, when it is imported, so each setting
needs its own process with the variable set before the import. These engines check
the setting TensorFlow actually runs with and refuse to run under the other one:
a oneDNN-off figure measured with oneDNN on would be worse than no figure.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from fmnist.engines.registry import Engine, EngineInfo, register_engine
from fmnist.io import FmnistError, RunLayout

ENV_VAR = "TF_ENABLE_ONEDNN_OPTS"
# The value of TF_ENABLE_ONEDNN_OPTS each variant needs.
ONEDNN_VARIANTS = {"keras-onednn-off": "0", "keras-onednn-on": "1"}


class OneDnnSettingError(FmnistError):
    """TensorFlow in this process runs with the other oneDNN setting than the one asked for."""


def required_env(variant: str) -> dict[str, str]:
    """Environment a process running ``variant`` must start with ({} when any will do)."""
    return {ENV_VAR: ONEDNN_VARIANTS[variant]} if variant in ONEDNN_VARIANTS else {}


def tensorflow_imported() -> bool:
    """True once TensorFlow is imported in this process (its oneDNN setting is then fixed)."""
    return "tensorflow" in sys.modules


def onednn_in_effect() -> bool:
    """Whether TensorFlow in this process runs oneDNN kernels (imports TensorFlow)."""
    from tensorflow.python.util import _pywrap_util_port

    # TensorFlow caches the environment variable on first use, at import time.
    return bool(_pywrap_util_port.IsMklEnabled())


def prepare_process(variant: str) -> bool:
    """Make this process able to run ``variant``; False when only a fresh process can.

    Before TensorFlow is imported, setting the variable here is enough; afterwards the
    setting already in effect must match.
    """
    env = required_env(variant)
    if not env:
        return True
    if not tensorflow_imported():
        os.environ.update(env)
        return True
    return onednn_in_effect() == (env[ENV_VAR] == "1")


def check_setting(variant: str) -> bool:
    """The oneDNN setting in effect, after checking it is the one ``variant`` needs."""
    wanted = ONEDNN_VARIANTS[variant] == "1"
    prepare_process(variant)
    actual = onednn_in_effect()
    if actual != wanted:
        raise OneDnnSettingError(
            f"{variant} needs {ENV_VAR}={ONEDNN_VARIANTS[variant]} set before TensorFlow is "
            f"imported, but TensorFlow in this process runs with oneDNN "
            f"{'on' if actual else 'off'} ({ENV_VAR}={os.environ.get(ENV_VAR)!r} now); run it "
            "through 'fmnist-batch evaluate' or 'fmnist-batch benchmark', which start a fresh "
            "process with the setting"
        )
    return actual


def load_keras_model(path: Path):
    """Load a saved Keras model, with a clear error for a missing or corrupt file."""
    if not path.is_file():
        raise FmnistError(f"{path}: model file not found (train the model first)")
    import zipfile

    import keras

    # A .keras file is a zip; Keras says "File not found" for a truncated one.
    if not zipfile.is_zipfile(path):
        raise FmnistError(f"{path}: cannot be read as a Keras model (truncated or corrupt)")
    try:
        return keras.models.load_model(path, compile=False)
    except Exception as exc:  # Keras raises many types for a damaged zip/h5
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        raise FmnistError(
            f"{path}: cannot be read as a Keras model (corrupt: {type(exc).__name__}: {detail})"
        ) from exc


class KerasEngine:
    """A Keras model run in this process (TensorFlow's default oneDNN setting unless set)."""

    def __init__(self, model_path: Path, variant: str = "keras-predict"):
        self.variant = variant
        self.model = load_keras_model(model_path)
        self.info = EngineInfo(
            variant=variant,
            model_path=str(model_path),
            executed_precision="f32",
            details={ENV_VAR: os.environ.get(ENV_VAR)},
        )

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, 10) for a float32 batch (N, 28, 28, 1)."""
        # predict_on_batch skips Keras' per-call dataset machinery; the seed's own
        # `model.predict` measure is reproduced separately by the benchmark.
        return np.asarray(self.model.predict_on_batch(batch), dtype=np.float32)


class KerasGraphEngine:
    """A Keras model's forward pass traced once into a TensorFlow graph.

    The graph skips Keras' per-call ``predict`` machinery, so the figure shows what
    TensorFlow's kernels (oneDNN or Eigen) do, not the Python around them.
    """

    def __init__(self, model_path: Path, variant: str):
        onednn = check_setting(variant)
        import tensorflow as tf

        self.variant = variant
        self.model = load_keras_model(model_path)
        self._forward = tf.function(
            lambda x: self.model(x, training=False),
            input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32)],
        )
        intra = tf.config.threading.get_intra_op_parallelism_threads()
        self.info = EngineInfo(
            variant=variant,
            model_path=str(model_path),
            executed_precision="f32",
            # 0 means TensorFlow's default: one thread per usable CPU.
            threads=intra or len(os.sched_getaffinity(0)),
            details={"onednn": onednn, ENV_VAR: os.environ.get(ENV_VAR)},
        )

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Class probabilities (N, 10) for a float32 batch (N, 28, 28, 1)."""
        return self._forward(np.asarray(batch, dtype=np.float32)).numpy()


@register_engine("keras-predict")
def _keras_predict(layout: RunLayout, model: str, mode: str) -> Engine:
    return KerasEngine(layout.keras_model(model), "keras-predict")


def _graph_factory(variant: str):
    def build(layout: RunLayout, model: str, mode: str) -> KerasGraphEngine:
        return KerasGraphEngine(layout.keras_model(model), variant)

    return build


for _variant in ONEDNN_VARIANTS:
    register_engine(_variant)(_graph_factory(_variant))


def run_with_setting(argv: list[str], env: dict[str, str], **kwargs) -> subprocess.CompletedProcess:
    """Run ``python ARGV`` in a fresh interpreter whose environment adds ``env``.

    ``env`` is what :func:`required_env` gives for the variants the child runs: the
    one way this project starts a process for another oneDNN setting.
    """
    return subprocess.run([sys.executable, *argv], env={**os.environ, **env}, **kwargs)
