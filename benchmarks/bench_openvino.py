"""Target ratios of the OpenVINO engines, measured side by side in one run.

For each model of a run (with f32 and INT8 IRs from ``fmnist-batch optimize --int8``)
this measures pairs of figures back to back, with the engines and settings the
benchmark command uses:

  f32 p50 / benchmark_app median      batch-1 latency, latency hint, same IR and
                                      precision; target <= 1.3
  keras-predict p50 / f32 p50         the seed's model.predict on one image against
                                      our f32 engine; target >= 200 (backup1, backup2),
                                      >= 20 (main)
  int8 / f32 images/s, batch 256      both in throughput mode; target >= 2 (main)
  ours / benchmark_app images/s       throughput hint, each batch size; target >= 0.8

The latency pair times the engine in this process; ``benchmarks/bench_latency.py``
times the benchmark command itself, worker process and all, against benchmark_app.

A shared machine drifts over seconds, so each ratio is formed from one pair measured
back to back (the order alternates between rounds) and the median over rounds is
reported beside every round's value. Nothing is written into the run. Each model's
table is headed by how its INT8 IR was quantized and whether it passed the INT8 check
(the manifest's record), since layers kept in f32 cost throughput.

    .venv/bin/python benchmarks/bench_openvino.py outputs/bench --rounds 3 --seconds 5
    .venv/bin/python benchmarks/bench_openvino.py outputs/bench --int8-only
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

from fmnist.bench.config import BenchConfig
from fmnist.bench.latency import measure_latency, measure_throughput, seed_predict
from fmnist.bench.workers import benchmark_images
from fmnist.bench.yardstick import run_benchmark_app
from fmnist.engines import create_engine
from fmnist.io import RunLayout
from fmnist.manifest import manifest_dict
from fmnist.system import machine_info

MODELS = ("main", "backup1", "backup2")
BATCHES = (1, 32, 256)
SEED_SPEEDUP_TARGET = {"main": 20.0, "backup1": 200.0, "backup2": 200.0}


def measure_pairs(
    run: str, model: str, rounds: int, seconds: float, int8_only: bool = False
) -> dict[str, list]:
    """name -> [(numerator, denominator) per round], each pair measured back to back.

    ``int8_only``: just int8 / f32 images/s at batch 256.
    """
    config = BenchConfig(
        run, model, iterations=1_000_000, warmup=200, max_seconds=seconds, min_iterations=10
    )
    images = benchmark_images(config)
    xml = RunLayout(Path(run)).openvino_ir(model, "f32")
    f32_latency = create_engine(run, model, "openvino-f32", "latency")
    f32_stream = create_engine(run, model, "openvino-f32", "throughput").predict_many
    int8_stream = create_engine(run, model, "openvino-int8", "throughput").predict_many
    pairs: dict[str, list] = {}

    def pair(name: str, first: Callable[[], float], second: Callable[[], float], swap: bool):
        if swap:
            b = second()
            a = first()
        else:
            a = first()
            b = second()
        pairs.setdefault(name, []).append((a, b))

    def int8_pair(swap: bool) -> None:
        pair(
            "int8 / f32 img/s, batch 256",
            lambda: measure_throughput(int8_stream, images, 256, config).images_per_second,
            lambda: measure_throughput(f32_stream, images, 256, config).images_per_second,
            swap,
        )

    if int8_only:
        for index in range(rounds):
            print(f"[bench_openvino] {model}: round {index + 1}/{rounds}", file=sys.stderr)
            int8_pair(index % 2 == 1)
        return pairs
    keras = create_engine(run, model, "keras-predict")  # the seed's baseline
    for index in range(rounds):
        swap = index % 2 == 1
        print(f"[bench_openvino] {model}: round {index + 1}/{rounds}", file=sys.stderr)
        runtime: list[float] = []

        def f32_call(batch, runtime=runtime):
            result = f32_latency.predict(batch)
            runtime.append(f32_latency.request_latency_ms())
            return result

        pair(
            "f32 p50 / benchmark_app median",
            lambda: measure_latency(f32_call, images, config).p50_ms,
            lambda: run_benchmark_app(xml, "f32", "latency", 1, seconds)["median_ms"],
            swap,
        )
        # Diagnostic: the runtime's own time inside our calls against benchmark_app's,
        # which separates the Python hand-off from the inference itself.
        bench_app_ms = pairs["f32 p50 / benchmark_app median"][-1][1]
        pairs.setdefault("(f32 in-runtime p50 / benchmark_app)", []).append(
            (statistics.median(runtime), bench_app_ms)
        )
        for batch in BATCHES:
            pair(
                f"ours / benchmark_app img/s, batch {batch}",
                lambda b=batch: measure_throughput(f32_stream, images, b, config).images_per_second,
                lambda b=batch: run_benchmark_app(xml, "f32", "throughput", b, seconds)[
                    "images_per_second"
                ],
                swap,
            )
        int8_pair(swap)
        pair(
            "keras-predict p50 / f32 p50",
            lambda: measure_latency(seed_predict(keras), images, config).p50_ms,
            lambda: measure_latency(f32_latency.predict, images, config).p50_ms,
            swap,
        )
    return pairs


def target_of(name: str, model: str) -> str:
    """The issue's target for a ratio ('-' where it sets none for this model)."""
    if name.startswith("("):
        return "-"
    if name.startswith("f32 p50"):
        return "<= 1.3"
    if name.startswith("keras-predict"):
        return f">= {SEED_SPEEDUP_TARGET[model]:g}"
    if name.startswith("int8"):
        return ">= 2" if model == "main" else "-"
    return ">= 0.8"


