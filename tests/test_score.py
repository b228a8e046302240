"""Batch scoring end to end: shards, rejects, resume, verify and merge, with a real engine."""

from __future__ import annotations

import gzip
import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import SCORE_MODEL as MODEL
from conftest import SCORE_ROWS as ROWS
from conftest import check_predictions, read_parts, read_rejects, score_args

from fmnist.cli import main
from fmnist.data import CSV_HEADER
from fmnist.io import FmnistError, RunLayout, write_parquet_atomic
from fmnist.pipeline.jobenv import require_array_index
from fmnist.scoring.csv_input import byte_range, inspect_csv
from fmnist.scoring.score import (
    RejectLimitExceeded,
    ScoreConfig,
    default_out_dir,
    default_variant,
    parse_shard_option,
    score_shards,
)
from fmnist.scoring.shards import (
    BufferedWriter,
    RejectLimit,
    marker_name,
    part_name,
    rejects_name,
)
from fmnist.scoring.verify import merge_parts, verify_predictions


def config_for(run, source, out, shards=1, **extra) -> ScoreConfig:
    return ScoreConfig(
        input=source,
        run=run,
        model=MODEL,
        variant="keras-predict",
        out_dir=out,
        shards=shards,
        **extra,
    )


def score(run, source, out, shards=1, **extra):
    config = config_for(run, source, out, shards, **extra)
    return score_shards(config, list(range(shards)), progress=lambda message: None)


# --------------------------------------------------------------------------- scoring


def test_shards_predict_every_row_like_the_engine(
    tmp_path, trained_run, sample_csv, reference, dataset
):
    out = tmp_path / "out"
    results = score(trained_run, sample_csv, out, shards=3, probabilities=True)
    assert [r.status for r in results] == ["scored"] * 3
    assert sum(r.predicted for r in results) == ROWS and sum(r.rejected for r in results) == 0
    frame = read_parts(out, 3)
    check_predictions(frame, reference, np.arange(ROWS))
    assert np.array_equal(frame["label"], dataset.test.labels[:ROWS])
    probs = frame[[f"prob_{k}" for k in range(10)]].to_numpy()
    np.testing.assert_allclose(probs, reference, atol=1e-5)
    metadata = pq.read_schema(out / part_name(1, 3)).metadata
    marker = json.loads((out / marker_name(1, 3)).read_text())
    assert metadata[b"model"] == b"backup1" and metadata[b"variant"] == b"keras-predict"
    assert metadata[b"model_sha256"].decode() == marker["model_sha256"]
    assert metadata[b"input_fingerprint"].decode() == marker["input_fingerprint"]
    assert marker["rows_read"] == marker["predicted"] == results[1].rows_read > 0
    assert marker["peak_rss_bytes"] > 0 and marker["rows_per_second"] > 0
    result = verify_predictions(out)
    assert (result.rows, result.predicted, result.rejected) == (ROWS, ROWS, 0)
    merged = tmp_path / "merged.parquet"
    assert merge_parts(result, merged) == ROWS
    assert pd.read_parquet(merged).equals(frame)


def test_headerless_labelless_and_gzip_inputs(tmp_path, trained_run, sample_csv, reference):
    lines = sample_csv.read_text().splitlines()
    pixels_only = [line.split(",", 1)[1] for line in lines[1:]]
    inputs = {
        "headerless.csv": ("\n".join(lines[1:]) + "\n", True),
        "nolabel.csv": ("\n".join([",".join(CSV_HEADER[1:]), *pixels_only]) + "\n", False),
        "nolabel-headerless.csv.gz": ("\n".join(pixels_only), False),
        "labelled.csv.gz": ("\n".join(lines) + "\n", True),
    }
    for name, (text, labelled) in inputs.items():
        source = tmp_path / name
        data = text.encode()
        source.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
        out = tmp_path / f"out-{name}"
        # gzip shards interleave blocks of 64 rows: 5 blocks over 2 shards.
        score(trained_run, source, out, shards=2, gzip_block_rows=64)
        frame = read_parts(out, 2).sort_values("row_id", ignore_index=True)
        check_predictions(frame, reference, np.arange(ROWS))
        assert ("label" in frame.columns) == labelled, name
        result = verify_predictions(out)
        assert result.rows == result.predicted == ROWS, name
        merged = tmp_path / f"{name}.parquet"
        merge_parts(result, merged)
        assert np.array_equal(pd.read_parquet(merged)["row_id"], np.arange(ROWS)), name


