"""Streaming, validated reading of Kaggle-format Fashion-MNIST CSV for batch scoring.

An input holds ``label,pixel1..pixel784`` (or the 784 pixels alone), with or without a
header line, plain or gzip. Every line after the header is a data row, blank ones
included: its 0-based index is the row id, so row ``r`` sits on line ``r + 1``, one
further down with a header. Nothing is skipped silently; a row that is not valid
becomes a :class:`Reject` naming its line and the reason.

Speed and exactness come from two paths over the same blocks of whole lines. pyarrow
parses a block into uint8 columns (the fast path), and the block is taken only when
pyarrow produced one row per line and every label is 0-9. A block that fails is cut
into smaller blocks and retried, down to a few lines that are checked one at a time in
Python (the exact path), which names the line and the reason. The fast path accepts
nothing the exact path rejects, so a row's fate never depends on where blocks are cut.

Shards: a plain file is cut into byte ranges on line boundaries, and the row id of a
range's first line is the number of line breaks before it. A gzip stream cannot seek,
so shard ``i`` of ``n`` takes the blocks of ``block_rows`` rows whose block number is
``i`` modulo ``n``; every shard decompresses the whole stream and skips the others.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from fmnist.data import CSV_HEADER, PIXELS
from fmnist.io import FmnistError

GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
SAMPLE_BYTES = 4 << 20  # enough for the header and ~1,800 rows
BLOCK_BYTES = 16 << 20  # one pyarrow parse; tens of MB keep memory flat and small
GZIP_BLOCK_ROWS = 8_192  # gzip shards interleave blocks of this many rows
EXACT_LINES = 64  # blocks this small are checked line by line
SPLIT_WAYS = 8  # a failed block is retried as this many smaller blocks
RAW_CHARS = 200  # a reject keeps this much of its line
FINGERPRINT_SAMPLES = 16
FINGERPRINT_SAMPLE_BYTES = 64 << 10


class CorruptInput(FmnistError):
    """The input cannot be read at all (damaged gzip, file changed while reading)."""


@dataclass(frozen=True)
class CsvInput:
    """What a CSV input looks like, found by :func:`inspect_csv` before any work."""

    path: Path
    compressed: bool
    size: int  # bytes on disk
    data_start: int  # offset of the first data row in the (decompressed) stream
    has_header: bool
    has_label: bool

    @property
    def columns(self) -> list[str]:
        return CSV_HEADER if self.has_label else CSV_HEADER[1:]

    def line_number(self, row_id: int) -> int:
        """The 1-based line of the file holding data row ``row_id``."""
        return row_id + 1 + int(self.has_header)


@dataclass(frozen=True)
class Block:
    """Whole lines of data (each ending in a line break) and the id of the first row."""

    first_row: int
    data: bytes | memoryview
    rows: int
    maybe_hex: bool = True  # False when the block holds no "x" (see _fast)


@dataclass(frozen=True)
class Reject:
    """A data row that could not be scored, and why."""

    row_id: int
    line: int
    kind: str
    reason: str
    raw: str


@dataclass
class ParsedBlock:
    """The valid rows of a block as arrays, and the rejected ones."""

    row_ids: np.ndarray  # int64, ascending
    pixels: np.ndarray  # uint8 (n, 784), possibly a transposed view
    labels: np.ndarray | None  # uint8 (n,) when the input has labels
    rejects: list[Reject] = field(default_factory=list)


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


def inspect_csv(path: Path | str) -> CsvInput:
    """Check that ``path`` is a Fashion-MNIST CSV and find its layout, before any work.

    Empty files, header-only files, headers with the wrong columns and binary files
    raise a one-line :class:`FmnistError`.
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
        return CsvInput(path, compressed, size, bom + first_break + 1, True, has_label)
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
    return CsvInput(path, compressed, size, bom, False, common == PIXELS + 1)


