"""The files of a scored shard: names, Parquet schemas and writer, success markers, lock.

Shard ``I`` of ``N`` of a predictions directory is::

    part-0000I-of-0000N.parquet          row_id, pred, pred_name, confidence[, label][, prob_k]
    rejects-0000I-of-0000N.parquet       row_id, line, kind, reason, raw
    part-0000I-of-0000N.success.json     the success marker: counts, fingerprints, timing

``fmnist.score`` writes them, ``fmnist.verify`` checks them.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fmnist.csvstream import Reject
from fmnist.data import CLASS_NAMES
from fmnist.io import FmnistError, sha256_file

MARKER_FORMAT = "fmnist-score-shard/1"
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


# --------------------------------------------------------------------------- markers


def read_marker(path: Path) -> dict | None:
    """A success marker's contents, or None when absent or unreadable."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def shard_finished(out_dir: Path, index: int, count: int, expected: dict) -> bool:
    """A shard is finished when its marker has the ``expected`` values and its files."""
    marker = read_marker(out_dir / marker_name(index, count))
    if not marker or marker.get("format") != MARKER_FORMAT:
        return False
    if any(marker.get(key) != value for key, value in expected.items()):
        return False
    for name_key, sha_key in (("part", "part_sha256"), ("rejects", "rejects_sha256")):
        path = out_dir / str(marker.get(name_key))
        if not path.is_file() or sha256_file(path) != marker.get(sha_key):
            return False
    return True


@contextmanager
def shard_lock(out_dir: Path, index: int, count: int) -> Iterator[None]:
    """Hold an exclusive lock on one shard; a second process on it gets a clear error."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f".part-{index:05d}-of-{count:05d}.lock"
    with open(path, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise FmnistError(
                f"{out_dir}: shard {index}/{count} is being scored by another process"
            ) from exc
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def clean_stale_temporaries(out_dir: Path, index: int, count: int) -> list[Path]:
    """Remove temporary files a killed run of this shard left behind (caller holds the lock)."""
    names = (part_name(index, count), rejects_name(index, count), marker_name(index, count))
    removed = []
    for name in names:
        for path in out_dir.glob(f".{name}.*.tmp"):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