def bad_copy(sample_csv, path):
    """The sample with a few bad rows: {row id: kind}."""
    lines = sample_csv.read_text().splitlines()
    bad = {7: "over_255", 150: "too_few_fields", 151: "label_out_of_range", 299: "nan"}
    lines[1 + 7] = lines[1 + 7].rsplit(",", 1)[0] + ",256"
    lines[1 + 150] = lines[1 + 150].rsplit(",", 1)[0]
    lines[1 + 151] = "11," + lines[1 + 151].split(",", 1)[1]
    lines[1 + 299] = lines[1 + 299].rsplit(",", 1)[0] + ",nan"
    path.write_text("\n".join(lines) + "\n")
    return path, bad


def test_bad_rows_are_rejected_next_to_the_part_and_accounted(
    tmp_path, trained_run, sample_csv, reference
):
    source, bad = bad_copy(sample_csv, tmp_path / "bad.csv")
    out = tmp_path / "out"
    results = score(trained_run, source, out, shards=2, max_rejects="3%")
    assert sum(r.rejected for r in results) == len(bad)
    rejects = read_rejects(out, 2)
    assert dict(zip(rejects["row_id"], rejects["kind"], strict=True)) == bad
    assert list(rejects["line"]) == [row + 2 for row in bad]
    lines = source.read_text().splitlines()
    assert list(rejects["raw"]) == [lines[row + 1][:200] for row in bad]
    good = np.array(sorted(set(range(ROWS)) - set(bad)))
    check_predictions(read_parts(out, 2), reference, good)
    result = verify_predictions(out)
    assert (result.rows, result.predicted, result.rejected) == (ROWS, ROWS - 4, 4)
    for marker in result.markers:  # each shard's limit: 3 % of its own rows
        assert (marker.max_rejects, marker.reject_limit) == ("3%", marker.rows_read * 3 // 100)
    worst = max(result.markers, key=lambda m: m.rejected / m.rows_read)
    assert (
        f"{ROWS} input rows = {ROWS - 4} predicted + 4 rejected (1.33 %); --max-rejects 3% per "
        f"shard, largest share in shard {worst.shard}: {worst.rejected} of {worst.rows_read} rows "
        f"(limit {worst.reject_limit})"
    ) in result.summary()


def test_fail_mode_stops_at_the_first_bad_row_and_leaves_nothing(tmp_path, trained_run, sample_csv):
    source, _ = bad_copy(sample_csv, tmp_path / "bad.csv")
    out = tmp_path / "out"
    with pytest.raises(FmnistError) as info:
        score(trained_run, source, out, on_bad_row="fail")
    assert str(info.value).startswith(f"{source}:9: pixel784 is 256, above 255")
    assert sorted(p.name for p in out.iterdir()) == [".part-00000-of-00001.lock"]


def test_rerun_skips_finished_shards_and_redoes_the_rest(tmp_path, trained_run, sample_csv):
    out = tmp_path / "out"
    score(trained_run, sample_csv, out, shards=3)
    before = {i: (out / part_name(i, 3)).stat().st_mtime_ns for i in range(3)}
    (out / marker_name(1, 3)).unlink()  # shard 1 was killed before its marker
    stale = out / f".{part_name(1, 3)}.abc123.tmp"
    stale.write_bytes(b"half a parquet file")
    results = score(trained_run, sample_csv, out, shards=3)
    assert [r.status for r in results] == ["skipped", "scored", "skipped"]
    assert not stale.exists()
    assert (out / part_name(0, 3)).stat().st_mtime_ns == before[0]
    assert verify_predictions(out).predicted == ROWS
    # A finished shard of another model file is not finished for this one.
    marker = json.loads((out / marker_name(2, 3)).read_text())
    marker["model_sha256"] = "0" * 64
    (out / marker_name(2, 3)).write_text(json.dumps(marker))
    results = score(trained_run, sample_csv, out, shards=3)
    assert [r.status for r in results] == ["skipped", "skipped", "scored"]


# --------------------------------------------------------------------------- reject limit


def test_reject_limit_is_a_count_or_a_percentage_of_a_shards_rows():
    assert RejectLimit.parse("100").allowed(10**6) == 100
    one = RejectLimit.parse("1%")
    assert [one.allowed(rows) for rows in (0, 99, 100, 250)] == [0, 0, 1, 2]
    assert RejectLimit.parse("0.5%").allowed(1000) == 5 and RejectLimit.parse("0").allowed(9) == 0
    assert one.exceeded(2, 199) and not one.exceeded(1, 199) and not one.exceeded(2, 200)
    assert not RejectLimit.parse("100%").exceeded(10, 10)
    for text in ("abc", "-1", "101%", "1.5", "%", "nan%", ""):
        with pytest.raises(FmnistError, match="--max-rejects"):
            RejectLimit.parse(text)


def test_reject_limit_stops_a_shard_early_only_when_its_end_cannot_meet_it():
    one = RejectLimit.parse("1%")
    assert not one.certain_to_exceed(10, 1000)  # 10 of 1,010 rows would be 0.99 %
    assert one.certain_to_exceed(11, 1000)  # 11 of 1,011 at best: 1.09 %
    assert not one.certain_to_exceed(10**6, None)  # no bound: decided at the end
    assert RejectLimit.parse("5").certain_to_exceed(6, None)
    # Whenever a stop is certain, every way the shard could end exceeds the limit.
    for limit in map(RejectLimit.parse, ("1%", "10%", "33%", "3")):
        for bound in range(12):
            for rejected in range(12):
                if limit.certain_to_exceed(rejected, bound):
                    assert all(
                        limit.exceeded(rejected + more, rejected + more + valid)
                        for valid in range(bound + 1)
                        for more in range(5)
                    ), (limit, rejected, bound)


def _shard_of_rows(source, rows, shards):
    """{row: the byte-range shard that holds it}."""
    first_rows = [byte_range(inspect_csv(source), i, shards).first_row for i in range(shards)]
    return {row: max(i for i, first in enumerate(first_rows) if first <= row) for row in rows}


def test_a_shard_past_max_rejects_leaves_no_files_and_finished_shards_stay(
    tmp_path, trained_run, sample_csv
):
    source, bad = bad_copy(sample_csv, tmp_path / "bad.csv")
    owner = _shard_of_rows(source, bad, 2)
    per_shard = [list(owner.values()).count(i) for i in range(2)]
    assert sorted(per_shard) == [1, 3]
    over = per_shard.index(3)
    out = tmp_path / "out"
    with pytest.raises(RejectLimitExceeded) as info:
        score(trained_run, source, out, shards=2, max_rejects="1")
    message = str(info.value)
    assert message.startswith(f"1 of 2 shard(s) past --max-rejects 1: shard {over}/2: ")
    assert "1 finished shard(s) kept" in message and "\n" not in message
    first = min(row for row in bad if owner[row] == over)
    assert f"first: {source}:{first + 2}: " in message
    assert [r.status for r in info.value.results] == [
        "over-limit" if i == over else "scored" for i in range(2)
    ]
    left = sorted(p.name for p in out.iterdir() if not p.name.endswith(".lock"))
    assert left == sorted(n(1 - over, 2) for n in (part_name, rejects_name, marker_name))
    # A looser limit finishes the shard and keeps the other one.
    results = score(trained_run, source, out, shards=2, max_rejects="3%")
    assert [r.status for r in results] == ["scored" if i == over else "skipped" for i in range(2)]
    result = verify_predictions(out)
    assert result.rejected == 4
    assert f"--max-rejects {result.reject_limits()} per shard" in result.summary()
    assert result.reject_limits() == f"1 (shards [{1 - over}]), 3% (shards [{over}])" or (
        result.reject_limits() == f"3% (shards [{over}]), 1 (shards [{1 - over}])"
    )
    # A stricter limit fails the command for finished shards too, and touches nothing.
    with pytest.raises(RejectLimitExceeded, match="2 of 2 shard"):
        score(trained_run, source, out, shards=2, max_rejects="0")
    assert verify_predictions(out).rejected == 4


def test_a_hopeless_shard_stops_early_when_its_size_bounds_the_valid_rows(
    tmp_path, trained_run, sample_csv
):
    lines = sample_csv.read_text().splitlines()
    broken = [lines[0]] + [line.rsplit(",", 1)[0] + ",12.5" for line in lines[1:]]
    text = "\n".join(broken) + "\n"
    plain, zipped = tmp_path / "frac.csv", tmp_path / "frac.csv.gz"
    plain.write_text(text)
    zipped.write_bytes(gzip.compress(text.encode()))
    for source, whole in ((plain, False), (zipped, True)):
        out = tmp_path / f"out-{source.name}"
        with pytest.raises(RejectLimitExceeded, match="most often fractional") as info:
            score(trained_run, source, out, block_bytes=64 << 10, gzip_block_rows=32)
        (result,) = info.value.results
        assert result.status == "over-limit" and result.rejected == result.rows_read
        # A plain file's bytes bound its valid rows: the first block decides. A gzip
        # stream has no such bound: it is read to the end.
        assert (result.rows_read == ROWS) == whole, source.name
        assert ("already more than" in result.summary) != whole
        assert ("of its 300 rows rejected" in result.summary) == whole
        assert not list(out.glob("*.parquet")) and not list(out.glob(".*.tmp"))


# --------------------------------------------------------------------------- verify


@pytest.fixture(scope="module")
def scored(tmp_path_factory, trained_run, sample_csv):
    out = tmp_path_factory.mktemp("scored") / "out"
    score(trained_run, sample_csv, out, shards=3)
    return out


def _drop_row(directory):
    table = pq.read_table(directory / part_name(1, 3))
    ids = table.column("row_id").to_numpy()
    pq.write_table(table.filter(ids != ids[5]), directory / part_name(1, 3))


def _tamper_marker(directory):
    path = directory / marker_name(2, 3)
    marker = json.loads(path.read_text())
    marker["predicted"] += 1
    path.write_text(json.dumps(marker))


def _loosen_the_limit(directory):
    path = directory / marker_name(1, 3)
    marker = json.loads(path.read_text())
    marker["max_rejects"], marker["reject_limit"] = "0", 5
    path.write_text(json.dumps(marker))


def _change_a_prediction(directory):
    table = pq.read_table(directory / part_name(0, 3))
    pred = table.column("pred").to_numpy().copy()
    pred[3] = (pred[3] + 1) % 10
    table = table.set_column(table.schema.get_field_index("pred"), "pred", pa.array(pred))
    pq.write_table(table, directory / part_name(0, 3))  # same metadata, other content


def _duplicate_row(directory):
    table = pq.read_table(directory / part_name(0, 3))
    pq.write_table(pa.concat_tables([table, table.slice(0, 1)]), directory / part_name(0, 3))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / part_name(1, 3)).unlink(), "part-00001-of-00003.parquet: missing"),
        (lambda d: (d / marker_name(0, 3)).unlink(), "shard 0/3 is not finished"),
        (lambda d: (d / rejects_name(2, 3)).unlink(), "rejects-00002-of-00003.parquet: missing"),
        (_tamper_marker, r"success.json: predicted is \d+, should be \d+"),
        (_drop_row, r"row \d+ \(line \d+ of the input\) is neither predicted nor rejected"),
        (_duplicate_row, "row 0 appears more than once"),
        (_change_a_prediction, "SHA-256 differs from part_sha256"),
        (_loosen_the_limit, r"reject_limit is 5, --max-rejects 0 of \d+ rows is 0"),
        (lambda d: (d / part_name(0, 2)).write_bytes(b""), r"different shard counts \[2, 3\]"),
    ],
)
def test_verify_names_the_first_discrepancy(tmp_path, scored, damage, message):
    directory = tmp_path / "copy"
    shutil.copytree(scored, directory)
    verify_predictions(directory)
    damage(directory)
    with pytest.raises(FmnistError, match=message):
        verify_predictions(directory)


