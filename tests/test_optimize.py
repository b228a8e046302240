"""OpenVINO IR export, NNCF INT8, the OpenVINO engines and evaluate for every variant."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import run_with_model

from fmnist.cli import main
from fmnist.data import to_model_input
from fmnist.engines import create_engine, predict_in_batches
from fmnist.engines import openvino as openvino_engines
from fmnist.engines.int8_check import Int8Bounds
from fmnist.engines.keras import load_keras_model
from fmnist.engines.openvino import (
    VariantUnsupported,
    core,
    cpu_capabilities,
    mark_needs_int8_dot_product,
    needs_int8_dot_product,
)
from fmnist.engines.optimize import (
    OptimizeConfig,
    classifier_head,
    convert_keras,
    int8_methods,
    layer_precisions,
    optimize_model,
    quantization_data,
    save_ir_atomic,
)
from fmnist.io import FmnistError, RunLayout, sha256_file
from fmnist.manifest import manifest_dict
from fmnist.system import has_int8_dot_product

pytestmark = pytest.mark.slow

# Any INT8 passes: for tests about the graph, not about how close INT8 comes to f32.
ANY_INT8 = Int8Bounds(
    max_drop=1.0, max_loss_change=1e9, max_confidence_change=1.0, max_mean_abs_dp=1.0
)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def optimized_run(trained_run, tmp_path_factory, dataset_dir):
    """A copy of the trained run with f32 IRs of all three models and backup1's INT8 IR."""
    run = tmp_path_factory.mktemp("optimized") / "run"
    shutil.copytree(trained_run, run)
    for model in ("main", "backup2"):
        optimize_model(run, OptimizeConfig(model, parity_size=64), progress=lambda m: None)
    config = OptimizeConfig(
        "backup1", int8=True, calibration_size=100, validation_size=1000, parity_size=64
    )
    optimize_model(run, config, progress=lambda m: None)
    return run


@pytest.fixture(scope="module")
def test_images(dataset):
    return to_model_input(dataset.test.images[:600]), dataset.test.labels[:600]


@pytest.mark.parametrize("model", ["main", "backup1", "backup2"])
def test_f32_ir_matches_keras_on_test_images(optimized_run, test_images, model):
    images, _ = test_images
    keras_model = load_keras_model(RunLayout(optimized_run).keras_model(model))
    expected = np.concatenate(
        [keras_model.predict_on_batch(images[i : i + 250]) for i in range(0, len(images), 250)]
    )
    for mode in ("latency", "throughput"):
        engine = create_engine(optimized_run, model, "openvino-f32", mode)
        assert engine.info.executed_precision == "f32"
        got = predict_in_batches(engine, images, batch_size=250)
        assert got.shape == (len(images), 10)
        assert np.max(np.abs(got - expected)) < 1e-4, (model, mode)


def test_ir_has_a_dynamic_batch_and_every_batch_size_runs(optimized_run, test_images):
    images, _ = test_images
    engine = create_engine(optimized_run, "backup1", "openvino-f32", "latency")
    reference = engine.predict(images[:300])
    for size in (1, 7, 256, 300):
        assert np.allclose(engine.predict(images[:size]), reference[:size], atol=1e-5)
    throughput = create_engine(optimized_run, "backup1", "openvino-f32", "throughput")
    streamed = np.concatenate(list(throughput.predict_many([images[:7], images[7:300]])))
    assert np.allclose(streamed, reference, atol=1e-5)
    assert np.allclose(throughput.predict(images[:300]), reference, atol=1e-5)


