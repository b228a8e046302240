"""Timing loops and their statistics: batch-1 latency and the throughput of a batch stream.

Latency: batch 1, warm-up, then per-call wall time (p50/p90/p99/mean) for the whole time
budget, like benchmark_app's ``-t``: a window of a thousand calls (a tenth of a second
for a small model) lands in or out of a neighbour's burst on a shared machine, and its
p50 with it. The window's medians in consecutive slices (rounds) show how steady the
figure was. Throughput: a stream of batches of each size, images per second over the
whole stream; its percentiles are of each batch's time from hand-over to result. The
``keras-predict`` variant is timed the seed's way: ``model.predict`` on one image.
"""

from __future__ import annotations

import contextlib
import gc
import sys
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
    # Medians (ms) of consecutive slices of the timed calls: how steady p50 was.
    round_p50_ms: tuple[float, ...] = ()


# Slices of a latency window whose medians are recorded beside its p50.
LATENCY_ROUNDS = 5


def round_medians(seconds: Sequence[float], rounds: int) -> tuple[float, ...]:
    """Median (ms) of each of ``rounds`` consecutive slices with equal numbers of calls."""
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    if rounds < 1 or len(ms) == 0:
        return ()
    return tuple(float(np.median(part)) for part in np.array_split(ms, min(rounds, len(ms))))


def latency_stats(
    seconds: Sequence[float],
    images_per_call: int,
    total_seconds: float | None = None,
    rounds: int = 0,
) -> LatencyStats:
    """Stats of per-call times; the rate is images over ``total_seconds`` (default: the sum).

    ``rounds`` > 0 also records the medians of that many consecutive slices of the calls.
    """
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
        round_p50_ms=round_medians(seconds, rounds),
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


def warm_up(
    call: Callable[[np.ndarray], object],
    inputs: Sequence[np.ndarray],
    config: BenchConfig,
    clock: Callable[[], float] = time.perf_counter,
) -> int:
    """Untimed calls before timing; returns how many ran.

    At least ``config.warmup`` calls, continued until a tenth of the time budget has
    passed: a freshly compiled model's first few hundred calls run up to twice as slow
    (memory first touched, worker threads still waking), which fifty calls of a 0.1 ms
    model do not cover. A slow variant stops at a quarter of the budget (after 3 calls).
    ``config.warmup`` 0 times from the first call.
    """
    if config.warmup == 0:
        return 0
    start = clock()
    settled, give_up = start + 0.1 * config.max_seconds, start + 0.25 * config.max_seconds
    calls = 0
    while True:
        now = clock()
        if (calls >= config.warmup and now >= settled) or (calls >= 3 and now > give_up):
            return calls
        call(inputs[calls % len(inputs)])
        calls += 1


def time_calls(
    call: Callable[[np.ndarray], object],
    inputs: Sequence[np.ndarray],
    config: BenchConfig,
    clock: Callable[[], float] = time.perf_counter,
) -> list[float]:
    """Wall time of ``call`` on each input in turn, after warm-up, for the time budget.

    Timing stops once ``config.max_seconds`` have passed (after at least
    ``config.min_iterations`` calls) or at ``config.iterations`` calls, if set.
    """
    warm_up(call, inputs, config, clock)
    limit = config.iterations or sys.maxsize
    times: list[float] = []
    with _no_gc():
        deadline = clock() + config.max_seconds
        while len(times) < limit:
            x = inputs[len(times) % len(inputs)]
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
            for i in range(config.iterations or sys.maxsize):
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
    return latency_stats(time_calls(call, singles, config), 1, rounds=LATENCY_ROUNDS)


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
