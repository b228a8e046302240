"""The files of a scored shard: names, Parquet schemas and writer, the success marker, lock.

Shard ``I`` of ``N`` of a predictions directory is::

    part-0000I-of-0000N.parquet          row_id, pred, pred_name, confidence[, label][, prob_k]
    rejects-0000I-of-0000N.parquet       row_id, line, kind, reason, raw
    part-0000I-of-0000N.success.json     the success marker: counts, fingerprints, timing

``fmnist.scoring.score`` writes them, ``fmnist.scoring.verify`` checks them and the
report reads them; the marker's format belongs to :class:`ShardMarker` alone, and the
rejected-rows limit it records to :class:`RejectLimit`.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, fields
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fmnist.data import CLASS_NAMES
from fmnist.io import FmnistError, LockBusy, file_lock, sha256_file, write_json_atomic
from fmnist.scoring.rows import Reject

MARKER_FORMAT = "fmnist-score-shard/2"
DEFAULT_MAX_REJECTS = "1%"
REJECT_SCHEMA = pa.schema(
    [
        ("row_id", pa.int64()),
        ("line", pa.int64()),
        ("kind", pa.string()),
        ("reason", pa.string()),
        ("raw", pa.string()),
    ]
)


# --------------------------------------------------------------------------- names


def part_name(index: int, count: int) -> str:
    return f"part-{index:05d}-of-{count:05d}.parquet"


def rejects_name(index: int, count: int) -> str:
    return f"rejects-{index:05d}-of-{count:05d}.parquet"


def marker_name(index: int, count: int) -> str:
    return f"part-{index:05d}-of-{count:05d}.success.json"


SHARD_FILE = re.compile(r"^(part|rejects)-(\d{5})-of-(\d{5})\.(parquet|success\.json)$")


def parse_shard_file(name: str) -> tuple[str, int, int] | None:
    """``part-00003-of-00008.parquet`` -> ("part", 3, 8); the marker is kind "marker"."""
    match = SHARD_FILE.match(name)
    if not match:
        return None
    kind = "marker" if match.group(4) == "success.json" else match.group(1)
    return kind, int(match.group(2)), int(match.group(3))


# --------------------------------------------------------------------------- output


def prediction_schema(has_label: bool, probabilities: bool, metadata: dict) -> pa.Schema:
    """Columns of a part file, with model and input identity in the file metadata."""
    fields = [
        ("row_id", pa.int64()),
        ("pred", pa.uint8()),
        ("pred_name", pa.string()),
        ("confidence", pa.float32()),
    ]
    if has_label:
        fields.append(("label", pa.uint8()))
    if probabilities:
        fields += [(f"prob_{k}", pa.float32()) for k in range(len(CLASS_NAMES))]
    return pa.schema(fields, metadata={k: str(v) for k, v in metadata.items()})


def predictions_table(
    schema: pa.Schema, row_ids: np.ndarray, probs: np.ndarray, labels: np.ndarray | None
) -> pa.Table:
    """One table of predictions in ``schema`` from row ids, probabilities and labels."""
    pred = probs.argmax(axis=1).astype(np.uint8)
    columns = {
        "row_id": pa.array(row_ids, pa.int64()),
        "pred": pa.array(pred),
        "pred_name": pa.array(CLASS_NAMES, pa.string()).take(pa.array(pred)),
        "confidence": pa.array(probs.max(axis=1).astype(np.float32)),
    }
    if "label" in schema.names:
        columns["label"] = pa.array(labels, pa.uint8())
    if "prob_0" in schema.names:
        for k in range(probs.shape[1]):
            columns[f"prob_{k}"] = pa.array(np.ascontiguousarray(probs[:, k], np.float32))
    return pa.Table.from_pydict(columns, schema=schema)


def rejects_table(rejects: list[Reject]) -> pa.Table:
    """The rejects Parquet rows."""
    return pa.Table.from_pylist([asdict(r) for r in rejects], schema=REJECT_SCHEMA)


class BufferedWriter:
    """Collects tables and writes them in large row groups (one group per flush)."""

    def __init__(self, path: Path, schema: pa.Schema, row_group_rows: int):
        self.writer = pq.ParquetWriter(path, schema)
        self.schema = schema
        self.row_group_rows = row_group_rows
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.rows = 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self.pending.append(table)
            self.pending_rows += table.num_rows
            self.rows += table.num_rows
        if self.pending_rows >= self.row_group_rows:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            table = pa.concat_tables(self.pending)  # chunks are fine: no copy
            self.writer.write_table(table, row_group_size=max(table.num_rows, 1))
            self.pending, self.pending_rows = [], 0

    def close(self) -> None:
        self.flush()
        self.writer.close()


# --------------------------------------------------------------------------- reject limit


@dataclass(frozen=True)
class RejectLimit:
    """``--max-rejects``: at most N rejected rows per shard (``100``), or P % of its rows (``1%``).

    A shard past its limit is not finished: it gets no marker, and the command fails.
    """

    text: str
    count: int | None = None
    percent: Fraction | None = None

    @classmethod
    def parse(cls, text: str) -> RejectLimit:
        """``N`` or ``P%``; a one-line error for anything else."""
        text = str(text).strip()
        try:
            if text.endswith("%"):
                percent = Fraction(text[:-1].strip())
                if 0 <= percent <= 100:
                    return cls(text, percent=percent)
            elif int(text) >= 0:
                return cls(text, count=int(text))
        except (ValueError, ZeroDivisionError):
            pass
        raise FmnistError(
            f"--max-rejects {text!r}: expected a number of rows N >= 0 or a percentage "
            "P% of a shard's rows (0-100), e.g. 100 or 1%"
        )

    def allowed(self, rows: int) -> int:
        """The most rejected rows a shard of ``rows`` rows may have."""
        if self.count is not None:
            return self.count
        return math.floor(self.percent * rows / 100)

    def exceeded(self, rejected: int, rows: int) -> bool:
        """Whether ``rejected`` of ``rows`` rows is past the limit."""
        return rejected > self.allowed(rows)

    def certain_to_exceed(self, rejected: int, valid_rows_at_most: int | None) -> bool:
        """Whether a shard with ``rejected`` rows so far ends past the limit whatever follows.

        With at most ``valid_rows_at_most`` valid rows in the whole shard, the share of
        rejects is smallest when every remaining row is valid, so a shard can stop as
        soon as even that share is too high. Unknown bounds never stop a percentage.
        """
        if self.count is not None:
            return rejected > self.count
        if valid_rows_at_most is None:
            return False
        return self.exceeded(rejected, rejected + valid_rows_at_most)

    def __str__(self) -> str:
        return self.text


# --------------------------------------------------------------------------- markers


@dataclass(frozen=True)
class ShardMarker:
    """The success marker of one shard: written last, it says the shard is finished.

    This class owns the marker's format: the scorer builds one and writes it, a re-run
    loads it to decide whether to skip the shard, ``verify`` and the report read it.
    """

    # Which shard of what, scored by which model.
    shard: int
    shards: int
    model: str
    variant: str
    executed_precision: str
    model_sha256: str
    input: str
    input_fingerprint: str
    input_bytes: int
    input_format: str  # csv | parquet
    compressed: bool
    has_header: bool
    has_label: bool
    probabilities: bool
    # Counts and the files that hold them.
    rows_read: int
    predicted: int
    rejected: int
    part: str
    part_sha256: str
    rejects: str
    rejects_sha256: str
    # How it ran.
    seconds: float
    cpu_seconds: float
    rows_per_second: float
    peak_rss_bytes: int
    host: str
    pid: int
    finished: str
    # The rejected-rows limit the shard was held to (see RejectLimit), and its value
    # for this shard's rows.
    max_rejects: str
    reject_limit: int
    # The cut: byte ranges of a plain file, every N-th block of rows of a gzip one, or
    # a range of row groups of a Parquet file.
    sharding: str  # bytes | row-blocks | row-groups
    byte_start: int | None = None
    byte_end: int | None = None
    first_row_id: int | None = None
    block_rows: int | None = None
    row_group_start: int | None = None
    row_group_end: int | None = None
    format: str = MARKER_FORMAT

    # Every shard of one predictions directory must agree on these.
    SHARED_KEYS = (
        "input",
        "input_fingerprint",
        "input_format",
        "compressed",
        "has_header",
        "has_label",
        "sharding",
        "model",
        "variant",
        "model_sha256",
    )
    # The part file's Parquet metadata repeats these.
    PART_METADATA_KEYS = ("model", "variant", "model_sha256", "input_fingerprint")

    @staticmethod
    def path(out_dir: Path, index: int, count: int) -> Path:
        return Path(out_dir) / marker_name(index, count)

    def to_dict(self) -> dict:
        return asdict(self)

    def write(self, out_dir: Path) -> Path:
        """Write the marker atomically beside its part; returns its path."""
        path = self.path(out_dir, self.shard, self.shards)
        write_json_atomic(path, self.to_dict())
        return path

    @classmethod
    def read(cls, path: Path) -> ShardMarker:
        """The marker at ``path``; an error naming the file when it is absent or malformed."""
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError as exc:
            raise FmnistError(f"{path}: missing") from exc
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FmnistError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(data, dict) or data.get("format") != MARKER_FORMAT:
            raise FmnistError(f"{path}: not a success marker of format {MARKER_FORMAT}")
        known = {f.name for f in fields(cls)}
        required = [f.name for f in fields(cls) if f.default is MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise FmnistError(f"{path}: success marker lacks {', '.join(missing)}")
        return cls(**{k: v for k, v in data.items() if k in known})

    @classmethod
    def load(cls, out_dir: Path, index: int, count: int) -> ShardMarker | None:
        """Shard ``index``'s marker, or None when it is absent or unreadable."""
        try:
            return cls.read(cls.path(out_dir, index, count))
        except FmnistError:
            return None

    def mismatches(self, expected: dict) -> list[str]:
        """The keys of ``expected`` whose value this marker does not have."""
        return [key for key, value in expected.items() if getattr(self, key, None) != value]

    def files_intact(self, out_dir: Path) -> bool:
        """True when its part and rejects files exist with the recorded SHA-256."""
        return all(
            (path := Path(out_dir) / name).is_file() and sha256_file(path) == sha
            for name, sha in ((self.part, self.part_sha256), (self.rejects, self.rejects_sha256))
        )

    def check_counts(self, path: Path, actual: dict) -> None:
        """Raise naming ``path`` when a recorded count or cut differs from ``actual``."""
        for key, value in actual.items():
            if value is not None and getattr(self, key) != value:
                raise FmnistError(f"{path}: {key} is {getattr(self, key)}, should be {value}")
        if self.predicted + self.rejected != self.rows_read:
            raise FmnistError(f"{path}: predicted + rejected != rows_read")

    def limit(self) -> RejectLimit:
        """The rejected-rows limit this shard was held to."""
        return RejectLimit.parse(self.max_rejects)

    def check_reject_limit(self, path: Path) -> None:
        """Raise naming ``path`` when the recorded limit is wrong or the rejects exceed it."""
        allowed = self.limit().allowed(self.rows_read)
        if self.reject_limit != allowed:
            raise FmnistError(
                f"{path}: reject_limit is {self.reject_limit}, --max-rejects "
                f"{self.max_rejects} of {self.rows_read} rows is {allowed}"
            )
        if self.rejected > allowed:
            raise FmnistError(
                f"{path}: {self.rejected} rejected rows exceed --max-rejects "
                f"{self.max_rejects} ({allowed} of {self.rows_read} rows)"
            )


def shard_finished(out_dir: Path, index: int, count: int, expected: dict) -> ShardMarker | None:
    """The shard's marker when it is finished: ``expected`` values and intact files."""
    marker = ShardMarker.load(out_dir, index, count)
    if marker is None or marker.mismatches(expected) or not marker.files_intact(out_dir):
        return None
    return marker


@contextmanager
def shard_lock(out_dir: Path, index: int, count: int) -> Iterator[None]:
    """Hold an exclusive lock on one shard; a second process on it gets a clear error."""
    try:
        with file_lock(out_dir / f"part-{index:05d}-of-{count:05d}", wait=False):
            yield
    except LockBusy as exc:
        raise FmnistError(
            f"{out_dir}: shard {index}/{count} is being scored by another process"
        ) from exc


def clean_stale_temporaries(out_dir: Path, index: int, count: int) -> list[Path]:
    """Remove temporary files a killed run of this shard left behind (caller holds the lock)."""
    names = (part_name(index, count), rejects_name(index, count), marker_name(index, count))
    removed = []
    for name in names:
        for path in out_dir.glob(f".{name}.*.tmp"):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
