"""How a job attempt ended, and whether another attempt is worth it.

Every end is one *cause*, judged from the exit status and, for a scheduler job, the
scheduler's own record:

==================  ==========================================================  ========
cause               seen as                                                     retried
==================  ==========================================================  ========
``done``            exit status 0                                               no
``code-error``      any other exit status: the same input fails the same way    no
``walltime``        the job's time ran out (Slurm ``TIMEOUT``, PBS Pro -29,     yes
                    Torque -11, or this job's own walltime timer)
``memory``          killed for memory (Slurm ``OUT_OF_MEMORY``, PBS Pro -27/-26,  yes
                    Torque -10, the kernel's OOM killer in the job's cgroup)
``node-or-signal``  a signal from outside (SIGKILL, SIGSEGV, ...) or a node that  yes
                    failed (Slurm ``NODE_FAIL``, PBS's negative codes)
``cancelled``       qdel / scancel, or deleted because a job it needed failed    no
==================  ==========================================================  ========

Only walltime, memory and node failures (with signals) are worth another attempt: a
code error would fail again. ``fmnist-batch run`` and every scheduler job apply the same
rule (:func:`worth_retrying`), with the step's ``retries`` and growth from
``jobs/pipeline.toml`` (:class:`RetryPolicy`). Everything here is pure.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from fmnist.io import FmnistError
from fmnist.train_stop import CONTINUE_EXIT

DONE, CODE_ERROR, WALLTIME, MEMORY, NODE_OR_SIGNAL, CANCELLED = (
    "done",
    "code-error",
    "walltime",
    "memory",
    "node-or-signal",
    "cancelled",
)
CAUSES = (DONE, CODE_ERROR, WALLTIME, MEMORY, NODE_OR_SIGNAL, CANCELLED)
RETRIED_CAUSES = (WALLTIME, MEMORY, NODE_OR_SIGNAL)

# The exit status of a task that saved its state when asked to stop (SIGTERM at the
# walltime warning) and can continue from it (fmnist.train_stop owns it).

# The PBS families' negative exit statuses (JOB_EXEC_* in their job.h): the job was
# ended by the server or the MOM, not by its own code. The rest mean a node, a MOM or
# its connection failed.
_PBS_CODES = {
    "pbspro": {-29: WALLTIME, -27: MEMORY, -26: MEMORY},
    "torque": {-11: WALLTIME, -10: MEMORY},
}
_SLURM_CAUSES = {
    "COMPLETED": DONE,
    "TIMEOUT": WALLTIME,
    "DEADLINE": WALLTIME,
    "OUT_OF_MEMORY": MEMORY,
    "NODE_FAIL": NODE_OR_SIGNAL,
    "BOOT_FAIL": NODE_OR_SIGNAL,
    "PREEMPTED": NODE_OR_SIGNAL,
    "CANCELLED": CANCELLED,
    "REVOKED": CANCELLED,
}


@dataclass(frozen=True)
class AttemptEnd:
    """How one attempt ended: its cause, exit status and the signal that ended it."""

    cause: str
    exit_status: int | None = None
    signal: str | None = None  # SIGKILL, ... when a signal ended the process

    @property
    def retried(self) -> bool:
        return worth_retrying(self.cause)


def worth_retrying(cause: str) -> bool:
    """True for the causes another attempt can cure: walltime, memory, node or signal."""
    return cause in RETRIED_CAUSES


def signal_name(number: int) -> str:
    """``9`` -> ``SIGKILL``; an unknown number -> ``signal 99``."""
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def classify_exit(
    returncode: int, *, at_walltime: bool = False, oom_killed: bool = False
) -> AttemptEnd:
    """A process's end, as ``subprocess`` reports it (``-9``: killed by SIGKILL).

    ``at_walltime``: this job stopped the task because its walltime was running out;
    ``oom_killed``: the kernel's OOM killer struck in the job's memory cgroup meanwhile.
    A shell reports a signal as 128+N, so those count as signals too.
    """
    number = -returncode if returncode < 0 else returncode - 128 if 128 < returncode < 160 else 0
    name = signal_name(number) if number else None
    if returncode == 0:
        return AttemptEnd(DONE, 0)
    if at_walltime and (returncode == CONTINUE_EXIT or number):
        return AttemptEnd(WALLTIME, returncode, name)
    if oom_killed and number == signal.SIGKILL:
        return AttemptEnd(MEMORY, returncode, name)
    if number:
        return AttemptEnd(NODE_OR_SIGNAL, returncode, name)
    return AttemptEnd(CODE_ERROR, returncode)


def classify_slurm(state: str, exit_code: str = "") -> AttemptEnd:
    """A Slurm job's end from its state and ``ExitCode`` (``status:signal``, ``0:9``)."""
    word = state.split()[0] if state.strip() else ""
    status, _, number = exit_code.partition(":")
    status_i = int(status) if status.strip().lstrip("-").isdigit() else None
    number_i = int(number) if number.strip().isdigit() else 0
    name = signal_name(number_i) if number_i else None
    if word in _SLURM_CAUSES:
        return AttemptEnd(_SLURM_CAUSES[word], status_i, name)
    if number_i:
        return AttemptEnd(NODE_OR_SIGNAL, status_i, name)
    if status_i is not None:
        return classify_exit(status_i)
    return AttemptEnd(CODE_ERROR, status_i)


