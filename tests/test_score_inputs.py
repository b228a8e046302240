"""`score` and `verify` on real-world inputs: quoted and float CSV, normalized images, Parquet."""

from __future__ import annotations

import csv as csvlib
import json

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
from fmnist.io import FmnistError
from fmnist.scoring.score import ScoreConfig, score_shards
from fmnist.scoring.shards import marker_name, part_name
from fmnist.scoring.verify import merge_parts, verify_predictions


def cli_score(run, source, out, *extra):
    return CliRunner().invoke(main, score_args(source, run, out, *extra))


def verify_line(out, *extra):
    result = CliRunner().invoke(main, ["verify", str(out), *extra])
    assert result.exit_code == 0, result.output
    return result.stdout


# --------------------------------------------------------------------------- CSV shapes


def test_cli_scores_a_quote_all_csv(tmp_path, trained_run, sample_csv, reference):
    source = tmp_path / "quoted.csv"
    with open(sample_csv, newline="") as plain, open(source, "w", newline="") as quoted:
        csvlib.writer(quoted, quoting=csvlib.QUOTE_ALL).writerows(csvlib.reader(plain))
    assert source.read_text().startswith('"label","pixel1"')
    out = tmp_path / "out"
    result = cli_score(trained_run, source, out, "--shard", "all/2")
    assert result.exit_code == 0, result.output
    check_predictions(read_parts(out, 2), reference, np.arange(ROWS))
    assert f"{ROWS} input rows = {ROWS} predicted + 0 rejected" in verify_line(out)


def test_cli_scores_a_pandas_csv_with_whole_floats(tmp_path, trained_run, sample_csv, reference):
    frame = pd.read_csv(sample_csv)
    frame.loc[40, "pixel300"] = np.nan  # the column turns float: 0.0, 12.0, and one empty
    source = tmp_path / "floats.csv"
    frame.to_csv(source, index=False)
    out = tmp_path / "out"
    result = cli_score(trained_run, source, out)
    assert result.exit_code == 0, result.output
    rejects = read_rejects(out, 1)
    assert list(zip(rejects["row_id"], rejects["kind"], strict=True)) == [(40, "empty_value")]
    check_predictions(read_parts(out, 1), reference, np.delete(np.arange(ROWS), 40))
    assert "1 rejected (0.33 %); --max-rejects 1% per shard" in verify_line(out)


def test_cli_refuses_normalized_pixels_before_any_work(tmp_path, trained_run, sample_csv):
    frame = pd.read_csv(sample_csv)
    frame = pd.concat([frame[["label"]], frame.iloc[:, 1:] / 255], axis=1)
    source = tmp_path / "normalized.csv"
    frame.to_csv(source, index=False)
    out = tmp_path / "out"
    result = cli_score(trained_run, source, out)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {source}: pixels are normalized")
    assert "expected integers 0-255" in errors[0]
    assert not out.exists()


def test_cli_max_rejects_fails_past_the_default_and_passes_when_raised(
    tmp_path, trained_run, sample_csv
):
    lines = sample_csv.read_text().splitlines()
    for row in (10, 20, 30, 40):  # 4 of 300 rows: 1.3 %, past the default 1 %
        lines[1 + row] = lines[1 + row].rsplit(",", 1)[0] + ",12.5"
    source = tmp_path / "bad.csv"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    result = cli_score(trained_run, source, out)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert errors[0].startswith("error: 1 of 1 shard(s) past --max-rejects 1%: shard 0/1: ")
    assert "4 of its 300 rows rejected" in errors[0] and "fractional 4" in errors[0]
    assert f"first: {source}:12: pixel784 is 12.5, fractional" in errors[0]
    assert not list(out.glob("*.parquet")) and not list(out.glob("*.json"))
    result = cli_score(trained_run, source, out, "--max-rejects", "4")
    assert result.exit_code == 0, result.output
    marker = json.loads((out / marker_name(0, 1)).read_text())
    assert (marker["max_rejects"], marker["reject_limit"], marker["rejected"]) == ("4", 4, 4)
    assert "--max-rejects 4 per shard, largest share in shard 0: 4 of 300 rows (limit 4)" in (
        verify_line(out)
    )
    bad = cli_score(trained_run, source, out, "--max-rejects", "4.5")
    assert bad.exit_code == 1 and "expected a number of rows N >= 0" in bad.output


# --------------------------------------------------------------------------- Parquet

