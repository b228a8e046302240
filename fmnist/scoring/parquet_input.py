"""Streaming, validated reading of Fashion-MNIST images from Parquet for batch scoring.

A Parquet input holds its images in one of two layouts, with an optional ``label``
column beside them (other columns are ignored):

- pixel columns ``pixel1..pixel784`` (the Kaggle CSV header), of integers or floats;
- one list column (list, large list or fixed-size list) of 784 integers or floats.

Row ``r`` is the file's ``r``-th row (0-based), as for CSV. A row is rejected, with the
kinds and value rule of CSV (:func:`fmnist.scoring.rows.number_problem`), when a value
is null, NaN, fractional or out of range, or its list does not hold 784 values.

Shards are ranges of whole row groups: shard ``i`` of ``n`` takes row groups
``[G*i//n, G*(i+1)//n)``, and its first row id is the row count of the groups before it,
read from the file's footer. A shard streams record batches from its row groups only,
so memory does not grow with the file.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fmnist.data import CSV_HEADER, PIXELS
from fmnist.io import FmnistError
from fmnist.scoring.rows import (
    NORMALIZED_SAMPLE_ROWS,
    ExpectedShard,
    InputShard,
    ParsedBlock,
    Reject,
    column_major_pixels,
    highest,
    normalized_example,
    normalized_message,
    number_problem,
    valid_values,
)

PARQUET_MAGIC = b"PAR1"
PIXEL_COLUMNS = CSV_HEADER[1:]
RAW_CHARS = 200  # a reject keeps this much of its row, written as CSV
# Rows per record batch for each byte of --block-mb: 16 MiB give 8,192 rows, about the
# rows of 16 MiB of CSV text. The reader's buffers grow faster than the batch (about
# 120 MB at 8,192 rows of 785 columns, 350 MB at 21,000), while its speed levels off
# well above the engine's from a few thousand rows on.
BLOCK_BYTES_PER_ROW = 2048
# Read column chunks through a small buffer instead of whole (pre_buffer, pyarrow's
# default, reads every chunk of a row group up front: memory would grow with the row
# group size).
READ_BUFFER_BYTES = 1 << 16


@dataclass(frozen=True)
class ParquetInput:
    """What a Parquet input looks like, found by :func:`inspect_parquet` before any work.

    It is a scoring input (:class:`fmnist.scoring.inputs.ScoringInput`).
    """

    path: Path
    size: int  # bytes on disk
    has_label: bool
    layout: str  # columns | list
    columns: tuple[str, ...]  # the columns read: label first when present
    group_rows: tuple[int, ...]  # rows of each row group

    @property
    def rows(self) -> int:
        return sum(self.group_rows)

    def describe_row(self, row_id: int) -> str:
        """Where data row ``row_id`` is: its row group."""
        ends = np.cumsum(self.group_rows)
        return f"row group {int(np.searchsorted(ends, row_id, side='right'))}"

    def identity(self) -> dict:
        """The marker fields that describe the input's layout."""
        return {
            "input_format": "parquet",
            "compressed": False,
            "has_header": False,
            "has_label": self.has_label,
        }

    def cut_settings(self, block_rows: int) -> dict:
        """Row group shards do not depend on any setting."""
        return {"block_rows": None}

    def group_range(self, index: int, count: int) -> tuple[int, int]:
        """Row groups [start, end) of shard ``index`` of ``count``."""
        groups = len(self.group_rows)
        return groups * index // count, groups * (index + 1) // count

    def open_shard(self, index: int, count: int, block_bytes: int, block_rows: int) -> InputShard:
        """Shard ``index`` of ``count``, in record batches of ``block_bytes / 2048`` rows."""
        start, end = self.group_range(index, count)
        first = sum(self.group_rows[:start])
        batch_rows = max(1, block_bytes // BLOCK_BYTES_PER_ROW)
        cut = {
            "sharding": "row-groups",
            "row_group_start": start,
            "row_group_end": end,
            "first_row_id": first,
        }
        blocks = self._blocks(start, end, first, batch_rows)
        return InputShard(blocks, cut, sum(self.group_rows[start:end]))

    def _blocks(self, start: int, end: int, first: int, batch_rows: int) -> Iterator[ParsedBlock]:
        if start == end:
            return
        row = first
        try:
            parquet = pq.ParquetFile(self.path, pre_buffer=False, buffer_size=READ_BUFFER_BYTES)
            batches = parquet.iter_batches(
                batch_size=batch_rows,
                row_groups=list(range(start, end)),
                columns=list(self.columns),
            )
            for batch in batches:
                yield parse_batch(batch, row, self)
                row += batch.num_rows
        except (OSError, pa.ArrowException) as exc:
            raise FmnistError(
                f"{self.path}: damaged Parquet data after row {row} ({str(exc)[:200]})"
            ) from exc

    def expected_shards(self, count: int, block_rows: int | None) -> list[ExpectedShard]:
        """The rows each of ``count`` shards must hold, from the row groups in the footer."""
        shards = []
        for index in range(count):
            start, end = self.group_range(index, count)
            first = sum(self.group_rows[:start])
            rows = sum(self.group_rows[start:end])
            cut = {"row_group_start": start, "row_group_end": end, "first_row_id": first}
            shards.append(ExpectedShard(index, rows, cut, ((first, first + rows),)))
        return shards


# --------------------------------------------------------------------------- inspecting


def _numeric(data_type: pa.DataType) -> bool:
    return pa.types.is_integer(data_type) or pa.types.is_floating(data_type)


def _is_list(data_type: pa.DataType) -> bool:
    return (
        pa.types.is_list(data_type)
        or pa.types.is_large_list(data_type)
        or pa.types.is_fixed_size_list(data_type)
    )


def _layout(path: Path, schema: pa.Schema) -> tuple[str, tuple[str, ...]]:
    """(layout, pixel columns) of ``schema``; a one-line error when it has neither layout."""
    names = schema.names
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        shown = ", ".join(f"{name} ({names.count(name)} times)" for name in twice[:5])
        raise FmnistError(f"{path}: duplicate column names: {shown}; each name must appear once")
    present = [name for name in PIXEL_COLUMNS if name in names]
    if len(present) == PIXELS:
        for name in PIXEL_COLUMNS:
            if not _numeric(schema.field(name).type):
                raise FmnistError(
                    f"{path}: column {name} holds {schema.field(name).type}, expected "
                    "integers or floats"
                )
        return "columns", tuple(PIXEL_COLUMNS)
    lists = [field for field in schema if _is_list(field.type)]
    if len(lists) == 1 and not present:
        field = lists[0]
        size = getattr(field.type, "list_size", PIXELS)
        if size != PIXELS:
            raise FmnistError(
                f"{path}: column {field.name} holds lists of {size} values, expected {PIXELS}"
            )
        if not _numeric(field.type.value_type):
            raise FmnistError(
                f"{path}: column {field.name} holds lists of {field.type.value_type}, "
                "expected integers or floats (encoded images are not read)"
            )
        return "list", (field.name,)
    found = ", ".join(f"{f.name} ({f.type})" for f in list(schema)[:6])
    more = f" and {len(names) - 6} more" if len(names) > 6 else ""
    missing = f"; {PIXELS - len(present)} of pixel1..pixel784 missing" if present else ""
    raise FmnistError(
        f"{path}: columns {found}{more}{missing}; expected pixel1..pixel784, or one list "
        f"column of {PIXELS} values per row (each with an optional label column)"
    )


def inspect_parquet(path: Path | str) -> ParquetInput:
    """Check that ``path`` is a Parquet file of Fashion-MNIST images and find its layout.

    A damaged file, one with neither layout, a non-numeric label or pixel column, no
    rows, or normalized (0-1) pixels raises a one-line :class:`FmnistError`.
    """
    path = Path(path)
    try:
        parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=READ_BUFFER_BYTES)
    except (OSError, pa.ArrowException) as exc:
        raise FmnistError(f"{path}: not a readable Parquet file ({str(exc)[:200]})") from exc
    schema = parquet.schema_arrow
    layout, pixel_columns = _layout(path, schema)
    has_label = "label" in schema.names
    if has_label and not _numeric(schema.field("label").type):
        raise FmnistError(
            f"{path}: column label holds {schema.field('label').type}, expected integers 0-9"
        )
    metadata = parquet.metadata
    group_rows = tuple(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups))
    if not sum(group_rows):
        raise FmnistError(f"{path}: no data rows")
    columns = ("label", *pixel_columns) if has_label else pixel_columns
    source = ParquetInput(path, path.stat().st_size, has_label, layout, columns, group_rows)
    _refuse_normalized(parquet, source)
    return source


