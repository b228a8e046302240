"""Batch scoring speed and memory, against its parts measured side by side, CSV and Parquet.

Builds a CSV of 1,000,000 rows (the test split written 100 times by ``fmnist-batch data
to-csv``) and a 100,000-row one, the same rows as Parquet (label and pixel1..pixel784
uint8 columns, row groups of 65,536 rows), then measures in one run on this machine:

  parse   pyarrow.csv.read_csv on the whole 1M-row CSV (uint8 columns, as the scorer)
  read    pyarrow's own streaming read of the 1M-row Parquet file (record batches of the
          scorer's size, every column)
  engine  the engine's throughput on batches of the scorer's size (images ready in memory)
  score   ``fmnist-batch score`` on each 1M-row file, one process, rows/s from its marker

Parse, read and engine are measured before and after the scoring runs and averaged, so
a change in machine load during the run touches both sides alike. It prints, per
format, score / (1 / (1/parse + 1/engine)) (target >= 0.8), and the peak RSS of the
scoring process on the 1M-row and the 100k-row files (target < 1 GiB, and within 20 %).

    python benchmarks/bench_score.py --run outputs/quick --model backup1

Without ``--run`` a small run is made first (backup1 trained one epoch on 3,000 images,
optimized and evaluated), which is enough for speed. The inputs are deleted at the end.
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
import pyarrow as pa  # noqa: E402
import pyarrow.csv as pcsv  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from fmnist.scoring.csv_input import inspect_csv  # noqa: E402
from fmnist.scoring.csv_parse import PARSE_OPTIONS, convert_options  # noqa: E402
from fmnist.scoring.parquet_input import BLOCK_BYTES_PER_ROW, READ_BUFFER_BYTES  # noqa: E402
from fmnist.scoring.score import ScoreConfig, default_variant  # noqa: E402
from fmnist.scoring.shards import marker_name  # noqa: E402

FMNIST = [sys.executable, "-m", "fmnist"]
GIB = 1 << 30
GROUP_ROWS = 65_536


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


def csv_to_parquet(source: Path, target: Path, group_rows: int = GROUP_ROWS) -> None:
    """The CSV's rows as Parquet with uint8 label and pixel columns, streamed (flat memory)."""
    csv = inspect_csv(source)
    reader = pcsv.open_csv(
        source,
        read_options=pcsv.ReadOptions(
            column_names=csv.columns, skip_rows=int(csv.has_header), block_size=16 << 20
        ),
        parse_options=PARSE_OPTIONS,
        convert_options=convert_options(csv),
    )
    with pq.ParquetWriter(target, reader.schema) as writer:
        pending: list[pa.RecordBatch] = []
        for batch in reader:
            pending.append(batch)
            table = pa.Table.from_batches(pending)
            whole = table.num_rows // group_rows * group_rows
            if whole:
                writer.write_table(table.slice(0, whole), row_group_size=group_rows)
                pending = table.slice(whole).to_batches()
        if pending:
            writer.write_table(pa.Table.from_batches(pending), row_group_size=group_rows)


def read_rate(path: Path) -> tuple[float, float]:
    """Rows per second and per CPU second of pyarrow's streaming read of a Parquet file.

    Record batches of the scorer's size, read as the scorer reads them (no pre-buffering).
    """
    batch_rows = ScoreConfig.block_bytes // BLOCK_BYTES_PER_ROW
    parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=READ_BUFFER_BYTES)
    rows, started, cpu_started = 0, time.perf_counter(), time.process_time()
    for batch in parquet.iter_batches(batch_size=batch_rows):
        rows += batch.num_rows
    return rows / (time.perf_counter() - started), rows / (time.process_time() - cpu_started)


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
    # Driven as the scorer drives it: batches streamed to predict_many where the engine has it.
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


def _mean(runs: list[tuple[float, float]], which: int) -> float:
    return float(np.mean([run[which] for run in runs]))


def compare(name: str, source: dict, engine: list, scored: dict, small: dict) -> dict:
    """One format's figures: its reader and the engine against ``score``, and its memory."""
    ideal = 1 / (1 / _mean(source["runs"], 0) + 1 / _mean(engine, 0))
    ideal_cpu = 1 / (1 / _mean(source["runs"], 1) + 1 / _mean(engine, 1))
    rate_cpu = scored["rows_read"] / scored["cpu_seconds"]
    # The scoring process's own peak (VmHWM), recorded in its marker: the wait4 figure
    # would include this benchmark's memory, which the child was forked from.
    rss_big, rss_small = scored["peak_rss_bytes"], small["peak_rss_bytes"]
    return {
        "format": name,
        "reader": source["reader"],
        "reader_rows_per_second": [round(run[0]) for run in source["runs"]],
        "reader_rows_per_cpu_second": [round(run[1]) for run in source["runs"]],
        "ideal_rows_per_second": round(ideal),
        "score_rows_per_second": round(scored["rows_per_second"]),
        "score_wall_rows_per_second": round(scored["rows_read"] / scored["wall_seconds"]),
        "ratio_to_ideal": round(scored["rows_per_second"] / ideal, 3),
        "score_rows_per_cpu_second": round(rate_cpu),
        "ratio_to_ideal_cpu": round(rate_cpu / ideal_cpu, 3),
        "rows": scored["rows_read"],
        "rows_small": small["rows_read"],
        "peak_rss_mib_big": round(rss_big / 2**20),
        "peak_rss_mib_small": round(rss_small / 2**20),
        "peak_rss_growth": round(rss_big / rss_small - 1, 3),
    }


