"""Batch scoring speed and memory, against its two parts measured side by side.

Builds a CSV of 1,000,000 rows (the test split written 100 times by ``fmnist-batch data
to-csv``) and a 100,000-row one, then measures in one run on this machine:

  parse   pyarrow.csv.read_csv on the whole 1M-row file (uint8 columns, as the scorer)
  engine  the engine's throughput on batches of the scorer's size (images ready in memory)
  score   ``fmnist-batch score`` on the 1M-row file, one process, rows/s from its marker

Parse and engine are measured before and after the scoring run and averaged, so a
change in machine load during the run touches both sides alike. It prints
score / (1 / (1/parse + 1/engine)) (target >= 0.8), and the peak RSS of the scoring
process on the 1M-row and the 100k-row files (target < 1 GiB, and within 20 %).

    python benchmarks/bench_score.py --run outputs/quick --model backup1

Without ``--run`` a small run is made first (backup1 trained one epoch on 3,000 images,
optimized and evaluated), which is enough for speed. The CSVs are deleted at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pyarrow.csv as pcsv  # noqa: E402

from fmnist.scoring.csv_input import inspect_csv  # noqa: E402
from fmnist.scoring.csv_parse import PARSE_OPTIONS, convert_options  # noqa: E402
from fmnist.scoring.score import ScoreConfig, default_variant  # noqa: E402
from fmnist.scoring.shards import marker_name  # noqa: E402

FMNIST = [sys.executable, "-m", "fmnist"]
GIB = 1 << 30


def cli(*args: str) -> None:
    subprocess.run([*FMNIST, *args], check=True, stdout=subprocess.DEVNULL)


def make_run(directory: Path, model: str) -> Path:
    """A run with ``model`` trained briefly, optimized and evaluated (speed, not accuracy)."""
    run = directory / "run"
    print(f"making a run in {run} (train, optimize, evaluate {model})", flush=True)
    cli("train", "--model", model, "--epochs", "1", "--limit", "3000", "--out", str(run))
    cli("optimize", "--run", str(run), "--model", model, "--int8")
    for variant in ("openvino-f32", "openvino-int8"):
        cli("evaluate", "--run", str(run), "--model", model, "--variant", variant)
    return run


def parse_rate(path: Path) -> tuple[float, float]:
    """Rows per second and per CPU second of pyarrow's read_csv on the whole file."""
    csv = inspect_csv(path)
    started, cpu_started = time.perf_counter(), time.process_time()
    table = pcsv.read_csv(
        path,
        read_options=pcsv.ReadOptions(column_names=csv.columns, skip_rows=int(csv.has_header)),
        parse_options=PARSE_OPTIONS,
        convert_options=convert_options(csv),
    )
    seconds = time.perf_counter() - started
    cpu_seconds = time.process_time() - cpu_started
    rows = table.num_rows
    del table
    return rows / seconds, rows / cpu_seconds


def engine_rate(
    run: Path, model: str, variant: str, batch_size: int, images: int
) -> tuple[float, float]:
    """Images per second and per CPU second of the engine in throughput mode."""
    from fmnist.data import load_dataset, to_model_input
    from fmnist.engines import create_engine

    engine = create_engine(run, model, variant, mode="throughput")
    test = to_model_input(load_dataset().test.images)
    batches = [test[i : i + batch_size] for i in range(0, len(test), batch_size)]
    for batch in batches[:4]:  # warm-up
        engine.predict(batch)
    # Driven as the scorer drives it: a block's batches at once where the engine can.
    many = getattr(engine, "predict_many", None)
    done, started, cpu_started = 0, time.perf_counter(), time.process_time()
    while done < images:
        if many:
            for _ in many(iter(batches)):
                pass
        else:
            for batch in batches:
                engine.predict(batch)
        done += len(test)
    return done / (time.perf_counter() - started), done / (time.process_time() - cpu_started)


