"""Streaming, validated reading of Kaggle-format Fashion-MNIST CSV for batch scoring.

An input holds ``label,pixel1..pixel784`` (or the 784 pixels alone), with or without a
header line, plain or gzip. Every line after the header is a data row, blank ones
included, except the blank lines that end the file (an editor's or a tool's trailing
newlines are not rows): its 0-based index is the row id, so row ``r`` sits on line
``r + 1``, one further down with a header. Nothing else is skipped; a row that is not valid
becomes a :class:`~fmnist.scoring.rows.Reject` naming its line and the reason. How a
block of lines is parsed, and what a value may be, is :mod:`fmnist.scoring.csv_parse`.

Shards: a plain file is cut into byte ranges on line boundaries, and the row id of a
range's first line is the number of line breaks before it. A gzip stream cannot seek,
so shard ``i`` of ``n`` takes the blocks of ``block_rows`` rows whose block number is
``i`` modulo ``n``; every shard decompresses the whole stream and skips the others.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from fmnist.data import CSV_HEADER, PIXELS
from fmnist.io import FmnistError
from fmnist.scoring.csv_parse import SPECIAL, Block, parse_block
from fmnist.scoring.rows import (
    NORMALIZED_SAMPLE_ROWS,
    ExpectedShard,
    InputShard,
    normalized_example,
    normalized_message,
)

GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
SAMPLE_BYTES = 4 << 20  # enough for the header and ~1,800 rows
BLOCK_BYTES = 16 << 20  # one pyarrow parse; tens of MB keep memory flat and small
GZIP_BLOCK_ROWS = 8_192  # gzip shards interleave blocks of this many rows


class CorruptInput(FmnistError):
    """The input cannot be read at all (damaged gzip, file changed while reading)."""


@dataclass(frozen=True)
class CsvInput:
    """What a CSV input looks like, found by :func:`inspect_csv` before any work.

    It is a scoring input (:class:`fmnist.scoring.inputs.ScoringInput`): the scorer and
    ``verify`` reach the file through the methods below only.
    """

    path: Path
    compressed: bool
    size: int  # bytes on disk
    data_start: int  # offset of the first data row in the (decompressed) stream
    has_header: bool
    has_label: bool
    # Where the data ends: after the last line that is not blank (plain files; None:
    # the end of the file). The blank lines after it are no rows.
    data_end: int | None = None

    @property
    def end(self) -> int:
        """The offset after the last data row of a plain file."""
        return self.size if self.data_end is None else self.data_end

    @property
    def columns(self) -> list[str]:
        return CSV_HEADER if self.has_label else CSV_HEADER[1:]

    def line_number(self, row_id: int) -> int:
        """The 1-based line of the file holding data row ``row_id``."""
        return row_id + 1 + int(self.has_header)

    def describe_row(self, row_id: int) -> str:
        """Where data row ``row_id`` is in the file, for messages."""
        return f"line {self.line_number(row_id)}"

    def identity(self) -> dict:
        """The marker fields that describe the input's layout."""
        return {
            "input_format": "csv",
            "compressed": self.compressed,
            "has_header": self.has_header,
            "has_label": self.has_label,
        }

    def cut_settings(self, block_rows: int) -> dict:
        """The marker fields a finished shard must share with a run of these settings."""
        return {"block_rows": block_rows if self.compressed else None}

    def open_shard(self, index: int, count: int, block_bytes: int, block_rows: int) -> InputShard:
        """Shard ``index`` of ``count``: its parsed blocks and the cut its marker records."""
        if self.compressed:
            keep = lambda k: in_gzip_shard(k, index, count)  # noqa: E731
            blocks = iter_gzip_blocks(self, keep, block_rows=block_rows)
            parsed = (parse_block(block, self) for block in blocks if block.data)
            return InputShard(parsed, {"sharding": "row-blocks", "block_rows": block_rows}, None)
        cut = byte_range(self, index, count)
        blocks = iter_range_blocks(self, cut.start, cut.end, cut.first_row, block_bytes)
        cut_fields = {
            "sharding": "bytes",
            "byte_start": cut.start,
            "byte_end": cut.end,
            "first_row_id": cut.first_row,
        }
        # A valid row takes at least one digit and one separator per field.
        valid_at_most = (cut.end - cut.start) // (2 * len(self.columns))
        return InputShard((parse_block(b, self) for b in blocks), cut_fields, valid_at_most)

    def expected_shards(self, count: int, block_rows: int | None) -> list[ExpectedShard]:
        """The rows each of ``count`` shards must hold, derived from the file alone."""
        shards = []
        if not self.compressed:
            first = 0
            for index, (start, end) in enumerate(shard_bounds(self, count)):
                rows = rows_in_range(self, start, end)
                cut = {"byte_start": start, "byte_end": end, "first_row_id": first}
                shards.append(ExpectedShard(index, rows, cut, ((first, first + rows),)))
                first += rows
            return shards
        total = count_data_rows(self)
        for index in range(count):
            ranges = tuple(
                (start, min(start + block_rows, total))
                for k, start in enumerate(range(0, total, block_rows))
                if in_gzip_shard(k, index, count)
            )
            shards.append(ExpectedShard(index, sum(b - a for a, b in ranges), {}, ranges))
        return shards


