"""Training speed of each network in f32 and bf16, against the machine's GEMM limit.

For every network this measures, each in a process of its own and back to back within
a round: training images/s in float32 and in Keras' mixed_bfloat16, through the input
pipeline of ``train --recipe fast``; and the rate of a 2048 x 2048 matrix product in
each precision (the machine's limit on these cores). It prints, per round and as the
median over rounds:

  img/s                  training images per second
  GFLOPS                 img/s x forward+backward FLOPs per image (from the layers)
  of f32 GEMM            GFLOPS / the f32 GEMM rate measured in the same round
  of own GEMM            GFLOPS / the GEMM rate of the same precision
  bf16 / f32             the two precisions' img/s, measured back to back

bf16 runs natively only where the CPU has AVX512_BF16 or AMX (and oneDNN is not capped
below them); elsewhere only f32 is measured, as ``train`` trains there (oneDNN has no bf16
matrix product under an AVX2 cap at all).

    .venv/bin/python benchmarks/bench_train.py --rounds 3 --seconds 20
    ONEDNN_MAX_CPU_ISA=AVX2 .venv/bin/python benchmarks/bench_train.py --models backup2
"""

from __future__ import annotations

import argparse
import statistics

from fmnist.bench.training import in_subprocess
from fmnist.system import has_native_bf16, machine_info, onednn_isa_cap

PRECISIONS = ("float32", "mixed_bfloat16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="main,backup1,backup2")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=20.0, help="per measurement")
    args = parser.parse_args()
    models = args.models.split(",")
    precisions = PRECISIONS if has_native_bf16() else ("float32",)

    info = machine_info()
    print(f"CPU: {info.cpu_model}, {info.usable_cpus} usable cores")
    print(
        f"native bf16: {has_native_bf16()}  oneDNN ISA cap: {onednn_isa_cap() or 'none'}  "
        f"batch {args.batch_size}"
    )
    rows: dict[tuple[str, str], list[dict]] = {}
    gemm: dict[str, list[float]] = {p: [] for p in precisions}
    for round_ in range(1, args.rounds + 1):
        for precision in precisions:
            gemm[precision].append(in_subprocess("gemm", precision, "5")["gflops"])
        print(f"\nround {round_}: GEMM " + _per_precision({p: g[-1] for p, g in gemm.items()}))
        for model in models:
            speeds = {}
            # Alternate the order between rounds: a shared machine drifts over seconds.
            order = precisions if round_ % 2 else precisions[::-1]
            for precision in order:
                speeds[precision] = in_subprocess(
                    "train", model, precision, str(args.batch_size), str(args.seconds)
                )
                rows.setdefault((model, precision), []).append(
                    {
                        **speeds[precision],
                        "gemm": gemm[precision][-1],
                        "f32_gemm": gemm["float32"][-1],
                    }
                )
            rates = {p: s["images_per_second"] for p, s in speeds.items()}
            line = "  ".join(f"{p} {rate:7.0f} img/s" for p, rate in rates.items())
            if len(rates) == 2:
                line += f"  bf16/f32 {rates['mixed_bfloat16'] / rates['float32']:.2f}"
            print(f"  {model:8s} {line}")

    print(f"\nmedians over {args.rounds} round(s):")
    header = (
        f"{'model':8s} {'precision':15s} {'img/s':>8s} {'MFLOP/img':>10s} {'GFLOPS':>8s} "
        f"{'of f32 GEMM':>12s} {'of own GEMM':>12s} {'bf16/f32':>9s}"
    )
    print(header)
    for model in models:
        f32_rate = statistics.median(r["images_per_second"] for r in rows[(model, "float32")])
        for precision in precisions:
            measured = rows[(model, precision)]
            rate = statistics.median(r["images_per_second"] for r in measured)
            gflops = statistics.median(r["gflops"] for r in measured)
            of_f32 = statistics.median(r["gflops"] / r["f32_gemm"] for r in measured)
            of_own = statistics.median(r["gflops"] / r["gemm"] for r in measured)
            ratio = f"{rate / f32_rate:9.2f}" if precision != "float32" else f"{'':9s}"
            mflops = measured[0]["flops_per_image"] / 1e6
            print(
                f"{model:8s} {precision:15s} {rate:8.0f} {mflops:10.1f} "
                f"{gflops:8.1f} {of_f32:12.1%} {of_own:12.1%} {ratio}"
            )
    print("GEMM medians: " + _per_precision({p: statistics.median(g) for p, g in gemm.items()}))
    if len(precisions) == 1:
        print("bf16 not measured: this CPU (or oneDNN's ISA cap) has no native bf16")


def _per_precision(gflops: dict[str, float]) -> str:
    return ", ".join(f"{p} {value:.0f} GFLOPS" for p, value in gflops.items())


if __name__ == "__main__":
    main()
