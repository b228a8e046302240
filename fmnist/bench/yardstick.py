"""OpenVINO's own benchmark_app as a yardstick beside our harness.

benchmark_app ships in the openvino wheel. It runs the same IR with the same precision,
performance hint and batch size as our engine, and reports the runtime's own request
latency: the closest a harness can get. Its figures go into the timings beside ours
(``source`` = ``benchmark_app``).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from fmnist.bench.config import BenchConfig
from fmnist.bench.timings import failed_row
from fmnist.engines import variant_artifact
from fmnist.io import FmnistError

# benchmark_app's console script, run by this interpreter: the OpenVINO our engines
# import, wherever the script was installed (a venv sharing another's packages has none).
BENCHMARK_APP = (
    "import sys; from openvino.tools.benchmark.main import main; "
    "sys.argv[0] = 'benchmark_app'; sys.exit(main())"
)


def benchmark_app_command() -> list[str]:
    """The command that starts OpenVINO's benchmark_app from this interpreter's wheel."""
    return [sys.executable, "-c", BENCHMARK_APP]


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def parse_benchmark_app(text: str) -> dict:
    """Median/average latency (ms), throughput, iterations, streams and threads from its report.

    Streams and threads are what the compiled model reported (``NUM_STREAMS``,
    ``INFERENCE_NUM_THREADS``): with the same hint they should match our engine's.
    """
    figures = {}
    for key, pattern in (
        ("iterations", r"Count:\s+(\d+)\s+iterations"),
        ("median_ms", r"Median:\s+([\d.]+)\s+(us|ms|s)\b"),
        ("mean_ms", r"Average:\s+([\d.]+)\s+(us|ms|s)\b"),
        ("images_per_second", r"Throughput:\s+([\d.]+)\s+FPS"),
    ):
        match = re.search(pattern, text)
        if not match:
            raise FmnistError(f"benchmark_app output has no {key} figure")
        value = float(match.group(1))
        figures[key] = value * _UNITS[match.group(2)] if key.endswith("_ms") else value
    figures["iterations"] = int(figures["iterations"])
    for key, name in (("streams", "NUM_STREAMS"), ("threads", "INFERENCE_NUM_THREADS")):
        match = re.search(rf"\b{name}:\s+(\d+)", text)
        figures[key] = int(match.group(1)) if match else None
    return figures


def run_benchmark_app(xml: Path, precision: str, mode: str, batch_size: int, seconds: float):
    """Run benchmark_app on an IR as our engine runs it: same precision, hint and batch.

    Like the engine, latency mode at batch 1 fixes the batch dimension (``-shape``);
    everything else runs the dynamic-batch IR with data of the batch (``-data_shape``).
    Latency mode runs one request through the async API, as the engine does (the sync
    API would run the inference on the calling thread, unpinned: slower for main).
    """
    static = mode == "latency" and batch_size == 1
    api = ["-api", "async", "-nireq", "1"] if mode == "latency" else []
    command = [
        *benchmark_app_command(),
        "-m", str(xml),
        "-d", "CPU",
        "-hint", mode,
        "-infer_precision", precision,
        "-shape" if static else "-data_shape", f"[{batch_size},28,28,1]",
        "-t", f"{max(1, round(seconds))}",
        *api,
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr).strip().splitlines()[-1:] or ["no output"]
        raise FmnistError(f"benchmark_app failed on {xml}: {tail[0]}")
    return parse_benchmark_app(result.stdout)


def yardstick_rows(config: BenchConfig, rows: list[dict], progress: Callable) -> list[dict]:
    """benchmark_app's figures for every OpenVINO row we measured, beside ours."""
    from fmnist.engines.openvino import VARIANT_PRECISION

    out = []
    for row in rows:
        variant = row["variant"]
        if row["status"] != "ok" or variant not in VARIANT_PRECISION:
            continue
        xml = variant_artifact(config.run, config.model, variant)
        try:
            figures = run_benchmark_app(
                xml,
                VARIANT_PRECISION[variant],
                row["mode"],
                row["batch_size"],
                config.yardstick_seconds,
            )
        except FmnistError as exc:
            out.append({**failed_row(variant, "failed", str(exc)), "source": "benchmark_app"})
            continue
        rate = figures["images_per_second"]
        progress(
            f"[benchmark] {config.model} {variant} benchmark_app {row['mode']} "
            f"bs{row['batch_size']}: median {figures['median_ms']:.3f} ms, {rate:,.0f} img/s "
            f"(streams {figures['streams']}, threads {figures['threads']})"
        )
        out.append(
            {
                **{k: row[k] for k in ("variant", "mode", "batch_size")},
                "executed_precision": row["executed_precision"],
                "source": "benchmark_app",
                "measure": "request latency",
                "iterations": figures["iterations"],
                "p50_ms": figures["median_ms"],
                "mean_ms": figures["mean_ms"],
                "images_per_second": rate,
                # Its own compiled model's threads and streams, to compare with ours.
                "threads": figures["threads"],
                "details": json.dumps({"streams": figures["streams"]}),
                "status": "ok",
                "reason": "",
            }
        )
    return out
