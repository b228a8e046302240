"""The Parquet reader: layouts, refusals, every reject kind, row group shards."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fmnist.data import PIXELS
from fmnist.io import FmnistError
from fmnist.scoring.inputs import open_input
from fmnist.scoring.parquet_input import BLOCK_BYTES_PER_ROW, ParquetInput
from fmnist.scoring.rows import join_blocks

ROWS = 200


def read_shards(source, count, block_bytes=16 << 20):
    """Every shard's blocks: (row ids, pixels, labels, rejects, cuts) in shard order."""
    blocks, cuts = [], []
    for index in range(count):
        shard = source.open_shard(index, count, block_bytes, 0)
        cuts.append(shard.cut)
        for block in shard.blocks:
            assert block.rows <= block_bytes // BLOCK_BYTES_PER_ROW  # streamed, never whole
            blocks.append(block)
    parsed = join_blocks(blocks)
    return parsed.row_ids, parsed.pixels, parsed.labels, parsed.rejects, cuts


LAYOUTS = [
    ("columns", "uint8", True),
    ("columns", "int64", False),  # pandas' integer columns
    ("columns", "float64", True),  # an integer column that once held a NaN
    ("fixed-list", "uint8", True),
    ("list", "int32", False),
]


@pytest.mark.parametrize("layout, dtype, label", LAYOUTS)
def test_each_layout_reads_the_real_images(tmp_path, images_parquet, dataset, layout, dtype, label):
    path = images_parquet(tmp_path / "in.parquet", ROWS, layout, dtype, label)
    source = open_input(path)
    assert isinstance(source, ParquetInput)
    assert (source.layout, source.has_label) == (layout.split("-")[-1], label)
    assert source.group_rows == (70, 70, 60)
    ids, pixels, labels, rejects, _ = read_shards(source, 1, block_bytes=33 * BLOCK_BYTES_PER_ROW)
    assert rejects == [] and np.array_equal(ids, np.arange(ROWS))
    assert np.array_equal(pixels.reshape(-1, 28, 28), dataset.test.images[:ROWS])
    if label:
        assert np.array_equal(labels, dataset.test.labels[:ROWS])
    else:
        assert labels is None


def test_other_columns_are_ignored(tmp_path, images_parquet, dataset):
    path = images_parquet(tmp_path / "in.parquet", ROWS, "list", "uint8", True)
    table = pq.read_table(path)
    table = table.append_column("id", pa.array(np.arange(ROWS) * 7)).select(
        ["id", "pixels", "label"]
    )
    pq.write_table(table, path)
    ids, pixels, labels, rejects, _ = read_shards(open_input(path), 1)
    assert np.array_equal(pixels.reshape(-1, 28, 28), dataset.test.images[:ROWS])
    assert np.array_equal(labels, dataset.test.labels[:ROWS]) and not rejects


def test_shards_are_ranges_of_row_groups(tmp_path, images_parquet):
    path = images_parquet(tmp_path / "in.parquet", ROWS, group_rows=30)  # 7 row groups
    source = open_input(path)
    for count in (1, 2, 3, 7, 9):
        ids, _, _, _, cuts = read_shards(source, count, block_bytes=20 * BLOCK_BYTES_PER_ROW)
        assert np.array_equal(ids, np.arange(ROWS)), count
        expected = source.expected_shards(count, None)
        assert sum(shard.rows for shard in expected) == ROWS
        for cut, shard in zip(cuts, expected, strict=True):
            assert {k: cut[k] for k in shard.cut} == shard.cut
            start, end = cut["row_group_start"], cut["row_group_end"]
            assert cut["first_row_id"] == 30 * start and shard.rows == min(ROWS, 30 * end) - min(
                ROWS, 30 * start
            )
    assert [source.describe_row(r) for r in (0, 29, 30, 199)] == [
        "row group 0",
        "row group 0",
        "row group 1",
        "row group 6",
    ]


def edits(pixels, labels):
    """Bad values in a few rows: {row: (kind, reason)}."""
    pixels[3, 10] = np.nan
    pixels[5, 20] = 256
    pixels[7, 0] = -1
    pixels[9, 783] = 2.5
    labels[11] = 10
    labels[13] = 1.5
    labels[15] = np.nan
    pixels[17, 99] = np.nan
    pixels[17, 100] = 300  # the first bad field decides


BAD = {
    3: ("null", "pixel11 is null"),
    5: ("over_255", "pixel21 is 256.0, above 255"),
    7: ("negative", "pixel1 is -1.0, negative"),
    9: ("fractional", "pixel784 is 2.5, fractional"),
    11: ("label_out_of_range", "label is 10.0, outside 0-9"),
    13: ("fractional", "label is 1.5, fractional"),
    15: ("null", "label is null"),
    17: ("null", "pixel100 is null"),
}


