"""Run-directory layout, atomic writes and the run manifest.

The run directory is the contract between jobs (local or on a scheduler) and the
report. Every file a job produces is written through a temporary file and renamed,
so a job killed at its walltime never leaves a file that looks finished.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq


class FmnistError(Exception):
    """An error the user can act on; the CLI prints it on one line and exits non-zero."""


@dataclass(frozen=True)
class RunLayout:
    """Paths inside one run directory (see DESIGN.md, 'Run directory')."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    def model_dir(self, model: str) -> Path:
        return self.root / "models" / model

    def keras_model(self, model: str) -> Path:
        return self.model_dir(model) / "model.keras"

    def history(self, model: str) -> Path:
        return self.model_dir(model) / "history.parquet"

    def openvino_ir(self, model: str, precision: str) -> Path:
        return self.model_dir(model) / "openvino" / precision / "model.xml"

    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    def metrics(self, model: str, variant: str) -> Path:
        return self.metrics_dir / f"{model}__{variant}.parquet"

    def confusion(self, model: str, variant: str) -> Path:
        return self.metrics_dir / f"{model}__{variant}__confusion.parquet"

    @property
    def timings_dir(self) -> Path:
        return self.root / "timings"

    @property
    def predictions_dir(self) -> Path:
        return self.root / "predictions"

    @property
    def figures_dir(self) -> Path:
        return self.root / "figures"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success.

    On any exception the temporary file is removed and ``target`` is left untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path | str, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: Path | str, data: Any) -> None:
    """Write ``data`` as indented, key-sorted JSON atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_parquet_atomic(
    path: Path | str, frame: pd.DataFrame, metadata: dict[str, str] | None = None
) -> None:
    """Write a DataFrame to Parquet atomically, with optional key/value file metadata."""
    table = pa.Table.from_pandas(frame, preserve_index=False)
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({k.encode(): str(v).encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """Parse a TOML file; a missing or invalid one is an error naming ``what`` and the path."""
    try:
        return tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise FmnistError(f"{path}: {what} not found") from exc
    except tomllib.TOMLDecodeError as exc:
        raise FmnistError(f"{path}: invalid TOML ({exc})") from exc


def sha256_file(path: Path | str, chunk_size: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    # Several steps of one run (parallel local jobs, scheduler jobs on a shared
    # file system) update the same manifest: serialise them with an advisory lock.
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_manifest(run: Path | str) -> dict[str, Any]:
    """The run's manifest, or an empty dict when none exists yet."""
    path = RunLayout(Path(run)).manifest
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise FmnistError(f"{path}: not valid JSON ({exc})") from exc


def update_manifest(run: Path | str, section: str, key: str | None, value: Any) -> dict[str, Any]:
    """Set ``manifest[section][key] = value`` (or ``manifest[section] = value``) under a lock."""
    path = RunLayout(Path(run)).manifest
    with _locked(path):
        manifest = read_manifest(run)
        if key is None:
            manifest[section] = value
        else:
            manifest.setdefault(section, {})[key] = value
        write_json_atomic(path, manifest)
    return manifest