SHAPES = {
    # name: (layout, dtype, label)
    "columns-uint8": ("columns", "uint8", True),
    "columns-int64-nolabel": ("columns", "int64", False),
    "columns-float64": ("columns", "float64", True),
    "fixed-list": ("fixed-list", "uint8", True),
    "list-nolabel": ("list", "int16", False),
}


@pytest.mark.parametrize("shape", SHAPES)
def test_parquet_shards_by_row_groups_then_verify_and_merge(
    tmp_path, trained_run, images_parquet, reference, dataset, shape
):
    layout, dtype, label = SHAPES[shape]
    source = images_parquet(tmp_path / f"{shape}.parquet", ROWS, layout, dtype, label)
    out = tmp_path / "out"
    result = cli_score(trained_run, source, out, "--shard", "all/3")
    assert result.exit_code == 0, result.output
    # Row groups of 70 rows: 5 groups over 3 shards, 1 + 2 + 2.
    for index, rows in enumerate((70, 140, 90)):
        assert f"shard {index}/3 scored: {rows} rows, {rows} predicted, 0 rejected" in (
            result.stdout
        )
    frame = read_parts(out, 3)
    check_predictions(frame, reference, np.arange(ROWS))
    assert ("label" in frame.columns) == label
    if label:
        assert np.array_equal(frame["label"], dataset.test.labels[:ROWS])
    marker = json.loads((out / marker_name(2, 3)).read_text())
    assert marker["input_format"] == "parquet" and marker["sharding"] == "row-groups"
    assert (marker["row_group_start"], marker["row_group_end"], marker["first_row_id"]) == (
        3,
        5,
        210,
    )
    result = verify_predictions(out)
    assert (result.rows, result.predicted, result.rejected) == (ROWS, ROWS, 0)
    merged = tmp_path / "merged.parquet"
    assert merge_parts(result, merged) == ROWS
    assert pd.read_parquet(merged).equals(frame)


def _bad_values(pixels, labels):
    pixels[5, 20] = 256
    pixels[100, 0] = np.nan
    labels[200] = 12


def test_parquet_rejects_then_verify_through_the_cli(
    tmp_path, trained_run, images_parquet, reference
):
    source = images_parquet(
        tmp_path / "images.parquet", ROWS, "columns", "float32", edit=_bad_values
    )
    out = tmp_path / "out"
    # Rows 5 and 100 are both in shard 0 (row groups 0-1, 140 rows): past the default 1 %.
    result = cli_score(trained_run, source, out, "--shard", "all/2")
    assert result.exit_code == 1
    assert (
        "error: 1 of 2 shard(s) past --max-rejects 1%: shard 0/2: 2 rejected in the first "
        "140 rows read, already more than --max-rejects 1% allows" in result.output
    )
    assert f"first: {source}: row 5: pixel21 is 256.0, above 255" in result.output
    assert "shard 0/2 over-limit: 2 rejected in the first 140 rows read" in result.stdout
    assert "shard 1/2 scored: 160 rows" in result.stdout and (out / marker_name(1, 2)).is_file()
    assert not (out / marker_name(0, 2)).exists() and not (out / part_name(0, 2)).exists()
    result = cli_score(trained_run, source, out, "--shard", "all/2", "--max-rejects", "2%")
    assert result.exit_code == 0, result.output
    assert "shard 0/2 scored" in result.stdout and "shard 1/2 skipped" in result.stdout
    rejects = read_rejects(out, 2)
    assert list(zip(rejects["row_id"], rejects["kind"], strict=True)) == [
        (5, "over_255"),
        (100, "null"),
        (200, "label_out_of_range"),
    ]
    assert rejects["line"].isna().all()
    check_predictions(read_parts(out, 2), reference, np.delete(np.arange(ROWS), [5, 100, 200]))
    assert f"{ROWS} input rows = {ROWS - 3} predicted + 3 rejected" in verify_line(out)
    failed = cli_score(trained_run, source, tmp_path / "fail", "--on-bad-row", "fail")
    assert failed.exit_code == 1
    assert f"error: {source}: row 5: pixel21 is 256.0, above 255 (--on-bad-row fail)" in (
        failed.output
    )


