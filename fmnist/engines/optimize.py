"""Trained Keras model -> OpenVINO IR (f32 weights) and, optionally, an NNCF INT8 IR.

The IR keeps the batch dimension dynamic ([-1, 28, 28, 1]): converting with batch 1
would bake that batch into the Flatten reshape and no other batch size would run.
INT8 comes from NNCF post-training quantization calibrated on training images. Its
accuracy is checked on the held-out validation images (never the test set, which
reports it); when plain quantization loses more than ``max_drop``, it is redone with
NNCF's full bias correction, and if that still loses too much, NNCF's
accuracy-controlled quantization keeps the most sensitive layers in f32.

The INT8 IR is quantized from a rewritten graph when the model has a large Flatten +
Dense head (``fmnist.engines.rewrite``): the same function, but a layer the CPU's int8 kernels
run well. The rewritten f32 graph is checked against the f32 IR before it is quantized.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fmnist.data import load_dataset, to_model_input, train_validation_split
from fmnist.engines.keras import load_keras_model
from fmnist.engines.openvino import COMPUTE_LAYERS, core
from fmnist.engines.rewrite import dense_heads_as_convolutions
from fmnist.io import FmnistError, RunLayout, read_manifest, sha256_file, update_manifest
from fmnist.jobenv import record_job

INPUT_NAME, OUTPUT_NAME = "images", "probabilities"
DYNAMIC_INPUT_SHAPE = [-1, 28, 28, 1]
# The INT8 acceptance bound: at most this accuracy (0.3 points) below f32. Quantization
# is redone until it holds, and ``score`` picks INT8 by default only when it holds.
INT8_MAX_DROP = 0.003


def int8_acceptable(
    f32_accuracy: float, int8_accuracy: float, max_drop: float = INT8_MAX_DROP
) -> tuple[bool, str]:
    """Whether INT8 is close enough to f32 to use in its place, and why (one line)."""
    points = 100 * max_drop
    if int8_accuracy >= f32_accuracy - max_drop:
        return True, (
            f"int8 accuracy {int8_accuracy:.4f} within {points:.1f} points of f32 "
            f"{f32_accuracy:.4f}"
        )
    return False, (
        f"int8 accuracy {int8_accuracy:.4f} more than {points:.1f} points below f32 "
        f"{f32_accuracy:.4f}"
    )


@dataclass(frozen=True)
class OptimizeConfig:
    """What ``fmnist-batch optimize`` does for one model."""

    model: str
    int8: bool = False
    calibration_size: int = 300  # training images NNCF collects statistics on
    validation_size: int = 3000  # held-out images the INT8 accuracy drop is measured on
    max_drop: float = INT8_MAX_DROP  # largest acceptable INT8 accuracy loss
    parity_size: int = 512  # test images the f32 IR is compared with Keras on
    dense_as_conv: bool = True  # quantize large Flatten + Dense heads as convolutions
    seed: int = 0
    data_dir: str | None = None


@dataclass
class OptimizeResult:
    """The IRs written and how they compare with the model they came from."""

    model: str
    f32_xml: Path
    f32_max_abs_diff: float
    int8_xml: Path | None = None
    int8: dict = field(default_factory=dict)
    seconds: float = 0.0


def save_ir_atomic(ov_model, xml: Path) -> None:
    """Save an IR (model.xml + model.bin, f32 weights) so it appears complete or not at all.

    The pair is written into a temporary directory that then replaces the target one.
    """
    import openvino as ov

    target = xml.parent
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    old = target.parent / f".{target.name}.old-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        ov.save_model(ov_model, str(tmp / xml.name), compress_to_fp16=False)
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)


def convert_keras(keras_path: Path):
    """The OpenVINO model of a saved Keras model, with a dynamic batch dimension."""
    keras_model = load_keras_model(keras_path)
    return convert_loaded(keras_model), keras_model


def convert_loaded(keras_model):
    """The OpenVINO model of an in-memory Keras model, with a dynamic batch dimension."""
    import openvino as ov

    # Copy the weights: a shared-weights model reads freed memory once the Keras model
    # it came from is garbage collected (the rewritten graph is a temporary one).
    ov_model = ov.convert_model(keras_model, input=DYNAMIC_INPUT_SHAPE, share_weights=False)
    ov_model.inputs[0].get_tensor().set_names({INPUT_NAME})
    ov_model.outputs[0].get_tensor().set_names({OUTPUT_NAME})
    return ov_model


def int8_source(
    ov_model,
    keras_model,
    config: OptimizeConfig,
    test: np.ndarray,
    ir_probabilities: np.ndarray,
    progress,
):
    """The f32 graph to quantize, and a record of the rewrites applied to it.

    With ``config.dense_as_conv`` and a large Flatten + Dense head, the rewritten graph,
    after checking it gives the f32 IR's probabilities (``ir_probabilities``, already
    computed on ``test``); else ``ov_model``.
    """
    if not config.dense_as_conv:
        return ov_model, {"rewrites": []}
    rewritten, rewrites = dense_heads_as_convolutions(keras_model)
    if not rewrites:
        return ov_model, {"rewrites": []}
    source = convert_loaded(rewritten)
    diff = float(np.max(np.abs(_infer(_compile_f32(source), test) - ir_probabilities)))
    names = ", ".join(f"{r.dense} -> {r.convolution} {r.kernel[0]}x{r.kernel[1]}" for r in rewrites)
    progress(f"  int8 graph: {names} (max |rewritten - f32 IR| {diff:.2e})")
    if diff > 1e-4:
        raise FmnistError(
            f"{config.model}: the rewritten graph differs from the f32 IR by {diff:.2e}; "
            "rerun with --no-dense-as-conv"
        )
    # Lists, not tuples: the record goes to the JSON manifest as it is.
    records = [{**asdict(r), "kernel": list(r.kernel)} for r in rewrites]
    return source, {"rewrites": records, "rewrite_max_abs_diff": diff}


def _infer(compiled, images: np.ndarray, batch_size: int = 250) -> np.ndarray:
    request = compiled.create_infer_request()
    parts = [
        request.infer(images[i : i + batch_size])[0].copy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(parts)


def _compile_f32(ov_model):
    # Explicit f32: the parity and accuracy figures must not depend on the CPU's bf16.
    return core().compile_model(ov_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


def accuracy(compiled, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of a compiled OpenVINO model on model-ready images."""
    return float(np.mean(_infer(compiled, images).argmax(axis=1) == labels))


