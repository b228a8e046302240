"""The comparison report, from a quick run's real Parquet files.

The session fixture copies the shared trained run, evaluates it, optimizes and
benchmarks ``backup1`` and scores a small CSV with the real commands; a second copy is
benchmarked under another node type, a third has no benchmark at all.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from fmnist.cli import main
from fmnist.engines import VARIANTS
from fmnist.io import RunLayout, write_parquet_atomic
from fmnist.manifest import (
    EvaluationRecord,
    IrRecord,
    JobRecord,
    MachineRecord,
    record_evaluation,
    record_ir,
    record_job_entry,
)
from fmnist.report import build_report
from fmnist.report.document import format_value
from fmnist.report.render import Cell, Table, gap_footnotes, to_markdown
from fmnist.report.runs import read_run
from fmnist.report.seed_reference import SEED_RESULTS

MODELS = ("main", "backup1", "backup2")
BENCH = ["--iterations", "30", "--warmup", "3", "--max-seconds", "0.5", "--min-iterations", "5"]


def invoke(*args):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="session")
def runs(trained_run, tmp_path_factory) -> dict[str, Path]:
    """icx: evaluated, optimized, benchmarked, scored; spr: the same models benchmarked on
    another node type; nobench: evaluated only (no timings/)."""
    from fmnist.evaluate import evaluate_model

    root = tmp_path_factory.mktemp("report-runs")
    icx = root / "icx"
    shutil.copytree(trained_run, icx)
    for model in MODELS:
        evaluate_model(icx, model, "keras-predict", limit=300)
    invoke("optimize", "--run", icx, "--model", "backup1")
    evaluate_model(icx, "backup1", "openvino-f32", limit=300)
    nobench = root / "nobench"
    shutil.copytree(icx, nobench)
    spr = root / "spr"
    shutil.copytree(icx, spr)
    variants = "keras-predict,keras-onednn-on,openvino-f32,openvino-bf16"
    invoke(
        "benchmark",
        "--run",
        icx,
        "--model",
        "backup1",
        "--variants",
        variants,
        "--batch-sizes",
        "1,16",
        "--node-type",
        "icx",
        *BENCH,
    )
    invoke(
        "benchmark",
        "--run",
        spr,
        "--model",
        "backup1",
        "--variants",
        "openvino-f32",
        "--batch-sizes",
        "1,16",
        "--node-type",
        "spr",
        "--yardstick",
        "--yardstick-seconds",
        "1",
        *BENCH,
    )
    csv = root / "images.csv"
    invoke("data", "to-csv", "--split", "test", "--limit", "200", "--out", csv)
    invoke(
        "score",
        csv,
        "--run",
        icx,
        "--model",
        "backup1",
        "--variant",
        "openvino-f32",
        "--shard",
        "all/2",
    )
    return {"icx": icx, "spr": spr, "nobench": nobench}


@pytest.fixture(scope="session")
def icx_report(runs, tmp_path_factory):
    return build_report([runs["icx"]], tmp_path_factory.mktemp("icx-report"))


@pytest.fixture(scope="session")
def pair_report(runs, tmp_path_factory):
    """icx and spr side by side."""
    return build_report([runs["icx"], runs["spr"]], tmp_path_factory.mktemp("pair-report"))


def results_rows(markdown: str) -> dict[str, list[str]]:
    """The RESULTS table of report.md: row label -> cells (header row under 'RESULTS')."""
    section = markdown.split("## RESULTS", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith("| ---"):
            cells = [c.strip().strip("*") for c in line.strip("|").split(" | ")]
            rows[cells[0]] = cells[1:]
    return rows


def timings(run: Path) -> pd.DataFrame:
    return pd.concat(pd.read_parquet(p) for p in sorted((run / "timings").glob("*.parquet")))


def ours(frame, variant, mode, batch):
    hit = frame[
        (frame["variant"] == variant)
        & (frame["source"] == "fmnist")
        & (frame["mode"] == mode)
        & (frame["batch_size"] == batch)
        & (frame["status"] == "ok")
    ]
    return hit.iloc[-1]


# --------------------------------------------------------------------------- units


def test_format_value_units():
    assert format_value(0.9032, "fraction") == "90.32 %"
    assert format_value(0.37261, "loss") == "0.3726"
    assert format_value(151.23, "ms") == "151.2 ms"
    assert format_value(0.05213, "ms") == "0.0521 ms"
    assert format_value(839.2, "x") == "839.2×"
    assert format_value(1.5, "x") == "1.50×"
    assert format_value(-0.25, "pp") == "-0.25 pp"
    assert format_value(57.36, "percent_delta") == "+57.4 %"
    assert format_value(10400, "s") == "10,400 s"
    assert format_value(None, "ms") == ""


def test_the_same_gap_reason_gets_one_footnote():
    table = Table(
        ["a", "b", "c"],
        [
            [Cell("x", header=True), Cell(gap="no benchmark"), Cell(gap="no benchmark")],
            [Cell("y", header=True), Cell("1"), Cell(gap="other")],
        ],
    )
    texts, notes = gap_footnotes(table)
    assert texts == [["x", "gap [1]", "gap [1]"], ["y", "1", "gap [2]"]]
    assert notes == ["[1] no benchmark", "[2] other"]
    assert "| **x** | gap [1] | gap [1] |" in to_markdown([table])


def test_timings_read_in_the_one_schema(tmp_path):
    from fmnist.bench.timings import COLUMNS, read_timings

    # A file written before some columns existed: they read empty; other names are not guessed.
    path = tmp_path / "t.parquet"
    pd.DataFrame({"p50_ms": ["1.5"], "latency_p99_ms": [2.0], "model": ["main"]}).to_parquet(path)
    row = read_timings(path).iloc[0]
    assert set(COLUMNS) <= set(row.index)
    assert row["p50_ms"] == 1.5 and np.isnan(row["p99_ms"]) and row["node_type"] is None


def test_not_a_run_directory_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == (
        f"error: {tmp_path}: not a run directory (no manifest.json, models/, metrics/ or timings/)"
    )


def test_several_runs_need_out(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path), str(tmp_path)])
    assert result.exit_code == 1 and "--out" in result.output
    assert "Example" in CliRunner().invoke(main, ["report", "--help"]).output


def accuracy_rows(markdown: str) -> tuple[list[str], dict[tuple[str, str], list[str]]]:
    """The accuracy-change table: its header and (model, variant) -> cells."""
    section = markdown.split("## Accuracy change of each optimized variant", 1)[1]
    lines = [line for line in section.split("\n## ", 1)[0].splitlines() if line.startswith("| ")]
    split = [
        [c.strip().strip("*").replace("\\|", "|") for c in line.strip("|").split(" | ")]
        for line in lines
    ]
    header, rows = split[0], [row for row in split[1:] if not row[0].startswith("---")]
    return header, {(row[0], row[1]): row for row in rows}


def test_accuracy_table_shows_loss_and_mean_dp_beside_accuracy(tmp_path):
    from fmnist.engines.int8_check import Int8Bounds
    from fmnist.evaluate import evaluate_probabilities, write_evaluation

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 10, 1000)
    logits = rng.normal(0, 1, (1000, 10))
    logits[np.arange(1000), labels] += 3.0

    def softmax(x):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)

    f32 = softmax(logits)
    # backup1: int8 close to f32; backup2: the same classes, flattened probabilities.
    probabilities = {"backup1": softmax(logits * 1.01), "backup2": softmax(logits / 1.6)}
    for model, int8 in probabilities.items():
        write_evaluation(evaluate_probabilities(f32, labels, model, "openvino-f32"), tmp_path)
        write_evaluation(
            evaluate_probabilities(int8, labels, model, "openvino-int8", reference=f32), tmp_path
        )
    markdown = build_report([tmp_path], tmp_path / "report").markdown.read_text()
    header, rows = accuracy_rows(markdown)
    column = {title: i for i, title in enumerate(header)}
    assert (
        header.index("loss")
        < header.index("mean |Δp| vs openvino-f32")
        < header.index("INT8 check")
    )
    for model, int8 in probabilities.items():
        row = rows[(model, "openvino-int8")]
        metrics = pd.read_parquet(RunLayout(tmp_path).metrics(model, "openvino-int8")).iloc[0]
        f32_metrics = pd.read_parquet(RunLayout(tmp_path).metrics(model, "openvino-f32")).iloc[0]
        assert row[column["accuracy"]] == format_value(metrics["accuracy"], "fraction")
        assert row[column["loss"]] == format_value(metrics["loss"], "loss")
        assert row[column["mean confidence"]] == format_value(metrics["mean_confidence"], "ratio")
        dp = float(np.mean(np.abs(int8.astype(float) - f32)))
        assert row[column["mean |Δp| vs openvino-f32"]] == format_value(dp, "ratio")
        change = 100 * (metrics["loss"] / f32_metrics["loss"] - 1)
        assert row[column["loss vs openvino-f32"]] == format_value(change, "percent_delta")
        # f32 is the reference: nothing to compare it with.
        assert rows[(model, "openvino-f32")][column["INT8 check"]] == ""
    assert rows[("backup1", "openvino-int8")][column["INT8 check"]] == "accepted"
    rejected = rows[("backup2", "openvino-int8")][column["INT8 check"]]
    assert rejected.startswith("rejected: ") and "mean confidence" in rejected
    assert Int8Bounds().describe() in markdown
    csv = pd.read_csv(tmp_path / "report" / "results.csv")
    hit = csv[(csv["key"] == "mean_abs_dp_vs_openvino-f32") & (csv["model"] == "backup1")]
    assert hit.loc[hit["variant"] == "openvino-int8", "value"].iloc[0] == pytest.approx(
        np.mean(np.abs(probabilities["backup1"].astype(float) - f32))
    )


def test_quantization_table_shows_how_each_int8_ir_was_made(tmp_path):

    check = {"accuracy_drop": 0.0007, "lost": 14, "gained": 10}
    record_ir(
        tmp_path,
        "backup1",
        IrRecord(
            int8={
                "method": "ptq+8bit-first-layer",
                "accepted": True,
                "reason": "int8 keeps f32's figures",
                "needs_int8_dot_product": True,
                "check": check,
                "layer_precisions": {"conv_1": "int8", "dense_4": "f32", "conv_2": "int8"},
                "speedup_batch256": 3.81,
            }
        ),
    )
    record_ir(tmp_path, "main", IrRecord(f32={"xml": "x"}))  # optimized without --int8
    (tmp_path / "models" / "backup1").mkdir(parents=True)
    (tmp_path / "models" / "main").mkdir(parents=True)
    markdown = build_report([tmp_path], tmp_path / "report").markdown.read_text()
    table = markdown.split("## INT8 quantization", 1)[1].split("\n## ", 1)[0]
    row = next(line for line in table.splitlines() if line.startswith("| **backup1**"))
    cells = [cell.strip() for cell in row.strip("|").split(" | ")]
    assert cells[1:] == [
        "ptq+8bit-first-layer",
        "dense_4",
        "-0.07 pp (14 lost, 10 gained)",
        "accepted",
        "VNNI or AMX",
        "3.81×",
    ]
    main_row = next(line for line in table.splitlines() if line.startswith("| **main**"))
    assert "no INT8 IR (optimize --int8 not run)" in markdown and main_row


def test_environment_shows_the_revisions_the_jobs_ran(tmp_path):
    from fmnist.report.tables import build_tables

    (tmp_path / "models" / "backup1").mkdir(parents=True)
    machine = MachineRecord(host="node1", git_revision="c" * 40)
    for key, command, revision in (("1", "train", "a"), ("2", "evaluate", "b"), ("3", "x", "a")):
        job = JobRecord(command=command, git_revision=revision * 40)
        record_job_entry(tmp_path, key, job, machine)
    tables = build_tables([read_run(tmp_path)])
    assert tables.environment["git revision"].tolist() == ["a" * 12 + ", " + "b" * 12]


def test_report_step_closes_the_pipeline():
    from fmnist.pipeline.spec import load_pipeline

    steps = load_pipeline().steps
    assert steps[-1].name == "report"
    assert set(steps[-1].needs) == {s.name for s in steps[:-1]}
    assert steps[-1].outputs == ("report/report.html",)


# --------------------------------------------------------------------------- real runs


@pytest.mark.slow
def test_every_model_and_variant_appears(icx_report):
    markdown = icx_report.markdown.read_text()
    rows = results_rows(markdown)
    header = rows["RESULTS"]
    for model in MODELS:
        assert f"{model} · icx" in header and f"{model} · seed" in header
    for variant in VARIANTS:
        assert any(f"({variant})" in label for label in rows), variant
    csv = pd.read_csv(icx_report.csv)
    latency = csv[(csv["section"] == "latency") & (csv["key"] == "p50_ms")]
    assert {(m, v) for m in MODELS for v in VARIANTS} <= set(
        zip(latency["model"], latency["variant"], strict=True)
    )
    html = icx_report.html.read_text()
    for name in (*MODELS, *VARIANTS):
        assert name in html


@pytest.mark.slow
def test_numbers_in_tables_equal_the_parquet_values(runs, icx_report):
    run = runs["icx"]
    rows = results_rows(icx_report.markdown.read_text())
    column = rows["RESULTS"].index("backup1 · icx")
    csv = pd.read_csv(icx_report.csv)
    layout = RunLayout(run)
    for model, variant in (
        ("main", "keras-predict"),
        ("backup1", "keras-predict"),
        ("backup2", "keras-predict"),
        ("backup1", "openvino-f32"),
    ):
        metrics = pd.read_parquet(layout.metrics(model, variant)).iloc[0]
        label = "Un-optimized" if variant == "keras-predict" else "Optimized"
        cells = rows[f"{label} accuracy ({variant})"]
        index = rows["RESULTS"].index(f"{model} · icx")
        assert cells[index] == format_value(metrics["accuracy"], "fraction")
        assert rows[f"{label} loss ({variant})"][index] == format_value(metrics["loss"], "loss")
        hit = csv[
            (csv["section"] == "results")
            & (csv["key"] == "accuracy")
            & (csv["model"] == model)
            & (csv["variant"] == variant)
            & (csv["context"] == "icx")
        ]
        assert hit["value"].iloc[0] == metrics["accuracy"]

    frame = timings(run)
    predict = ours(frame, "keras-predict", "latency", 1)
    f32 = ours(frame, "openvino-f32", "latency", 1)
    assert rows["Optimized latency, batch-1 p50 (openvino-f32)"][column] == format_value(
        f32["p50_ms"], "ms"
    )
    assert rows["Un-optimized latency, mean of model.predict (keras-predict)"][
        column
    ] == format_value(predict["mean_ms"], "ms")
    seed_column = rows["RESULTS"].index("backup1 · seed")
    assert rows["Un-optimized accuracy (keras-predict)"][seed_column] == "90.32 %"
    assert rows["Un-optimized latency, mean of model.predict (keras-predict)"][
        seed_column
    ] == format_value(SEED_RESULTS["backup1"].latency_ms, "ms")

    latency = csv[(csv["section"] == "latency") & (csv["model"] == "backup1")]
    speedup = latency[
        (latency["variant"] == "openvino-f32") & (latency["key"] == "speedup_p50_vs_keras-predict")
    ]["value"].iloc[0]
    assert speedup == pytest.approx(predict["p50_ms"] / f32["p50_ms"], rel=1e-12)
    onednn = ours(frame, "keras-onednn-on", "latency", 1)
    speedup = latency[
        (latency["variant"] == "openvino-f32")
        & (latency["key"] == "speedup_p99_vs_keras-onednn-on")
    ]["value"].iloc[0]
    assert speedup == pytest.approx(onednn["p99_ms"] / f32["p99_ms"], rel=1e-12)
    markdown = icx_report.markdown.read_text()
    assert format_value(predict["p50_ms"] / f32["p50_ms"], "x") in markdown

    rate = csv[
        (csv["section"] == "throughput")
        & (csv["model"] == "backup1")
        & (csv["variant"] == "openvino-f32")
        & (csv["batch_size"] == 16)
    ]
    rate = rate[rate["key"] == "images_per_second"]["value"].iloc[0]
    assert rate == ours(frame, "openvino-f32", "throughput", 16)["images_per_second"]
    assert format_value(rate, "rate") in markdown

    markers = [
        json.loads(p.read_text())
        for p in sorted((run / "predictions" / "images" / "backup1").glob("*.success.json"))
    ]
    scoring = csv[(csv["section"] == "scoring") & (csv["item"] == "images")]
    value = dict(zip(scoring["key"], scoring["value"], strict=True))
    assert len(markers) == 2 and value["rows_read"] == 200 == sum(m["rows_read"] for m in markers)
    assert value["rows_rejected"] == 0 and value["parts"] == 2
    assert value["seconds"] == pytest.approx(sum(m["seconds"] for m in markers))
    assert "| **icx** | images | backup1 | openvino-f32 | 2 (of 2) | 200 | 200 | 0 |" in markdown


@pytest.mark.slow
def test_what_was_not_run_shows_as_a_gap_with_its_reason(runs, icx_report):
    markdown = icx_report.markdown.read_text()
    rows = results_rows(markdown)
    column = rows["RESULTS"].index("backup1 · icx")
    # never optimized: no INT8 IR was made
    cell = rows["Optimized accuracy (openvino-int8)"][column]
    number = re.fullmatch(r"gap \[(\d+)\]", cell).group(1)
    assert f"[{number}] never optimized (no models/backup1/openvino/int8/model.xml)" in markdown
    # not benchmarked: main was never benchmarked
    main_column = rows["RESULTS"].index("main · icx")
    assert rows["Optimized latency, batch-1 p50 (openvino-f32)"][main_column].startswith("gap")
    assert "main not benchmarked on icx" in markdown
    # bf16: measured where the CPU has it, else skipped with the benchmark's reason
    bf16 = ours_or_status(timings(runs["icx"]), "openvino-bf16")
    cell = rows["Optimized latency, batch-1 p50 (openvino-bf16)"][column]
    if bf16["status"] == "ok":
        assert cell == format_value(bf16["p50_ms"], "ms")
    else:
        assert cell.startswith("gap") and f"{bf16['status']}: {bf16['reason']}" in markdown


def ours_or_status(frame, variant):
    return frame[(frame["variant"] == variant) & (frame["source"] == "fmnist")].iloc[0]


@pytest.mark.slow
def test_a_run_without_benchmark_shows_the_gap(runs, tmp_path):
    run = tmp_path / "nobench"
    shutil.copytree(runs["nobench"], run)
    # What `evaluate --skip-unsupported` records for a variant this CPU cannot run.
    record_evaluation(run, "backup1", "openvino-bf16", EvaluationRecord(skipped="no bf16 here"))
    result = invoke("report", run)  # the CLI, into RUN/report
    assert "report.html" in result.output
    report = run / "report"
    for name in ("report.md", "report.html", "results.csv"):
        assert (report / name).stat().st_size > 0
    assert len(list((report / "figures").glob("*.png"))) == 6  # curves + confusion x 3
    markdown = (report / "report.md").read_text()
    rows = results_rows(markdown)
    # One run: its column is named by the node type its jobs recorded (or the run).
    name = next(h for h in rows["RESULTS"] if h.startswith("backup1 · ") and "seed" not in h)
    column = rows["RESULTS"].index(name)
    context = name.removeprefix("backup1 · ")
    assert rows["Un-optimized accuracy (keras-predict)"][column].endswith("%")
    for label in (
        "Un-optimized latency, batch-1 p50 (keras-predict)",
        "Optimized latency, batch-1 p50 (openvino-f32)",
    ):
        number = re.fullmatch(r"gap \[(\d+)\]", rows[label][column]).group(1)
        assert f"[{number}] no benchmark in this run (timings/ is empty)" in markdown
    assert f"gap: no latency measurement on {context}." in markdown
    assert "no batch scoring in this run (predictions/ is empty)" in markdown
    number = re.fullmatch(
        r"gap \[(\d+)\]", rows["Optimized accuracy (openvino-bf16)"][column]
    ).group(1)
    assert f"[{number}] skipped: no bf16 here" in markdown


@pytest.mark.slow
def test_two_node_types_side_by_side(runs, pair_report):
    markdown = pair_report.markdown.read_text()
    rows = results_rows(markdown)
    header = rows["RESULTS"]
    assert header[header.index("backup1 · icx") + 1] == "backup1 · spr"
    label = "Optimized latency, batch-1 p50 (openvino-f32)"
    for node in ("icx", "spr"):
        expected = ours(timings(runs[node]), "openvino-f32", "latency", 1)["p50_ms"]
        assert rows[label][header.index(f"backup1 · {node}")] == format_value(expected, "ms")
    # spr measured no oneDNN: a gap there, a number on icx
    label = "Optimized latency, batch-1 p50 (keras-onednn-on)"
    assert rows[label][header.index("backup1 · spr")].startswith("gap")
    assert not rows[label][header.index("backup1 · icx")].startswith("gap")
    assert "p50 · icx" in markdown and "p50 · spr" in markdown
    environment = markdown.split("## Environment", 1)[1]
    assert "| **icx** | icx | icx |" in environment and "| **spr** | spr | spr |" in environment
    # spr also ran OpenVINO's benchmark_app on the same IR: both figures and their ratio
    frame = timings(runs["spr"])
    yard = frame[(frame["source"] == "benchmark_app") & (frame["mode"] == "latency")].iloc[0]
    mine = ours(frame, "openvino-f32", "latency", 1)
    line = next(
        li
        for li in markdown.split("## Yardstick", 1)[1].splitlines()
        if li.startswith("| **spr** | **backup1** | **openvino-f32** | latency |")
    )
    assert format_value(mine["p50_ms"], "ms") in line
    assert format_value(yard["p50_ms"], "ms") in line
    assert format_value(mine["p50_ms"] / yard["p50_ms"], "x") in line
    assert {p.name for p in pair_report.figures} >= {
        "latency__icx.png",
        "latency__spr.png",
        "throughput__icx.png",
        "throughput__spr.png",
    }


@pytest.mark.slow
def test_output_is_deterministic(runs, pair_report, tmp_path):
    again = build_report([runs["icx"], runs["spr"]], tmp_path)
    first = pair_report.markdown.parent
    names = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert len(names) > 10 and len(pair_report.figures) == len(again.figures)
    for name in names:
        assert (first / name).read_bytes() == (tmp_path / name).read_bytes(), name


@pytest.mark.slow
def test_unreadable_and_partial_files_are_gaps_not_crashes(runs, tmp_path):
    run = tmp_path / "broken"
    shutil.copytree(runs["icx"], run)
    (run / "metrics" / "backup2__keras-predict.parquet").write_bytes(b"not parquet")
    (run / "predictions" / "images" / "backup1" / "part-00001-of-00002.success.json").unlink()
    timing = sorted((run / "timings").glob("*.parquet"))[0]
    frame = pd.read_parquet(timing).drop(columns=["p99_ms", "cpu_model"])
    write_parquet_atomic(timing, frame)
    data = read_run(run)
    assert any("backup2__keras-predict.parquet: unreadable" in p for p in data.problems)
    files = build_report([run], tmp_path / "out")
    markdown = files.markdown.read_text()
    assert "Unreadable files (shown as gaps)" in markdown
    assert "not evaluated (no metrics/backup2__keras-predict.parquet)" in markdown
    assert "1 of 2 parts have no success marker" in markdown
    assert "the benchmark recorded no p99 latency" in markdown


class _References(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.urls += [value or "" for name, value in attrs if name in ("src", "href", "srcset")]


def run_chromium(
    executable: str, *args, tmp_path: Path, netlog: Path
) -> subprocess.CompletedProcess:
    """Headless Chromium on a file; every network request it makes is logged to ``netlog``."""
    flags = [
        executable,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--host-resolver-rules=MAP * ~NOTFOUND",
        f"--user-data-dir={tmp_path / 'profile'}",
        f"--log-net-log={netlog}",
    ]
    return subprocess.run([*flags, *args], check=True, capture_output=True, timeout=180, text=True)


def page_requests(netlog: Path) -> set[str]:
    """URLs the page asked for: requests with an initiator (the browser's own have none)."""
    events = json.loads(netlog.read_text())["events"]
    return {
        e["params"]["url"]
        for e in events
        if "url" in e.get("params", {})
        and e["params"].get("initiator") not in (None, "not an origin")
        and not e["params"]["url"].startswith(("file:", "data:"))
    }


@pytest.mark.slow
def test_html_renders_in_chromium_without_requests(chromium, pair_report, tmp_path):
    html = pair_report.html.read_text()
    parser = _References()
    parser.feed(html)
    assert parser.urls and all(url.startswith("data:image/png;base64,") for url in parser.urls)
    assert not re.search(r"url\(|@import|<script|<link|<iframe", html)

    shot, netlog = tmp_path / "shot.png", tmp_path / "netlog.json"
    url = pair_report.html.resolve().as_uri()
    dom = run_chromium(
        chromium,
        "--screenshot=" + str(shot),
        "--window-size=1400,3000",
        "--dump-dom",
        url,
        tmp_path=tmp_path,
        netlog=netlog,
    ).stdout
    assert "RESULTS: the seed's table regenerated" in dom and "backup1 · spr" in dom
    assert page_requests(netlog) == set()

    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (3000, 1400)
    # The top of the page holds the RESULTS table: many colours, not a blank page.
    top = pixels[:1500, :, :3].reshape(-1, 3)
    assert top.std() > 0.1 and len(np.unique((top * 255).astype(int), axis=0)) > 20

    # The check above can fail: a page with one external image is caught.
    probe = tmp_path / "probe.html"
    probe.write_text('<p>x</p><img src="http://192.0.2.1/probe.png">')
    run_chromium(chromium, "--dump-dom", probe.as_uri(), tmp_path=tmp_path, netlog=netlog)
    assert page_requests(netlog) == {"http://192.0.2.1/probe.png"}