def test_verify_notices_a_changed_input(tmp_path, scored, sample_csv):
    changed = tmp_path / "changed.csv"
    changed.write_text(sample_csv.read_text() + sample_csv.read_text().splitlines()[1] + "\n")
    with pytest.raises(FmnistError, match="input changed since it was scored"):
        verify_predictions(scored, changed)
    with pytest.raises(FmnistError, match="not found"):
        verify_predictions(scored, tmp_path / "moved.csv")


# --------------------------------------------------------------------------- choices


def test_default_variant_prefers_int8_only_when_it_keeps_f32s_figures(tmp_path):
    from fmnist.engines.int8_check import MEAN_ABS_DP_COLUMN

    layout = RunLayout(tmp_path)
    f32_figures = {"accuracy": 0.9050, "loss": 0.333, "mean_confidence": 0.871, "images": 10000}
    int8_figures = {**f32_figures, "accuracy": 0.9021, MEAN_ABS_DP_COLUMN: 0.002}

    def metrics(variant, figures, **changes):
        frame = pd.DataFrame({key: [value] for key, value in {**figures, **changes}.items()})
        write_parquet_atomic(layout.metrics("m", variant), frame)

    def ir(precision):
        xml = layout.openvino_ir("m", precision)
        xml.parent.mkdir(parents=True, exist_ok=True)
        xml.write_text("<net/>")

    assert default_variant(tmp_path, "m")[0] == "keras-predict"
    ir("f32")
    assert default_variant(tmp_path, "m")[0] == "openvino-f32"
    ir("int8")
    metrics("openvino-f32", f32_figures)
    metrics("openvino-int8", int8_figures)
    variant, why = default_variant(tmp_path, "m")
    assert variant == "openvino-int8" and why.startswith("int8 keeps f32's figures")
    for change, reason in (
        ({"accuracy": 0.9010}, "more than 0.3 points below"),
        # The same accuracy, but the probabilities of a full-bias-correction model.
        ({"loss": 0.524}, "int8 loss 0.5240 is +57.4 %"),
        ({"mean_confidence": 0.688}, "int8 mean confidence 0.6880"),
        ({MEAN_ABS_DP_COLUMN: 0.03}, "mean |Δp| 0.0300"),
        ({"images": 500}, "different images"),
        ({MEAN_ABS_DP_COLUMN: float("nan")}, "no mean |Δp| against f32 (evaluate again)"),
    ):
        metrics("openvino-int8", int8_figures, **change)
        variant, why = default_variant(tmp_path, "m")
        assert variant == "openvino-f32" and reason in why, (change, why)
    # Metrics written before the confidence was recorded are not enough to pick INT8.
    metrics("openvino-f32", {"accuracy": 0.9050, "loss": 0.333})
    metrics("openvino-int8", {"accuracy": 0.9050, "loss": 0.333})
    variant, why = default_variant(tmp_path, "m")
    assert variant == "openvino-f32" and "no mean confidence figures" in why