@dataclass(frozen=True)
class QuantizationData:
    """Calibration images (training part) and validation images + labels (held out)."""

    calibration: np.ndarray
    validation: np.ndarray
    validation_labels: np.ndarray


def quantization_data(config: OptimizeConfig) -> QuantizationData:
    """Calibration and validation images, split exactly as training split them."""
    dataset = load_dataset(config.data_dir)
    train, validation = train_validation_split(dataset.train, 0.1, config.seed)
    order = np.random.default_rng(config.seed).permutation(len(train))
    picked = np.sort(order[: config.calibration_size])
    validation = validation.head(config.validation_size)
    return QuantizationData(
        calibration=to_model_input(train.images[picked]),
        validation=to_model_input(validation.images),
        validation_labels=validation.labels.astype(np.int64),
    )


def quantize_int8(
    ov_model, data: QuantizationData, config: OptimizeConfig, progress: Callable[[str], None]
):
    """INT8 model by NNCF PTQ; falls back to accuracy control when PTQ loses too much.

    Returns the quantized model and a record of accuracies, drop and method.
    """
    import nncf

    # NNCF logs and draws progress bars on stdout, which belongs to the command's result.
    nncf.set_log_level(logging.WARNING)
    with contextlib.redirect_stdout(sys.stderr):
        return _quantize_int8(ov_model, data, config, progress)


def _quantize_int8(ov_model, data: QuantizationData, config: OptimizeConfig, progress):
    import nncf

    calibration = nncf.Dataset([image[np.newaxis] for image in data.calibration])
    size = len(data.calibration)
    f32_accuracy = accuracy(_compile_f32(ov_model), data.validation, data.validation_labels)
    progress(f"  quantizing with NNCF on {size} training images")
    quantized = nncf.quantize(ov_model, calibration, subset_size=size)
    int8_accuracy = accuracy(_compile_f32(quantized), data.validation, data.validation_labels)
    record = {
        "method": "ptq",
        "calibration_images": size,
        "validation_images": len(data.validation),
        "f32_validation_accuracy": f32_accuracy,
        "ptq_validation_accuracy": int8_accuracy,
        "max_drop": config.max_drop,
    }
    progress(
        f"  validation accuracy f32 {f32_accuracy:.4f}, int8 {int8_accuracy:.4f} "
        f"(drop {100 * (f32_accuracy - int8_accuracy):.2f} points)"
    )
    if not int8_acceptable(f32_accuracy, int8_accuracy, config.max_drop)[0]:
        # Full bias correction often recovers the loss with every layer still in int8;
        # accuracy control, which returns layers to f32, is the last resort.
        progress(f"  drop above {100 * config.max_drop:.2f} points: PTQ with full bias correction")
        quantized = nncf.quantize(
            ov_model, calibration, subset_size=size, fast_bias_correction=False
        )
        int8_accuracy = accuracy(_compile_f32(quantized), data.validation, data.validation_labels)
        record.update(
            method="ptq+bias-correction", bias_correction_validation_accuracy=int8_accuracy
        )
        progress(f"  validation accuracy int8 {int8_accuracy:.4f}")
    if not int8_acceptable(f32_accuracy, int8_accuracy, config.max_drop)[0]:
        progress(f"  drop above {100 * config.max_drop:.2f} points: accuracy-controlled PTQ")
        batches = [
            (data.validation[i : i + 250], data.validation_labels[i : i + 250])
            for i in range(0, len(data.validation), 250)
        ]
        validation = nncf.Dataset(batches, lambda item: item[0])

        def validate(compiled, items) -> float:
            correct = total = 0
            for images, labels in items:
                predicted = compiled(images)[0].argmax(axis=1)
                correct += int(np.sum(predicted == labels))
                total += len(labels)
            return correct / total

        quantized = nncf.quantize_with_accuracy_control(
            ov_model,
            calibration,
            validation,
            validate,
            max_drop=config.max_drop,
            drop_type=nncf.DropType.ABSOLUTE,
            subset_size=size,
        )
        int8_accuracy = accuracy(_compile_f32(quantized), data.validation, data.validation_labels)
        record["method"] = "ptq+accuracy-control"
    record["int8_validation_accuracy"] = int8_accuracy
    record["validation_drop"] = f32_accuracy - int8_accuracy
    record["layer_precisions"] = layer_precisions(_compile_f32(quantized))
    return quantized, record


