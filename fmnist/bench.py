"""Latency and throughput of every variant of a model, side by side, into ``RUN/timings/``.

Variants that need different process environments (TensorFlow's oneDNN setting is
fixed at import) are measured in separate worker processes, one per environment;
within a worker the OpenVINO variants run before TensorFlow is imported. Rows record
what actually ran: executed precision, threads, CPU, ISA flags, library versions.

Latency: batch 1, warm-up, then per-call wall time (p50/p90/p99/mean). Throughput:
a stream of batches of each size, images per second over the whole stream; its
percentiles are of each batch's time from hand-over to result. The
``keras-predict`` variant is timed the seed's way: ``model.predict`` on one image.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from fmnist.engines import VARIANTS, check_variant, create_engine
from fmnist.io import FmnistError, RunLayout, write_json_atomic, write_parquet_atomic

MODES = ("latency", "throughput")
DEFAULT_BATCH_SIZES = (1, 32, 256)
# Library versions recorded in every row, as <name>_version columns.
VERSION_COLUMNS = ("openvino", "nncf", "tensorflow", "keras", "numpy")
ISA_COLUMNS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx")
COLUMNS = (
    ["run", "job_id", "node_type", "host", "cpu_model", "isa_flags", *ISA_COLUMNS]
    + ["usable_cpus", "threads", "model", "variant", "executed_precision", "source", "measure"]
    + ["mode", "batch_size", "iterations", "p50_ms", "p90_ms", "p99_ms", "mean_ms"]
    + ["images_per_second", "status", "reason", "details", "timestamp"]
    + [f"{name}_version" for name in VERSION_COLUMNS]
)


@dataclass(frozen=True)
class BenchConfig:
    """What one ``fmnist-batch benchmark`` measures, and how hard."""

    run: str
    model: str
    variants: tuple[str, ...] = VARIANTS
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    iterations: int = 1000  # timed calls (latency) or batches (throughput), at most
    warmup: int = 50
    max_seconds: float = 10.0  # per measurement: slow variants stop early...
    min_iterations: int = 10  # ...but never below this
    node_type: str | None = None
    yardstick: bool = False
    yardstick_seconds: float = 10.0
    data_dir: str | None = None

    def check(self) -> BenchConfig:
        for variant in self.variants:
            check_variant(variant)
        if not self.variants:
            raise FmnistError("no variants to benchmark")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise FmnistError(f"batch sizes must be positive integers, got {self.batch_sizes}")
        if self.iterations < 1 or self.min_iterations < 1 or self.warmup < 0:
            raise FmnistError("iterations and min-iterations must be >= 1, warm-up >= 0")
        return self


@dataclass(frozen=True)
class LatencyStats:
    """Percentiles of per-call wall time and the resulting image rate."""

    iterations: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    images_per_second: float


def latency_stats(
    seconds: Sequence[float], images_per_call: int, total_seconds: float | None = None
) -> LatencyStats:
    """Stats of per-call times; the rate is images over ``total_seconds`` (default: the sum)."""
    if len(seconds) == 0:
        raise FmnistError("no timed calls to summarize")
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    total = float(np.sum(seconds)) if total_seconds is None else total_seconds
    return LatencyStats(
        iterations=len(ms),
        p50_ms=float(p50),
        p90_ms=float(p90),
        p99_ms=float(p99),
        mean_ms=float(ms.mean()),
        images_per_second=images_per_call * len(ms) / total if total > 0 else float("nan"),
    )


# --------------------------------------------------------------------------- timing loops


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    # A collection in the middle of a timed call is noise, not the engine's cost.
    was_enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def time_calls(
    call: Callable[[np.ndarray], object],
    inputs: Sequence[np.ndarray],
    config: BenchConfig,
) -> list[float]:
    """Wall time of ``call`` on each input in turn, after warm-up, within the time budget."""
    clock = time.perf_counter
    warm_deadline = clock() + 0.25 * config.max_seconds
    for i in range(config.warmup):
        call(inputs[i % len(inputs)])
        if i >= 2 and clock() > warm_deadline:
            break
    times: list[float] = []
    with _no_gc():
        deadline = clock() + config.max_seconds
        for i in range(config.iterations):
            x = inputs[i % len(inputs)]
            start = clock()
            call(x)
            end = clock()
            times.append(end - start)
            if end > deadline and len(times) >= config.min_iterations:
                break
    return times


def time_stream(
    predict_many: Callable[[Iterable[np.ndarray]], Iterable[np.ndarray]],
    batches: Sequence[np.ndarray],
    config: BenchConfig,
    warmup_batches: int = 4,
) -> tuple[list[float], float]:
    """Each batch's time from hand-over to result, and the whole stream's wall time.

    Results come back in order; with a pipelined engine a batch's time includes
    waiting for a free infer request, as a client feeding the stream would see it.
    """
    for _ in predict_many(batches[i % len(batches)] for i in range(warmup_batches)):
        pass
    clock = time.perf_counter
    submitted: list[float] = []
    with _no_gc():
        deadline = clock() + config.max_seconds

        def feed() -> Iterator[np.ndarray]:
            for i in range(config.iterations):
                if i >= config.min_iterations and clock() > deadline:
                    return
                submitted.append(clock())
                yield batches[i % len(batches)]

        latencies: list[float] = []
        start = end = clock()
        for index, _ in enumerate(predict_many(feed())):
            end = clock()
            latencies.append(end - submitted[index])
    return latencies, end - start


# --------------------------------------------------------------------------- one variant


def stream_function(
    engine, seed_way: bool = False
) -> Callable[[Iterable[np.ndarray]], Iterable[np.ndarray]]:
    """The engine's way to run a stream of batches (pipelined where the engine can)."""
    if seed_way:
        predict = seed_predict(engine)
        return lambda batches: (predict(batch) for batch in batches)
    if hasattr(engine, "predict_many"):
        return engine.predict_many
    return lambda batches: (engine.predict(batch) for batch in batches)


