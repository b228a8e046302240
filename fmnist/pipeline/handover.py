"""A scheduler job's task under its walltime: the timer, SIGTERM, and the next attempt.

``fmnist-batch step`` runs a job's one task through :func:`run_attempt`. The job knows
its walltime (``FMNIST_WALLTIME``, set by ``submit`` or by hand) and asks its task to
stop (SIGTERM) a warning's time before it runs out, as Slurm's ``--signal`` and the
PBS families' SIGTERM-then-SIGKILL do; a training saves where it is and exits
``CONTINUE_EXIT``. The job then judges the end (:mod:`fmnist.pipeline.attempts`):

- done: nothing more;
- walltime, having changed a file of the run directory (new, or other content): the next
  attempt continues (however many it takes); walltime without a change stops the chain,
  saying so;
- memory, node failure or signal: the next attempt, while the step's ``retries`` last;
- a code error, or cancelled: it stands.

The next attempt is a new job of the same task, submitted by this one with the grown
resources of its attempt number. Its dependents (in ``RUN/jobs.json``) are told to wait
for it as well, then this job exits 0: the task's dependents wait for the task, not for
one job. No process on the login node has to stay alive for any of it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fmnist.io import file_lock, sha256_file, write_json_atomic
from fmnist.pipeline.attempts import (
    CANCELLED,
    DONE,
    WALLTIME,
    AttemptEnd,
    classify_exit,
    parse_walltime_overrides,
    retry_policy,
    task_attempt_resources,
    walltime_seconds,
    walltime_warning,
)
from fmnist.pipeline.executor import ProcessRun, cli_command, exit_description, run_measured
from fmnist.pipeline.scheduler import (
    ACTIVE,
    Dependency,
    depend_command,
    parse_job_id,
    query_states,
    run_command,
)
from fmnist.pipeline.spec import Task
from fmnist.pipeline.submit import read_record

# What a job's own bookkeeping writes in the run directory: not progress of its task.
BOOKKEEPING = ("logs", "trace.parquet", "jobs.json", "manifest.json")


@dataclass(frozen=True)
class AttemptResult:
    """How a job's attempt of its task ended and what the job did about it."""

    task_id: str
    attempt: int
    run: ProcessRun | None  # None: the outputs were complete, nothing ran
    end: AttemptEnd
    progressed: bool
    next_job: str | None = None  # the job of the next attempt, when one was submitted
    note: str = ""  # why the chain stops, when it does
    complete: bool = False  # the task's outputs are all there


def job_walltime(environ: Mapping[str, str], task: Task, attempt: int = 1) -> int | None:
    """This job's walltime in seconds, else None.

    ``FMNIST_WALLTIME`` gives the task's walltime as declared (``HH:MM:SS``, or entries
    ``STEP=`` / ``TASK=`` as ``submit --walltime`` takes them, space-separated); attempt
    ``attempt`` has it grown as the step's ``grow.walltime`` says. Without it, Torque's
    ``PBS_WALLTIME`` (this job's own limit) counts.
    """
    text = environ.get("FMNIST_WALLTIME", "").strip()
    if text:
        overrides = parse_walltime_overrides(text.split())
        walltime, _ = task_attempt_resources(
            task.id, task.step, task.resources, overrides, "", attempt
        )
        if walltime:
            return walltime_seconds(walltime)
    seconds = environ.get("PBS_WALLTIME", "")
    return int(seconds) if seconds.isdigit() and int(seconds) > 0 else None


# Files up to this size are compared by content: a task that rewrites one unchanged (a
# configuration written at every start) has made no progress by it.
SMALL_FILE = 1 << 20


def snapshot(run: Path) -> dict[str, tuple[float, int, str | None]]:
    """Each file of ``run`` outside the job bookkeeping: mtime, size, small files' hash."""
    files = {}
    for root, dirs, names in os.walk(run):
        here = Path(root)
        if here == run:
            dirs[:] = [d for d in dirs if d not in BOOKKEEPING]
        for name in names:
            if (here == run and name in BOOKKEEPING) or name.startswith("."):
                continue
            path = here / name
            try:
                info = path.stat()
                digest = sha256_file(path) if info.st_size <= SMALL_FILE else None
            except FileNotFoundError:
                continue  # a temporary file renamed meanwhile
            files[str(path.relative_to(run))] = (info.st_mtime, info.st_size, digest)
    return files


