"""The scoring input: one interface over CSV and Parquet files, and its fingerprint.

:func:`open_input` looks at a file and returns a reader that satisfies
:class:`ScoringInput`: :class:`fmnist.scoring.csv_input.CsvInput` for Kaggle CSV (plain
or gzip), :class:`fmnist.scoring.parquet_input.ParquetInput` for Parquet. The scorer and
``verify`` use only this interface, so shards, row ids, rejects and markers mean the
same thing for both formats.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Protocol

from fmnist.io import FmnistError
from fmnist.scoring.csv_input import inspect_csv
from fmnist.scoring.parquet_input import PARQUET_MAGIC, inspect_parquet
from fmnist.scoring.rows import ExpectedShard, InputShard

FINGERPRINT_SAMPLES = 16
FINGERPRINT_SAMPLE_BYTES = 64 << 10


class ScoringInput(Protocol):
    """What the scorer and ``verify`` need of an input file, whatever its format."""

    path: Path
    size: int  # bytes on disk
    has_label: bool

    def identity(self) -> dict:
        """Marker fields describing the input: input_format, compressed, has_header, has_label."""

    def cut_settings(self, block_rows: int) -> dict:
        """Marker fields a finished shard must share with a run of these settings."""

    def open_shard(self, index: int, count: int, block_bytes: int, block_rows: int) -> InputShard:
        """Shard ``index`` of ``count``: parsed blocks, the cut for its marker, a row bound."""

    def expected_shards(self, count: int, block_rows: int | None) -> list[ExpectedShard]:
        """What each of ``count`` shards must hold, derived from the input alone."""

    def describe_row(self, row_id: int) -> str:
        """Where data row ``row_id`` is in the file (``line 12``, ``row group 3``)."""


def open_input(path: Path | str) -> ScoringInput:
    """The reader for ``path``: Parquet by its magic bytes, else CSV (plain or gzip).

    Every input that cannot be scored is refused here, with a one-line error, before
    any work.
    """
    path = Path(path)
    if not path.is_file():
        raise FmnistError(f"{path}: file not found")
    with open(path, "rb") as handle:
        magic = handle.read(len(PARQUET_MAGIC))
    if magic == PARQUET_MAGIC:
        return inspect_parquet(path)
    return inspect_csv(path)


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