def seed_predict(engine) -> Callable[[np.ndarray], np.ndarray]:
    """The seed's measure: Keras' full ``model.predict`` per call, a batch in one call."""
    model = engine.model
    return lambda batch: model.predict(batch, batch_size=len(batch), verbose=0)


def measure_latency(
    call: Callable[[np.ndarray], object], images: np.ndarray, config: BenchConfig
) -> LatencyStats:
    """Batch-1 latency of ``call``, cycling over (up to) 64 real single images."""
    singles = [images[i : i + 1].copy() for i in range(min(64, len(images)))]
    return latency_stats(time_calls(call, singles, config), 1)


def measure_throughput(
    stream: Callable[[Iterable[np.ndarray]], Iterable[np.ndarray]],
    images: np.ndarray,
    batch_size: int,
    config: BenchConfig,
) -> LatencyStats:
    """Images per second of a stream of ``batch_size`` batches (at least 4 distinct ones)."""
    pool = np.resize(images, (max(4 * batch_size, len(images)), *images.shape[1:]))
    batches = [
        np.ascontiguousarray(pool[i : i + batch_size])
        for i in range(0, len(pool) - batch_size + 1, batch_size)
    ]
    latencies, total = time_stream(stream, batches, config)
    return latency_stats(latencies, batch_size, total)


def _row(variant: str, engine, measure: str, mode: str, batch: int, stats: LatencyStats) -> dict:
    return {
        "variant": variant,
        "source": "fmnist",
        "measure": measure,
        "mode": mode,
        "batch_size": batch,
        **asdict(stats),
        "executed_precision": engine.info.executed_precision,
        "threads": engine.info.threads,
        "status": "ok",
        "reason": "",
        "details": json.dumps(engine.info.details, sort_keys=True, default=str),
    }


def failed_row(variant: str, status: str, reason: str) -> dict:
    """The one row recording a variant that was skipped or failed, and why."""
    return {
        "variant": variant,
        "source": "fmnist",
        "measure": "",
        "mode": "latency",
        "batch_size": 1,
        "status": status,
        "reason": reason,
    }


def measure_variant(
    config: BenchConfig,
    variant: str,
    images: np.ndarray,
    progress: Callable[[str], None] = print,
) -> list[dict]:
    """All rows of one variant: batch-1 latency, then throughput at each batch size."""
    from fmnist.onednn import OneDnnSettingError
    from fmnist.openvino_engines import VariantUnsupported

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
        rows = [_row(variant, engine, measure, "latency", 1, stats)]
        if runtime_ms:
            # The runtime's own share of each call, beside our wall time (diagnostic).
            details = json.loads(rows[0]["details"])
            details["runtime_p50_ms"] = float(np.median(runtime_ms[-stats.iterations :]))
            rows[0]["details"] = json.dumps(details, sort_keys=True)
        progress(
            f"[benchmark] {label}: latency p50 {stats.p50_ms:.3f} ms, p99 {stats.p99_ms:.3f} ms "
            f"({stats.iterations} calls, {engine.info.executed_precision})"
        )
        if variant.startswith("openvino-"):
            engine = create_engine(config.run, config.model, variant, "throughput")
        parts = []
        for batch_size in config.batch_sizes:
            stats = measure_throughput(
                stream_function(engine, seed_way), images, batch_size, config
            )
            rows.append(_row(variant, engine, measure, "throughput", batch_size, stats))
            parts.append(f"bs{batch_size} {stats.images_per_second:,.0f}")
        progress(f"[benchmark] {label}: throughput img/s " + ", ".join(parts))
        return rows
    except VariantUnsupported as exc:
        progress(f"[benchmark] {label}: skipped ({exc})")
        return [failed_row(variant, "skipped", str(exc))]
    except (FmnistError, OneDnnSettingError) as exc:
        progress(f"[benchmark] {label}: failed ({exc})")
        return [failed_row(variant, "failed", str(exc))]


