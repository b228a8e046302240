"""The benchmark: statistics, timings Parquet, workers per oneDNN setting, benchmark_app."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import run_with_model

from fmnist.bench.config import BenchConfig, parse_batch_sizes, parse_variants
from fmnist.bench.latency import (
    LATENCY_ROUNDS,
    latency_stats,
    round_medians,
    time_calls,
    warm_up,
)
from fmnist.bench.summary import summary_table
from fmnist.bench.timings import (
    COLUMNS,
    local_job_id,
    measured_row,
    timings_frame,
    write_timings,
)
from fmnist.bench.workers import process_groups
from fmnist.bench.yardstick import benchmark_app_command, parse_benchmark_app
from fmnist.cli import main
from fmnist.data import to_model_input
from fmnist.engines import create_engine, variant_artifact
from fmnist.engines.int8_check import Int8Bounds
from fmnist.engines.openvino import compile_ir, cpu_capabilities
from fmnist.engines.optimize import OptimizeConfig, optimize_model
from fmnist.io import FmnistError, RunLayout
from fmnist.pipeline.jobenv import file_job_id, parse_job_environment

BENCHMARK_APP_REPORT = """
[Step 11/11] Dumping statistics report
[ INFO ]   NUM_STREAMS: 1
[ INFO ]   INFERENCE_NUM_THREADS: 2
[ INFO ] Execution Devices:['CPU']
[ INFO ] Count:            6659 iterations
[ INFO ] Duration:         3019.65 ms
[ INFO ] Latency:
[ INFO ]    Median:        98.63 us
[ INFO ]    Average:       1.41 ms
[ INFO ]    Min:           77.59 us
[ INFO ]    Max:           445149.98 us
[ INFO ] Throughput:   2205.22 FPS
"""


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# --------------------------------------------------------------------------- units


def test_latency_stats_percentiles_and_rate():
    seconds = [i / 1000 for i in range(1, 101)]  # 1..100 ms
    stats = latency_stats(seconds, images_per_call=2)
    assert stats.iterations == 100
    assert stats.p50_ms == pytest.approx(50.5) and stats.p99_ms == pytest.approx(99.01)
    assert stats.p90_ms == pytest.approx(90.1) and stats.mean_ms == pytest.approx(50.5)
    assert stats.images_per_second == pytest.approx(200 / sum(seconds))
    # A pipelined stream: the rate comes from the wall time, not the sum of intervals.
    assert latency_stats([0.01] * 10, 32, total_seconds=0.05).images_per_second == 6400
    with pytest.raises(FmnistError):
        latency_stats([], 1)


class FakeClock:
    """A clock that only the timed calls advance, each by ``step`` seconds."""

    def __init__(self, step: float):
        self.now, self.step, self.calls = 0.0, step, 0

    def __call__(self) -> float:
        return self.now

    def call(self, x) -> None:
        self.now += self.step
        self.calls += 1


def test_time_calls_warms_up_and_respects_the_budget():
    calls = []
    config = BenchConfig("r", "m", iterations=50, warmup=5, max_seconds=0.0, min_iterations=3)
    times = time_calls(calls.append, [np.zeros(1), np.ones(1)], config)
    assert len(times) == 3  # budget exhausted: stop at the minimum
    assert len(calls) == 3 + 3  # warm-up also stops early once past the budget (>= 3 calls)
    assert [float(x[0]) for x in calls] == [0, 1, 0, 0, 1, 0]  # inputs in turn, both phases


def test_latency_is_timed_for_the_whole_budget_after_a_tenth_of_it_warming_up():
    # A 1 ms call and a 10 s budget: no call count cuts the window short by default.
    clock = FakeClock(0.001)
    config = BenchConfig("r", "m", warmup=50, max_seconds=10.0)
    assert config.iterations is None
    assert warm_up(clock.call, [np.zeros(1)], config, clock) == 1000  # 1 s, not 50 calls
    clock = FakeClock(0.001)
    times = time_calls(clock.call, [np.zeros(1)], config, clock)
    assert clock.calls == 1000 + len(times)
    assert len(times) == pytest.approx(10_000, abs=2) and sum(times) == pytest.approx(10.0, 1e-3)
    # A cap, when given, still stops the window.
    capped = BenchConfig("r", "m", iterations=20, warmup=50, max_seconds=10.0)
    clock = FakeClock(0.001)
    assert len(time_calls(clock.call, [np.zeros(1)], capped, clock)) == 20
    # --warmup 0 times from the first call.
    clock = FakeClock(0.001)
    assert warm_up(clock.call, [np.zeros(1)], BenchConfig("r", "m", warmup=0), clock) == 0


def test_a_slow_variant_warms_up_for_a_quarter_of_the_budget_at_most():
    clock = FakeClock(1.0)  # keras-predict-like: a second a call
    config = BenchConfig("r", "m", warmup=50, max_seconds=10.0, min_iterations=5)
    assert warm_up(clock.call, [np.zeros(1)], config, clock) == 3  # 3 s > 2.5 s: stop
    clock = FakeClock(1.0)
    times = time_calls(clock.call, [np.zeros(1)], config, clock)
    assert len(times) == 11  # the call that crosses the 10 s deadline is the last


def test_round_medians_split_the_window_into_consecutive_slices():
    seconds = [i / 1000 for i in range(1, 11)]  # 1..10 ms
    assert round_medians(seconds, 5) == pytest.approx((1.5, 3.5, 5.5, 7.5, 9.5))
    assert round_medians(seconds, 3) == pytest.approx((2.5, 6.0, 9.0))  # sizes 4, 3, 3
    assert round_medians(seconds[:2], 5) == pytest.approx((1.0, 2.0))  # fewer calls
    assert round_medians([], 5) == () and round_medians(seconds, 0) == ()
    stats = latency_stats(seconds, 1, rounds=LATENCY_ROUNDS)
    assert stats.round_p50_ms == pytest.approx((1.5, 3.5, 5.5, 7.5, 9.5))
    assert latency_stats(seconds, 1).round_p50_ms == ()  # throughput rows: no rounds


def test_measured_row_records_the_rounds_and_extra_details():
    engine = SimpleNamespace(
        info=SimpleNamespace(executed_precision="f32", threads=2, details={"streams": 1})
    )
    stats = latency_stats([0.001, 0.002, 0.003, 0.004], 1, rounds=2)
    row = measured_row("openvino-f32", engine, "engine.predict", "latency", 1, stats, {"x": 1})
    assert "round_p50_ms" not in row  # not a column: in the details
    assert json.loads(row["details"]) == {"streams": 1, "round_p50_ms": [1.5, 3.5], "x": 1}
    assert row["p50_ms"] == pytest.approx(2.5) and row["iterations"] == 4
    frame = timings_frame([row], {"run": "/r", "job_id": "j", "model": "backup1"})
    assert json.loads(frame["details"].iloc[0])["round_p50_ms"] == [1.5, 3.5]
    plain = measured_row("openvino-f32", engine, "m", "throughput", 8, latency_stats([0.1], 8))
    assert json.loads(plain["details"]) == {"streams": 1}


def test_benchmark_app_runs_from_this_interpreter():
    # The OpenVINO our engines import, also where no benchmark_app script was installed.
    command = benchmark_app_command()
    assert command[0] == sys.executable
    result = subprocess.run([*command, "-h"], capture_output=True, text=True)
    assert result.returncode == 0 and "-infer_precision" in result.stdout


def test_parse_benchmark_app_report():
    figures = parse_benchmark_app(BENCHMARK_APP_REPORT)
    assert figures == {
        "iterations": 6659,
        "median_ms": pytest.approx(0.09863),
        "mean_ms": pytest.approx(1.41),
        "images_per_second": pytest.approx(2205.22),
        "streams": 1,
        "threads": 2,
    }
    older = parse_benchmark_app(BENCHMARK_APP_REPORT.replace("NUM_STREAMS", "STREAMS"))
    assert older["streams"] is None and older["threads"] == 2
    with pytest.raises(FmnistError, match="no median_ms"):
        parse_benchmark_app("[ INFO ] Count: 3 iterations")


def test_option_parsing():
    assert parse_batch_sizes("1,32, 256") == (1, 32, 256)
    for bad in ("1,x", "0", ""):
        with pytest.raises(FmnistError, match="--batch-sizes"):
            parse_batch_sizes(bad)
    assert parse_variants("openvino-f32, keras-predict") == ("openvino-f32", "keras-predict")
    assert len(parse_variants(None)) == 6
    with pytest.raises(FmnistError, match="unknown variant 'openvino-fp8'"):
        parse_variants("openvino-fp8")


def test_variants_are_grouped_by_process_environment():
    groups = process_groups(
        ["keras-predict", "keras-onednn-on", "openvino-f32", "keras-onednn-off", "openvino-int8"]
    )
    assert groups == [
        ({}, ["openvino-f32", "openvino-int8", "keras-predict"]),
        ({"TF_ENABLE_ONEDNN_OPTS": "1"}, ["keras-onednn-on"]),
        ({"TF_ENABLE_ONEDNN_OPTS": "0"}, ["keras-onednn-off"]),
    ]


def test_job_id_from_the_scheduler_or_a_unique_local_id():
    slurm = parse_job_environment({"SLURM_JOB_ID": "4242"}, host="n1", pid=7)
    assert file_job_id(slurm) == "4242"
    torque = parse_job_environment({"PBS_JOBID": "77[3].head"}, host="n1", pid=7)
    assert file_job_id(torque) == "77-3-.head"
    local = file_job_id(parse_job_environment({}, host="n1", pid=7))
    assert local.startswith("local-n1-7-") and len(local) > len("local-n1-7-")
    assert local_job_id("n1", 7).startswith("local-n1-7-")  # a benchmark no job named


def _rows():
    ok = {"source": "fmnist", "status": "ok", "reason": "", "executed_precision": "f32"}
    return [
        {**ok, "variant": "keras-predict", "mode": "latency", "batch_size": 1, "p50_ms": 50.0,
         "p90_ms": 60.0, "p99_ms": 70.0, "mean_ms": 52.0, "images_per_second": 19.2,
         "iterations": 10, "threads": 2},
        {**ok, "variant": "openvino-f32", "mode": "latency", "batch_size": 1, "p50_ms": 0.1,
         "p90_ms": 0.2, "p99_ms": 0.3, "mean_ms": 0.12, "images_per_second": 8000.0,
         "iterations": 1000, "threads": 2,
         "details": json.dumps({"round_p50_ms": [0.101, 0.097, 0.1, 0.125, 0.099]})},
        {**ok, "variant": "openvino-f32", "mode": "throughput", "batch_size": 32,
         "p50_ms": 3.0, "p90_ms": 3.5, "p99_ms": 4.0, "mean_ms": 3.1,
         "images_per_second": 10000.0, "iterations": 100, "threads": 2},
        {"variant": "openvino-bf16", "source": "fmnist", "mode": "latency", "batch_size": 1,
         "status": "skipped", "reason": "no bf16 here"},
    ]  # fmt: skip


def test_timings_frame_has_the_design_columns_and_types():
    frame = timings_frame(_rows(), {"run": "/r", "job_id": "j", "model": "backup1"})
    assert list(frame.columns) == COLUMNS
    for column in ("node_type", "cpu_model", "avx512f", "avx512_vnni", "avx512_bf16", "amx"):
        assert column in frame
    assert frame["p50_ms"].dtype == "float64" and str(frame["batch_size"].dtype) == "Int64"
    skipped = frame[frame["variant"] == "openvino-bf16"].iloc[0]
    assert skipped["status"] == "skipped" and np.isnan(skipped["p50_ms"])
    table = summary_table(frame)
    assert "500.0x" in table  # openvino-f32 p50 0.1 ms against keras-predict's 50 ms
    [f32] = [line for line in table.splitlines() if line.startswith("openvino-f32")]
    assert "0.100     0.200     0.300      0.097-0.125" in f32  # p50, p90, p99, rounds
    [keras] = [line for line in table.splitlines() if line.startswith("keras-predict")]
    assert "60.000    70.000                -" in keras  # no rounds recorded: a dash
    assert "openvino-bf16     skipped: no bf16 here" in table


def test_write_timings_keeps_other_models_of_the_same_job(tmp_path):
    path = tmp_path / "timings" / "job.parquet"
    write_timings(path, timings_frame(_rows(), {"run": "/r", "job_id": "job", "model": "main"}))
    write_timings(path, timings_frame(_rows(), {"run": "/r", "job_id": "job", "model": "b"}))
    again = timings_frame(_rows()[:1], {"run": "/r", "job_id": "job", "model": "b"})
    frame = write_timings(path, again)
    assert len(frame) == 4 + 1
    assert len(pd.read_parquet(path)) == 5
    assert not list(path.parent.glob(".*.tmp"))


# --------------------------------------------------------------------------- oneDNN processes

PROBE = textwrap.dedent(
    """
    import json
    from fmnist.engines import create_engine
    from fmnist.engines.keras import onednn_in_effect
    report = {"in_effect": onednn_in_effect()}
    try:
        create_engine(RUN, "backup1", "keras-onednn-on")
    except Exception as exc:
        report["on_error"] = f"{type(exc).__name__}: {exc}"
    engine = create_engine(RUN, "backup1", "keras-onednn-off")
    report["off_details"] = engine.info.details
    print(json.dumps(report))
    """
)


@pytest.mark.slow
def test_onednn_settings_really_differ_and_the_wrong_one_is_refused(trained_run):
    def probe(value):
        env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": value, "TF_CPP_MIN_LOG_LEVEL": "2"}
        result = subprocess.run(
            [sys.executable, "-c", PROBE.replace("RUN", repr(str(trained_run)))],
            env=env,
            capture_output=True,
            text=True,
        )
        return result

    off = probe("0")
    assert off.returncode == 0, off.stderr
    report = json.loads(off.stdout.strip().splitlines()[-1])
    assert report["in_effect"] is False
    assert report["on_error"].startswith("OneDnnSettingError: keras-onednn-on needs ")
    assert "TF_ENABLE_ONEDNN_OPTS=1 set before TensorFlow is imported" in report["on_error"]
    assert report["off_details"] == {"onednn": False, "TF_ENABLE_ONEDNN_OPTS": "0"}

    on = probe("1")
    # With oneDNN on, the off engine is the one refused: the process exits with its error.
    assert on.returncode == 1 and "keras-onednn-off needs TF_ENABLE_ONEDNN_OPTS=0" in on.stderr


@pytest.mark.slow
def test_evaluate_runs_both_onednn_variants(trained_run, tmp_path):
    run = run_with_model(trained_run, "backup1", tmp_path)
    # One of the two settings differs from this process's TensorFlow: a fresh process.
    for variant in ("keras-onednn-off", "keras-onednn-on"):
        result = invoke(
            "evaluate", "--run", run, "--model", "backup1", "--variant", variant, "--limit", 300
        )
        assert result.exit_code == 0, result.output
        assert f"backup1 ({variant}, executed f32) on 300 test images" in result.output
        assert pd.read_parquet(RunLayout(run).metrics("backup1", variant))["images"].iloc[0] == 300


# --------------------------------------------------------------------------- the real thing


@pytest.fixture(scope="module")
def ir_run(trained_run, tmp_path_factory):
    """backup1 of the trained run with its f32 and INT8 IRs."""
    run = run_with_model(trained_run, "backup1", tmp_path_factory.mktemp("bench"))
    # Any INT8 will do: this is about timing it.
    bounds = Int8Bounds(
        max_drop=1.0, max_loss_change=1e9, max_confidence_change=1.0, max_mean_abs_dp=1.0
    )
    config = OptimizeConfig("backup1", int8=True, calibration_size=50, bounds=bounds, parity_size=8)
    optimize_model(run, config, progress=lambda m: None)
    return run


@pytest.mark.slow
def test_benchmark_cli_writes_timings_with_the_yardstick(ir_run, monkeypatch):
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.delenv("PBS_JOBID", raising=False)
    monkeypatch.setenv("FMNIST_EXECUTOR", "local")
    monkeypatch.setenv("FMNIST_TASK_ID", "benchmark:backup1:local")
    variants = "keras-predict,keras-onednn-on,openvino-f32,openvino-bf16,openvino-int8"
    result = invoke(
        "benchmark", "--run", ir_run, "--model", "backup1", "--variants", variants,
        "--batch-sizes", "1,8", "--iterations", 40, "--warmup", 3, "--max-seconds", 0.3,
        "--min-iterations", 5, "--yardstick", "--yardstick-seconds", 1, "--node-type", "icx",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "x predict" in result.output and "x onednn-on" in result.output

    path = RunLayout(ir_run).timings_dir / "local-benchmark-backup1-local.parquet"
    frame = pd.read_parquet(path)
    assert list(frame.columns) == COLUMNS
    assert set(frame["node_type"]) == {"icx"} and set(frame["job_id"]) == {path.stem}
    assert (RunLayout(ir_run).timings_dir / "backup1__icx.complete").exists()

    ok = frame[frame["status"] == "ok"]
    assert (ok["p50_ms"] > 0).all() and (ok["images_per_second"] > 0).all()
    ours = ok[ok["source"] == "fmnist"]
    assert (ours["p50_ms"] <= ours["p99_ms"]).all() and (ours["p90_ms"] <= ours["p99_ms"]).all()
    assert (ours["iterations"] >= 5).all()
    for variant in ("keras-predict", "keras-onednn-on", "openvino-f32", "openvino-int8"):
        rows = ours[ours["variant"] == variant]
        assert sorted(zip(rows["mode"], rows["batch_size"], strict=True)) == [
            ("latency", 1), ("throughput", 1), ("throughput", 8),
        ], variant  # fmt: skip
    assert set(ours.loc[ours["variant"] == "keras-predict", "measure"]) == {"model.predict"}
    assert (
        ours.loc[ours["variant"] == "openvino-int8", "executed_precision"]
        .str.startswith("int8")
        .all()
    )
    f32 = ours[(ours["variant"] == "openvino-f32") & (ours["mode"] == "latency")].iloc[0]
    details = json.loads(f32["details"])
    assert details["batch_1_static"] is True and details["performance_hint"] == "LATENCY"
    assert 0 < details["runtime_p50_ms"] <= f32["p50_ms"]  # the runtime's share of a call
    # The window's rounds: five consecutive slices, for every variant's latency row.
    for _, row in ours[ours["mode"] == "latency"].iterrows():
        rounds = json.loads(row["details"])["round_p50_ms"]
        assert len(rounds) == 5 and all(r > 0 for r in rounds), row["variant"]
    onednn = json.loads(ours.loc[ours["variant"] == "keras-onednn-on", "details"].iloc[0])
    assert onednn["onednn"] is True

    # openvino-bf16 runs where the CPU plugin reports native bf16, and is skipped elsewhere.
    has_bf16 = "BF16" in cpu_capabilities()
    openvino = {"openvino-f32", "openvino-int8"} | ({"openvino-bf16"} if has_bf16 else set())
    yard = ok[ok["source"] == "benchmark_app"]
    assert set(yard["variant"]) == openvino  # the yardstick beside every OpenVINO row we ran
    assert len(yard) == 3 * len(openvino) and (yard["iterations"] > 0).all()
    # Like with like: benchmark_app's compiled model ran as many streams and threads as ours.
    for _, row in yard[yard["mode"] == "latency"].iterrows():
        mine = ours[(ours["variant"] == row["variant"]) & (ours["mode"] == "latency")].iloc[0]
        assert row["threads"] == mine["threads"], row["variant"]
        assert json.loads(row["details"])["streams"] == json.loads(mine["details"])["streams"]

    bf16 = frame[frame["variant"] == "openvino-bf16"]
    if has_bf16:
        assert (bf16["status"] == "ok").all() and (bf16["executed_precision"] == "bf16").all()
        assert len(bf16[bf16["source"] == "fmnist"]) == 3
    else:
        assert list(bf16["status"]) == ["skipped"] and "bf16" in bf16["reason"].iloc[0]


@pytest.mark.slow
def test_latency_engine_results_are_the_compiled_models_and_never_shared(ir_run, dataset):
    # The engine reads results from output arrays bound once to its requests: each call
    # must still return its own copy, for batch 1 and for other sizes.
    images = to_model_input(dataset.test.images[:16])
    for variant, precision in (("openvino-f32", "f32"), ("openvino-int8", "f32")):
        xml = variant_artifact(ir_run, "backup1", variant)
        expected = compile_ir(xml, precision, "throughput")({0: images})[0]
        engine = create_engine(ir_run, "backup1", variant, "latency")
        singles = [engine.predict(images[i : i + 1]) for i in range(4)]
        batch = engine.predict(images[:7])
        again = engine.predict(images[4:5])
        np.testing.assert_allclose(np.concatenate(singles), expected[:4], atol=1e-5)
        np.testing.assert_allclose(batch, expected[:7], atol=1e-5)
        np.testing.assert_allclose(again, expected[4:5], atol=1e-5)
        np.testing.assert_allclose(singles[0], expected[:1], atol=1e-5)  # not overwritten
        assert batch.shape == (7, 10) and batch.dtype == np.float32


@pytest.mark.slow
def test_benchmark_records_a_missing_ir_as_failed_and_exits_non_zero(trained_run, tmp_path):
    run = run_with_model(trained_run, "backup1", tmp_path)
    result = invoke(
        "benchmark", "--run", run, "--model", "backup1", "--variants", "openvino-f32",
        "--iterations", 5, "--max-seconds", 0.1,
    )  # fmt: skip
    assert result.exit_code == 1
    assert "variant(s) failed: openvino-f32" in result.output
    [path] = RunLayout(run).timings_dir.glob("*.parquet")
    row = pd.read_parquet(path).iloc[0]
    assert row["status"] == "failed"
    assert "openvino/f32/model.xml: OpenVINO IR file not found" in row["reason"]
    assert not list(RunLayout(run).timings_dir.glob("*.complete"))

    result = invoke("benchmark", "--run", run, "--model", "main", "--iterations", 5)
    assert result.exit_code == 1 and "main/model.keras: model file not found" in result.output
