"""Check that a predictions directory accounts for every row of its input, and merge it.

``verify_predictions`` re-derives from the input itself what each shard must hold
(its byte range and row ids, its row blocks for gzip, its row groups for Parquet) and
compares the markers, the part files and the rejects files against that, stopping at
the first discrepancy with an error that names it; each shard's rejects are checked
against the ``--max-rejects`` limit its marker records. ``merge_parts`` then writes one
Parquet file in row order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fmnist.io import FmnistError, atomic_path, enclosing_run, sha256_file
from fmnist.jobenv import record_job
from fmnist.scoring.inputs import ScoringInput, input_fingerprint, open_input
from fmnist.scoring.rows import ExpectedShard
from fmnist.scoring.shards import (
    BufferedWriter,
    ShardMarker,
    parse_shard_file,
    part_name,
    rejects_name,
)


@dataclass(frozen=True)
class VerifyResult:
    """A predictions directory that checked out: every input row predicted or rejected."""

    directory: Path
    input: Path
    shards: int
    rows: int
    predicted: int
    rejected: int
    markers: list[ShardMarker]

    def reject_limits(self) -> str:
        """The --max-rejects the shards were held to: ``1%``, or ``1% (shards [0, 2]), ...``."""
        limits: dict[str, list[int]] = {}
        for marker in self.markers:
            limits.setdefault(marker.max_rejects, []).append(marker.shard)
        if len(limits) == 1:
            return next(iter(limits))
        return ", ".join(f"{limit} (shards {shards})" for limit, shards in limits.items())

    def summary(self) -> str:
        """One line: rows predicted and rejected, against the reject limit of the shards."""
        worst = max(self.markers, key=lambda m: (m.rejected / max(m.rows_read, 1), -m.shard))
        return (
            f"{self.shards} shard(s), {self.rows} input rows = {self.predicted} predicted + "
            f"{self.rejected} rejected ({_percent(self.rejected, self.rows)}); --max-rejects "
            f"{self.reject_limits()} per shard, largest share in shard {worst.shard}: "
            f"{worst.rejected} of {worst.rows_read} rows (limit {worst.reject_limit})"
        )


def _percent(part: int, whole: int) -> str:
    return f"{100 * part / whole:.2f} %" if whole else "no rows"


def shard_count(directory: Path) -> int:
    """The N of the part-*-of-N files in ``directory``; an error for none or a mix."""
    if not directory.is_dir():
        raise FmnistError(f"{directory}: not a directory")
    counts = {shard[2] for p in directory.iterdir() if (shard := parse_shard_file(p.name))}
    if not counts:
        raise FmnistError(f"{directory}: no part-*-of-*.parquet files (nothing scored here)")
    if len(counts) > 1:
        raise FmnistError(
            f"{directory}: parts of different shard counts {sorted(counts)} "
            "(left from runs with different --shard N; keep one set)"
        )
    return counts.pop()


def load_markers(directory: Path, count: int) -> list[ShardMarker]:
    """Every shard's marker, after checking that its part and rejects files exist."""
    markers: list[ShardMarker] = []
    for index in range(count):
        path = ShardMarker.path(directory, index, count)
        for required in (path, directory / part_name(index, count)):
            if not required.is_file():
                raise FmnistError(
                    f"{required}: missing, shard {index}/{count} is not finished "
                    "(run the same score command again)"
                )
        marker = ShardMarker.read(path)
        if (marker.shard, marker.shards) != (index, count):
            raise FmnistError(
                f"{path}: says shard {marker.shard}/{marker.shards}, its name says {index}/{count}"
            )
        for key in ShardMarker.SHARED_KEYS:
            if markers and getattr(marker, key) != getattr(markers[0], key):
                raise FmnistError(
                    f"{path}: {key} is {getattr(marker, key)!r}, "
                    f"shard 0 has {getattr(markers[0], key)!r}"
                )
        if not (directory / rejects_name(index, count)).is_file():
            raise FmnistError(f"{directory / rejects_name(index, count)}: missing")
        markers.append(marker)
    return markers


def _row_ids(path: Path) -> np.ndarray:
    return pq.read_table(path, columns=["row_id"]).column("row_id").to_numpy()


def check_row_ids(
    label: str, source: ScoringInput, found: np.ndarray, expected: np.ndarray
) -> None:
    """Every expected row id exactly once among ``found``; else name the first wrong one."""
    found = np.sort(found)
    if len(found) == len(expected) and np.array_equal(found, expected):
        return
    missing = np.setdiff1d(expected, found)
    if missing.size:
        row = int(missing[0])
        raise FmnistError(
            f"{label}: row {row} ({source.describe_row(row)} of the input) is neither "
            f"predicted nor rejected ({missing.size} missing)"
        )
    repeated = found[1:][np.diff(found) == 0]
    if repeated.size:
        raise FmnistError(f"{label}: row {int(repeated[0])} appears more than once")
    extra = np.setdiff1d(found, expected)
    raise FmnistError(f"{label}: row {int(extra[0])} does not belong to this shard")