# --------------------------------------------------------------------------- workers


def process_groups(variants: Sequence[str]) -> list[tuple[dict[str, str], list[str]]]:
    """Variants grouped by the process environment they need, TensorFlow-free ones first.

    Within a group the OpenVINO variants come first, so they are measured before
    TensorFlow is imported into the worker.
    """
    from fmnist.onednn import required_env

    groups: dict[tuple, list[str]] = {}
    for variant in variants:
        groups.setdefault(tuple(sorted(required_env(variant).items())), []).append(variant)
    return [
        (dict(key), sorted(members, key=lambda v: (not v.startswith("openvino-"), v)))
        for key, members in groups.items()
    ]


def benchmark_images(config: BenchConfig, count: int = 1024) -> np.ndarray:
    """The test images the benchmark feeds (real data, not noise)."""
    from fmnist.data import load_dataset, to_model_input

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
        result = subprocess.run(
            [sys.executable, "-m", "fmnist.bench", "worker", str(spec_path), str(out_path)],
            env={**os.environ, **env},
            stdout=subprocess.DEVNULL,
        )
        if result.returncode != 0 or not out_path.exists():
            reason = f"benchmark worker exited with status {result.returncode}"
            return [failed_row(variant, "failed", reason) for variant in variants]
        return json.loads(out_path.read_text())


# --------------------------------------------------------------------------- the job


def current_job_id(job=None) -> str:
    """The scheduler's job id (Slurm, PBS/Torque, the local executor's task), file-safe.

    A process outside any scheduler gets local-<host>-<pid>-<UTC time>, unique per call.
    """
    from fmnist import jobenv

    job = job or jobenv.current()
    if job.scheduler == "none":
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        return f"local-{job.safe_job_id}-{stamp}"
    return job.safe_job_id


def _job_columns(config: BenchConfig, job_id: str) -> dict:
    from fmnist import jobenv
    from fmnist.system import machine_info

    machine = machine_info()
    flags = set(machine.isa_flags)
    return {
        "run": str(Path(config.run).resolve()),
        "job_id": job_id,
        "node_type": config.node_type or jobenv.current().node_type,
        "host": machine.host,
        "cpu_model": machine.cpu_model,
        "isa_flags": " ".join(machine.isa_flags),
        **{flag: flag in flags for flag in ISA_COLUMNS if flag != "amx"},
        "amx": any(flag.startswith("amx") for flag in flags),
        "usable_cpus": machine.usable_cpus,
        "model": config.model,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        **{f"{n}_version": machine.libraries.get(n, "") for n in VERSION_COLUMNS},
        "tensorflow_version": machine.libraries.get("tensorflow")
        or machine.libraries.get("tensorflow-cpu", ""),
    }


def timings_frame(rows: list[dict], job: dict) -> pd.DataFrame:
    """The timings table: one row per variant x mode x batch size x source, DESIGN columns."""
    frame = pd.DataFrame([{**job, **row} for row in rows])
    for column in COLUMNS:
        if column not in frame:
            frame[column] = None
    frame = frame[COLUMNS]
    for column in ("p50_ms", "p90_ms", "p99_ms", "mean_ms", "images_per_second"):
        frame[column] = frame[column].astype("float64")
    for column in ("iterations", "threads", "batch_size", "usable_cpus"):
        frame[column] = frame[column].astype("Int64")
    for column in ("reason", "details", "measure", "executed_precision"):
        frame[column] = frame[column].fillna("").astype(str)
    return frame


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_timings(path: Path, frame: pd.DataFrame) -> pd.DataFrame:
    """Write the job's timings; rows this job wrote earlier for other models are kept.

    One job may benchmark several models (one file per job): a re-run of a model
    replaces that model's rows only.
    """
    with _file_lock(path):
        if path.exists():
            previous = pd.read_parquet(path)
            keep = previous[~previous["model"].isin(frame["model"].unique())]
            frame = pd.concat([keep, frame], ignore_index=True) if len(keep) else frame
        write_parquet_atomic(path, frame)
    return frame


@dataclass
class BenchmarkResult:
    """The timings of one benchmark invocation and where they were written."""

    frame: pd.DataFrame
    path: Path

    @property
    def failed(self) -> list[str]:
        bad = self.frame[self.frame["status"] == "failed"]
        return sorted(set(bad["variant"]))