def classify_pbs(flavor: str, exit_status: int | None, deleted: bool = False) -> AttemptEnd:
    """A Torque or PBS Pro job's end from its ``exit_status``.

    Negative: the server's own codes (walltime, memory, else a node failure); above 256:
    256 + the signal that ended the job script; ``deleted``: qdel, or a dependency that
    failed (no exit status, or Torque's 271 with a "deleted" comment).
    """
    if deleted:
        return AttemptEnd(CANCELLED, exit_status)
    if exit_status is None:
        return AttemptEnd(CANCELLED)
    if exit_status < 0:
        return AttemptEnd(_PBS_CODES.get(flavor, {}).get(exit_status, NODE_OR_SIGNAL), exit_status)
    if exit_status > 256:
        return AttemptEnd(NODE_OR_SIGNAL, exit_status, signal_name(exit_status - 256))
    return classify_exit(exit_status)


@dataclass(frozen=True)
class RetryPolicy:
    """A step's ``retries`` and how its resources grow per attempt (``jobs/pipeline.toml``).

    ``resources = { walltime = "00:30:00", retries = 2, grow = { walltime = 2.0 } }``:
    up to 2 more attempts, each with twice the walltime of the one before (``memory``
    grows the same way, when the step asks for memory).
    """

    retries: int = 0
    walltime_growth: float = 1.0
    memory_growth: float = 1.0

    def attempts_left(self, attempt: int) -> bool:
        """True when attempt ``attempt`` (1 = the first) may be followed by another."""
        return attempt <= self.retries


def retry_policy(task_id: str, resources: dict) -> RetryPolicy:
    """The policy a task's resources declare; a bad value is one error naming the task."""
    retries = resources.get("retries", 0)
    grow = resources.get("grow", {})
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise FmnistError(f"task {task_id}: resources.retries must be 0 or more, not {retries!r}")
    if not isinstance(grow, dict) or set(grow) - {"walltime", "memory"}:
        raise FmnistError(
            f"task {task_id}: resources.grow takes walltime and memory factors, not {grow!r}"
        )
    factors = {}
    for key in ("walltime", "memory"):
        value = grow.get(key, 1.0)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 1:
            raise FmnistError(
                f"task {task_id}: resources.grow.{key} must be a factor of at least 1, "
                f"not {value!r}"
            )
        factors[key] = float(value)
    return RetryPolicy(retries, factors["walltime"], factors["memory"])


def walltime_seconds(text: str) -> int:
    """``01:02:03`` -> 3723, ``02:03`` -> 123, ``45`` -> 45; else a one-line error."""
    parts = text.strip().split(":")
    if not 1 <= len(parts) <= 3 or not all(p.isdigit() for p in parts):
        raise FmnistError(f"walltime {text!r} is not [[HH:]MM:]SS")
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    if seconds < 1:
        raise FmnistError(f"walltime {text!r} is not at least one second")
    return seconds