# --------------------------------------------------------------------------- inspecting


def _open_stream(path: Path, compressed: bool):
    return gzip.open(path, "rb") if compressed else open(path, "rb")


def _read_sample(path: Path, compressed: bool) -> bytes:
    try:
        with _open_stream(path, compressed) as stream:
            return stream.read(SAMPLE_BYTES)
    except (OSError, EOFError, zlib.error) as exc:
        raise CorruptInput(f"{path}: corrupt or truncated gzip data ({exc})") from exc


def _looks_binary(sample: bytes) -> bool:
    head = sample[:65536]
    if b"\x00" in head:
        return True
    # Text has almost no control bytes; compressed or binary data has about one in eight.
    control = head.translate(None, delete=_TEXT_BYTES)
    return len(control) > 0.01 * len(head)


_TEXT_BYTES = bytes([9, 10, 13] + list(range(32, 127)) + list(range(128, 256)))


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _header_names(line: str) -> list[str]:
    return [name.strip().strip('"').strip() for name in line.split(",")]


def _check_header(path: Path, names: list[str]) -> bool:
    """True when the header has the label column, False for pixels only; else an error."""
    expected = {len(CSV_HEADER): CSV_HEADER, PIXELS: CSV_HEADER[1:]}.get(len(names))
    if expected is None:
        raise FmnistError(
            f"{path}:1: header has {len(names)} columns, expected label,pixel1..pixel784 "
            f"({len(CSV_HEADER)}) or pixel1..pixel784 ({PIXELS})"
        )
    if names == expected:
        return len(names) == len(CSV_HEADER)
    column = next(i for i, (a, b) in enumerate(zip(names, expected, strict=True)) if a != b)
    raise FmnistError(
        f"{path}:1: header column {column + 1} is {names[column][:40]!r}, "
        f"expected {expected[column]!r} (Kaggle format: label,pixel1..pixel784)"
    )


def _sample_values(line: bytes, has_label: bool) -> list[float] | None:
    """The pixel values of one sample line as numbers, or None when any is not one."""
    fields = line.rstrip(b"\r").split(b",")
    if len(fields) != PIXELS + int(has_label):
        return None
    try:
        return [float(f.strip(b' \t"')) for f in fields[int(has_label) :]]
    except ValueError:
        return None


