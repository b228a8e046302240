"""The benchmark command's batch-1 latency against benchmark_app's, in back-to-back rounds.

For each model, each round runs the command itself (``fmnist-batch benchmark --variants
openvino-f32 --batch-sizes 1 --max-seconds S``, a fresh worker process as always, in a
scratch run beside the real one) and ``benchmark_app -hint latency -t S`` on the same
f32 IR with ``-infer_precision f32``, one after the other, the order alternating between
rounds. Each round prints the command's p50/p90/p99 and the medians of its window's
slices (``round_p50_ms``), the runtime's own p50 inside our calls, benchmark_app's
median, both sides' streams and threads, how busy the machine was meanwhile, and the
ratio p50 / median; each model ends with the median ratio over rounds (target <= 1.3).

Run it under the same ``nice`` as anything else on a shared machine; both sides inherit
it. ``--checkout DIR`` runs the command from another checkout of the project (the
before of a change); ``--variants`` runs more variants in the worker before and after
openvino-f32 (the figure compared stays openvino-f32's). Nothing is written into RUN.

    nice -n 19 .venv/bin/python benchmarks/bench_latency.py outputs/bench --rounds 5
    nice -n 19 .venv/bin/python benchmarks/bench_latency.py RUN --checkout /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fmnist.bench.yardstick import run_benchmark_app
from fmnist.io import RunLayout
from fmnist.system import machine_info

MODELS = ("main", "backup1", "backup2")
TARGET = 1.3


@dataclass(frozen=True)
class Busy:
    """How busy the machine was over an interval: all CPUs, and our child processes' share."""

    machine: float  # fraction of all CPUs' time not idle
    ours: float  # fraction of all CPUs' time used by our children

    @property
    def others(self) -> float:
        """The share of all CPUs that other processes used."""
        return max(0.0, self.machine - self.ours)


def _cpu_jiffies() -> tuple[int, int]:
    # The aggregate line of /proc/stat: user nice system idle iowait irq softirq steal ...
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields[:8]) - idle, sum(fields[:8])


def busy_while(run) -> tuple[object, Busy]:
    """Run ``run()`` and measure how busy the machine and our children were meanwhile."""
    busy0, total0 = _cpu_jiffies()
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = run()
    busy1, total1 = _cpu_jiffies()
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    ticks = os.sysconf("SC_CLK_TCK")
    total = max(total1 - total0, 1)
    ours = (
        (children1.ru_utime - children0.ru_utime + children1.ru_stime - children0.ru_stime)
        * ticks
        / total
    )
    return result, Busy((busy1 - busy0) / total, ours)


def scratch_run(run: Path) -> Path:
    """A run directory that shares RUN's models (a link) and a copy of its manifest.

    The command writes its timings there, not into RUN.
    """
    scratch = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    (scratch / "models").symlink_to(run.resolve() / "models")
    shutil.copy2(run / "manifest.json", scratch / "manifest.json")
    return scratch