def test_manifest_records_checksums_and_the_int8_check(optimized_run):
    layout = RunLayout(optimized_run)
    record = manifest_dict(optimized_run)["openvino"]["backup1"]
    for precision in ("f32", "int8"):
        xml = layout.openvino_ir("backup1", precision)
        assert record[precision]["xml_sha256"] == sha256_file(xml)
        assert record[precision]["bin_sha256"] == sha256_file(xml.with_suffix(".bin"))
    int8 = record["int8"]
    # The methods tried depend on whether this CPU has int8 dot products (VNNI, AMX).
    tried_here = int8_methods(True, has_int8_dot_product())
    assert int8["method"] in tried_here
    assert int8["calibration_images"] == 100 and int8["validation_images"] == 1000
    # Every method tried is recorded, in order, the chosen one last.
    methods = [attempt["method"] for attempt in int8["attempts"]]
    assert methods == list(tried_here[: len(methods)]) and methods[-1] == int8["method"]
    # The IR says whether it needs int8 dot products, as the manifest does.
    ir = core().read_model(str(layout.openvino_ir("backup1", "int8")))
    assert needs_int8_dot_product(ir) == int8["needs_int8_dot_product"]
    assert int8["needs_int8_dot_product"] == ("8bit-first-layer" in int8["method"])
    assert all(not attempt["accepted"] for attempt in int8["attempts"][:-1])
    assert int8["check"] == {k: v for k, v in int8["attempts"][-1].items() if k != "method"}
    if int8["accepted"]:
        within_chance = int8["check"]["drop_z"] <= Int8Bounds().drop_significance_z
        assert int8["validation_drop"] <= 0.003 + 1e-9 or within_chance
    assert "int8" in int8["layer_precisions"].values()
    assert set(int8["layer_precisions"].values()) <= {"int8", "f32"}
    assert record["f32"]["max_abs_diff_vs_keras"] < 1e-4
    # No temporary directories are left beside the IRs.
    assert sorted(p.name for p in layout.openvino_ir("backup1", "f32").parent.parent.iterdir()) == [
        "f32",
        "int8",
    ]


def test_int8_runs_in_int8_and_keeps_accuracy(optimized_run, test_images):
    images, labels = test_images
    f32 = create_engine(optimized_run, "backup1", "openvino-f32", "throughput")
    int8 = create_engine(optimized_run, "backup1", "openvino-int8", "throughput")
    assert int8.info.executed_precision.startswith("int8")
    assert int8.info.details["inference_precision_hint"] == "f32"
    f32_accuracy = np.mean(predict_in_batches(f32, images).argmax(1) == labels)
    int8_accuracy = np.mean(predict_in_batches(int8, images).argmax(1) == labels)
    # Accuracy control bounds the drop at 0.3 points on validation images; on 600 other
    # images allow a few images' worth of sampling noise on this barely trained model.
    assert f32_accuracy - int8_accuracy <= 0.01, (f32_accuracy, int8_accuracy)


def test_main_int8_is_quantized_from_its_convolution_head(trained_run, tmp_path, test_images):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    # A wide drop bound: this test is about the graph, not about accuracy control.
    config = OptimizeConfig(
        "main",
        int8=True,
        calibration_size=50,
        validation_size=300,
        parity_size=32,
        bounds=ANY_INT8,
        dense_as_conv=True,  # the default only where int8 kernels have no VNNI
    )
    result = optimize_model(run, config, progress=lambda m: None)
    (rewrite,) = result.int8["rewrites"]
    assert rewrite["dense"] == "dense" and rewrite["kernel"] == [14, 14]
    assert result.int8["rewrite_max_abs_diff"] < 1e-4
    record = manifest_dict(run)["openvino"]["main"]["int8"]
    assert record["rewrites"] == result.int8["rewrites"]
    assert record["method"] == "ptq" and record["accepted"]
    precisions = record["layer_precisions"]
    # Four convolutions of the network and the head's one, all run in int8.
    convolutions = [p for name, p in precisions.items() if name.startswith("Convolution")]
    assert convolutions == ["int8"] * 5
    images, labels = test_images
    f32 = create_engine(run, "main", "openvino-f32", "throughput")
    int8 = create_engine(run, "main", "openvino-int8", "throughput")
    f32_predicted = predict_in_batches(f32, images).argmax(1)
    int8_predicted = predict_in_batches(int8, images).argmax(1)
    # The graph NNCF quantized scores what the f32 IR scores (a rewritten graph reading
    # freed weights would score about 10 %).
    validation = quantization_data(config)
    f32_validation = predict_in_batches(f32, validation.validation).argmax(1)
    assert result.int8["f32_validation_accuracy"] == pytest.approx(
        np.mean(f32_validation == validation.validation_labels)
    )
    assert np.mean(f32_predicted == int8_predicted) >= 0.95
    assert abs(np.mean(f32_predicted == labels) - np.mean(int8_predicted == labels)) <= 0.03