def layer_precisions(compiled) -> dict[str, str]:
    """Compute layer -> the precision the CPU plugin runs it in ('int8' or 'f32')."""
    precisions = {}
    for op in compiled.get_runtime_model().get_ops():
        info = op.get_rt_info()
        if str(info["layerType"].astype(str)) in COMPUTE_LAYERS:
            runtime = str(info["runtimePrecision"].astype(str))
            precisions[op.get_friendly_name()] = "int8" if runtime in ("u8", "i8") else runtime
    return precisions


def optimize_model(
    run: Path | str, config: OptimizeConfig, progress: Callable[[str], None] = print
) -> OptimizeResult:
    """Write the f32 IR (and the INT8 IR with ``config.int8``) of one model of ``run``."""
    import openvino  # noqa: F401  (fail here, before the slow conversion, if it is missing)

    started = time.perf_counter()
    layout = RunLayout(Path(run))
    keras_path = layout.keras_model(config.model)
    progress(f"{config.model}: converting {keras_path} to OpenVINO IR (dynamic batch)")
    ov_model, keras_model = convert_keras(keras_path)
    f32_xml = layout.openvino_ir(config.model, "f32")
    save_ir_atomic(ov_model, f32_xml)

    test = to_model_input(load_dataset(config.data_dir).test.images[: config.parity_size])
    keras_probabilities = np.asarray(keras_model.predict_on_batch(test), dtype=np.float32)
    ir_probabilities = _infer(_compile_f32(ov_model), test)
    max_diff = float(np.max(np.abs(ir_probabilities - keras_probabilities)))
    progress(f"  {f32_xml}: max |IR - Keras| on {len(test)} test images {max_diff:.2e}")
    result = OptimizeResult(config.model, f32_xml, max_diff)
    record = {
        "config": asdict(config),
        "f32": {
            "xml": str(f32_xml.relative_to(layout.root)),
            "xml_sha256": sha256_file(f32_xml),
            "bin_sha256": sha256_file(f32_xml.with_suffix(".bin")),
            "keras_sha256": sha256_file(keras_path),
            "max_abs_diff_vs_keras": max_diff,
            "parity_images": len(test),
        },
    }
    if config.int8:
        if config.calibration_size < 1:
            raise FmnistError(f"--calibration-size must be positive, got {config.calibration_size}")
        source, rewrite_record = int8_source(
            ov_model, keras_model, config, test, ir_probabilities, progress
        )
        quantized, int8_record = quantize_int8(source, quantization_data(config), config, progress)
        int8_record.update(rewrite_record)
        int8_xml = layout.openvino_ir(config.model, "int8")
        save_ir_atomic(quantized, int8_xml)
        int8_record.update(
            xml=str(int8_xml.relative_to(layout.root)),
            xml_sha256=sha256_file(int8_xml),
            bin_sha256=sha256_file(int8_xml.with_suffix(".bin")),
        )
        result.int8_xml, result.int8 = int8_xml, int8_record
        record["int8"] = int8_record
        progress(f"  wrote {int8_xml} ({int8_record['method']})")
    result.seconds = time.perf_counter() - started
    record["seconds"] = round(result.seconds, 2)
    _merge_manifest(layout.root, config.model, record)
    record_job(layout.root, f"optimize {config.model}" + (" --int8" if config.int8 else ""))
    return result


def _merge_manifest(run: Path, model: str, record: dict) -> None:
    # An f32-only re-run must not erase the record of an INT8 IR that is still there.
    previous = read_manifest(run).get("openvino", {}).get(model, {})
    if "int8" not in record and "int8" in previous:
        record["int8"] = previous["int8"]
    update_manifest(run, "openvino", model, record)