def command_latency(
    run: Path, model: str, variants: str, seconds: float, checkout: Path | None
) -> dict:
    """The openvino-f32 batch-1 latency row the benchmark command writes, as a dict."""
    scratch = scratch_run(run)
    env = dict(os.environ)
    if checkout:
        env["PYTHONPATH"] = os.pathsep.join([str(checkout), env.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
    command = [
        sys.executable, "-m", "fmnist", "benchmark", "--run", str(scratch), "--model", model,
        "--variants", variants, "--batch-sizes", "1", "--max-seconds", f"{seconds:g}",
        "--node-type", "bench",
    ]  # fmt: skip
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        files = sorted((scratch / "timings").glob("*.parquet"))
        if result.returncode != 0 or not files:
            tail = (result.stdout + result.stderr).strip().splitlines()[-3:]
            raise SystemExit(f"benchmark command failed ({result.returncode}): {tail}")
        frame = pd.read_parquet(files[0])
    finally:
        shutil.rmtree(scratch)
    hit = frame[
        (frame["variant"] == "openvino-f32")
        & (frame["source"] == "fmnist")
        & (frame["mode"] == "latency")
        & (frame["status"] == "ok")
    ]
    if hit.empty:
        raise SystemExit(f"no openvino-f32 latency row for {model}: {frame['reason'].tolist()}")
    row = hit.iloc[0].to_dict()
    row["details"] = json.loads(row["details"] or "{}")
    return row


def measure_rounds(
    run: Path, model: str, rounds: int, seconds: float, variants: str, checkout: Path | None
) -> list[dict]:
    """One dict per round: the command's row, benchmark_app's figures, how busy each side was."""
    xml = RunLayout(run).openvino_ir(model, "f32")
    out = []
    for index in range(rounds):
        print(f"[bench_latency] {model}: round {index + 1}/{rounds}", file=sys.stderr)

        def ours():
            return busy_while(lambda: command_latency(run, model, variants, seconds, checkout))

        def theirs():
            return busy_while(lambda: run_benchmark_app(xml, "f32", "latency", 1, seconds))

        if index % 2:
            (app, app_busy), (row, row_busy) = theirs(), ours()
        else:
            (row, row_busy), (app, app_busy) = ours(), theirs()
        out.append({"row": row, "app": app, "row_busy": row_busy, "app_busy": app_busy})
        time.sleep(0.5)  # let the last side's threads go idle before the next starts
    return out


def round_line(index: int, result: dict) -> str:
    """One round: the command's figures and spread, benchmark_app's, and the ratio."""
    row, app = result["row"], result["app"]
    slices = row["details"].get("round_p50_ms") or []
    spread = f"{min(slices):.3f}-{max(slices):.3f}" if slices else "-"
    runtime = row["details"].get("runtime_p50_ms")
    return (
        f"  {index + 1:>5}  {row['p50_ms']:>7.3f} {row['p90_ms']:>7.3f} {row['p99_ms']:>7.3f}"
        f"  {spread:>13}  {runtime or float('nan'):>7.3f}  {row['iterations']:>7}"
        f"  {app['median_ms']:>7.3f}  {app['iterations']:>7}"
        f"  {result['row_busy'].others:>6.0%} {result['app_busy'].others:>6.0%}"
        f"  {row['p50_ms'] / app['median_ms']:>5.2f}"
    )


def report(model: str, results: list[dict]) -> list[str]:
    """A model's table: every round, then the median ratio and the spread of the figures."""
    first = results[0]
    streams = first["row"]["details"].get("streams")
    lines = [
        f"\n{model} openvino-f32, batch 1: command {streams} stream(s) x "
        f"{first['row']['threads']} threads, benchmark_app {first['app']['streams']} x "
        f"{first['app']['threads']}",
        "  round   p50 ms  p90 ms  p99 ms   slice p50 ms  runtime    calls"
        "   bm_app    calls  others: cmd     bm  ratio",
    ]
    lines += [round_line(i, r) for i, r in enumerate(results)]
    ratios = [r["row"]["p50_ms"] / r["app"]["median_ms"] for r in results]
    median = statistics.median(ratios)
    verdict = "met" if median <= TARGET else "MISSED"
    lines.append(
        f"  median ratio {median:.2f} over {len(ratios)} rounds "
        f"(rounds {', '.join(f'{r:.2f}' for r in ratios)}); target <= {TARGET} {verdict}"
    )
    lines.append(
        "  medians over rounds: command p50/p90/p99 "
        + "/".join(f"{statistics.median(r['row'][k] for r in results):.3f}" for k in
                   ("p50_ms", "p90_ms", "p99_ms"))
        + f" ms, benchmark_app {statistics.median(r['app']['median_ms'] for r in results):.3f} ms"
    )  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", nargs="?", default="outputs/bench", help="run directory")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="each side's window")
    parser.add_argument("--variants", default="openvino-f32", help="what the command's worker runs")
    parser.add_argument("--checkout", type=Path, default=None, help="run this checkout's command")
    args = parser.parse_args(argv)

    run = Path(args.run)
    machine = machine_info()
    print(f"# {machine.cpu_model}, {machine.usable_cpus} CPUs, ISA {' '.join(machine.isa_flags)}")
    print(
        f"# run {run.resolve()}, {args.rounds} rounds, {args.seconds:g} s a side, "
        f"nice {os.nice(0)}, command from {args.checkout or 'this checkout'}, "
        f"worker variants {args.variants}"
    )
    print(
        "# ms; slice p50: range of the medians of the command's window in 5 slices; runtime: "
        "the runtime's own p50 inside our calls; others: share of all CPUs other processes "
        "used while each side ran"
    )
    for model in args.models.split(","):
        results = measure_rounds(
            run, model, args.rounds, args.seconds, args.variants, args.checkout
        )
        print("\n".join(report(model, results)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
