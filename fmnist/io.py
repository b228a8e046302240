"""Run-directory layout, atomic writes, locks and hashing.

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


OUTPUTS = Path("outputs")
DEFAULT_PROFILE = "quick"


def default_run_dir(profile: str | None = None) -> Path:
    """The run directory when none is given: ``FMNIST_RUN``, else ``outputs/<profile>``.

    Every command that takes a run directory (train, evaluate, run, step, submit, ...)
    uses this one rule, so a job script, ``run`` and a hand-typed command agree.
    """
    if os.environ.get("FMNIST_RUN"):
        return Path(os.environ["FMNIST_RUN"])
    return OUTPUTS / (profile or DEFAULT_PROFILE)


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

    def timings(self, job_id: str) -> Path:
        return self.timings_dir / f"{job_id}.parquet"

    def benchmark_marker(self, model: str, node_type: str) -> Path:
        """Written when every variant of ``model`` was measured on ``node_type``."""
        return self.timings_dir / f"{model}__{node_type}.complete"

    @property
    def predictions_dir(self) -> Path:
        return self.root / "predictions"

    def predictions(self, input_stem: str, model: str) -> Path:
        return self.predictions_dir / input_stem / model

    @property
    def inputs_dir(self) -> Path:
        return self.root / "inputs"

    @property
    def figures_dir(self) -> Path:
        return self.root / "figures"

    @property
    def report_dir(self) -> Path:
        return self.root / "report"


def current_umask() -> int:
    """This process's umask, read without changing it where Linux says it (/proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, and put it back at once
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; rename it onto ``target`` on success.

    On any exception the temporary file is removed and ``target`` is left untouched.
    The file gets the mode of any new file (0666 less the umask), not mkstemp's 0600.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:  # the directory is read-only, full or not ours: say which
        raise OSError(exc.errno, exc.strerror, str(target.parent)) from exc
    os.fchmod(fd, 0o666 & ~current_umask())
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, target)
    except OSError as exc:
        # A full disk or a lost mount while writing: name the file being written, not
        # its temporary name; where the error names no file (pyarrow's writers), the
        # directory, since the body may be writing other files there too.
        if exc.errno is not None and exc.filename in (None, tmp_name, str(tmp)):
            where = target.parent if exc.filename is None else target
            raise OSError(exc.errno, exc.strerror or str(exc), str(where)) from exc
        raise
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


def sha256_files(*paths: Path | str, chunk_size: int = 1 << 20) -> str:
    """SHA-256 hex digest of the files' bytes, read one after the other."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while chunk := handle.read(chunk_size):
                digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: Path | str) -> str:
    """SHA-256 hex digest of one file's bytes."""
    return sha256_files(path)


_HASHED: dict[tuple, str] = {}


def sha256_cached(*paths: Path | str) -> str:
    """:func:`sha256_files` of ``paths``, hashed once per process while the files stay the same.

    The key is each file's identity and last change (device, inode, size, mtime, ctime),
    so a file replaced or rewritten in place since is hashed again. A model of 150 MB
    takes a fraction of a second to hash; commands that check several variants of one
    model, or score many shards, pay it once.
    """
    key: tuple = ()
    for path in paths:
        status = os.stat(path)
        key += (str(Path(path).resolve()), status.st_dev, status.st_ino, status.st_size)
        key += (status.st_mtime_ns, status.st_ctime_ns)
    if key not in _HASHED:
        _HASHED[key] = sha256_files(*paths)
    return _HASHED[key]


class LockBusy(FmnistError):
    """Another process holds the lock and the caller asked not to wait."""


@contextlib.contextmanager
def file_lock(path: Path | str, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (a ``.<name>.lock`` file beside it).

    Several processes of one run (parallel local jobs, scheduler jobs on a shared file
    system) write the same files; this serialises them. ``wait=False`` raises
    :class:`LockBusy` at once instead of waiting for the holder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError as exc:
            raise LockBusy(f"{path}: locked by another process") from exc
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def enclosing_run(path: Path | str) -> Path | None:
    """The run directory ``path`` lies in (the nearest ancestor with a manifest), if any."""
    for candidate in [Path(path), *Path(path).resolve().parents]:
        if RunLayout(candidate).manifest.is_file():
            return candidate
    return None