def _check_shard(
    directory: Path, source: ScoringInput, marker: ShardMarker, expected: ExpectedShard, count: int
) -> None:
    index = expected.index
    part = directory / part_name(index, count)
    rejects = directory / rejects_name(index, count)
    label = f"{directory}: shard {index}/{count}"
    predicted_ids, rejected_ids = _row_ids(part), _row_ids(rejects)
    check_row_ids(label, source, np.concatenate([predicted_ids, rejected_ids]), expected.row_ids())
    marker_path = ShardMarker.path(directory, index, count)
    marker.check_counts(
        marker_path,
        {
            "rows_read": expected.rows,
            "predicted": len(predicted_ids),
            "rejected": len(rejected_ids),
            **expected.cut,
        },
    )
    marker.check_reject_limit(marker_path)
    metadata = {k.decode(): v.decode() for k, v in (pq.read_schema(part).metadata or {}).items()}
    for key in ShardMarker.PART_METADATA_KEYS:
        if metadata.get(key) != str(getattr(marker, key)):
            raise FmnistError(
                f"{part}: file metadata {key} is {metadata.get(key)!r}, "
                f"the marker says {getattr(marker, key)!r}"
            )
    for path, key in ((part, "part_sha256"), (rejects, "rejects_sha256")):
        if sha256_file(path) != getattr(marker, key):
            raise FmnistError(f"{path}: SHA-256 differs from {key} in {marker_path.name}")


def verify_predictions(
    directory: Path | str,
    input_path: Path | str | None = None,
    progress: Callable[[str], None] | None = None,
) -> VerifyResult:
    """Check that ``directory`` holds every shard, complete and consistent with the input.

    Raises FmnistError naming the first discrepancy.
    """
    progress = progress or (lambda message: None)
    directory = Path(directory)
    count = shard_count(directory)
    markers = load_markers(directory, count)
    first = markers[0]
    source = Path(input_path or first.input)
    if not source.is_file():
        raise FmnistError(f"{source}: input of {directory} not found (moved? pass --input FILE)")
    if input_fingerprint(source) != first.input_fingerprint:
        raise FmnistError(f"{source}: input changed since it was scored (fingerprint differs)")
    reader = open_input(source)
    progress(f"counting rows of {source}")
    expected = reader.expected_shards(count, first.block_rows)
    for marker, shard in zip(markers, expected, strict=True):
        progress(f"checking shard {shard.index}/{count}")
        _check_shard(directory, reader, marker, shard, count)
    rows = sum(shard.rows for shard in expected)
    predicted = sum(m.predicted for m in markers)
    rejected = sum(m.rejected for m in markers)
    if predicted + rejected != rows:
        raise FmnistError(
            f"{directory}: {predicted} predicted + {rejected} rejected != {rows} input rows"
        )
    # Checking only reads: a run on a read-only mount verifies as well as any.
    return VerifyResult(directory, source, count, rows, predicted, rejected, markers)


class _PartCursor:
    """Reads one part in order, handing out the rows below a row id limit."""

    def __init__(self, path: Path):
        self.batches = pq.ParquetFile(path).iter_batches(batch_size=65_536)
        self.pending: pa.RecordBatch | None = None

    def take_below(self, limit: int) -> Iterator[pa.RecordBatch]:
        while True:
            if self.pending is None:
                self.pending = next(self.batches, None)
                if self.pending is None:
                    return
            ids = self.pending.column(0).to_numpy()
            cut = int(np.searchsorted(ids, limit))
            if cut < len(ids):
                yield self.pending.slice(0, cut)
                self.pending = self.pending.slice(cut)
                return
            yield self.pending
            self.pending = None


def merge_parts(result: VerifyResult, out: Path | str, row_group_rows: int = 262_144) -> int:
    """Write the parts of a verified directory as one Parquet file in row order."""
    count = result.shards
    parts = [result.directory / part_name(i, count) for i in range(count)]
    schema = pq.read_schema(parts[0])
    metadata = {k: v for k, v in (schema.metadata or {}).items() if k not in (b"shard",)}
    metadata[b"shards"] = str(count).encode()
    schema = schema.with_metadata(metadata)
    cursors = [_PartCursor(path) for path in parts]
    block_rows = result.markers[0].block_rows
    if block_rows:  # gzip shards interleave row blocks: take them back in turn
        steps = [(k % count, (k + 1) * block_rows) for k in range(-(-result.rows // block_rows))]
    else:
        steps = [(index, result.rows) for index in range(count)]
    with atomic_path(out) as tmp:
        writer = BufferedWriter(tmp, schema, row_group_rows)
        for index, limit in steps:
            for batch in cursors[index].take_below(limit):
                writer.add(pa.Table.from_batches([batch]).replace_schema_metadata(metadata))
        writer.close()
    run = enclosing_run(out)
    if run is not None:  # the merged file is an output of this job in that run
        record_job(run, f"verify {result.directory} --merge {out}")
    return writer.rows