def format_walltime(seconds: float) -> str:
    """3723 -> ``01:02:03``."""
    seconds = max(1, round(seconds))
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def walltime_warning(seconds: int) -> int:
    """How long before its walltime a job is told to save and hand over (seconds).

    A fifth of the walltime, at least a minute (a tiny test walltime; a starved node was
    seen to take 40 s to save and hand over) and at most 5 minutes, and never more than
    half the walltime.
    """
    return min(300, max(60, seconds // 5), max(1, seconds // 2))


def parse_walltime_overrides(values: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["train=02:00:00", "train:main=00:01:40"]`` -> ``{"train": ..., "train:main": ...}``.

    Each value is ``STEP=HH:MM:SS`` or ``TASK=HH:MM:SS``, or a bare ``HH:MM:SS`` for
    every task (key ``""``); whether a name is a step or a task of the DAG is checked
    against the DAG by the caller.
    """
    overrides = {}
    for value in values:
        name, sep, walltime = value.partition("=")
        if not sep:
            name, walltime = "", value
        elif not name.strip():
            raise FmnistError(
                f"--walltime {value!r}: expected STEP=HH:MM:SS or TASK=HH:MM:SS "
                "(train=02:00:00, train:main=00:01:40)"
            )
        try:
            walltime_seconds(walltime)
        except FmnistError as exc:
            raise FmnistError(f"--walltime {value!r}: {exc}") from exc
        overrides[name.strip()] = walltime.strip()
    return overrides


def walltime_for(task_id: str, step: str, declared: str, overrides: dict[str, str]) -> str:
    """A task's walltime: its own override, else its step's, else one for every task
    (key ``""``), else the declared one."""
    return overrides.get(task_id) or overrides.get(step) or overrides.get("") or declared


def memory_mb(text: str) -> int:
    """``2gb``/``2G`` -> 2048, ``512mb``/``512M`` -> 512; else a one-line error."""
    value = text.strip().lower().removesuffix("b")
    units = {"m": 1, "g": 1024, "t": 1024 * 1024}
    if not value or value[-1] not in units or not value[:-1].isdigit():
        raise FmnistError(f"memory {text!r} is not a number with MB or GB (512mb, 2gb)")
    return int(value[:-1]) * units[value[-1]]


def attempt_resources(
    walltime: str | None, memory: str | None, policy: RetryPolicy, attempt: int
) -> tuple[str | None, str | None]:
    """The walltime and memory of attempt ``attempt`` (1 = as declared), grown per attempt;
    None stays None.

    Memory is given back in MB (``2048mb``), which every flavor's request reads.
    """
    factor = attempt - 1
    grown_walltime = None
    if walltime:
        seconds = walltime_seconds(walltime) * policy.walltime_growth**factor
        grown_walltime = format_walltime(seconds)
    grown_memory = None
    if memory:
        grown_memory = f"{round(memory_mb(memory) * policy.memory_growth**factor)}mb"
    return grown_walltime, grown_memory


def task_attempt_resources(
    task_id: str, step: str, resources: dict, overrides: dict[str, str], declared: str, attempt: int
) -> tuple[str | None, str | None]:
    """The walltime and memory a task's attempt ``attempt`` asks for, grown per attempt.

    The walltime is the task's override (:func:`walltime_for`), else ``declared``; None
    when neither gives one. The memory is the step's ``memory``, None when it has none.
    A value that does not parse is a one-line error naming the task.
    """
    walltime = walltime_for(task_id, step, declared, overrides) or None
    memory = resources.get("memory")
    policy = retry_policy(task_id, resources)
    try:
        if memory is not None:  # a declared but empty or zero memory is still checked
            memory_mb(str(memory))
        return attempt_resources(walltime, str(memory) if memory else None, policy, attempt)
    except FmnistError as exc:
        raise FmnistError(f"task {task_id}: {exc}") from exc