def _index(environ: dict):
    """The array index as the CLI hands it to scoring: read from the job environment."""
    return lambda: require_array_index(environ)


def test_shard_option_and_array_index():
    assert parse_shard_option(None, workers=3) == ([0, 1, 2], 3)
    assert parse_shard_option("2/5") == ([2], 5)
    assert parse_shard_option("all/4") == ([0, 1, 2, 3], 4)
    slurm = {"SLURM_JOB_ID": "8", "SLURM_ARRAY_JOB_ID": "5", "SLURM_ARRAY_TASK_ID": "3"}
    assert parse_shard_option("auto/4", array_index=_index(slurm)) == ([3], 4)
    torque = {"PBS_JOBID": "12[0].trqhost", "PBS_ARRAYID": "0"}
    assert parse_shard_option("auto/4", array_index=_index(torque)) == ([0], 4)
    pbspro = {"PBS_JOBID": "13[2].pbshost", "PBS_ARRAY_INDEX": "2"}
    assert parse_shard_option("auto/4", array_index=_index(pbspro)) == ([2], 4)
    one_based = {"PBS_JOBID": "13[4].pbshost", "PBS_ARRAY_INDEX": "4", "FMNIST_ARRAY_BASE": "1"}
    assert parse_shard_option("auto/4", array_index=_index(one_based)) == ([3], 4)
    assert require_array_index({"FMNIST_ARRAY_INDEX": "1"}) == 1
    for text, message in (
        ("4/4", "must be in 0-3"),
        ("x/4", "expected I/N"),
        ("1/0", "N >= 1"),
        ("3", "expected I/N"),
    ):
        with pytest.raises(FmnistError, match=message):
            parse_shard_option(text)
    with pytest.raises(FmnistError, match="outside 0-3 .* FMNIST_ARRAY_BASE=1"):
        parse_shard_option("auto/4", array_index=_index({**slurm, "SLURM_ARRAY_TASK_ID": "4"}))
    with pytest.raises(FmnistError, match="needs an array index"):
        parse_shard_option("auto/4", array_index=_index({}))
    with pytest.raises(FmnistError, match="no array index to take the shard from"):
        parse_shard_option("auto/4")