def progressed(before: dict, after: dict) -> bool:
    """True when a file is new, or changed in size or content (pure)."""
    for path, (mtime, size, digest) in after.items():
        old = before.get(path)
        if old is None:
            return True
        if mtime != old[0] and (size != old[1] or digest is None or digest != old[2]):
            return True
    return False


def oom_kills() -> int | None:
    """The kernel OOM killer's count in this process's memory cgroup (v2), if it says."""
    try:
        line = Path("/proc/self/cgroup").read_text().splitlines()[0]
        events = Path("/sys/fs/cgroup") / line.split("::", 1)[1].lstrip("/") / "memory.events"
        for row in events.read_text().splitlines():
            key, _, value = row.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, IndexError, ValueError):
        return None
    return None


@dataclass
class WalltimeGuard:
    """Asks the task to stop before the job's walltime runs out, and passes on the
    scheduler's signals (Slurm signals only the batch shell, which is this process).

    The stop comes from this job's own timer, from Slurm's warning (SIGUSR1, asked for
    with ``--signal``) or from a SIGTERM near the walltime (the PBS families' at the
    limit): ``at_walltime``. A SIGTERM well before it is a cancel (``qdel``, ``scancel``).
    """

    walltime_s: int | None
    started: float = field(default_factory=time.monotonic)
    process: subprocess.Popen | None = None
    at_walltime: bool = False
    cancelled: bool = False

    @property
    def warning_s(self) -> int:
        return walltime_warning(self.walltime_s) if self.walltime_s else 0

    def _stop(self, why_walltime: bool) -> None:
        if why_walltime:
            self.at_walltime = True
        elif not self.at_walltime:
            self.cancelled = True
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def _on_sigterm(self, signum, frame) -> None:
        elapsed = time.monotonic() - self.started
        # The scheduler's own warning (Slurm --signal) or its SIGTERM at the limit.
        near = self.walltime_s is not None and elapsed >= self.walltime_s - 2 * self.warning_s
        self._stop(near)

    def _on_warning(self, signum, frame) -> None:
        # Slurm may warn up to a minute early; a job that knows its walltime keeps to its
        # own timer, which is exact.
        if not self.walltime_s:
            self._stop(True)

    def __enter__(self) -> WalltimeGuard:
        self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._previous_usr1 = signal.signal(signal.SIGUSR1, self._on_warning)
        self._timer = None
        if self.walltime_s:
            delay = max(0.0, self.walltime_s - self.warning_s - (time.monotonic() - self.started))
            self._timer = threading.Timer(delay, self._stop, args=(True,))
            self._timer.daemon = True
            self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._timer is not None:
            self._timer.cancel()
        signal.signal(signal.SIGTERM, self._previous)
        signal.signal(signal.SIGUSR1, self._previous_usr1)

    def attach(self, process: subprocess.Popen) -> None:
        self.process = process
        if self.at_walltime or self.cancelled:
            process.send_signal(signal.SIGTERM)  # the stop came before the process did


def judge(
    run: ProcessRun, guard: WalltimeGuard, oom_before: int | None, oom_after: int | None
) -> AttemptEnd:
    """The cause of an attempt's end from its exit and what the job saw meanwhile."""
    if guard.cancelled and run.returncode != 0:
        return AttemptEnd(CANCELLED, run.returncode, run.end.signal)
    oom = oom_before is not None and oom_after is not None and oom_after > oom_before
    return classify_exit(run.returncode, at_walltime=guard.at_walltime, oom_killed=oom)


def decide(end: AttemptEnd, progressed: bool, attempt: int, retries: int) -> str:
    """``"done"``, ``"next"`` (submit the next attempt) or a one-line reason it stops."""
    if end.cause == DONE:
        return "done"
    if end.cause == WALLTIME:
        if progressed:
            return "next"  # a continuation: as many as it takes, while each gets on
        return f"attempt {attempt} reached its walltime without changing anything: not continued"
    if end.retried and attempt <= retries:
        return "next"
    if end.retried:
        return f"attempt {attempt} ended ({end.cause}) and the step's {retries} retries are used"
    return f"attempt {attempt} ended ({end.cause}): not worth another attempt"