def report(figures: dict) -> bool:
    """Print one format's figures; True when both targets are met."""
    ideal, reader = figures["ideal_rows_per_second"], figures["reader"]
    runs = figures["reader_rows_per_second"]
    print(f"{figures['format']}:")
    print(f"  {reader:<26} {np.mean(runs):>10,.0f} rows/s   runs: {runs}")
    print(f"  ideal 1/(1/{reader.split()[0]}+1/engine) {ideal:>8,} rows/s")
    print(f"  score (end to end)         {figures['score_rows_per_second']:>10,} rows/s   "
          f"({figures['score_wall_rows_per_second']:,} counting start-up)")  # fmt: skip
    ratio, growth = figures["ratio_to_ideal"], figures["peak_rss_growth"]
    ok_rate = ratio >= 0.8
    ok_rss = figures["peak_rss_mib_big"] < 1024 and abs(growth) <= 0.2
    print(f"  score / ideal = {ratio:.2f}  (target >= 0.8: {'PASS' if ok_rate else 'FAIL'}); "
          f"in CPU time {figures['ratio_to_ideal_cpu']:.2f}")  # fmt: skip
    verdict = "PASS" if ok_rss else "FAIL"
    print(f"  peak RSS {figures['rows']:,} rows: {figures['peak_rss_mib_big']:,} MiB, "
          f"{figures['rows_small']:,} rows: {figures['peak_rss_mib_small']:,} MiB, growth "
          f"{growth:+.1%}  (target < 1024 MiB and within 20 %: {verdict})")  # fmt: skip
    return ok_rate and ok_rss


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="run directory with the model (else made)")
    parser.add_argument("--model", default="backup1")
    parser.add_argument("--variant", help="default: what `fmnist-batch score` picks")
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the big input")
    parser.add_argument("--workdir", type=Path, help="where the inputs go (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--keep", action="store_true", help="keep the inputs")
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="bench-score-", dir=args.workdir))
    try:
        run = args.run or make_run(workdir, args.model)
        variant = args.variant or default_variant(run, args.model)[0]
        batch_size = ScoreConfig.batch_size
        repeat = max(1, args.rows // 10_000)
        big, small = workdir / "score-big.csv", workdir / "score-small.csv"
        big_pq, small_pq = big.with_suffix(".parquet"), small.with_suffix(".parquet")
        print(f"writing {repeat * 10_000:,} and {repeat * 1_000:,}-row CSVs and Parquet files",
              flush=True)  # fmt: skip
        cli("data", "to-csv", "--split", "test", "--repeat", str(repeat), "--out", str(big))
        cli("data", "to-csv", "--split", "test", "--repeat", str(max(1, repeat // 10)),
            "--out", str(small))  # fmt: skip
        csv_to_parquet(big, big_pq)
        csv_to_parquet(small, small_pq)
        load_before = os.getloadavg()[0]

        parse = {"reader": "parse (pyarrow read_csv)", "runs": []}
        read = {"reader": "read (pyarrow Parquet)", "runs": []}
        engine: list[tuple[float, float]] = []

        def measure_parts() -> None:
            parse["runs"].append(parse_rate(big))
            read["runs"].append(read_rate(big_pq))
            engine.append(engine_rate(run, args.model, variant, batch_size, 100_000))

        print("measuring parse, read and engine rates", flush=True)
        measure_parts()
        scored = {}
        for name, path in (("csv", big), ("parquet", big_pq)):
            print(f"scoring {path.name} ({path.stat().st_size / GIB:.2f} GiB)", flush=True)
            scored[name] = score_process(path, run, args.model, variant, workdir / f"out-{name}")
        print("measuring parse, read and engine rates again", flush=True)
        measure_parts()
        scored_small = {}
        for name, path in (("csv", small), ("parquet", small_pq)):
            print(f"scoring {path.name}", flush=True)
            scored_small[name] = score_process(
                path, run, args.model, variant, workdir / f"out-small-{name}"
            )
        load_after = os.getloadavg()[0]
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    engine_mean = _mean(engine, 0)
    formats = [
        compare("CSV", parse, engine, scored["csv"], scored_small["csv"]),
        compare("Parquet", read, engine, scored["parquet"], scored_small["parquet"]),
    ]
    figures = {
        "model": args.model,
        "variant": variant,
        "executed_precision": scored["csv"]["executed_precision"],
        "batch_size": batch_size,
        "engine_images_per_second": [round(e[0]) for e in engine],
        "engine_images_per_cpu_second": [round(e[1]) for e in engine],
        "formats": formats,
        "load_average": [round(load_before, 1), round(load_after, 1)],
        "cpus": len(os.sched_getaffinity(0)),
    }
    print()
    print(f"model {args.model}, variant {variant} ({figures['executed_precision']}), "
          f"batch {batch_size}, {figures['cpus']} CPUs, load {load_before:.1f} -> "
          f"{load_after:.1f}")  # fmt: skip
    print(f"engine (throughput mode)     {engine_mean:>10,.0f} rows/s   runs: "
          f"{figures['engine_images_per_second']}")  # fmt: skip
    passed = [report(one) for one in formats]
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if all(passed) else 1


if __name__ == "__main__":
    sys.exit(main())