def test_bad_values_are_rejected_with_the_csv_kinds(tmp_path, images_parquet, dataset):
    path = images_parquet(tmp_path / "bad.parquet", ROWS, "columns", "float64", edit=edits)
    ids, pixels, labels, rejects, _ = read_shards(
        open_input(path), 1, block_bytes=8 * BLOCK_BYTES_PER_ROW
    )
    assert {r.row_id: (r.kind, r.reason) for r in rejects} == BAD
    assert all(r.line is None for r in rejects)
    assert rejects[0].raw.startswith(f"{float(dataset.test.labels[3])},0.0,")
    good = np.array(sorted(set(range(ROWS)) - set(BAD)))
    assert np.array_equal(ids, good)
    assert np.array_equal(pixels.reshape(-1, 28, 28), dataset.test.images[good])
    assert np.array_equal(labels, dataset.test.labels[good])


def test_lists_of_the_wrong_length_or_with_nulls_are_rejected(tmp_path, dataset):
    images = [list(map(int, image)) for image in dataset.test.images[:20].reshape(20, -1)]
    images[2] = images[2][:700]
    images[4] = None
    images[6][5] = None
    images[8][1] = 300
    images[10] = images[10] + [0]
    path = tmp_path / "lists.parquet"
    pq.write_table(pa.table({"pixels": pa.array(images, pa.list_(pa.int16()))}), path)
    ids, pixels, _, rejects, _ = read_shards(open_input(path), 1)
    assert {r.row_id: (r.kind, r.reason) for r in rejects} == {
        2: ("wrong_length", "pixels has 700 values, expected 784"),
        4: ("null", "pixels is null"),
        6: ("null", "pixels[5] is null"),
        8: ("over_255", "pixels[1] is 300, above 255"),
        10: ("wrong_length", "pixels has 785 values, expected 784"),
    }
    good = [r for r in range(20) if r not in (2, 4, 6, 8, 10)]
    assert np.array_equal(ids, good)
    assert np.array_equal(pixels.reshape(-1, 28, 28), dataset.test.images[good])


def _normalized(pixels, labels):
    pixels /= 255


def _tables(dataset):
    """Tables that are not Fashion-MNIST images in a layout `score` reads: {name: (table, msg)}."""
    image = pa.array(list(dataset.test.images[:3].reshape(3, -1)), pa.list_(pa.uint8()))
    pixel_columns = {f"pixel{i}": pa.array([0, 0, 0], pa.uint8()) for i in range(1, PIXELS + 1)}
    return {
        "encoded": (
            pa.table(
                {
                    "image": pa.array([{"bytes": b"\x89PNG", "path": "a.png"}] * 3),
                    "label": [1, 2, 3],
                }
            ),
            r"columns image \(struct<bytes: binary, path: string>\), label \(int64\); expected "
            "pixel1..pixel784, or one list column of 784 values",
        ),
        "some pixels": (
            pa.table(dict(list(pixel_columns.items())[:700])),
            "and 694 more; 84 of pixel1..pixel784 missing",
        ),
        "string pixel": (
            pa.table({**pixel_columns, "pixel9": pa.array(["a", "b", "c"])}),
            "column pixel9 holds string, expected integers or floats",
        ),
        "short fixed lists": (
            pa.table({"x": pa.FixedSizeListArray.from_arrays(pa.array(np.zeros(30)), 10)}),
            "column x holds lists of 10 values, expected 784",
        ),
        "string lists": (
            pa.table({"x": pa.array([["a"]] * 3)}),
            "column x holds lists of string, expected integers or floats",
        ),
        "string label": (
            pa.table({"pixels": image, "label": ["a", "b", "c"]}),
            "column label holds string, expected integers 0-9",
        ),
        "no rows": (pa.table({"pixels": image}).slice(0, 0), "no data rows"),
    }


def test_inputs_it_cannot_score_are_refused_before_any_work(tmp_path, dataset, images_parquet):
    cases = {}
    for name, (table, message) in _tables(dataset).items():
        pq.write_table(table, tmp_path / f"{name}.parquet")
        cases[name] = (tmp_path / f"{name}.parquet", message)
    damaged = tmp_path / "damaged.parquet"
    damaged.write_bytes(b"PAR1" + b"\0" * 100)
    cases["damaged"] = (damaged, "not a readable Parquet file")
    for layout in ("columns", "fixed-list"):
        path = tmp_path / f"normalized-{layout}.parquet"
        images_parquet(path, 30, layout, "float32", edit=_normalized)
        cases[f"normalized {layout}"] = (path, "normalized to 0-1 .* in row 0 .* expected integers")
    for name, (path, message) in cases.items():
        with pytest.raises(FmnistError, match=message) as info:
            open_input(path)
        assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value), name
    # Whole numbers as floats are not normalized images.
    open_input(images_parquet(tmp_path / "floats.parquet", 30, "columns", "float32"))