def test_int8_check_figures_are_the_engines_probabilities(optimized_run):
    """The check optimize recorded, recomputed from the f32 and INT8 IRs it wrote."""
    record = manifest_dict(optimized_run)["openvino"]["backup1"]["int8"]
    check = record["check"]
    config = OptimizeConfig("backup1", calibration_size=100, validation_size=1000)
    data = quantization_data(config)
    f32 = predict_in_batches(
        create_engine(optimized_run, "backup1", "openvino-f32", "throughput"), data.validation
    )
    int8 = predict_in_batches(
        create_engine(optimized_run, "backup1", "openvino-int8", "throughput"), data.validation
    )
    labels = data.validation_labels
    picked = np.arange(len(labels)), labels
    assert check["f32_images"] == check["int8_images"] == 1000
    assert check["f32_accuracy"] == pytest.approx(np.mean(f32.argmax(1) == labels))
    assert check["int8_accuracy"] == pytest.approx(np.mean(int8.argmax(1) == labels))
    for name, probabilities in (("f32", f32), ("int8", int8)):
        loss = -np.mean(np.log(np.clip(probabilities[picked], 1e-7, 1)))
        assert check[f"{name}_loss"] == pytest.approx(loss, rel=1e-4)
    assert check["f32_confidence"] == pytest.approx(np.mean(f32.max(1)), rel=1e-5)
    assert check["int8_confidence"] == pytest.approx(np.mean(int8.max(1)), rel=1e-5)
    assert check["mean_abs_dp"] == pytest.approx(np.mean(np.abs(int8 - f32)), rel=1e-3)
    assert check["accepted"] == record["accepted"]
    f32_right, int8_right = f32.argmax(1) == labels, int8.argmax(1) == labels
    assert check["lost"] == np.sum(f32_right & ~int8_right)
    assert check["gained"] == np.sum(int8_right & ~f32_right)
    bounds = Int8Bounds()
    flips = check["lost"] + check["gained"]
    z = (check["lost"] - check["gained"]) / np.sqrt(flips) if flips else 0.0
    within = (
        (
            check["f32_accuracy"] - check["int8_accuracy"] <= bounds.max_drop + 1e-9
            or z <= bounds.drop_significance_z
        )
        and abs(check["int8_loss"] / check["f32_loss"] - 1) <= bounds.max_loss_change
        and abs(check["int8_confidence"] - check["f32_confidence"]) <= bounds.max_confidence_change
        and check["mean_abs_dp"] <= bounds.max_mean_abs_dp
    )
    assert check["accepted"] == within, check["reason"]
    # A faithful INT8 model of this small backup1 (one epoch on 3,000 images).
    assert check["accepted"], check["reason"]
    # The first look at the speed-up, beside the check (its value is the CPU's business).
    assert record["speedup_batch256"] > 0