def _refuse_normalized(path: Path, data: bytes, whole: bool, csv: CsvInput) -> None:
    """Raise when the sample rows hold 0-1 fractions and nothing above 1 (see rows.py)."""
    if b"." not in data:
        return
    lines = data.split(b"\n")
    lines = lines if whole else lines[:-1]
    found = None  # (value, row id) of the first 0-1 fraction
    for row_id, line in enumerate(lines[:NORMALIZED_SAMPLE_ROWS]):
        row = _sample_values(line, csv.has_label)
        if row is None:
            continue
        if any(value > 1 for value in row):
            return
        example = normalized_example(np.asarray(row))
        if example is not None and found is None:
            found = (example, row_id)
    if found is not None:
        raise FmnistError(normalized_message(path, found[0], csv.describe_row(found[1])))


def inspect_csv(path: Path | str) -> CsvInput:
    """Check that ``path`` is a Fashion-MNIST CSV and find its layout, before any work.

    Empty files, header-only files, headers with the wrong columns, binary files and
    files of normalized (0-1) pixels raise a one-line :class:`FmnistError`.
    """
    path = Path(path)
    if not path.is_file():
        raise FmnistError(f"{path}: file not found")
    size = path.stat().st_size
    if size == 0:
        raise FmnistError(f"{path}: empty file (no header, no data rows)")
    with open(path, "rb") as handle:
        compressed = handle.read(2) == GZIP_MAGIC
    sample = _read_sample(path, compressed)
    whole = len(sample) < SAMPLE_BYTES  # the sample is the entire (decompressed) stream
    if _looks_binary(sample):
        raise FmnistError(f"{path}: binary data, not a CSV text file")
    bom = len(UTF8_BOM) if sample.startswith(UTF8_BOM) else 0
    text = sample[bom:]
    if not text.strip():
        raise FmnistError(f"{path}: empty file (no header, no data rows)")
    first_break = text.find(b"\n")
    if first_break < 0 and not whole:
        raise FmnistError(f"{path}: no line break in the first {SAMPLE_BYTES >> 20} MiB")
    first_line = (text if first_break < 0 else text[:first_break]).decode("utf-8", "replace")
    if not first_line.strip():
        raise FmnistError(f"{path}:1: empty first line (expected a header or a data row)")
    fields = first_line.rstrip("\r").split(",")
    if sum(not _numeric(f.strip().strip('"')) for f in fields) > len(fields) / 2:
        has_label = _check_header(path, _header_names(first_line.rstrip("\r")))
        rest = b"" if first_break < 0 else text[first_break + 1 :]
        if whole and not rest.strip():
            raise FmnistError(f"{path}: header only, no data rows")
        csv = CsvInput(path, compressed, size, bom + first_break + 1, True, has_label)
        csv = _with_data_end(csv)
        _refuse_normalized(path, rest, whole, csv)
        return csv
    # No header: the layout is the field count most sample lines agree on, so one bad
    # first row is rejected later instead of deciding the layout.
    lines = text.split(b"\n")
    complete = lines if whole else lines[:-1]
    counts = [line.count(b",") + 1 for line in complete[:500] if line.strip()]
    common = max(set(counts), key=counts.count)
    if common not in (PIXELS, PIXELS + 1):
        raise FmnistError(
            f"{path}: rows have {common} fields, expected {PIXELS + 1} (label + {PIXELS} pixels) "
            f"or {PIXELS} (pixels only)"
        )
    csv = _with_data_end(CsvInput(path, compressed, size, bom, False, common == PIXELS + 1))
    _refuse_normalized(path, text, whole, csv)
    return csv


BLANK = b" \t\r\n"


def _with_data_end(csv: CsvInput, chunk_bytes: int = 1 << 16) -> CsvInput:
    """``csv`` with ``data_end`` found: the end of its last line that is not blank.

    Read backwards from the end of a plain file; a gzip stream drops its trailing blank
    lines as it is read (:func:`iter_gzip_blocks`).
    """
    if csv.compressed:
        return csv
    with open(csv.path, "rb") as handle:
        end = csv.size
        while end > csv.data_start:
            start = max(csv.data_start, end - chunk_bytes)
            handle.seek(start)
            chunk = handle.read(end - start)
            content = chunk.rstrip(BLANK)
            if content:
                last = start + len(content)  # after the last byte that is not blank
                handle.seek(last)
                rest = handle.read(chunk_bytes)
                brk = rest.find(b"\n")
                # Keep the last line's own break; a file ending without one ends there.
                data_end = last + brk + 1 if brk >= 0 else csv.size
                return replace(csv, data_end=data_end)
            end = start
    return replace(csv, data_end=csv.data_start)