def input_fingerprint(path: Path | str) -> str:
    """A cheap identity of the input file: SHA-256 of its size and sampled bytes.

    Reads the first and last MiB and 16 slices in between, so every shard of a large
    file can check it without reading the whole file. It tells a replaced, truncated
    or regenerated file apart; it does not promise to see one changed byte in the middle.
    """
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(f"size={size};".encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(1 << 20))
        for k in range(1, FINGERPRINT_SAMPLES + 1):
            handle.seek(size * k // (FINGERPRINT_SAMPLES + 1))
            digest.update(handle.read(FINGERPRINT_SAMPLE_BYTES))
        handle.seek(max(0, size - (1 << 20)))
        digest.update(handle.read(1 << 20))
    return "sampled-sha256:" + digest.hexdigest()


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
    if position >= csv.size:
        return csv.size
    # A line starts at `position` when the byte before it is a line break.
    handle.seek(position - 1)
    offset = position - 1
    while chunk := handle.read(1 << 16):
        found = chunk.find(b"\n")
        if found >= 0:
            return offset + found + 1
        offset += len(chunk)
    return csv.size


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
    span = csv.size - csv.data_start
    with open(csv.path, "rb") as handle:
        starts = [
            _line_start_at_or_after(handle, csv.data_start + span * i // count, csv)
            for i in range(count)
        ]
    return list(zip(starts, [*starts[1:], csv.size], strict=True))


def byte_range(csv: CsvInput, index: int, count: int) -> ByteRange:
    """Shard ``index`` of ``count``, with the global id of its first row."""
    start, end = shard_bounds(csv, count)[index]
    first_row = count_line_breaks(csv.path, csv.data_start, start)
    return ByteRange(index, count, start, end, first_row)


def rows_in_range(csv: CsvInput, start: int, end: int) -> int:
    """Data rows in bytes [start, end) of a plain file (the last line may lack a break)."""
    rows = count_line_breaks(csv.path, start, end)
    if end == csv.size and end > start:
        with open(csv.path, "rb") as handle:
            handle.seek(end - 1)
            if handle.read(1) != b"\n":
                rows += 1
    return rows


def count_data_rows(csv: CsvInput) -> int:
    """Data rows in the whole input (decompressing a gzip stream once)."""
    if not csv.compressed:
        return rows_in_range(csv, csv.data_start, csv.size)
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
            maybe_hex = buffer.find(b"x", 0, cut) >= 0 or buffer.find(b"X", 0, cut) >= 0
            yield Block(row, view[:cut], rows, maybe_hex)
            row += rows
            filled = max(0, size - cut)
            view[:filled] = bytes(view[cut:size])


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
                if finished and buffer and not buffer.endswith(b"\n"):
                    buffer += b"\n"
                    breaks += 1
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


# --------------------------------------------------------------------------- parsing


def _shown(text: bytes) -> str:
    return text[:20].decode("utf-8", "replace")


def _bad_value(text: bytes, name: str, is_label: bool) -> tuple[str, str]:
    """(kind, reason) for a field that is not a plain decimal integer."""
    if not text:
        return "empty_value", f"{name} is empty"
    try:
        number = float(text)
    except ValueError:
        return "non_integer", f"{name} is {_shown(text)!r}, not an integer"
    if math.isnan(number):
        return "nan", f"{name} is NaN"
    if math.isinf(number):
        return "non_integer", f"{name} is {_shown(text)!r}, not an integer"
    if is_label and number < 0 and number.is_integer():
        return "label_out_of_range", f"label is {_shown(text)}, outside 0-9"
    if number < 0:
        return "negative", f"{name} is {_shown(text)}, negative"
    if not number.is_integer():
        return "fractional", f"{name} is {_shown(text)}, fractional"
    return "non_integer", f"{name} is {_shown(text)!r}, not written as a plain integer"


def check_row(line: bytes, has_label: bool) -> tuple[list[int] | None, str, str]:
    """Validate one line (without its line break): (values, "", "") or (None, kind, reason).

    A value is decimal digits, optionally padded with spaces or tabs; labels are 0-9,
    pixels 0-255. The first offending field decides the reason.
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
    values = []
    for column, raw in enumerate(fields):
        text = raw.strip(b" \t")
        is_label = has_label and column == 0
        if not text.isdigit():
            return None, *_bad_value(text, names[column], is_label)
        value = int(text)
        if is_label and value > 9:
            return None, "label_out_of_range", f"label is {value}, outside 0-9"
        if value > 255:
            return None, "over_255", f"{names[column]} is {value}, above 255"
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


def _read_options(csv: CsvInput, size: int) -> pcsv.ReadOptions:
    # pyarrow parses the blocks of a buffer in parallel. The scorer parses the next
    # buffer while the engine scores this one, so half the cores parse (one block
    # each) and the engine keeps the rest; more, smaller blocks oversubscribe the
    # cores and cost more per row with 785 columns.
    blocks = max(1, pa.cpu_count() // 2)
    block_size = max(1 << 20, -(-size // blocks) + 1)
    return pcsv.ReadOptions(column_names=csv.columns, block_size=block_size)


_PARSE = pcsv.ParseOptions(quote_char=False, ignore_empty_lines=False)


def _convert_options(csv: CsvInput) -> pcsv.ConvertOptions:
    return pcsv.ConvertOptions(
        column_types={name: pa.uint8() for name in csv.columns},
        null_values=[],
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )


def _has_hex(data: bytes | memoryview) -> bool:
    raw = data if isinstance(data, bytes) else bytes(data)
    return b"x" in raw or b"X" in raw


def _fast(data: bytes | memoryview, rows: int, csv: CsvInput, maybe_hex: bool) -> pa.Table | None:
    # pyarrow reads "0x1F" as hexadecimal: leave any block with an x to the exact path.
    if maybe_hex and _has_hex(data):
        return None
    try:
        table = pcsv.read_csv(
            pa.py_buffer(data),
            read_options=_read_options(csv, len(data)),
            parse_options=_PARSE,
            convert_options=_convert_options(csv),
        )
    except pa.ArrowInvalid:
        return None
    # A lone carriage return ends a row for pyarrow, not for us: counts must agree.
    if table.num_rows != rows:
        return None
    if csv.has_label and rows and pc.max(table.column(0)).as_py() > 9:
        return None
    return table


def _from_table(table: pa.Table, first_row: int, csv: CsvInput) -> ParsedBlock:
    offset = int(csv.has_label)
    # Column by column into rows of a (pixels, rows) array writes memory in order; its
    # (rows, pixels) view is transposed back batch by batch when images are made.
    by_column = np.empty((PIXELS, table.num_rows), dtype=np.uint8)
    start = 0
    for batch in table.to_batches():
        stop = start + batch.num_rows
        for column in range(PIXELS):
            by_column[column, start:stop] = batch.column(column + offset).to_numpy()
        start = stop
    labels = table.column(0).to_numpy() if csv.has_label else None
    return ParsedBlock(
        row_ids=np.arange(first_row, first_row + table.num_rows, dtype=np.int64),
        pixels=by_column.T,
        labels=labels,
    )


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
    data: bytes | memoryview, first_row: int, rows: int, csv: CsvInput, maybe_hex: bool
) -> list[ParsedBlock]:
    table = _fast(data, rows, csv, maybe_hex)
    if table is not None:
        return [_from_table(table, first_row, csv)]
    if rows <= EXACT_LINES:
        return [_exact(data, first_row, csv)]
    parts = []
    for offset, piece, piece_rows in _split(data, rows, SPLIT_WAYS):
        parts.extend(_parse(piece, first_row + offset, piece_rows, csv, maybe_hex))
    return parts


def parse_block(block: Block, csv: CsvInput) -> ParsedBlock:
    """Valid rows of ``block`` as arrays, and a :class:`Reject` for every other row."""
    parts = _parse(block.data, block.first_row, block.rows, csv, block.maybe_hex)
    if len(parts) == 1:
        return parts[0]
    return ParsedBlock(
        row_ids=np.concatenate([p.row_ids for p in parts]),
        pixels=np.concatenate([p.pixels for p in parts]),
        labels=np.concatenate([p.labels for p in parts]) if csv.has_label else None,
        rejects=[r for p in parts for r in p.rejects],
    )