def test_default_output_directory():
    assert str(default_out_dir("R", "/x/big.csv.gz", "main")) == "R/predictions/big/main"


# --------------------------------------------------------------------------- CLI


def test_cli_score_shards_then_verify_and_merge(tmp_path, trained_run, sample_csv):
    runner = CliRunner()
    out = tmp_path / "cli"
    common = score_args(sample_csv, trained_run, out)
    result = runner.invoke(main, [*common, "--shard", "0/2"])
    assert result.exit_code == 0, result.output
    assert "shard 0/2 scored" in result.stdout
    unfinished = runner.invoke(main, ["verify", str(out)])
    assert unfinished.exit_code == 1
    assert "shard 1/2 is not finished" in unfinished.output
    slurm = {"SLURM_JOB_ID": "9", "SLURM_ARRAY_JOB_ID": "8", "SLURM_ARRAY_TASK_ID": "1"}
    result = runner.invoke(main, [*common, "--shard", "auto/2"], env=slurm)
    assert result.exit_code == 0 and "shard 1/2 scored" in result.stdout, result.output
    merged = tmp_path / "all.parquet"
    result = runner.invoke(main, ["verify", str(out), "--merge", str(merged)])
    assert result.exit_code == 0, result.output
    assert f"{ROWS} input rows = {ROWS} predicted + 0 rejected" in result.stdout
    assert len(pd.read_parquet(merged)) == ROWS


