"""Operating-system faults (a full disk, a read-only mount, ...) as one line a user can act on.

A batch job meets these on shared file systems: ``ENOSPC`` at the end of a quota or a
scratch disk, ``EROFS`` on a mount made read-only after a fault, ``EACCES`` in another
user's run. The CLI turns each into ``error: PATH: reason`` instead of a traceback,
in the main process and, through :class:`WorkerFault`, in the scoring workers.
"""

from __future__ import annotations

import errno
from pathlib import Path

from fmnist.io import FmnistError

REASONS = {
    errno.ENOSPC: "the disk is full (no space left on device)",
    errno.EDQUOT: "the disk quota is used up (disk quota exceeded)",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied (not writable, or not readable, by this user)",
    errno.EPERM: "operation not permitted",
    errno.EMFILE: "too many open files in this process (raise `ulimit -n`)",
    errno.ENFILE: "too many open files on this machine",
    errno.EIO: "input/output error (a failing disk or network file system)",
    errno.EFBIG: "the file is too large for this file system or limit",
}


def describe(exc: BaseException, where: Path | str | None = None) -> str:
    """``PATH: reason`` for an OS error (``where`` when the error names no file)."""
    if not isinstance(exc, OSError):
        return str(exc)
    path = exc.filename if exc.filename is not None else where
    reason = REASONS.get(exc.errno) or (exc.strerror or str(exc)).lower()
    if exc.filename2 is not None:
        path = f"{exc.filename} -> {exc.filename2}"
    return f"{path}: {reason}" if path is not None else reason


class WorkerFault(FmnistError):
    """An OS error met in a worker process, carried back as its one-line description.

    An ``OSError`` raised in a loky worker reaches the parent wrapped in joblib's
    traceback text; this carries only what the user needs, and pickles as a plain
    exception.
    """


def as_fmnist_error(exc: OSError, where: Path | str | None = None) -> FmnistError:
    """The one-line :class:`FmnistError` an OS error becomes."""
    return WorkerFault(describe(exc, where))
