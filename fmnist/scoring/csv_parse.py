"""Parsing blocks of CSV lines into uint8 rows and rejects, fast and exactly alike.

A value is a whole number, optionally padded with spaces or tabs and optionally in
double quotes (``"7"``, as csv.QUOTE_ALL exporters write): decimal digits, or a decimal
fraction whose value is whole (``12.0``, as pandas writes an integer column that once
held a NaN). Labels are 0-9, pixels 0-255; ``12.5`` stays rejected as fractional.

Two paths parse a block of whole lines. pyarrow parses it into columns (the fast path),
and the block is taken only when pyarrow produced one row per line and every value is
in range; otherwise it is cut into smaller blocks and retried, down to a few lines that
are checked one at a time in Python (the exact path), which names the line and the
reason. The fast path accepts nothing the exact path rejects, so a row's fate never
depends on where blocks are cut: pyarrow sees quotes only after the block proved that
every field is quoted exactly once (see :func:`_unquoted`), and decimal points only in
blocks made of digits, points, separators and padding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from fmnist.data import CSV_HEADER, PIXELS
from fmnist.scoring.rows import (
    ParsedBlock,
    Reject,
    column_major_pixels,
    highest,
    join_blocks,
    number_problem,
    valid_values,
)


class CsvInput(Protocol):
    """What parsing needs of a CSV input (:class:`fmnist.scoring.csv_input.CsvInput`)."""

    has_label: bool

    @property
    def columns(self) -> list[str]: ...

    def line_number(self, row_id: int) -> int: ...


EXACT_LINES = 64  # blocks this small are checked line by line
SPLIT_WAYS = 8  # a failed block is retried as this many smaller blocks
RAW_CHARS = 200  # a reject keeps this much of its line
# A decimal fraction as the exact path accepts it (and pyarrow's float parser reads it).
DECIMAL = re.compile(rb"\d+\.?\d*|\.\d+")
# The only bytes a block may hold for pyarrow's float parser to see it.
DECIMAL_BLOCK_BYTES = b"0123456789.,\r\n \t"
# Characters a block may hold that change how pyarrow reads it; a block known to hold
# none of one skips its check.
SPECIAL = frozenset({"hex", "quote", "point"})


@dataclass(frozen=True)
class Block:
    """Whole lines of data (each ending in a line break) and the id of the first row.

    ``maybe`` names the special characters (see SPECIAL) the block may hold; a reader
    that scanned the block leaves out the ones it did not find.
    """

    first_row: int
    data: bytes | memoryview
    rows: int
    maybe: frozenset = SPECIAL


# --------------------------------------------------------------------------- exact path


def _shown(text: bytes) -> str:
    """A field as a reason quotes it: its first 20 characters."""
    shown = text[:20].decode("utf-8", "replace")
    return shown + "..." if len(text) > 20 else shown


def _bad_value(text: bytes, name: str, is_label: bool) -> tuple[str, str]:
    """(kind, reason) for a field that is neither digits nor a decimal fraction.

    A number Python reads otherwise (``1e3``, ``+5``, ``nan``) is judged by its value
    first, like any other (:func:`fmnist.scoring.rows.number_problem`), so ``1e3`` is
    above 255; only a valid one is refused for how it is written.
    """
    if not text:
        return "empty_value", f"{name} is empty"
    try:
        number = float(text)
    except ValueError:
        return "non_integer", f"{name} is {_shown(text)!r}, not an integer"
    problem = number_problem(number, name, is_label, _shown(text))
    return problem or ("non_integer", f"{name} is {_shown(text)!r}, not written as a plain number")


def _unquote(text: bytes) -> bytes:
    if len(text) >= 2 and text[0] == 34 and text[-1] == 34:
        return text[1:-1].strip(b" \t")
    return text


def check_row(line: bytes, has_label: bool) -> tuple[list[int] | None, str, str]:
    """Validate one line (without its line break): (values, "", "") or (None, kind, reason).

    See the module docstring for what a value may be. The first offending field decides
    the reason.
    """
    if line.endswith(b"\r"):
        line = line[:-1]
    expected = PIXELS + int(has_label)
    if not line.strip(b" \t"):
        return None, "empty_line", "empty line"
    fields = line.split(b",")
    if len(fields) != expected:
        kind = "too_many_fields" if len(fields) > expected else "too_few_fields"
        return None, kind, f"expected {expected} fields, got {len(fields)}"
    names = CSV_HEADER if has_label else CSV_HEADER[1:]
    label_top, pixel_top = highest(is_label=True), highest(is_label=False)
    values = []
    for column, raw in enumerate(fields):
        text = _unquote(raw.strip(b" \t"))
        is_label = has_label and column == 0
        if text.isdigit():
            value = int(text)
            if value > pixel_top or (is_label and value > label_top):
                # Capped: digits too many for a float are as out of range as 256.
                number = float(min(value, pixel_top + 1))
                return None, *number_problem(number, names[column], is_label, _shown(text))
        elif DECIMAL.fullmatch(text):
            number = float(text)
            problem = number_problem(number, names[column], is_label, _shown(text))
            if problem:
                return None, *problem
            value = int(number)
        else:
            return None, *_bad_value(text, names[column], is_label)
        values.append(value)
    return values, "", ""


def _exact(data: bytes | memoryview, first_row: int, csv: CsvInput) -> ParsedBlock:
    lines = bytes(data).split(b"\n")[:-1]  # data ends with a line break
    good_ids, good_values, rejects = [], [], []
    for offset, line in enumerate(lines):
        row_id = first_row + offset
        values, kind, reason = check_row(line, csv.has_label)
        if values is None:
            raw = line.rstrip(b"\r").decode("utf-8", "replace")[:RAW_CHARS]
            rejects.append(Reject(row_id, csv.line_number(row_id), kind, reason, raw))
        else:
            good_ids.append(row_id)
            good_values.append(values)
    offset = int(csv.has_label)
    array = np.asarray(good_values, dtype=np.uint8).reshape(len(good_values), PIXELS + offset)
    return ParsedBlock(
        row_ids=np.asarray(good_ids, dtype=np.int64),
        pixels=np.ascontiguousarray(array[:, offset:]),
        labels=array[:, 0].copy() if csv.has_label else None,
        rejects=rejects,
    )


# --------------------------------------------------------------------------- fast path


def read_options(csv: CsvInput, size: int) -> pcsv.ReadOptions:
    """pyarrow read options for ``size`` bytes of data lines of ``csv``."""
    # pyarrow parses the blocks of a buffer in parallel. The scorer parses the next
    # buffer while the engine scores this one, so half the cores parse (one block
    # each) and the engine keeps the rest; more, smaller blocks oversubscribe the
    # cores and cost more per row with 785 columns.
    blocks = max(1, pa.cpu_count() // 2)
    block_size = max(1 << 20, -(-size // blocks) + 1)
    return pcsv.ReadOptions(column_names=csv.columns, block_size=block_size)


PARSE_OPTIONS = pcsv.ParseOptions(quote_char=False, ignore_empty_lines=False)


def convert_options(csv: CsvInput, value_type: pa.DataType | None = None) -> pcsv.ConvertOptions:
    """pyarrow conversion of every column to ``value_type`` (uint8), with no null values."""
    value_type = value_type or pa.uint8()
    return pcsv.ConvertOptions(
        column_types={name: value_type for name in csv.columns},
        null_values=[],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )


def _unquoted(raw: bytes, rows: int, fields: int) -> bytes | None:
    """``raw`` without its quotes when every field is ``"..."`` with no quote inside, else None.

    With a quote on both sides of every comma, at the start and the end of every line,
    and twice as many quotes as fields, every field starts and ends with a quote and
    holds none inside (a field of one quote, counted at both ends, would be empty once
    the quotes are gone, which pyarrow refuses). Removing the quotes then cannot join
    or split anything: ``"7"8``, ``"1,2"`` or mixed quoting go to the exact path.
    pyarrow checks afterwards that every row has ``fields - 1`` commas.
    """
    chars = np.frombuffer(raw, np.uint8)
    quote = chars == ord('"')
    quotes = np.count_nonzero(quote)
    if quotes == 0:
        return raw
    if quotes != 2 * rows * fields:
        return None
    # Whole-block comparisons: a few passes at memory speed, against per-match costs of
    # bytes.count on millions of matches.
    quoted_commas = quote[:-2] & quote[2:]
    quoted_commas &= chars[1:-1] == ord(",")
    if np.count_nonzero(quoted_commas) != rows * (fields - 1):
        return None
    del quoted_commas
    line_feed = chars == ord("\n")
    starts = np.count_nonzero(line_feed[:-1] & quote[1:]) + int(quote[0])
    ends = np.count_nonzero(quote[:-1] & line_feed[1:])
    ends += np.count_nonzero(quote[:-2] & (chars[1:-1] == ord("\r")) & line_feed[2:])
    if starts != rows or ends != rows:
        return None
    return raw.translate(None, b'"')


def _whole_numbers_in_range(table: pa.Table, has_label: bool) -> bool:
    """Every value of a float64 table is a whole label 0-9 or pixel 0-255 (NaN is not)."""
    for index, column in enumerate(table.columns):
        is_label = has_label and index == 0
        for chunk in column.chunks:
            if not valid_values(chunk.to_numpy(), is_label).all():
                return False
    return True


def _fast(data: bytes | memoryview, rows: int, csv: CsvInput, maybe: frozenset) -> pa.Table | None:
    raw = data
    if maybe:
        raw = data if isinstance(data, bytes) else bytes(data)
    # pyarrow reads "0x1F" as hexadecimal: leave any block with an x to the exact path.
    if "hex" in maybe and (b"x" in raw or b"X" in raw):
        return None
    if "quote" in maybe:
        raw = _unquoted(raw, rows, len(csv.columns))
        if raw is None:
            return None
    # pyarrow's float parser also reads "1e1", "+5" or "inf": only digits, points,
    # separators and padding may reach it.
    decimal = "point" in maybe and b"." in raw
    if decimal and raw.translate(None, DECIMAL_BLOCK_BYTES):
        return None
    try:
        table = pcsv.read_csv(
            pa.py_buffer(raw),
            read_options=read_options(csv, len(raw)),
            parse_options=PARSE_OPTIONS,
            convert_options=convert_options(csv, pa.float64() if decimal else pa.uint8()),
        )
    except pa.ArrowInvalid:
        return None
    # A lone carriage return ends a row for pyarrow, not for us: counts must agree.
    if table.num_rows != rows:
        return None
    if decimal:
        return table if _whole_numbers_in_range(table, csv.has_label) else None
    if csv.has_label and rows and pc.max(table.column(0)).as_py() > highest(is_label=True):
        return None
    return table


def _from_table(table: pa.Table, first_row: int, csv: CsvInput) -> ParsedBlock:
    offset = int(csv.has_label)
    # Column by column into rows of a (pixels, rows) array writes memory in order; its
    # (rows, pixels) view is transposed back batch by batch when images are made.
    # Assignment casts float64 columns, already checked whole and in range, to uint8.
    by_column = column_major_pixels(table.num_rows, PIXELS)
    start = 0
    for batch in table.to_batches():
        stop = start + batch.num_rows
        for column in range(PIXELS):
            by_column[column, start:stop] = batch.column(column + offset).to_numpy()
        start = stop
    labels = table.column(0).to_numpy().astype(np.uint8) if csv.has_label else None
    return ParsedBlock(
        row_ids=np.arange(first_row, first_row + table.num_rows, dtype=np.int64),
        pixels=by_column.T,
        labels=labels,
    )


# --------------------------------------------------------------------------- blocks


def _split(data: bytes | memoryview, rows: int, ways: int) -> list[tuple[int, bytes, int]]:
    """Cut whole lines into ``ways`` pieces: (row offset, bytes, rows) each."""
    ends = np.flatnonzero(np.frombuffer(data, np.uint8) == 10) + 1
    pieces, begin_row, begin = [], 0, 0
    for k in range(1, ways + 1):
        end_row = rows * k // ways
        if end_row == begin_row:
            continue
        end = int(ends[end_row - 1])
        pieces.append((begin_row, data[begin:end], end_row - begin_row))
        begin_row, begin = end_row, end
    return pieces


def _parse(
    data: bytes | memoryview, first_row: int, rows: int, csv: CsvInput, maybe: frozenset
) -> list[ParsedBlock]:
    table = _fast(data, rows, csv, maybe)
    if table is not None:
        return [_from_table(table, first_row, csv)]
    if rows <= EXACT_LINES:
        return [_exact(data, first_row, csv)]
    parts = []
    for offset, piece, piece_rows in _split(data, rows, SPLIT_WAYS):
        parts.extend(_parse(piece, first_row + offset, piece_rows, csv, maybe))
    return parts


def parse_block(block: Block, csv: CsvInput) -> ParsedBlock:
    """Valid rows of ``block`` as arrays, and a :class:`Reject` for every other row."""
    return join_blocks(_parse(block.data, block.first_row, block.rows, csv, block.maybe))