def run_attempt(
    task: Task,
    run: Path,
    environ: Mapping[str, str],
    submit_next: Callable[[Task, int, AttemptEnd], str],
    progress: Callable[[str], None] = print,
) -> AttemptResult:
    """Run this job's attempt of ``task`` under its walltime; submit the next one if its
    end calls for it (``submit_next(task, attempt, end)`` returns the new job's id)."""
    attempt = int(environ.get("FMNIST_ATTEMPT") or 1)
    policy = retry_policy(task.id, task.resources)
    guard = WalltimeGuard(job_walltime(environ, task, attempt))
    env = {"PYTHONFAULTHANDLER": "1", **environ, "FMNIST_TASK_ID": task.id}
    files = snapshot(run)
    before = oom_kills()
    with guard:
        measured = run_measured(cli_command(task.args), env, on_start=guard.attach)
    end = judge(measured, guard, before, oom_kills())
    moved = progressed(files, snapshot(run))
    verdict = decide(end, moved, attempt, policy.retries)
    if verdict == "done" or (end.cause == WALLTIME and task.complete()):
        # Stopped after its outputs were written (while recording itself, say): done.
        return AttemptResult(task.id, attempt, measured, end, moved, complete=True)
    how = exit_description(measured.returncode)
    if verdict != "next":
        progress(f"[stop]    {task.id}: {verdict} ({how})")
        return AttemptResult(task.id, attempt, measured, end, moved, note=verdict)
    job_id = submit_next(task, attempt + 1, end)
    progress(
        f"[next]    {task.id}: attempt {attempt} ended ({end.cause}, {how}); "
        f"attempt {attempt + 1} is job {job_id}"
    )
    return AttemptResult(task.id, attempt, measured, end, moved, next_job=job_id)


# --------------------------------------------------------------------------- the record


def hand_over(
    record_path: Path, flavor: str, task_id: str, new_job: dict, ended: dict
) -> list[str]:
    """Make ``new_job`` the task's job in ``RUN/jobs.json`` and its dependents wait for it.

    ``ended`` (cause, exit status, ...) goes into the task's history with the job it
    replaces. The scheduler is asked once, for the dependents and the jobs they wait
    for; each dependent still queued then waits for those of its jobs still queued or
    running (this one among them: it exits 0 after) and the new job. Returns their ids.
    """
    if not record_path.exists():
        return []  # a job submitted by hand (qsub pbs/train_main.sh): no record to keep
    with file_lock(record_path):
        record = read_record(record_path.parent) or {}
        jobs = record.get("jobs", {})
        if task_id not in jobs:
            return []
        old = jobs[task_id]
        history = [{**{k: v for k, v in old.items() if k != "history"}, **ended}]
        jobs[task_id] = {**old, **new_job, "history": history + old.get("history", [])}
        dependents = [t for t, job in jobs.items() if task_id in job.get("needs", [])]
        # One question to the scheduler for the dependents and every job they wait for.
        asked = {jobs[t]["job_id"] for t in dependents}
        asked |= {j for t in dependents for j in jobs[t].get("after", [])}
        states = query_states(flavor, sorted(asked))
        arrays = {job["job_id"] for job in jobs.values() if job.get("array")}
        updated = []
        for dependent in dependents:
            job = jobs[dependent]
            state = states.get(job["job_id"])
            if state is None or state.state not in ACTIVE:
                continue
            # Only jobs still queued or running: Torque refuses a dependency on an ended
            # one, and an afterok on a job that ended well is met already.
            after = [j for j in job.get("after", []) if j in states and states[j].state in ACTIVE]
            after = list(dict.fromkeys([*after, new_job["job_id"]]))
            deps = tuple(Dependency(j, j in arrays) for j in after)
            run_command(depend_command(flavor, job["job_id"], deps))
            job["after"] = after
            updated.append(job["job_id"])
        write_json_atomic(record_path, record)
    return updated


def note_end(record_path: Path, task_id: str, job_id: str, ended: dict) -> None:
    """Record in ``RUN/jobs.json`` how the task's current job ended, when no next attempt
    follows (``status`` shows the cause and why the chain stopped)."""
    if not record_path.exists():
        return
    with file_lock(record_path):
        record = read_record(record_path.parent) or {}
        job = record.get("jobs", {}).get(task_id)
        if job is not None and job.get("job_id") == job_id:
            job["end"] = ended
            write_json_atomic(record_path, record)


def submit_one(flavor: str, command: list[str], env: Mapping[str, str]) -> str:
    """Submit one job whose variables ``env`` are passed on its command line; its id.

    This job's own values of them are left out of the submitting environment, so
    ``-V`` (PBS) cannot put them back over the new ones.
    """
    return parse_job_id(flavor, run_command(command, unset=env).stdout)