def score_process(path: Path, run: Path, model: str, variant: str, out: Path) -> dict:
    """Run ``fmnist-batch score`` in its own process: its marker, plus the wall time."""
    shutil.rmtree(out, ignore_errors=True)
    argv = [*FMNIST, "score", str(path), "--run", str(run), "--model", model]
    argv += ["--variant", variant, "--out", str(out)]
    started = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
    marker = json.loads((out / marker_name(0, 1)).read_text())
    marker["wall_seconds"] = time.perf_counter() - started
    return marker


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="run directory with the model (else made)")
    parser.add_argument("--model", default="backup1")
    parser.add_argument("--variant", help="default: what `fmnist-batch score` picks")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the big CSV")
    parser.add_argument("--workdir", type=Path, help="where the CSVs go (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the CSVs")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-score-", dir=args.workdir))
    try:
        run = args.run or make_run(workdir, args.model)
        variant = args.variant or default_variant(run, args.model)[0]
        batch_size = ScoreConfig.batch_size
        repeat = max(1, args.rows // 10_000)
        big, small = workdir / "score-big.csv", workdir / "score-small.csv"
        print(f"writing {repeat * 10_000:,} and {repeat * 1_000:,}-row CSVs", flush=True)
        cli("data", "to-csv", "--split", "test", "--repeat", str(repeat), "--out", str(big))
        cli("data", "to-csv", "--split", "test", "--repeat", str(max(1, repeat // 10)),
            "--out", str(small))  # fmt: skip
        load_before = os.getloadavg()[0]

        parse, engine = [], []
        print("measuring parse and engine rates", flush=True)
        parse.append(parse_rate(big))
        engine.append(engine_rate(run, args.model, variant, batch_size, 100_000))
        print(f"scoring {big.name} ({big.stat().st_size / GIB:.2f} GiB)", flush=True)
        scored = score_process(big, run, args.model, variant, workdir / "out-big")
        print("measuring parse and engine rates again", flush=True)
        parse.append(parse_rate(big))
        engine.append(engine_rate(run, args.model, variant, batch_size, 100_000))
        print(f"scoring {small.name}", flush=True)
        scored_small = score_process(small, run, args.model, variant, workdir / "out-small")
        load_after = os.getloadavg()[0]
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    parse_mean, engine_mean = (float(np.mean([r[0] for r in runs])) for runs in (parse, engine))
    ideal = 1 / (1 / parse_mean + 1 / engine_mean)
    rate = scored["rows_per_second"]
    ratio = rate / ideal
    # The same in CPU time: steadier than wall time when other jobs share the machine.
    parse_cpu, engine_cpu = (float(np.mean([r[1] for r in runs])) for runs in (parse, engine))
    ideal_cpu = 1 / (1 / parse_cpu + 1 / engine_cpu)
    rate_cpu = scored["rows_read"] / scored["cpu_seconds"]
    # The scoring process's own peak (VmHWM), recorded in its marker: the wait4 figure
    # would include this benchmark's memory, which the child was forked from.
    rss_big, rss_small = scored["peak_rss_bytes"], scored_small["peak_rss_bytes"]
    rss_growth = rss_big / rss_small - 1
    figures = {
        "model": args.model,
        "variant": variant,
        "executed_precision": scored["executed_precision"],
        "rows": scored["rows_read"],
        "parse_rows_per_second": [round(p[0]) for p in parse],
        "engine_images_per_second": [round(e[0]) for e in engine],
        "parse_rows_per_cpu_second": [round(p[1]) for p in parse],
        "engine_images_per_cpu_second": [round(e[1]) for e in engine],
        "score_rows_per_cpu_second": round(rate_cpu),
        "ratio_to_ideal_cpu": round(rate_cpu / ideal_cpu, 3),
        "ideal_rows_per_second": round(ideal),
        "score_rows_per_second": round(rate),
        "score_wall_rows_per_second": round(scored["rows_read"] / scored["wall_seconds"]),
        "ratio_to_ideal": round(ratio, 3),
        "peak_rss_mib_big": round(rss_big / 2**20),
        "peak_rss_mib_small": round(rss_small / 2**20),
        "peak_rss_growth": round(rss_growth, 3),
        "load_average": [round(load_before, 1), round(load_after, 1)],
        "cpus": len(os.sched_getaffinity(0)),
    }
    print()
    print(f"model {args.model}, variant {variant} ({scored['executed_precision']}), "
          f"batch {batch_size}, {figures['cpus']} CPUs, load {load_before:.1f} -> "
          f"{load_after:.1f}")  # fmt: skip
    runs = figures["parse_rows_per_second"], figures["engine_images_per_second"]
    print(f"parse  (pyarrow read_csv)  {parse_mean:>10,.0f} rows/s   runs: {runs[0]}")
    print(f"engine (throughput mode)   {engine_mean:>10,.0f} rows/s   runs: {runs[1]}")
    print(f"ideal 1/(1/parse+1/engine) {ideal:>10,.0f} rows/s")
    wall = figures["score_wall_rows_per_second"]
    print(f"score  (end to end)        {rate:>10,.0f} rows/s   ({wall:,} counting start-up)")
    ok_rate = ratio >= 0.8
    ok_rss = rss_big < GIB and abs(rss_growth) <= 0.2
    print(f"score / ideal = {ratio:.2f}  (target >= 0.8: {'PASS' if ok_rate else 'FAIL'})")
    print(f"in CPU time: parse {parse_cpu:,.0f}, engine {engine_cpu:,.0f}, ideal "
          f"{ideal_cpu:,.0f}, score {rate_cpu:,.0f} rows per CPU second: "
          f"score / ideal = {rate_cpu / ideal_cpu:.2f}")  # fmt: skip
    print(f"peak RSS {scored['rows_read']:,} rows: {rss_big / 2**20:,.0f} MiB, "
          f"{scored_small['rows_read']:,} rows: {rss_small / 2**20:,.0f} MiB, "
          f"growth {rss_growth:+.1%}  (target < 1024 MiB and within 20 %: "
          f"{'PASS' if ok_rss else 'FAIL'})")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if ok_rate and ok_rss else 1


if __name__ == "__main__":
    sys.exit(main())