def test_int8_keeps_the_probabilities_on_test_images(optimized_run, tmp_path):
    """evaluate's figures on test images the check never saw, and score's choice."""
    run = run_with_model(optimized_run, "backup1", tmp_path)
    for variant in ("openvino-f32", "openvino-int8"):
        result = invoke(
            "evaluate", "--run", run, "--model", "backup1", "--variant", variant, "--limit", 2000
        )
        assert result.exit_code == 0, result.output
    layout = RunLayout(run)
    f32 = pd.read_parquet(layout.metrics("backup1", "openvino-f32")).iloc[0]
    int8 = pd.read_parquet(layout.metrics("backup1", "openvino-int8")).iloc[0]
    assert np.isnan(f32["mean_abs_dp_vs_f32"])  # the reference itself
    assert 0 < int8["mean_abs_dp_vs_f32"] <= Int8Bounds().max_mean_abs_dp
    assert abs(int8["loss"] / f32["loss"] - 1) <= 0.05
    assert abs(int8["mean_confidence"] - f32["mean_confidence"]) <= 0.01
    assert "Mean |Δp| vs openvino-f32" in result.output
    from fmnist.scoring.score import default_variant

    variant, why = default_variant(run, "backup1")
    assert variant == "openvino-int8", why


@pytest.mark.parametrize("model", ["main", "backup1", "backup2"])
def test_classifier_head_of_each_model_is_its_last_dense_and_softmax(trained_run, model):
    ov_model, keras_model = convert_keras(RunLayout(trained_run).keras_model(model))
    last = keras_model.layers[-1].name
    head = classifier_head(ov_model)
    kinds = {op.get_friendly_name(): op.get_type_name() for op in ov_model.get_ordered_ops()}
    assert [kinds[name] for name in head] == ["MatMul", "Softmax"]
    assert all(f"/{last}" in name for name in head), head