def test_cli_errors_are_one_line(tmp_path, trained_run, sample_csv):
    runner = CliRunner()
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    source, _ = bad_copy(sample_csv, tmp_path / "bad.csv")
    args = ["--run", str(trained_run), "--model", MODEL, "--variant", "keras-predict"]
    args += ["--out", str(tmp_path / "o")]
    for argv, message in (
        (["score", str(empty), *args], f"error: {empty}: empty file"),
        (["score", str(source), *args, "--on-bad-row", "fail"], f"error: {source}:9: pixel784"),
        (["score", str(sample_csv), *args, "--shard", "2/2"], "shard index must be in 0-1"),
        (["verify", str(tmp_path)], "no part-*-of-*.parquet files"),
    ):
        result = runner.invoke(main, argv)
        assert result.exit_code == 1, result.output
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], result.output


# --------------------------------------------------------------------------- processes


def score_argv(source, run, out, *extra):
    return [sys.executable, "-m", "fmnist", *score_args(source, run, out, *extra)]


@pytest.mark.slow
def test_sigkill_mid_shard_leaves_nothing_finished_and_a_rerun_completes(
    tmp_path, trained_run, dataset_dir
):
    source = tmp_path / "input.csv"
    made = CliRunner().invoke(
        main, ["data", "to-csv", "--limit", "1000", "--repeat", "2", "--out", str(source)]
    )
    assert made.exit_code == 0, made.output
    out = tmp_path / "out"
    argv = score_argv(source, trained_run, out, "--shard", "all/2", "--batch-size", "16")
    argv += ["--block-mb", "1"]
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        # Wait until shard 0 is finished and shard 1 has started writing, then kill.
        while not (
            (out / marker_name(0, 2)).exists() and list(out.glob(f".{part_name(1, 2)}.*.tmp"))
        ):
            assert process.poll() is None, (tmp_path / "killed.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.005)
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL
    assert not (out / marker_name(1, 2)).exists() and not (out / part_name(1, 2)).exists()
    with pytest.raises(FmnistError, match="shard 1/2 is not finished"):
        verify_predictions(out)

    rerun = subprocess.run(argv, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "shard 0/2 skipped" in rerun.stdout and "shard 1/2 scored" in rerun.stdout
    assert not list(out.glob(".*.tmp"))
    assert verify_predictions(out).predicted == 2000

    uninterrupted = tmp_path / "uninterrupted"
    score(trained_run, source, uninterrupted, shards=2, batch_size=16, block_bytes=1 << 20)
    resumed, expected = read_parts(out, 2), read_parts(uninterrupted, 2)
    for column in ("row_id", "pred", "pred_name", "label"):
        assert resumed[column].equals(expected[column]), column
    np.testing.assert_allclose(resumed["confidence"], expected["confidence"], atol=1e-6)


@pytest.mark.slow
def test_workers_score_shards_in_parallel_processes(tmp_path, trained_run, sample_csv, reference):
    out = tmp_path / "out"
    argv = score_argv(sample_csv, trained_run, out, "--shard", "all/3", "--workers", "2")
    result = subprocess.run(argv, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count(" scored: ") == 3
    pids = {json.loads((out / marker_name(i, 3)).read_text())["pid"] for i in range(3)}
    assert len(pids) == 2  # two worker processes shared the three shards
    assert verify_predictions(out).predicted == ROWS
    check_predictions(read_parts(out, 3), reference, np.arange(ROWS))


def test_a_truncated_gzip_fails_midway_and_leaves_nothing(tmp_path, trained_run, dataset_dir):
    source = tmp_path / "big.csv.gz"
    made = CliRunner().invoke(main, ["data", "to-csv", "--limit", "2500", "--out", str(source)])
    assert made.exit_code == 0, made.output
    data = source.read_bytes()
    source.write_bytes(data[: len(data) - 2000])
    out = tmp_path / "out"
    with pytest.raises(FmnistError, match="corrupt or truncated gzip data after row"):
        score(trained_run, source, out)
    assert not list(out.glob("*.parquet")) and not list(out.glob("*.json"))
    assert not list(out.glob(".*.tmp"))


def test_buffered_writer_writes_large_row_groups(tmp_path):
    schema = pa.schema([("row_id", pa.int64())])
    writer = BufferedWriter(tmp_path / "t.parquet", schema, row_group_rows=100)
    for start in range(0, 350, 70):
        writer.add(pa.table({"row_id": np.arange(start, start + 70)}, schema=schema))
    writer.close()
    metadata = pq.ParquetFile(tmp_path / "t.parquet").metadata
    sizes = [metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)]
    assert sizes == [140, 140, 70] and writer.rows == 350
    assert np.array_equal(pq.read_table(tmp_path / "t.parquet")["row_id"], np.arange(350))
