"""Trained Keras model -> OpenVINO IR (f32 weights) and, optionally, an NNCF INT8 IR.

The IR keeps the batch dimension dynamic ([-1, 28, 28, 1]): converting with batch 1
would bake that batch into the Flatten reshape and no other batch size would run.
INT8 comes from NNCF post-training quantization calibrated on training images. It is
checked against f32 on the held-out validation images (never the test set, which
reports it) by :class:`Int8Check`: accuracy, and whether INT8 keeps f32's probabilities
(loss relative to f32, mean top-1 confidence, mean |p_int8 - p_f32|). Accuracy alone
cannot tell a faithful INT8 model from one that predicts the same classes with
confidences shifted by 0.2. When plain quantization fails the check, it is redone with
the classifier head (the last compute op and the Softmax) kept in f32, and if that
fails too, NNCF's accuracy-controlled quantization returns the most sensitive layers to
f32 as well. Every attempt's figures go into the manifest.

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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fmnist.architectures import get_architecture
from fmnist.data import load_dataset, to_model_input, train_validation_split
from fmnist.engines.int8_check import Int8Bounds, Int8Check
from fmnist.engines.keras import load_keras_model
from fmnist.engines.openvino import COMPUTE_LAYERS, core, mark_needs_int8_dot_product
from fmnist.engines.rewrite import dense_heads_as_convolutions
from fmnist.io import FmnistError, RunLayout, sha256_file
from fmnist.manifest import IrRecord, check_model_files, record_ir
from fmnist.system import has_int8_dot_product

INPUT_NAME, OUTPUT_NAME = "images", "probabilities"
DYNAMIC_INPUT_SHAPE = [-1, 28, 28, 1]


@dataclass(frozen=True)
class OptimizeConfig:
    """What ``fmnist-batch optimize`` does for one model."""

    model: str
    int8: bool = False
    calibration_size: int = 300  # training images NNCF collects statistics on
    # Held-out images INT8 is checked against f32 on: the whole validation split (6,000),
    # since the accuracy figure's noise shrinks only with more images.
    validation_size: int = 6000
    bounds: Int8Bounds = Int8Bounds()  # how far INT8 may be from f32
    parity_size: int = 512  # test images the f32 IR is compared with Keras on
    # Quantize large Flatten + Dense heads as convolutions; None: only where int8 kernels
    # have no dot products (VNNI, AMX). There int8 convolutions run about 2x f32 and a
    # large int8 dense layer barely gains; with VNNI the dense layer is the faster form
    # (main: int8/f32 at batch 256 1.97x as it is, 1.74x rewritten).
    dense_as_conv: bool | None = None
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

    With ``config.dense_as_conv`` (by default: where int8 kernels have no dot products)
    and a large Flatten + Dense head, the rewritten graph, after checking it gives the
    f32 IR's probabilities (``ir_probabilities``, already computed on ``test``); else
    ``ov_model``.
    """
    rewrite = config.dense_as_conv
    if rewrite is None:
        rewrite = not has_int8_dot_product()
    if not rewrite:
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


# What a classifier head is made of, walking back from the output: the probabilities
# come from a Softmax (possibly after a bias Add or a Reshape) of the last compute op.
HEAD_COMPUTE_OPS = ("MatMul", "Convolution")
HEAD_SOFTMAX_OPS = ("Softmax", "LogSoftmax")
_HEAD_MAX_STEPS = 16


def classifier_head(ov_model) -> list[str]:
    """Friendly names of the head ops: the last MatMul/Convolution and the Softmax after it.

    Found by walking the graph back from the first output along its one non-constant
    input at a time (through bias Adds, Reshapes, Converts), so it holds for the
    rewritten graph too. Empty when the path forks or holds no compute op.
    """
    node = ov_model.get_results()[0]
    names: list[str] = []
    for _ in range(_HEAD_MAX_STEPS):
        sources = [value.get_node() for value in node.input_values()]
        data = [source for source in sources if not _is_constant(source)]
        if len(data) != 1:
            return []
        node = data[0]
        kind = node.get_type_name()
        if kind in HEAD_SOFTMAX_OPS:
            names.append(node.get_friendly_name())
        elif kind in HEAD_COMPUTE_OPS:
            return [node.get_friendly_name(), *names]
    return []


def _is_constant(node, depth: int = 4) -> bool:
    # Weights may reach an op through a Convert or Transpose of a Constant.
    if node.get_type_name() == "Constant":
        return True
    if node.get_type_name() == "Parameter" or depth == 0:
        return False
    sources = [value.get_node() for value in node.input_values()]
    return bool(sources) and all(_is_constant(source, depth - 1) for source in sources)