def _refuse_normalized(parquet: pq.ParquetFile, source: ParquetInput) -> None:
    pixel_type = parquet.schema_arrow.field(source.columns[-1]).type
    if source.layout == "list":
        pixel_type = pixel_type.value_type
    if not pa.types.is_floating(pixel_type):
        return
    try:
        batches = parquet.iter_batches(batch_size=NORMALIZED_SAMPLE_ROWS, columns=source.columns)
        parsed = _pixel_matrix(next(batches), source)
    except (OSError, pa.ArrowException) as exc:
        raise FmnistError(f"{source.path}: damaged Parquet data ({str(exc)[:200]})") from exc
    example = normalized_example(parsed)
    if example is not None:
        row = int(np.argmax(((parsed > 0) & (parsed < 1)).any(axis=1)))
        raise FmnistError(normalized_message(source.path, example, f"row {row}"))


def _pixel_matrix(batch: pa.RecordBatch, source: ParquetInput) -> np.ndarray:
    """The pixels of a few rows as floats (NaN for nulls and for lists of other lengths)."""
    if source.layout == "columns":
        columns = [batch.column(name).to_numpy(zero_copy_only=False) for name in PIXEL_COLUMNS]
        return np.stack(columns, axis=1).astype(np.float64)
    lists = batch.column(source.columns[-1])
    matrix = np.full((len(lists), PIXELS), np.nan)
    for row, values in enumerate(lists.to_pylist()):
        if values is not None and len(values) == PIXELS:
            matrix[row] = np.array(values, dtype=np.float64)  # None -> NaN
    return matrix


