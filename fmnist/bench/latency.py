"""Timing loops and their statistics: batch-1 latency and the throughput of a batch stream.

Latency: batch 1, warm-up, then per-call wall time (p50/p90/p99/mean). Throughput:
a stream of batches of each size, images per second over the whole stream; its
percentiles are of each batch's time from hand-over to result. The
``keras-predict`` variant is timed the seed's way: ``model.predict`` on one image.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from fmnist.bench.config import BenchConfig
from fmnist.io import FmnistError


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