# --------------------------------------------------------------------------- shards


@dataclass(frozen=True)
class ByteRange:
    """Shard ``index`` of ``count`` of a plain file: bytes [start, end) and its first row id."""

    index: int
    count: int
    start: int
    end: int
    first_row: int


def _line_start_at_or_after(handle, position: int, csv: CsvInput) -> int:
    if position <= csv.data_start:
        return csv.data_start
    if position >= csv.end:
        return csv.end
    # A line starts at `position` when the byte before it is a line break.
    handle.seek(position - 1)
    offset = position - 1
    while chunk := handle.read(1 << 16):
        found = chunk.find(b"\n")
        if found >= 0:
            return min(offset + found + 1, csv.end)
        offset += len(chunk)
    return csv.end


def count_line_breaks(path: Path, start: int, end: int, chunk_bytes: int = 8 << 20) -> int:
    """Line breaks in bytes [start, end) of a plain file (read in chunks: flat memory)."""
    total = 0
    with open(path, "rb") as handle:
        handle.seek(start)
        remaining = end - start
        while remaining > 0:
            chunk = handle.read(min(chunk_bytes, remaining))
            if not chunk:
                break
            total += chunk.count(b"\n")
            remaining -= len(chunk)
    return total


def shard_bounds(csv: CsvInput, count: int) -> list[tuple[int, int]]:
    """Byte ranges of the ``count`` shards of a plain file, cut on line boundaries.

    Shard ``i`` holds the lines that start in the ``i``-th equal slice of the data
    bytes, so a line crossing a slice boundary belongs to the shard where it starts.
    """
    span = csv.end - csv.data_start
    with open(csv.path, "rb") as handle:
        starts = [
            _line_start_at_or_after(handle, csv.data_start + span * i // count, csv)
            for i in range(count)
        ]
    return list(zip(starts, [*starts[1:], csv.end], strict=True))


def byte_range(csv: CsvInput, index: int, count: int) -> ByteRange:
    """Shard ``index`` of ``count``, with the global id of its first row."""
    start, end = shard_bounds(csv, count)[index]
    first_row = count_line_breaks(csv.path, csv.data_start, start)
    return ByteRange(index, count, start, end, first_row)


def rows_in_range(csv: CsvInput, start: int, end: int) -> int:
    """Data rows in bytes [start, end) of a plain file (the last line may lack a break)."""
    rows = count_line_breaks(csv.path, start, end)
    if end == csv.end and end > start:
        with open(csv.path, "rb") as handle:
            handle.seek(end - 1)
            if handle.read(1) != b"\n":
                rows += 1
    return rows


def count_data_rows(csv: CsvInput) -> int:
    """Data rows in the whole input (decompressing a gzip stream once)."""
    if not csv.compressed:
        return rows_in_range(csv, csv.data_start, csv.end)
    return sum(block.rows for block in iter_gzip_blocks(csv, keep=lambda k: False))


def in_gzip_shard(block_number: int, index: int, count: int) -> bool:
    """Whether row block ``block_number`` of a gzip input belongs to shard ``index``."""
    return block_number % count == index


# --------------------------------------------------------------------------- readers


def iter_range_blocks(
    csv: CsvInput, start: int, end: int, first_row: int, block_bytes: int = BLOCK_BYTES
) -> Iterator[Block]:
    """Blocks of whole lines from bytes [start, end) of a plain file.

    The blocks are views of one reused buffer (no copies, flat memory): each is valid
    until the next one is requested.
    """
    buffer = bytearray(block_bytes)
    view = memoryview(buffer)
    filled = 0  # the start of a line carried over from the previous read
    row = first_row
    with open(csv.path, "rb") as handle:
        handle.seek(start)
        remaining = end - start
        while remaining > 0 or filled:
            want = min(len(buffer) - filled, remaining)
            got = handle.readinto(view[filled : filled + want]) if want else 0
            if want and not got:
                raise CorruptInput(f"{csv.path}: file shrank while reading (changed underneath?)")
            remaining -= got
            size = filled + got
            if remaining == 0:
                cut = size
                if buffer[size - 1] != 10:
                    # The file's last line may lack its line break; it is a row all the same.
                    if size == len(buffer):
                        buffer, view = _grown(buffer, size)
                    buffer[size] = 10
                    cut = size + 1
            else:
                cut = buffer.rfind(b"\n", 0, size) + 1
                if cut == 0:  # one line longer than the buffer
                    buffer, view = _grown(buffer, size)
                    filled = size
                    continue
            rows = buffer.count(b"\n", 0, cut)
            yield Block(row, view[:cut], rows, _special_in(buffer, cut))
            row += rows
            filled = max(0, size - cut)
            view[:filled] = bytes(view[cut:size])


def _special_in(buffer: bytearray, end: int) -> frozenset:
    """Which special characters (see csv_parse.SPECIAL) bytes [0, end) hold: a memchr each."""
    found = {
        "hex": buffer.find(b"x", 0, end) >= 0 or buffer.find(b"X", 0, end) >= 0,
        "quote": buffer.find(b'"', 0, end) >= 0,
        "point": buffer.find(b".", 0, end) >= 0,
    }
    return frozenset(name for name in SPECIAL if found[name])


def _grown(buffer: bytearray, size: int) -> tuple[bytearray, memoryview]:
    bigger = bytearray(2 * len(buffer))
    bigger[:size] = buffer[:size]
    return bigger, memoryview(bigger)


def iter_gzip_blocks(
    csv: CsvInput,
    keep: Callable[[int], bool],
    block_rows: int = GZIP_BLOCK_ROWS,
    read_bytes: int = 8 << 20,
) -> Iterator[Block]:
    """Row blocks of a gzip stream, block ``k`` holding rows [k*block_rows, (k+1)*block_rows).

    Blocks whose number ``keep`` refuses are counted but not yielded with their data
    (they come back with empty ``data`` so callers can still count rows).
    """
    row = 0
    buffer = b""
    breaks = 0
    try:
        with gzip.open(csv.path, "rb") as stream:
            stream.read(csv.data_start)
            while True:
                chunk = stream.read(read_bytes)
                finished = not chunk
                if finished:
                    # The blank lines that end the stream are no rows (those of them
                    # already handed out in an earlier block stay rows, and rejects).
                    content = buffer.rstrip(BLANK)
                    if content:
                        brk = buffer.find(b"\n", len(content))
                        buffer = buffer[: brk + 1] if brk >= 0 else content + b"\n"
                    else:
                        buffer = b""
                    breaks = buffer.count(b"\n")
                buffer += chunk
                breaks += chunk.count(b"\n")
                if breaks >= block_rows or finished:
                    ends = np.flatnonzero(np.frombuffer(buffer, np.uint8) == 10) + 1
                    begin = used = 0
                    while breaks - used >= block_rows or (finished and breaks > used):
                        take = min(block_rows, breaks - used)
                        cut = int(ends[used + take - 1])
                        wanted = keep(row // block_rows)
                        yield Block(row, buffer[begin:cut] if wanted else b"", take)
                        begin, used, row = cut, used + take, row + take
                    buffer, breaks = buffer[begin:], breaks - used
                if finished:
                    return
    except (OSError, EOFError, zlib.error) as exc:
        raise CorruptInput(
            f"{csv.path}: corrupt or truncated gzip data after row {row} ({exc})"
        ) from exc