def test_int8_with_the_head_in_f32_runs_the_head_in_f32(optimized_run, tmp_path):
    import nncf

    ov_model, _ = convert_keras(RunLayout(optimized_run).keras_model("backup1"))
    head = classifier_head(ov_model)
    data = quantization_data(OptimizeConfig("backup1", calibration_size=50, validation_size=200))
    calibration = nncf.Dataset([image[np.newaxis] for image in data.calibration])
    quantized = nncf.quantize(
        ov_model, calibration, subset_size=50, ignored_scope=nncf.IgnoredScope(names=head)
    )
    compiled = core().compile_model(quantized, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    precisions = layer_precisions(compiled)
    # The last dense runs in f32, the other dense layers and the convolutions in int8.
    f32_layers = [name for name, precision in precisions.items() if precision != "int8"]
    assert len(f32_layers) == 1 and "dense_4" in f32_layers[0], precisions
    assert list(precisions.values()).count("int8") == len(precisions) - 1


def test_bf16_runs_only_where_the_cpu_has_it(optimized_run):
    if "BF16" in cpu_capabilities():
        engine = create_engine(optimized_run, "backup1", "openvino-bf16", "latency")
        assert engine.info.executed_precision == "bf16"
    else:
        with pytest.raises(VariantUnsupported, match="bf16"):
            create_engine(optimized_run, "backup1", "openvino-bf16", "latency")


def test_an_int8_ir_needing_vnni_runs_only_where_the_cpu_has_it(
    optimized_run, tmp_path, monkeypatch, test_images
):
    run = run_with_model(optimized_run, "backup1", tmp_path)
    xml = RunLayout(run).openvino_ir("backup1", "int8")
    model = core().read_model(str(xml))
    mark_needs_int8_dot_product(model)
    # Not over the files it was read from: the weights are mapped from the .bin.
    save_ir_atomic(model, xml)
    assert needs_int8_dot_product(core().read_model(str(xml)))
    # A rewrite on purpose: recorded as such, or the manifest's hash refuses it.
    assert invoke("adopt", run, "models/backup1/openvino/int8/model.xml").exit_code == 0
    images, _ = test_images
    if has_int8_dot_product():
        engine = create_engine(run, "backup1", "openvino-int8", "throughput")
        assert engine.predict(images[:10]).shape == (10, 10)
    # oneDNN capped below VNNI, as OpenVINO's int8 kernels then are: refused for real.
    command = [sys.executable, "-m", "fmnist", "evaluate", "--run", str(run), "--model"]
    command += ["backup1", "--variant", "openvino-int8", "--limit", "50", "--skip-unsupported"]
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    capped = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert capped.returncode == 0, capped.stderr[-2000:]
    skipped = manifest_dict(run)["evaluations"]["backup1__openvino-int8"]["skipped"]
    assert "VNNI or AMX" in skipped and "ONEDNN_MAX_CPU_ISA" in skipped
    # What a CPU without VNNI or AMX sees (this one's flags come from /proc/cpuinfo).
    monkeypatch.setattr(openvino_engines, "has_int8_dot_product", lambda: False)
    with pytest.raises(VariantUnsupported, match=f"{xml}: .*VNNI or AMX"):
        create_engine(run, "backup1", "openvino-int8", "throughput")
    result = invoke("evaluate", "--run", run, "--model", "backup1", "--variant", "openvino-int8")
    assert result.exit_code == 1 and "optimize --int8' on this node type" in result.output


def test_missing_or_corrupt_ir_is_an_error_naming_the_file(optimized_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(optimized_run, run, ignore=shutil.ignore_patterns("*.keras", "main"))
    layout = RunLayout(run)
    xml = layout.openvino_ir("backup2", "f32")
    shutil.rmtree(xml.parent)
    with pytest.raises(FmnistError, match=f"{xml}: OpenVINO IR file not found"):
        create_engine(run, "backup2", "openvino-f32")

    xml = layout.openvino_ir("backup1", "f32")
    xml.with_suffix(".bin").unlink()
    with pytest.raises(FmnistError, match=f"{xml.with_suffix('.bin')}: model file not found"):
        create_engine(run, "backup1", "openvino-f32")

    # A changed file is refused by its hash first; adopted on purpose, by its reader.
    xml = layout.openvino_ir("backup1", "int8")
    xml.write_text(xml.read_text()[:500])
    with pytest.raises(FmnistError, match=f"{xml}: sha256 [0-9a-f]+ is not the recorded"):
        create_engine(run, "backup1", "openvino-int8")
    assert invoke("adopt", run, "models/backup1/openvino/int8/model.xml").exit_code == 0
    with pytest.raises(FmnistError, match=f"{xml}: cannot read OpenVINO IR"):
        create_engine(run, "backup1", "openvino-int8")

    result = invoke("evaluate", "--run", run, "--model", "backup2", "--variant", "openvino-f32")
    assert result.exit_code == 1
    assert "openvino/f32/model.xml: OpenVINO IR file not found" in result.output


def test_truncated_weights_are_an_error_naming_the_file(optimized_run, tmp_path):
    run = run_with_model(optimized_run, "backup1", tmp_path)
    weights = RunLayout(run).openvino_ir("backup1", "f32").with_suffix(".bin")
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(FmnistError, match=f"{weights}: sha256 [0-9a-f]+ is not the recorded"):
        create_engine(run, "backup1", "openvino-f32")
    assert invoke("adopt", run, "models/backup1/openvino/f32/model.bin").exit_code == 0
    with pytest.raises(FmnistError, match="backup1/openvino/f32/model.xml"):
        create_engine(run, "backup1", "openvino-f32").predict(np.zeros((1, 28, 28, 1), "f4"))


def test_optimize_cli_writes_the_f32_ir(trained_run, tmp_path):
    run = run_with_model(trained_run, "backup1", tmp_path)
    result = invoke("optimize", "--run", run, "--model", "backup1")
    assert result.exit_code == 0, result.output
    assert "backup1: f32 IR" in result.output and "max |IR - Keras|" in result.output
    assert RunLayout(run).openvino_ir("backup1", "f32").is_file()
    assert not RunLayout(run).openvino_ir("backup1", "int8").exists()

    result = invoke("optimize", "--run", run, "--model", "backup2")
    assert result.exit_code == 1
    assert "backup2/model.keras: model file not found" in result.output


def test_evaluate_cli_for_the_openvino_variants(optimized_run, tmp_path):
    run = run_with_model(optimized_run, "backup1", tmp_path)
    for variant in ("openvino-f32", "openvino-int8"):
        result = invoke(
            "evaluate", "--run", run, "--model", "backup1", "--variant", variant, "--limit", 500
        )
        assert result.exit_code == 0, result.output
        metrics = pd.read_parquet(RunLayout(run).metrics("backup1", variant))
        assert metrics["images"].iloc[0] == 500
    assert metrics["executed_precision"].iloc[0].startswith("int8")

    args = ["evaluate", "--run", run, "--model", "backup1", "--variant", "openvino-bf16"]
    if "BF16" not in cpu_capabilities():
        result = invoke(*args, "--limit", 100)
        assert result.exit_code == 1 and "bf16" in result.output
        result = invoke(*args, "--limit", 100, "--skip-unsupported")
        assert result.exit_code == 0 and "skipped backup1 (openvino-bf16)" in result.output
        assert not RunLayout(run).metrics("backup1", "openvino-bf16").exists()
        skipped = manifest_dict(run)["evaluations"]["backup1__openvino-bf16"]["skipped"]
        assert "bf16" in skipped  # the report shows this reason in the gap


def test_a_cpu_without_bf16_skips_openvino_bf16_with_its_reason(
    optimized_run, tmp_path, monkeypatch
):
    """The AVX2 / AVX-512-without-bf16 path, on any CPU: what the plugin reports decides."""
    run = run_with_model(optimized_run, "backup1", tmp_path)
    monkeypatch.setattr(openvino_engines, "cpu_capabilities", lambda: ["FP32", "INT8"])
    with pytest.raises(VariantUnsupported, match="capabilities are FP32, INT8"):
        create_engine(run, "backup1", "openvino-bf16")
    args = ["evaluate", "--run", run, "--model", "backup1", "--variant", "openvino-bf16"]
    result = invoke(*args, "--limit", 100)
    assert result.exit_code == 1 and "native bf16" in result.output
    result = invoke(*args, "--limit", 100, "--skip-unsupported")
    assert result.exit_code == 0 and "skipped backup1 (openvino-bf16)" in result.output
    assert not RunLayout(run).metrics("backup1", "openvino-bf16").exists()
    assert "bf16" in manifest_dict(run)["evaluations"]["backup1__openvino-bf16"]["skipped"]


def test_bf16_the_plugin_cannot_compile_is_skipped_with_the_plugins_reason(optimized_run, tmp_path):
    """oneDNN capped at AVX2: the plugin may still report BF16 but has no bf16 pooling."""
    run = run_with_model(optimized_run, "main", tmp_path)
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    command = [sys.executable, "-m", "fmnist", "evaluate", "--run", str(run), "--model", "main"]
    command += ["--variant", "openvino-bf16", "--limit", "50", "--skip-unsupported"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "skipped main (openvino-bf16)" in result.stdout + result.stderr
    reason = manifest_dict(run)["evaluations"]["main__openvino-bf16"]["skipped"]
    assert "bf16" in reason and "Exception from" not in reason, reason


def test_openvino_errors_are_cut_to_their_reason():
    from fmnist.engines.openvino import plugin_reason

    message = (
        "Exception from src/inference/src/cpp/core.cpp:117:\n"
        "Exception from src/inference/src/dev/plugin.cpp:54:\n"
        "Check '!getSupportedPrimitiveDescriptors().empty()' failed at node.cpp:345:\n"
        "Supported primitive descriptors list is empty for node: MaxPool_124 type: Pooling\n\n"
    )
    assert plugin_reason(RuntimeError(message)) == (
        "Supported primitive descriptors list is empty for node: MaxPool_124 type: Pooling"
    )
    assert plugin_reason(RuntimeError("Exception from x.cpp:1:")) == "Exception from x.cpp:1:"
    assert plugin_reason(RuntimeError("")) == "no reason given"


def test_optimize_and_benchmark_commands_have_help_with_an_example():
    for command in ("optimize", "benchmark"):
        result = invoke(command, "--help")
        assert result.exit_code == 0 and "Example" in result.output