@dataclass(frozen=True)
class Attempt:
    """One way of quantizing tried, and its check against f32 on the validation images."""

    method: str
    check: Int8Check
    accepted: bool
    reason: str


def first_acceptable(
    methods: Sequence[str],
    quantize: Callable[[str], object],
    check: Callable[[object], Int8Check],
    bounds: Int8Bounds,
    progress: Callable[[str], None] = lambda message: None,
) -> tuple[object, list[Attempt]]:
    """Try ``methods`` in order until one's model passes the check; the last one otherwise.

    Returns the chosen model and every attempt made, the chosen one last.
    """
    attempts: list[Attempt] = []
    model = None
    for method in methods:
        model = quantize(method)
        figures = check(model)
        accepted, why = figures.acceptable(bounds)
        attempts.append(Attempt(method, figures, accepted, why))
        progress(f"  {method}: {'accepted' if accepted else 'rejected'}: {why}")
        if accepted:
            break
    return model, attempts


# The order quantization is tried in: all of the graph in int8; the classifier head kept
# in f32 (where a shifted logit scale changes every probability); then NNCF's accuracy
# control, which also returns the layers that cost accuracy to f32. Full bias correction
# is not tried: on backup1 it kept the accuracy but cut the mean confidence from 0.87 to
# 0.65 (test loss 0.33 -> 0.57).
INT8_METHODS = ("ptq", "ptq+f32-head", "ptq+f32-head+accuracy-control")
# NNCF quantizes the first layer's weights to 7 bits by default (its overflow fix), so
# that AVX2's 16-bit pair sums of u8 x s8 products cannot saturate. That cost backup1
# 0.35 points on the validation images (43 images lost, 22 gained); 8-bit weights gave
# -0.05 (14 lost, 17 gained) at the same speed, where accuracy control kept the first
# convolution in f32 and fell to 1.1x f32's throughput. On a CPU with int8 dot products
# (VNNI, AMX) nothing saturates, so there the full 8 bits come second, before anything
# is kept in f32; the IR is marked, and a CPU without them refuses it.
EIGHT_BIT_FIRST_LAYER = "8bit-first-layer"
INT8_METHODS_WITH_DOT_PRODUCT = (
    "ptq",
    f"ptq+{EIGHT_BIT_FIRST_LAYER}",
    f"ptq+{EIGHT_BIT_FIRST_LAYER}+f32-head",
    f"ptq+{EIGHT_BIT_FIRST_LAYER}+f32-head+accuracy-control",
)


def needs_dot_product(method: str) -> bool:
    """Whether a method's IR keeps the 8-bit first layer only VNNI or AMX run as checked."""
    return EIGHT_BIT_FIRST_LAYER in method.split("+")


def int8_methods(has_head: bool, int8_dot_product: bool) -> tuple[str, ...]:
    """The quantization methods to try in order, for a graph with or without a head.

    Without a head to keep in f32, the methods that would keep it are left out (they
    would repeat the one before).
    """
    methods = INT8_METHODS_WITH_DOT_PRODUCT if int8_dot_product else INT8_METHODS
    if has_head:
        return methods
    kept = [method.replace("+f32-head", "") for method in methods]
    return tuple(dict.fromkeys(kept))  # in order, each once