# --------------------------------------------------------------------------- parsing


def _as_uint8(array: pa.Array, is_label: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """Values of ``array`` as uint8, and which are not valid labels or pixels (None: all are).

    Bad values (null, NaN, fractional, out of range) come out as 0; their rows are rejected.
    """
    top = highest(is_label)
    if array.null_count == 0 and pa.types.is_integer(array.type):
        if pa.types.is_uint8(array.type) and top == 255:
            return array.to_numpy(), None
        extremes = pc.min_max(array)
        if len(array) == 0 or (extremes["min"].as_py() >= 0 and extremes["max"].as_py() <= top):
            return array.to_numpy().astype(np.uint8), None
    values = array.to_numpy(zero_copy_only=False)  # nulls come out as NaN
    good = valid_values(values, is_label)
    if good.all():
        return values.astype(np.uint8), None
    return np.where(good, values, 0).astype(np.uint8), ~good


def _list_rows(lists: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Which rows hold a list of 784 values, and the values of those rows (flat)."""
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
    with np.errstate(invalid="ignore"):
        whole = np.nan_to_num(lengths, nan=-1) == PIXELS
    kept = lists if whole.all() else lists.filter(pa.array(whole))
    return whole, kept.flatten()


def parse_batch(batch: pa.RecordBatch, first_row: int, source: ParquetInput) -> ParsedBlock:
    """Valid rows of ``batch`` as arrays, and a :class:`Reject` for every other row."""
    rows = batch.num_rows
    bad = np.zeros(rows, dtype=bool)
    labels = None
    if source.has_label:
        labels, label_bad = _as_uint8(batch.column("label"), is_label=True)
        if label_bad is not None:
            bad |= label_bad
    if source.layout == "columns":
        # Column by column into a (pixels, rows) array writes memory in order; its
        # (rows, pixels) view is transposed back batch by batch when images are made.
        index = {name: i for i, name in enumerate(batch.schema.names)}
        by_column = column_major_pixels(rows, PIXELS)
        for column, name in enumerate(PIXEL_COLUMNS):
            by_column[column], column_bad = _as_uint8(batch.column(index[name]), is_label=False)
            if column_bad is not None:
                bad |= column_bad
        pixels = by_column.T
    else:
        whole, values = _list_rows(batch.column(source.columns[-1]))
        flat, value_bad = _as_uint8(values, is_label=False)
        if whole.all():
            pixels = flat.reshape(rows, PIXELS)
        else:
            pixels = np.zeros((rows, PIXELS), dtype=np.uint8)
            pixels[whole] = flat.reshape(-1, PIXELS)
        bad |= ~whole
        if value_bad is not None:
            bad[np.flatnonzero(whole)[value_bad.reshape(-1, PIXELS).any(axis=1)]] = True
    row_ids = np.arange(first_row, first_row + rows, dtype=np.int64)
    if not bad.any():
        return ParsedBlock(row_ids, pixels, labels)
    good = ~bad
    if source.layout == "columns":
        rejects = _column_rejects(batch, np.flatnonzero(bad), first_row, source)
    else:  # two columns a row: one row at a time is cheap
        rejects = [_reject(batch, int(r), first_row + int(r), source) for r in np.flatnonzero(bad)]
    return ParsedBlock(
        row_ids=row_ids[good],
        pixels=pixels[good],
        labels=labels[good] if labels is not None else None,
        rejects=rejects,
    )


def _column_rejects(
    batch: pa.RecordBatch, rows: np.ndarray, first_row: int, source: ParquetInput
) -> list[Reject]:
    """A :class:`Reject` for each of ``rows``, built column by column.

    Row by row, a row of 785 columns costs milliseconds (a wholly bad 10,000-row file
    took 39 s to refuse); column by column, every bad row's first problem is found in
    one pass over the columns, and only the first values of each row are turned into
    the ``raw`` text (a row's raw text is cut to 200 characters anyway).
    """
    bad = batch.take(pa.array(rows))
    names = source.columns  # label first, then pixel1..pixel784: the order of a row's fields
    count = len(rows)
    found: list[tuple[str, str] | None] = [None] * count
    pending = np.ones(count, dtype=bool)
    for name in names:
        column = bad.column(name)
        values = column.to_numpy(zero_copy_only=False)  # nulls come out as NaN
        problems = pending & ~valid_values(values.astype(np.float64), name == "label")
        where = np.flatnonzero(problems)
        if len(where):
            shown = column.take(pa.array(where)).to_pylist()
            for i, value in zip(where, shown, strict=True):
                if value is None:
                    found[i] = ("null", f"{name} is null")
                else:
                    found[i] = number_problem(float(value), name, name == "label", str(value))
            pending &= ~problems
        if not pending.any():
            break
    # Each value takes at least two characters with its comma: RAW_CHARS // 2 fields do.
    texts = [
        ["null" if v is None else str(v) for v in bad.column(name).to_pylist()]
        for name in names[: RAW_CHARS // 2 + 1]
    ]
    rejects = []
    for i in range(count):
        kind, reason = found[i] or ("", "")
        raw = ",".join(column[i] for column in texts)[:RAW_CHARS]
        rejects.append(Reject(first_row + int(rows[i]), None, kind, reason, raw))
    return rejects


def _fields(batch: pa.RecordBatch, row: int, source: ParquetInput) -> list[tuple[str, object]]:
    """The (name, value) fields of one row, in order: label, then the pixels."""
    record = batch.slice(row, 1).to_pylist()[0]
    fields = [("label", record["label"])] if source.has_label else []
    if source.layout == "columns":
        return fields + [(name, record[name]) for name in PIXEL_COLUMNS]
    name = source.columns[-1]
    values = record[name]
    if values is None or len(values) != PIXELS:
        return fields + [(name, values)]
    return fields + [(f"{name}[{i}]", value) for i, value in enumerate(values)]


def _reject(batch: pa.RecordBatch, row: int, row_id: int, source: ParquetInput) -> Reject:
    fields = _fields(batch, row, source)
    kind, reason = "", ""
    for name, value in fields:
        if value is None:
            kind, reason = "null", f"{name} is null"
        elif isinstance(value, list):
            kind, reason = "wrong_length", f"{name} has {len(value)} values, expected {PIXELS}"
        else:
            problem = number_problem(float(value), name, name == "label", str(value))
            if problem:
                kind, reason = problem
        if kind:
            break
    values = [v for _, value in fields for v in (value if isinstance(value, list) else [value])]
    raw = ",".join("null" if v is None else str(v) for v in values)[:RAW_CHARS]
    return Reject(row_id, None, kind, reason, raw)