def test_cli_parquet_default_output_and_a_moved_or_changed_input(
    tmp_path, trained_run, images_parquet
):
    run = tmp_path / "run"
    run.mkdir()
    for item in trained_run.iterdir():
        (run / item.name).symlink_to(item)
    source = images_parquet(tmp_path / "images.parquet", ROWS, "list", "uint8")
    result = CliRunner().invoke(
        main, ["score", str(source), "--run", str(run), "--model", MODEL, "--variant",
               "keras-predict"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    out = run / "predictions" / "images" / MODEL
    assert (out / marker_name(0, 1)).is_file()
    verify_line(out)
    moved = tmp_path / "moved.parquet"
    source.rename(moved)
    assert "not found" in CliRunner().invoke(main, ["verify", str(out)]).output
    verify_line(out, "--input", str(moved))
    table = pq.read_table(moved)
    pq.write_table(table.slice(0, ROWS - 1), moved)
    with pytest.raises(FmnistError, match="input changed since it was scored"):
        verify_predictions(out, moved)


def test_verify_names_a_missing_parquet_row_by_its_row_group(tmp_path, trained_run, images_parquet):
    source = images_parquet(tmp_path / "images.parquet", ROWS, "fixed-list", "uint8")
    out = tmp_path / "out"
    config = ScoreConfig(source, trained_run, MODEL, "keras-predict", out, shards=2)
    score_shards(config, [0, 1], progress=lambda message: None)
    part = out / part_name(1, 2)
    table = pq.read_table(part)
    pq.write_table(table.filter(pa.compute.not_equal(table["row_id"], 250)), part)
    with pytest.raises(FmnistError, match=r"row 250 \(row group 3 of the input\) is neither"):
        verify_predictions(out)


# --------------------------------------------------------------------------- input edges


def test_blank_lines_at_the_end_of_a_csv_are_not_rows(tmp_path, trained_run, real_csv_factory):
    # An editor's trailing newlines: 5 of them would be 2.5 % rejects of a 200-row file.
    source = tmp_path / "trailing.csv"
    source.write_text(real_csv_factory(200).read_text() + "\n" * 5)
    out = tmp_path / "out"
    result = cli_score(trained_run, source, out, "--shard", "all/2")
    assert result.exit_code == 0, result.output
    assert "200 input rows = 200 predicted + 0 rejected" in verify_line(out)


def test_duplicate_parquet_columns_are_refused_in_one_line(tmp_path, trained_run, images_parquet):
    path = images_parquet(tmp_path / "in.parquet", 20)
    table = pq.read_table(path)
    doubled = pa.Table.from_arrays(
        [*table.columns, table.column("pixel1")], names=[*table.column_names, "pixel1"]
    )
    pq.write_table(doubled, path)
    result = cli_score(trained_run, path, tmp_path / "out")
    assert result.exit_code == 1 and "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: {path}: duplicate column names: pixel1 (2 times); each name must appear once"
    ]


def test_a_wholly_bad_parquet_file_is_refused_in_about_a_second(tmp_path, images_parquet):
    import time

    from fmnist.scoring.inputs import open_input
    from fmnist.scoring.parquet_input import _reject, parse_batch

    def spoil(pixels, labels):
        pixels[:, 100] = 300  # every row: pixel101 above 255
        pixels[::7, 3] = np.nan  # and some an earlier null (written as null)
        labels[::5] = 12  # and some a label out of range first

    path = images_parquet(
        tmp_path / "bad.parquet", 10_000, dtype="float64", group_rows=10_000, edit=spoil
    )
    source = open_input(path)
    batch = next(pq.ParquetFile(path).iter_batches(batch_size=10_000, columns=source.columns))
    started = time.perf_counter()
    parsed = parse_batch(batch, 0, source)
    seconds = time.perf_counter() - started
    assert len(parsed.rejects) == 10_000 and len(parsed.row_ids) == 0
    # Against the row-by-row reader on the same machine at the same time (4 ms a row,
    # 39 s for the file, when this machine is idle): at least ten times faster.
    sample = (0, 1, 5, 7, 35, 9_999, *range(100, 124))
    started = time.perf_counter()
    one_by_one = [_reject(batch, row, row, source) for row in sample]
    per_row = (time.perf_counter() - started) / len(sample)
    assert seconds < per_row * 10_000 / 10, f"{seconds:.2f}s, row by row {per_row * 1e3:.1f} ms"
    # The same rejects the row-by-row reader makes.
    assert [parsed.rejects[row] for row in sample] == one_by_one
    kinds = {r.kind for r in parsed.rejects}
    assert kinds == {"over_255", "null", "label_out_of_range"}