def run_benchmark(config: BenchConfig, progress: Callable[[str], None] = print) -> BenchmarkResult:
    """Measure every variant of ``config.model`` and write ``RUN/timings/<job-id>.parquet``."""
    config.check()
    layout = RunLayout(Path(config.run))
    if not layout.keras_model(config.model).exists():
        raise FmnistError(f"{layout.keras_model(config.model)}: model file not found")
    job_id = current_job_id()
    rows: list[dict] = []
    for env, variants in process_groups(config.variants):
        group_rows = run_worker(config, variants, env, progress)
        rows += group_rows
        if config.yardstick:
            from fmnist.yardstick import yardstick_rows

            rows += yardstick_rows(config, group_rows, progress)
    frame = timings_frame(rows, _job_columns(config, job_id))
    path = layout.timings_dir / f"{job_id}.parquet"
    write_timings(path, frame)
    if not BenchmarkResult(frame, path).failed:
        # The pipeline's completion marker: this model was benchmarked on this node type.
        node_type = frame["node_type"].iloc[0]
        write_json_atomic(
            layout.timings_dir / f"{config.model}__{node_type}.complete",
            {"job_id": job_id, "file": path.name, "rows": len(frame)},
        )
    return BenchmarkResult(frame, path)


# --------------------------------------------------------------------------- summary


def _lookup(frame: pd.DataFrame, variant: str, source: str, mode: str, batch: int):
    hit = frame[
        (frame["variant"] == variant)
        & (frame["source"] == source)
        & (frame["mode"] == mode)
        & (frame["batch_size"] == batch)
        & (frame["status"] == "ok")
    ]
    return hit.iloc[0] if len(hit) else None


def summary_table(frame: pd.DataFrame) -> str:
    """Text table: batch-1 latency, throughput per batch size, speedups, benchmark_app."""
    ours = frame[frame["source"] == "fmnist"]
    batches = sorted(int(b) for b in ours.loc[ours["mode"] == "throughput", "batch_size"].unique())
    variants = [v for v in VARIANTS if v in set(ours["variant"])]

    def p50(variant):
        row = _lookup(frame, variant, "fmnist", "latency", 1)
        return None if row is None else row["p50_ms"]

    baselines = {"x predict": p50("keras-predict"), "x onednn-on": p50("keras-onednn-on")}
    header = (
        f"{'variant':<18}{'precision':<11}{'p50 ms':>10}{'p99 ms':>10}"
        + "".join(f"{f'bs{b} img/s':>13}" for b in batches)
        + "".join(f"{name:>13}" for name in baselines)
        + f"{'bm_app p50':>12}{f'bm_app bs{batches[-1]}' if batches else '':>15}"
    )
    lines = [header]
    for variant in variants:
        latency = _lookup(frame, variant, "fmnist", "latency", 1)
        if latency is None:
            status = ours[ours["variant"] == variant].iloc[0]
            lines.append(f"{variant:<18}{status['status']}: {status['reason']}")
            continue
        cells = f"{variant:<18}{latency['executed_precision']:<11}"
        cells += f"{latency['p50_ms']:>10.3f}{latency['p99_ms']:>10.3f}"
        for b in batches:
            row = _lookup(frame, variant, "fmnist", "throughput", b)
            cells += f"{row['images_per_second']:>13,.0f}" if row is not None else f"{'-':>13}"
        for base in baselines.values():
            speedup = base / latency["p50_ms"] if base else None
            digits = 1 if speedup is None or speedup >= 1 else 2
            cells += f"{speedup:>12.{digits}f}x" if speedup else f"{'-':>13}"
        yard = _lookup(frame, variant, "benchmark_app", "latency", 1)
        cells += f"{yard['p50_ms']:>12.3f}" if yard is not None else f"{'-':>12}"
        yard_tp = (
            _lookup(frame, variant, "benchmark_app", "throughput", batches[-1]) if batches else None
        )
        cells += f"{yard_tp['images_per_second']:>15,.0f}" if yard_tp is not None else f"{'-':>15}"
        lines.append(cells)
    return "\n".join(lines)


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """'1,32,256' -> (1, 32, 256), with a clear error for anything else."""
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise FmnistError(f"--batch-sizes: expected integers like 1,32,256, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise FmnistError(f"--batch-sizes: expected positive integers, got {text!r}")
    return sizes


def parse_variants(text: str | None) -> tuple[str, ...]:
    """'openvino-f32,openvino-int8' -> the variants, checked; None -> every variant."""
    if not text:
        return VARIANTS
    return tuple(check_variant(part.strip()) for part in text.split(",") if part.strip())


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "worker":
        sys.exit(worker_main(sys.argv[2], sys.argv[3]))
    sys.exit("usage: python -m fmnist.bench worker CONFIG.json OUT.json")