def quantize_int8(
    ov_model, data: QuantizationData, config: OptimizeConfig, progress: Callable[[str], None]
):
    """INT8 model by NNCF, checked against f32 on the validation images (:class:`Int8Check`).

    Tries :data:`INT8_METHODS` in order until one passes. Returns the quantized model and
    a record of the method, every attempt's figures and the chosen model's check.
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
    f32_probabilities = _infer(_compile_f32(ov_model), data.validation)
    head = classifier_head(ov_model)
    head_scope = nncf.IgnoredScope(names=head) if head else None
    progress(
        f"  quantizing with NNCF on {size} training images, checked on "
        f"{len(data.validation)} validation images; head {', '.join(head) or 'not found'}"
    )

    def quantize(method: str):
        options = nncf_options(method, head_scope)
        if method.endswith("+accuracy-control"):
            quantized = _accuracy_controlled(ov_model, calibration, data, config, options)
        else:
            quantized = nncf.quantize(ov_model, calibration, subset_size=size, **options)
        if needs_dot_product(method):
            mark_needs_int8_dot_product(quantized)
        return quantized

    def check(quantized) -> Int8Check:
        probabilities = _infer(_compile_f32(quantized), data.validation)
        return Int8Check.from_probabilities(
            f32_probabilities, probabilities, data.validation_labels
        )

    methods = int8_methods(bool(head), has_int8_dot_product())
    quantized, attempts = first_acceptable(methods, quantize, check, config.bounds, progress)
    chosen = attempts[-1]
    if not chosen.accepted:
        progress(
            f"  warning: no method keeps f32's figures; wrote {chosen.method} "
            "(score will not choose it by default)"
        )
    record = {
        "method": chosen.method,
        "accepted": chosen.accepted,
        "reason": chosen.reason,
        "calibration_images": size,
        "validation_images": len(data.validation),
        "bounds": asdict(config.bounds),
        "f32_head": head if "f32-head" in chosen.method else [],
        "needs_int8_dot_product": needs_dot_product(chosen.method),
        "check": chosen.check.record(config.bounds),
        "attempts": [{"method": a.method, **a.check.record(config.bounds)} for a in attempts],
        # The flat figures earlier manifests had, for readers that know only those.
        "f32_validation_accuracy": chosen.check.f32_accuracy,
        "int8_validation_accuracy": chosen.check.int8_accuracy,
        "validation_drop": chosen.check.accuracy_drop,
        "layer_precisions": layer_precisions(_compile_f32(quantized)),
    }
    return quantized, record


def nncf_options(method: str, head_scope) -> dict:
    """``nncf.quantize`` keyword arguments for a method name such as 'ptq+f32-head'."""
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    parts = method.split("+")
    unknown = set(parts) - {"ptq", EIGHT_BIT_FIRST_LAYER, "f32-head", "accuracy-control"}
    if parts[0] != "ptq" or unknown:
        raise ValueError(f"unknown INT8 method {method!r}")
    options = {}
    if "f32-head" in parts and head_scope is not None:
        options["ignored_scope"] = head_scope
    if EIGHT_BIT_FIRST_LAYER in parts:
        options["advanced_parameters"] = AdvancedQuantizationParameters(
            overflow_fix=OverflowFix.DISABLE
        )
    return options


def _accuracy_controlled(ov_model, calibration, data: QuantizationData, config, options: dict):
    import nncf

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

    return nncf.quantize_with_accuracy_control(
        ov_model,
        calibration,
        validation,
        validate,
        max_drop=config.bounds.max_drop,
        drop_type=nncf.DropType.ABSOLUTE,
        subset_size=len(data.calibration),
        ignored_scope=options.get("ignored_scope"),
        advanced_quantization_parameters=options.get("advanced_parameters"),
    )


def throughput_ratio(
    f32_model, int8_model, batch: int = 256, rounds: int = 5, seconds: float = 0.2
) -> float:
    """INT8's images/s over f32's at ``batch``, a first look for the manifest.

    The two are timed in alternating rounds on one request each, so a change in machine
    load touches both alike; the median of the per-round ratios is returned. The
    benchmark stage measures both properly; this is what ``optimize`` can tell at once
    (a method that keeps layers in f32 can lose the whole speed-up).
    """
    images = np.random.default_rng(0).random((batch, 28, 28, 1), dtype=np.float32)
    requests = [_compile_f32(model).create_infer_request() for model in (f32_model, int8_model)]
    for request in requests:
        request.infer(images)  # the first call allocates
    ratios = []
    for _ in range(rounds):
        f32_rate, int8_rate = (_rate(request, images, seconds) for request in requests)
        ratios.append(int8_rate / f32_rate)
    return float(np.median(ratios))


def _rate(request, images: np.ndarray, seconds: float) -> float:
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds or done == 0:
        request.infer(images)
        done += len(images)
    return done / elapsed


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
    get_architecture(config.model)  # an unknown name lists the valid ones
    keras_path = layout.keras_model(config.model)
    check_model_files(layout.root, keras_path)  # the model train recorded, or nothing
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
        # Against the f32 IR the benchmark measures, not the rewritten graph.
        int8_record["speedup_batch256"] = round(throughput_ratio(ov_model, quantized), 2)
        progress(f"  int8/f32 throughput at batch 256: {int8_record['speedup_batch256']}x")
        int8_xml = layout.openvino_ir(config.model, "int8")
        save_ir_atomic(quantized, int8_xml)
        int8_record.update(
            xml=str(int8_xml.relative_to(layout.root)),
            xml_sha256=sha256_file(int8_xml),
            bin_sha256=sha256_file(int8_xml.with_suffix(".bin")),
        )
        result.int8_xml, result.int8 = int8_xml, int8_record
        record["int8"] = int8_record
        verdict = "accepted" if int8_record["accepted"] else "NOT accepted"
        progress(f"  wrote {int8_xml} ({int8_record['method']}, {verdict})")
    result.seconds = time.perf_counter() - started
    record["seconds"] = round(result.seconds, 2)
    record_ir(layout.root, config.model, IrRecord.from_dict(record))
    return result
