"""Each variant measured in a worker process with the environment it needs.

TensorFlow's oneDNN setting is fixed at import, so variants are grouped by the
environment they need (``fmnist.engines.keras.required_env``) and each group runs in
its own interpreter; within a worker the OpenVINO variants run before TensorFlow is
imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from fmnist.bench.config import BenchConfig
from fmnist.bench.latency import measure_latency, measure_throughput, seed_predict, stream_function
from fmnist.bench.timings import failed_row, measured_row
from fmnist.data import load_dataset, to_model_input
from fmnist.engines import create_engine
from fmnist.engines.keras import OneDnnSettingError, required_env, run_with_setting
from fmnist.engines.openvino import VariantUnsupported
from fmnist.io import FmnistError, write_json_atomic


def measure_variant(
    config: BenchConfig,
    variant: str,
    images: np.ndarray,
    progress: Callable[[str], None] = print,
) -> list[dict]:
    """All rows of one variant: batch-1 latency, then throughput at each batch size."""
    label = f"{config.model} {variant}"
    try:
        engine = create_engine(config.run, config.model, variant, "latency")
        seed_way = variant == "keras-predict"
        measure = "model.predict" if seed_way else "engine.predict"
        runtime_ms: list[float] = []
        if seed_way:
            call = seed_predict(engine)
        elif hasattr(engine, "request_latency_ms"):

            def call(batch, predict=engine.predict, runtime=engine.request_latency_ms):
                result = predict(batch)
                runtime_ms.append(runtime())
                return result

        else:
            call = engine.predict
        stats = measure_latency(call, images, config)
        # The runtime's own share of each timed call, beside our wall time (diagnostic).
        runtime = (
            {"runtime_p50_ms": float(np.median(runtime_ms[-stats.iterations :]))}
            if runtime_ms
            else {}
        )
        rows = [measured_row(variant, engine, measure, "latency", 1, stats, runtime)]
        rounds = stats.round_p50_ms
        progress(
            f"[benchmark] {label}: latency p50 {stats.p50_ms:.3f} ms "
            f"(rounds {min(rounds):.3f}-{max(rounds):.3f}), p90 {stats.p90_ms:.3f} ms, "
            f"p99 {stats.p99_ms:.3f} ms ({stats.iterations} calls, "
            f"{engine.info.executed_precision})"
        )
        if variant.startswith("openvino-"):
            engine = create_engine(config.run, config.model, variant, "throughput")
        parts = []
        for batch_size in config.batch_sizes:
            stats = measure_throughput(
                stream_function(engine, seed_way), images, batch_size, config
            )
            rows.append(measured_row(variant, engine, measure, "throughput", batch_size, stats))
            parts.append(f"bs{batch_size} {stats.images_per_second:,.0f}")
        progress(f"[benchmark] {label}: throughput img/s " + ", ".join(parts))
        return rows
    except VariantUnsupported as exc:
        progress(f"[benchmark] {label}: skipped ({exc})")
        return [failed_row(variant, "skipped", str(exc))]
    except (FmnistError, OneDnnSettingError) as exc:
        progress(f"[benchmark] {label}: failed ({exc})")
        return [failed_row(variant, "failed", str(exc))]


def process_groups(variants: Sequence[str]) -> list[tuple[dict[str, str], list[str]]]:
    """Variants grouped by the process environment they need, TensorFlow-free ones first.

    Within a group the OpenVINO variants come first, so they are measured before
    TensorFlow is imported into the worker.
    """
    groups: dict[tuple, list[str]] = {}
    for variant in variants:
        groups.setdefault(tuple(sorted(required_env(variant).items())), []).append(variant)
    return [
        (dict(key), sorted(members, key=lambda v: (not v.startswith("openvino-"), v)))
        for key, members in groups.items()
    ]


def benchmark_images(config: BenchConfig, count: int = 1024) -> np.ndarray:
    """The test images the benchmark feeds (real data, not noise)."""
    return to_model_input(load_dataset(config.data_dir).test.images[:count])


def worker_main(config_path: str, out_path: str) -> int:
    """Entry of a worker process: measure the variants listed in the config file."""
    os.dup2(2, 1)  # libraries that print to stdout must not mix with the parent's result
    spec = json.loads(Path(config_path).read_text())
    variants = spec.pop("worker_variants")
    spec.update(variants=tuple(spec["variants"]), batch_sizes=tuple(spec["batch_sizes"]))
    config = BenchConfig(**spec)
    images = benchmark_images(config)
    rows = []
    for variant in variants:
        rows += measure_variant(config, variant, images, lambda m: print(m, file=sys.stderr))
    write_json_atomic(out_path, rows)
    return 0


def run_worker(
    config: BenchConfig, variants: list[str], env: dict[str, str], progress: Callable
) -> list[dict]:
    """Measure ``variants`` in a fresh interpreter started with ``env``."""
    with tempfile.TemporaryDirectory(prefix="fmnist-bench-") as tmp:
        spec_path, out_path = Path(tmp) / "config.json", Path(tmp) / "rows.json"
        spec_path.write_text(json.dumps({**asdict(config), "worker_variants": variants}))
        setting = ", ".join(f"{k}={v}" for k, v in env.items()) or "default environment"
        progress(f"[benchmark] worker for {', '.join(variants)} ({setting})")
        result = run_with_setting(
            ["-m", "fmnist.bench.workers", "worker", str(spec_path), str(out_path)],
            env,
            stdout=subprocess.DEVNULL,
        )
        if result.returncode != 0 or not out_path.exists():
            reason = f"benchmark worker exited with status {result.returncode}"
            return [failed_row(variant, "failed", reason) for variant in variants]
        return json.loads(out_path.read_text())


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "worker":
        sys.exit(worker_main(sys.argv[2], sys.argv[3]))
    sys.exit("usage: python -m fmnist.bench.workers worker CONFIG.json OUT.json")
