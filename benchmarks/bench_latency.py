"""The benchmark command's batch-1 latency against benchmark_app's, in back-to-back rounds.

For each model, each round runs the command itself (``fmnist-batch benchmark --variants
openvino-f32 --batch-sizes 1 --max-seconds S``, a fresh worker process as always, in a
scratch run beside the real one) and ``benchmark_app -hint latency -t S`` on the same
f32 IR with ``-infer_precision f32``, one after the other, the order rotating between
rounds. Each round prints the command's p50/p90/p99 and the medians of its window's
slices (``round_p50_ms``), the runtime's own p50 inside our calls, benchmark_app's
median, both sides' streams and threads, how busy the machine was meanwhile, and the
ratio p50 / median; each model ends with the median ratio over rounds (target <= 1.3).

Run it under the same ``nice`` as anything else on a shared machine; both sides inherit
it. ``--checkout DIR`` runs the command from another checkout of the project (the
state before a change); given more than once (``.`` is this checkout), every checkout's
command runs in each round, beside the same benchmark_app run. ``--variants`` runs more
variants in the worker before and after openvino-f32 (the figure compared stays
openvino-f32's). Nothing is written into RUN.

    nice -n 19 .venv/bin/python benchmarks/bench_latency.py outputs/bench --rounds 5
    nice -n 19 .venv/bin/python benchmarks/bench_latency.py RUN --checkout /tmp/before --checkout .
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
    run: Path,
    model: str,
    rounds: int,
    seconds: float,
    variants: str,
    checkouts: list[Path | None],
) -> list[dict]:
    """One dict per round: each checkout's row, benchmark_app's figures, how busy each was.

    The sides (each checkout's command, then benchmark_app) run one after the other in
    an order that rotates between rounds, so no side always follows the same one.
    """
    xml = RunLayout(run).openvino_ir(model, "f32")
    sides = [
        *(lambda c=c: command_latency(run, model, variants, seconds, c) for c in checkouts),
        lambda: run_benchmark_app(xml, "f32", "latency", 1, seconds),
    ]
    out = []
    for index in range(rounds):
        print(f"[bench_latency] {model}: round {index + 1}/{rounds}", file=sys.stderr)
        measured: dict[int, tuple] = {}
        for step in range(len(sides)):
            side = (index + step) % len(sides)
            measured[side] = busy_while(sides[side])
            time.sleep(0.5)  # let this side's threads go idle before the next starts
        app, app_busy = measured[len(sides) - 1]
        out.append(
            {
                "rows": [measured[i][0] for i in range(len(checkouts))],
                "row_busy": [measured[i][1] for i in range(len(checkouts))],
                "app": app,
                "app_busy": app_busy,
            }
        )
    return out


def round_line(index: int, row: dict, busy: Busy, result: dict) -> str:
    """One round of one checkout: the command's figures and spread, benchmark_app's, the ratio."""
    app = result["app"]
    slices = row["details"].get("round_p50_ms") or []
    spread = f"{min(slices):.3f}-{max(slices):.3f}" if slices else "-"
    runtime = row["details"].get("runtime_p50_ms")
    return (
        f"  {index + 1:>5}  {row['p50_ms']:>7.3f} {row['p90_ms']:>7.3f} {row['p99_ms']:>7.3f}"
        f"  {spread:>13}  {runtime or float('nan'):>7.3f}  {row['iterations']:>7}"
        f"  {app['median_ms']:>7.3f}  {app['iterations']:>7}"
        f"  {busy.others:>6.0%} {result['app_busy'].others:>6.0%}"
        f"  {row['p50_ms'] / app['median_ms']:>5.2f}"
    )


def report(model: str, results: list[dict], checkouts: list[Path | None]) -> list[str]:
    """A model's tables, one per checkout: every round, the median ratio, the spreads."""
    lines = []
    for which, checkout in enumerate(checkouts):
        rows = [r["rows"][which] for r in results]
        first, app = rows[0], results[0]["app"]
        lines.append(
            f"\n{model} openvino-f32, batch 1, command from {checkout or 'this checkout'}: "
            f"{first['details'].get('streams')} stream(s) x {first['threads']} threads, "
            f"benchmark_app {app['streams']} x {app['threads']}"
        )
        lines.append(
            "  round   p50 ms  p90 ms  p99 ms   slice p50 ms  runtime    calls"
            "   bm_app    calls  others: cmd     bm  ratio"
        )
        lines += [
            round_line(i, r["rows"][which], r["row_busy"][which], r) for i, r in enumerate(results)
        ]
        apps = [r["app"]["median_ms"] for r in results]
        ratios = [row["p50_ms"] / app for row, app in zip(rows, apps, strict=True)]
        median = statistics.median(ratios)
        verdict = "met" if median <= TARGET else "MISSED"
        lines.append(
            f"  median ratio {median:.2f} over {len(ratios)} rounds "
            f"(rounds {', '.join(f'{r:.2f}' for r in ratios)}); target <= {TARGET} {verdict}"
        )
        lines.append(
            "  medians over rounds: command p50/p90/p99 "
            + "/".join(f"{statistics.median(row[k] for row in rows):.3f}" for k in
                       ("p50_ms", "p90_ms", "p99_ms"))
            + f" ms, benchmark_app {statistics.median(r['app']['median_ms'] for r in results):.3f}"
            " ms"
        )  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", nargs="?", default="outputs/bench", help="run directory")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="each side's window")
    parser.add_argument("--variants", default="openvino-f32", help="what the command's worker runs")
    parser.add_argument(
        "--checkout",
        type=Path,
        action="append",
        help="run this checkout's command (repeat it, or add '.' for this checkout, to "
        "measure several in the same rounds)",
    )
    args = parser.parse_args(argv)

    run = Path(args.run)
    checkouts = [None if c == Path(".") else c for c in args.checkout or [Path(".")]]
    machine = machine_info()
    print(f"# {machine.cpu_model}, {machine.usable_cpus} CPUs, ISA {' '.join(machine.isa_flags)}")
    print(
        f"# run {run.resolve()}, {args.rounds} rounds, {args.seconds:g} s a side, "
        f"nice {os.nice(0)}, commands from "
        f"{', '.join(str(c or 'this checkout') for c in checkouts)}, "
        f"worker variants {args.variants}"
    )
    print(
        "# ms; slice p50: range of the medians of the command's window in 5 slices; runtime: "
        "the runtime's own p50 inside our calls; others: share of all CPUs other processes "
        "used while each side ran"
    )
    for model in args.models.split(","):
        results = measure_rounds(run, model, args.rounds, args.seconds, args.variants, checkouts)
        print("\n".join(report(model, results, checkouts)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