def meets(value: float, target: str) -> bool:
    """Whether ``value`` meets a target like '<= 1.3' or '>= 200'."""
    sign, number = target.split()
    return value <= float(number) if sign == "<=" else value >= float(number)


def int8_origin(run: str, model: str) -> str:
    """How the model's INT8 IR was made, from the manifest: method, check verdict, f32 layers."""
    record = (manifest_dict(Path(run)).get("openvino", {}).get(model) or {}).get("int8") or {}
    if not record:
        return "int8: no record in the manifest"
    precisions = record.get("layer_precisions") or {}
    in_f32 = sorted(name for name, precision in precisions.items() if precision != "int8")
    verdict = {True: "accepted", False: "NOT accepted"}.get(record.get("accepted"), "unchecked")
    return (
        f"int8: {record.get('method')}, {verdict}; compute layers in f32: "
        f"{len(in_f32)} of {len(precisions)}" + (f" ({', '.join(in_f32)})" if in_f32 else "")
    )


def report(model: str, pairs: dict[str, list], origin: str = "") -> list[str]:
    """The printed table of one model: ratio medians, rounds, the figures, targets."""
    rows = []
    for name, values in pairs.items():
        ratios = [a / b for a, b in values]
        median = statistics.median(ratios)
        target = target_of(name, model)
        verdict = "" if target == "-" else ("met" if meets(median, target) else "MISSED")
        figures = (
            f"{statistics.median(a for a, _ in values):,.3f} / "
            f"{statistics.median(b for _, b in values):,.3f}"
        )
        rounds = ", ".join(f"{r:.2f}" for r in ratios)
        rows.append((name, f"{median:.2f}", rounds, figures, f"{target} {verdict}".strip()))
    header = ("ratio", "median", "rounds", "figures (medians)", "target")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [f"\n{model}" + (f"  ({origin})" if origin else "")]
    for row in [header, *rows]:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        lines.append("  " + "  ".join(cells).rstrip())
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", nargs="?", default="outputs/bench", help="run directory")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0, help="per measurement")
    parser.add_argument(
        "--int8-only", action="store_true", help="only int8 / f32 images/s at batch 256"
    )
    args = parser.parse_args(argv)

    machine = machine_info()
    print(f"# {machine.cpu_model}, {machine.usable_cpus} CPUs, ISA {' '.join(machine.isa_flags)}")
    print(f"# run {Path(args.run).resolve()}, {args.rounds} rounds, {args.seconds:g} s a figure")
    print("# figures: ms for latency ratios, images/s for throughput ratios")
    for model in args.models.split(","):
        pairs = measure_pairs(args.run, model, args.rounds, args.seconds, args.int8_only)
        print("\n".join(report(model, pairs, int8_origin(args.run, model))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
