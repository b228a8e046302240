"""The streaming CSV reader: layouts, input errors, every reject kind, shard and block cuts."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest

from fmnist.data import CSV_HEADER, PIXELS
from fmnist.io import FmnistError
from fmnist.scoring.csv_input import (
    CsvInput,
    count_data_rows,
    in_gzip_shard,
    inspect_csv,
    iter_gzip_blocks,
    iter_range_blocks,
    rows_in_range,
    shard_bounds,
)
from fmnist.scoring.csv_input import byte_range as shard_range
from fmnist.scoring.csv_parse import SPECIAL, Block, _fast, parse_block
from fmnist.scoring.csv_parse import check_row as check
from fmnist.scoring.inputs import input_fingerprint
from fmnist.scoring.rows import join_blocks

ROWS = 120


@pytest.fixture(scope="module")
def real_csv(real_csv_factory):
    """Real test-split rows written by `fmnist-batch data to-csv`."""
    return real_csv_factory(ROWS)


@pytest.fixture(scope="module")
def lines(real_csv) -> list[str]:
    """The data lines (no header, no line break) of the real CSV."""
    return real_csv.read_text().splitlines()[1:]


def write(path, text, compress=False):
    data = text.encode() if isinstance(text, str) else text
    if compress:
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def read_all(csv, block_bytes=1 << 20):
    """Every block of a plain file parsed: (row ids, pixels, labels, rejects)."""
    blocks = iter_range_blocks(csv, csv.data_start, csv.size, 0, block_bytes)
    parsed = join_blocks([parse_block(block, csv) for block in blocks])
    return parsed.row_ids, parsed.pixels, parsed.labels, parsed.rejects


# --------------------------------------------------------------------------- layouts


def test_real_csv_rows_match_the_dataset(real_csv, dataset):
    csv = inspect_csv(real_csv)
    assert (csv.has_header, csv.has_label, csv.compressed) == (True, True, False)
    ids, pixels, labels, rejects = read_all(csv)
    assert rejects == []
    assert np.array_equal(ids, np.arange(ROWS))
    assert np.array_equal(pixels.reshape(-1, 28, 28), dataset.test.images[:ROWS])
    assert np.array_equal(labels, dataset.test.labels[:ROWS])


def test_headerless_labelless_gzip_and_bom_layouts(tmp_path, lines, dataset):
    pixels_only = [line.split(",", 1)[1] for line in lines]
    headerless = write(tmp_path / "a.csv", "\n".join(lines) + "\n")
    no_label = write(tmp_path / "b.csv", ",".join(CSV_HEADER[1:]) + "\n" + "\n".join(pixels_only))
    no_label_no_header = write(tmp_path / "c.csv", "\n".join(pixels_only) + "\n")
    bom = write(tmp_path / "d.csv", "\ufeff" + ",".join(CSV_HEADER) + "\r\n" + "\r\n".join(lines))
    zipped = write(tmp_path / "e.csv.gz", ",".join(CSV_HEADER) + "\n" + "\n".join(lines), True)
    expected = {
        headerless: (False, True, False),
        no_label: (True, False, False),
        no_label_no_header: (False, False, False),
        bom: (True, True, False),
        zipped: (True, True, True),
    }
    for path, layout in expected.items():
        csv = inspect_csv(path)
        assert (csv.has_header, csv.has_label, csv.compressed) == layout, path
        if csv.compressed:
            blocks = iter_gzip_blocks(csv, keep=lambda k: True, block_rows=50)
            parsed = [parse_block(b, csv) for b in blocks]
            ids = np.concatenate([p.row_ids for p in parsed])
            pixels = np.concatenate([p.pixels for p in parsed])
            rejects = [r for p in parsed for r in p.rejects]
        else:
            ids, pixels, _, rejects = read_all(csv)
        assert rejects == [], path
        assert np.array_equal(ids, np.arange(ROWS)), path
        assert np.array_equal(pixels.reshape(-1, 28, 28), dataset.test.images[:ROWS]), path
        assert count_data_rows(csv) == ROWS


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "empty file"),
        (b"\n \n", "empty file"),
        ((",".join(CSV_HEADER) + "\n").encode(), "header only"),
        (",".join(CSV_HEADER).encode(), "header only"),
        (",".join(["label", *CSV_HEADER[1:5], "pixle5", *CSV_HEADER[6:]]).encode() + b"\n1",
         "header column 6 is 'pixle5'"),
        (b"id,name,value\n1,a,2\n", "header has 3 columns"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4, "binary data"),
        (b"1,2,3\n4,5,6\n", "rows have 3 fields"),
        (b"\n" + b"0," * 784 + b"0\n", "empty first line"),
    ],
)  # fmt: skip
def test_unusable_inputs_fail_before_any_work(tmp_path, content, message):
    path = write(tmp_path / "bad.csv", content)
    with pytest.raises(FmnistError, match=message) as info:
        inspect_csv(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_corrupt_gzip_and_missing_file(tmp_path):
    path = write(tmp_path / "x.csv.gz", b"\x1f\x8b\x08\x00garbage-not-deflate")
    with pytest.raises(FmnistError, match="corrupt or truncated gzip"):
        inspect_csv(path)
    with pytest.raises(FmnistError, match="file not found"):
        inspect_csv(tmp_path / "nope.csv")


# --------------------------------------------------------------------------- rejects

BAD_ROWS = {
    # kind: a function of a good line (label first) returning the bad line
    "too_many_fields": lambda f: ",".join(f + ["0"]),
    "too_few_fields": lambda f: ",".join(f[:-1]),
    "empty_value": lambda f: ",".join(f[:10] + [""] + f[11:]),
    "non_integer": lambda f: ",".join(f[:10] + ["abc"] + f[11:]),
    "fractional": lambda f: ",".join(f[:10] + ["1.5"] + f[11:]),
    "nan": lambda f: ",".join(f[:10] + ["NaN"] + f[11:]),
    "negative": lambda f: ",".join(f[:10] + ["-3"] + f[11:]),
    "over_255": lambda f: ",".join(f[:10] + ["256"] + f[11:]),
    "label_out_of_range": lambda f: ",".join(["10"] + f[1:]),
    "empty_line": lambda f: "",
}


def test_check_row_values_and_reasons():
    good = ["7"] + ["0"] * PIXELS
    values, kind, _ = check(",".join(good).encode(), True)
    assert values == [7] + [0] * PIXELS and kind == ""
    # Padding with spaces or tabs is accepted (as pyarrow does); CRLF endings too.
    values, _, _ = check((" 7\t," + ",".join(["255"] * PIXELS) + "\r").encode(), True)
    assert values == [7] + [255] * PIXELS
    for kind, make in BAD_ROWS.items():
        assert check(make(list(good)).encode(), True)[1] == kind
    cases = {
        "-1": ("label_out_of_range", "label is -1"),
        "-1.0": ("label_out_of_range", "label is -1.0"),
        "10.0": ("label_out_of_range", "label is 10.0, outside 0-9"),
        "0x1": ("non_integer", "label is '0x1'"),
        "inf": ("non_integer", "not an integer"),
        "+5": ("non_integer", "not written as a plain number"),
        "1e0": ("non_integer", "not written as a plain number"),
        "1e1": ("label_out_of_range", "label is 1e1, outside 0-9"),  # the value decides
        "5.5": ("fractional", "label is 5.5, fractional"),
        '"7': ("non_integer", "label is '\"7'"),
        '"7"8': ("non_integer", "not an integer"),
        '""': ("empty_value", "label is empty"),
    }
    for label, (kind, reason) in cases.items():
        _, got_kind, got_reason = check(",".join([label] + good[1:]).encode(), True)
        assert (got_kind, reason in got_reason) == (kind, True), (label, got_reason)
    _, kind, reason = check(",".join(good[:5] + ["300"] + good[6:]).encode(), True)
    assert (kind, reason) == ("over_255", "pixel5 is 300, above 255")
    _, kind, reason = check(",".join(good[:5] + ["255.5"] + good[6:]).encode(), True)
    assert (kind, reason) == ("fractional", "pixel5 is 255.5, fractional")
    pixels = {
        "256.0": ("over_255", "pixel5 is 256.0, above 255"),
        # Out of range however it is written: writing 1000 plainly would not help.
        "1e3": ("over_255", "pixel5 is 1e3, above 255"),
        "+300": ("over_255", "pixel5 is +300, above 255"),
        "1e1": ("non_integer", "pixel5 is '1e1', not written as a plain number"),
        "9" * 400: ("over_255", f"pixel5 is {'9' * 20}..., above 255"),
    }
    for pixel, expected in pixels.items():
        _, kind, reason = check(",".join(good[:5] + [pixel] + good[6:]).encode(), True)
        assert (kind, reason) == expected, pixel


def test_quoted_fields_are_values():
    # RFC 4180 quoting, as csv.QUOTE_ALL writers produce it, with padding in or out.
    row = ["7", "0", "12", "255"] + ["1"] * (PIXELS - 3)
    values, kind, _ = check(",".join(f'"{v}"' for v in row).encode(), True)
    assert (values, kind) == ([int(v) for v in row], "")
    padded = [' "7" ', '" 0 "', "12", '"255"\t'] + ["1"] * (PIXELS - 3)
    assert check(",".join(padded).encode(), True)[0] == [int(v) for v in row]


def test_whole_numbers_written_as_floats_are_values():
    # pandas writes an integer column that once held a NaN as 12.0.
    row = ["7.0", "0.0", "12.0", "255.000", "3.", ".0", '"4.0"'] + ["1"] * (PIXELS - 6)
    values, kind, _ = check(",".join(row).encode(), True)
    assert (values[:7], kind) == ([7, 0, 12, 255, 3, 0, 4], "")


def test_every_reject_kind_is_recorded_with_line_and_raw_text(tmp_path, lines, dataset):
    body = list(lines)
    bad_at = {}
    for position, (kind, make) in enumerate(BAD_ROWS.items()):
        row = 5 + 9 * position
        body[row] = make(lines[row].split(","))
        bad_at[row] = kind
    body[100] = "0x1F," + lines[100].split(",", 1)[1]  # pyarrow would read hex: must not
    bad_at[100] = "non_integer"
    path = write(tmp_path / "bad.csv", ",".join(CSV_HEADER) + "\n" + "\n".join(body) + "\n")
    csv = inspect_csv(path)
    ids, pixels, labels, rejects = read_all(csv)
    assert [(r.row_id, r.kind) for r in rejects] == sorted(bad_at.items())
    for reject in rejects:
        assert reject.line == reject.row_id + 2  # the header is line 1
        assert reject.raw == body[reject.row_id][:200] and len(reject.raw) <= 200
        assert reject.reason
    good = np.array(sorted(set(range(ROWS)) - set(bad_at)))
    assert np.array_equal(ids, good)
    assert np.array_equal(pixels.reshape(-1, 28, 28), dataset.test.images[good])
    assert np.array_equal(labels, dataset.test.labels[good])


def test_results_do_not_depend_on_block_size(tmp_path, lines):
    body = list(lines)
    for row in (0, 1, 2, 57, 58, 119):
        body[row] = ",".join(body[row].split(",")[:-1] + ["-1"])
    body[30] = body[30].replace(",", ",,", 1)
    path = write(tmp_path / "bad.csv", "\r\n".join(body))  # CRLF, no final line break
    csv = inspect_csv(path)
    reference = read_all(csv, block_bytes=64 << 20)
    assert [r.row_id for r in reference[3]] == [0, 1, 2, 30, 57, 58, 119]
    for block_bytes in (9000, 77_777):
        ids, pixels, labels, rejects = read_all(csv, block_bytes)
        assert np.array_equal(ids, reference[0]) and np.array_equal(pixels, reference[1])
        assert np.array_equal(labels, reference[2]) and rejects == reference[3]


# Values whose fate pyarrow's readers could decide otherwise than the exact path.
TRICKY = [
    '"7"8', '"7', '7"', '""', '"1,2"', ' "7" ', '"7"', '""7""', '"12.0"', "1e1", "+5",
    "5.", ".0", ".", "1.2.3", "12.5", "255.0", "256.0", "nan", "-0.0", "-0", "0x1", "1_0",
    "1 .0", "0.999999999999999999999", "07", "\t8 ", "inf",
]  # fmt: skip


# Values the fast path must read itself in a plain block (FAST) or among quoted fields
# (FAST_QUOTED); the others it may leave to the exact path, never read otherwise.
FAST = ["5.", ".0", "255.0", "07", "\t8 ", "0.999999999999999999999"]
FAST_QUOTED = ['"7"', '"12.0"', '" 7 "']
TRICKY = FAST + FAST_QUOTED + [' "7" ',
    '"7"8', '"7', '7"', '""', '"1,2"', '""7""', "1e1", "+5", ".", "1.2.3", "12.5", "256.0",
    "nan", "-0.0", "-0", "0x1", "1_0", "1 .0", "inf", '"', '1,"',
]  # fmt: skip


@pytest.mark.parametrize("quote_all", [False, True])
def test_fast_path_takes_a_block_only_when_the_exact_path_accepts_it_all(lines, quote_all):
    # One tricky value in pixel 300 of a block of real rows (every other field quoted
    # with quote_all): pyarrow may take the block only if every line passes alone, and
    # must then read the same values.
    csv = CsvInput(Path("t.csv"), False, 0, 0, False, True)

    def quoted(fields):
        return [f'"{v}"' for v in fields] if quote_all else fields

    edits = {value: lambda f, v=value: f[:300] + [v] + f[301:] for value in TRICKY}
    # Quotes moved between fields: the count of quotes stays right, their places do not.
    edits["unopened first, quote inside"] = lambda f: (
        [f[0].lstrip('"')] + f[1:300] + ['"1"2"'] + f[301:]
    )
    edits["quote inside, unclosed last"] = lambda f: (
        f[:300] + ['"1"2"'] + f[301:-1] + [f[-1].rstrip('"')]
    )
    edits["crlf"] = lambda f: f[:-1] + [f[-1] + "\r"]
    fast = FAST_QUOTED + ["crlf"] if quote_all else FAST + ["crlf"]
    for name, edit in edits.items():
        body = [",".join(quoted(line.split(","))) for line in lines]
        body[50] = ",".join(edit(quoted(lines[50].split(","))))
        data = ("\n".join(body) + "\n").encode()
        table = _fast(data, len(body), csv, SPECIAL)
        exact = [check(line.encode(), True)[0] for line in body]
        if name in fast:
            assert table is not None, name
        if table is not None:
            assert all(row is not None for row in exact), name
            parsed = parse_block(Block(0, data, len(body)), csv)
            assert parsed.pixels.tolist() == [row[1:] for row in exact], name
        else:
            assert parse_block(Block(0, data, len(body)), csv).rows == len(body)


def test_quoted_and_float_files_from_real_writers_read_like_the_plain_one(
    tmp_path, real_csv, dataset
):
    import csv as csvlib

    import pandas as pd

    quoted = tmp_path / "quoted.csv"
    with open(real_csv, newline="") as source, open(quoted, "w", newline="") as target:
        csvlib.writer(target, quoting=csvlib.QUOTE_ALL).writerows(csvlib.reader(source))
    frame = pd.read_csv(real_csv)
    frame.loc[3, "pixel100"] = np.nan  # a NaN turns the column to float: 12.0 on output
    floats = tmp_path / "floats.csv"
    frame.to_csv(floats, index=False)
    assert ",0.0," in floats.read_text() and '"7"' in quoted.read_text()
    for path, bad in ((quoted, {}), (floats, {3: "empty_value"})):
        csv = inspect_csv(path)
        assert (csv.has_header, csv.has_label) == (True, True)
        ids, pixels, labels, rejects = read_all(csv)
        assert {r.row_id: r.kind for r in rejects} == bad, path.name
        good = np.array(sorted(set(range(ROWS)) - set(bad)))
        assert np.array_equal(ids, good)
        assert np.array_equal(pixels.reshape(-1, 28, 28), dataset.test.images[good])
        assert np.array_equal(labels, dataset.test.labels[good])


@pytest.mark.parametrize("header, compress", [(True, False), (False, False), (True, True)])
def test_normalized_pixels_are_refused_before_any_work(tmp_path, dataset, header, compress):
    images = dataset.test.images[:50].reshape(50, -1) / 255.0
    rows = [",".join([str(label)] + [f"{v:.6f}" for v in image])
            for label, image in zip(dataset.test.labels[:50], images, strict=True)]  # fmt: skip
    text = (",".join(CSV_HEADER) + "\n" if header else "") + "\n".join(rows) + "\n"
    path = write(tmp_path / "normalized.csv", text, compress)
    with pytest.raises(FmnistError, match="normalized to 0-1") as info:
        inspect_csv(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert f"in line {1 + int(header)}" in message and "expected integers 0-255" in message
    # The same images as whole numbers written as floats are fine.
    whole = [",".join([str(label)] + [f"{v:.1f}" for v in image * 255])
             for label, image in zip(dataset.test.labels[:50], images, strict=True)]  # fmt: skip
    inspect_csv(write(tmp_path / "whole.csv", "\n".join(whole) + "\n", compress))


def test_a_lone_carriage_return_cannot_split_a_row(tmp_path, lines):
    # pyarrow ends a row at a lone CR; we count rows by line feeds, so this is one bad row.
    body = list(lines)
    body[3] = body[3] + "\r" + body[4]
    path = write(tmp_path / "cr.csv", "\n".join(body) + "\n")
    ids, _, _, rejects = read_all(inspect_csv(path))
    assert [(r.row_id, r.kind) for r in rejects] == [(3, "too_many_fields")]
    assert len(ids) == ROWS - 1


# --------------------------------------------------------------------------- shards


def test_byte_shards_hold_every_row_exactly_once(tmp_path, real_csv):
    csv = inspect_csv(real_csv)
    for count in (1, 2, 3, 7):
        seen = []
        for index in range(count):
            cut = shard_range(csv, index, count)
            blocks = iter_range_blocks(csv, cut.start, cut.end, cut.first_row, 50_000)
            for block in blocks:
                seen.extend(parse_block(block, csv).row_ids.tolist())
        assert seen == list(range(ROWS)), count
    # More shards than rows: some are empty, none overlap, first row ids add up.
    bounds = shard_bounds(csv, 150)
    sizes = [rows_in_range(csv, start, end) for start, end in bounds]
    assert sum(sizes) == ROWS and sizes.count(0) == 30 and set(sizes) == {0, 1}
    assert [shard_range(csv, i, 150).first_row for i in (0, 75, 149)] == [
        sum(sizes[:i]) for i in (0, 75, 149)
    ]


def test_a_row_across_a_boundary_belongs_to_the_shard_where_it_starts(tmp_path, lines):
    text = "\n".join(lines) + "\n"
    path = write(tmp_path / "h.csv", text)
    csv = inspect_csv(path)
    starts = [0]
    for line in lines[:-1]:
        starts.append(starts[-1] + len(line) + 1)
    count = 2
    middle = len(text) // 2
    (a_start, a_end), (b_start, b_end) = shard_bounds(csv, count)
    owner = max(i for i, s in enumerate(starts) if s < middle)  # the row the middle cuts
    assert starts[owner] < middle < starts[owner] + len(lines[owner])
    assert a_end == b_start == starts[owner + 1]
    assert shard_range(csv, 1, 2).first_row == owner + 1
    # Every cut lands on a line start; one exactly at a line start keeps it there.
    for count in range(2, 9):
        for start, _ in shard_bounds(csv, count):
            assert start in starts or start == len(text), count
    at_start = starts[40] * 3  # with 3 shards, the nominal cut of shard 1 is starts[40]
    path = write(tmp_path / "s.csv", text[:at_start])
    csv = inspect_csv(path)
    assert shard_bounds(csv, 3)[1][0] == starts[40]
    assert shard_range(csv, 1, 3).first_row == 40


def test_gzip_shards_interleave_row_blocks(tmp_path, lines):
    path = write(tmp_path / "z.csv.gz", "\n".join(lines) + "\n", compress=True)
    csv = inspect_csv(path)
    for count in (1, 2, 3, 5):
        seen = []
        for index in range(count):
            keep = lambda k, i=index, n=count: in_gzip_shard(k, i, n)  # noqa: E731
            for block in iter_gzip_blocks(csv, keep, block_rows=7):
                if block.data:
                    assert (block.first_row // 7) % count == index
                    seen.extend(parse_block(block, csv).row_ids.tolist())
        assert sorted(seen) == list(range(ROWS)) and len(seen) == ROWS


def test_range_reader_handles_lines_longer_than_its_buffer(tmp_path, lines):
    path = write(tmp_path / "l.csv", "\n".join(lines[:3]))
    csv = inspect_csv(path)
    blocks = list(iter_range_blocks(csv, 0, csv.size, 0, block_bytes=100))
    assert all(isinstance(b, Block) for b in blocks) and sum(b.rows for b in blocks) == 3


def test_fingerprint_changes_with_the_content(tmp_path, real_csv):
    copy = write(tmp_path / "copy.csv", real_csv.read_bytes())
    assert input_fingerprint(copy) == input_fingerprint(real_csv)
    data = bytearray(copy.read_bytes())
    data[-3] = ord("9") if data[-3] != ord("9") else ord("8")
    copy.write_bytes(bytes(data))
    assert input_fingerprint(copy) != input_fingerprint(real_csv)
    os.truncate(copy, copy.stat().st_size - 10)
    assert input_fingerprint(copy) != input_fingerprint(real_csv)


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("ending", ["\n\n\n\n\n", "\r\n\r\n", "\n  \n\t\n"])
def test_blank_lines_that_end_the_file_are_no_rows(tmp_path, lines, compress, ending):
    body = list(lines)
    body[7] = ""  # an empty line inside the data stays a row, and a reject
    text = ",".join(CSV_HEADER) + "\n" + "\n".join(body) + "\n" + ending
    csv = inspect_csv(write(tmp_path / "blank-end.csv", text, compress))
    assert count_data_rows(csv) == ROWS
    if compress:
        blocks = iter_gzip_blocks(csv, keep=lambda k: True, block_rows=50)
    else:
        blocks = iter_range_blocks(csv, csv.data_start, csv.end, 0, 1 << 12)
        # Every shard's rows together are the data rows: the blank end is in none.
        assert sum(rows_in_range(csv, a, b) for a, b in shard_bounds(csv, 3)) == ROWS
    parsed = join_blocks([parse_block(block, csv) for block in blocks if block.data])
    assert [(r.row_id, r.kind) for r in parsed.rejects] == [(7, "empty_line")]
    assert np.array_equal(parsed.row_ids, np.delete(np.arange(ROWS), 7))
