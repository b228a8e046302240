"""Training speed: images per second, the FLOPs they stand for, and the machine's limit.

A network's training cost per image is counted from its layers: a convolution or dense
layer does ``2 x MACs`` FLOPs forward and about twice that backward (the gradients of
its input and of its weights), so training costs ``3 x`` the forward FLOPs. Batch norm,
pooling, activations and the optimizer update are left out: they are memory-bound and
small beside the matrix products. The machine's limit is the rate of one large matrix
product (GEMM) in TensorFlow on the same cores, in the same precision.

Each measurement runs in a process of its own (``python -m fmnist.bench.training``),
since Keras' dtype policy is global and TensorFlow keeps its thread pools for life.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class TrainingSpeed:
    """One network's measured training rate in one precision."""

    model: str
    precision: str  # Keras dtype policy: float32 or mixed_bfloat16
    batch_size: int
    steps: int
    seconds: float
    images_per_second: float
    flops_per_image: int  # forward + backward, from the layers

    @property
    def gflops(self) -> float:
        """The FLOP rate the measured images/s stand for, in GFLOPS."""
        return self.images_per_second * self.flops_per_image / 1e9


def forward_flops(model) -> int:
    """FLOPs of one image's forward pass through the convolution and dense layers."""
    import keras

    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, _ = layer.output.shape
            kh, kw, c_in, c_out = layer.kernel.shape
            total += 2 * height * width * kh * kw * c_in * c_out
        elif isinstance(layer, keras.layers.Dense):
            c_in, c_out = layer.kernel.shape
            total += 2 * c_in * c_out
    return int(total)


def training_flops_per_image(model) -> int:
    """Forward plus backward FLOPs of one training image (3 x the forward pass)."""
    return 3 * forward_flops(model)


def measure_training(
    model_name: str, precision: str, batch_size: int = 128, seconds: float = 20.0
) -> TrainingSpeed:
    """Train ``model_name`` on random images for about ``seconds``; its images/s.

    Uses the training pipeline of ``train --recipe fast`` (tf.data, flips, label
    smoothing, Adam) after two warm-up steps that trace and compile the step.
    """
    import keras

    from fmnist.architectures import create_model
    from fmnist.training_data import training_dataset

    keras.mixed_precision.set_global_policy(precision)
    model = create_model(model_name)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=0.1),
    )
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (batch_size * 16, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, len(images))
    data = training_dataset(
        images, labels, batch_size=batch_size, one_hot=True, flip=True, shift=0.0, seed=0
    ).repeat()
    model.fit(data, steps_per_epoch=3, epochs=1, shuffle=False, verbose=0)  # trace, warm up
    # One timed fit of as many steps as fill ``seconds``: each fit call has a fixed cost
    # (iterator, callbacks) as large as many of backup1's steps.
    probe = time.perf_counter()
    model.fit(data, steps_per_epoch=10, epochs=1, shuffle=False, verbose=0)
    steps = max(10, int(seconds / ((time.perf_counter() - probe) / 10)))
    started = time.perf_counter()
    model.fit(data, steps_per_epoch=steps, epochs=1, shuffle=False, verbose=0)
    elapsed = time.perf_counter() - started
    flops = training_flops_per_image(model)
    keras.mixed_precision.set_global_policy("float32")
    return TrainingSpeed(
        model_name, precision, batch_size, steps, elapsed, steps * batch_size / elapsed, flops
    )


def measure_gemm_gflops(precision: str, size: int = 2048, seconds: float = 5.0) -> float:
    """GFLOPS of a ``size`` x ``size`` matrix product in TensorFlow (float32 or bfloat16)."""
    import tensorflow as tf

    dtype = tf.bfloat16 if precision == "mixed_bfloat16" else tf.float32
    a = tf.random.uniform((size, size), dtype=tf.float32)
    a, b = tf.cast(a, dtype), tf.cast(tf.transpose(a), dtype)
    product = tf.function(lambda x, y: tf.matmul(x, y))
    product(a, b).numpy()  # warm up
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        product(a, b).numpy()
        runs += 1
    return 2 * size**3 * runs / (time.perf_counter() - started) / 1e9


def in_subprocess(kind: str, *args: str) -> dict:
    """Run one measurement in a fresh Python process and return its JSON result."""
    command = [sys.executable, "-m", "fmnist.bench.training", kind, *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{' '.join(command[2:])}: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _main(argv: list[str]) -> None:
    kind = argv[0]
    if kind == "train":
        model, precision, batch, seconds = argv[1], argv[2], int(argv[3]), float(argv[4])
        speed = measure_training(model, precision, batch, seconds)
        print(json.dumps({**asdict(speed), "gflops": speed.gflops}))
    elif kind == "gemm":
        precision, seconds = argv[1], float(argv[2])
        print(
            json.dumps(
                {"precision": precision, "gflops": measure_gemm_gflops(precision, 2048, seconds)}
            )
        )
    else:
        raise SystemExit(f"unknown measurement {kind!r}: train or gemm")


if __name__ == "__main__":
    _main(sys.argv[1:])
