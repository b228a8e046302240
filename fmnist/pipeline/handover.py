"""A scheduler job's task under its walltime: the timer, SIGTERM, and the next attempt.

``fmnist-batch step`` runs a job's one task through :func:`run_attempt`. The job knows
its walltime (``FMNIST_WALLTIME``, set by ``submit`` or by hand) and asks its task to
stop (SIGTERM) a warning's time before it runs out, as Slurm's ``--signal`` and the
PBS families' SIGTERM-then-SIGKILL do; a training saves where it is and exits
``CONTINUE_EXIT``. The job then judges the end (:mod:`fmnist.pipeline.attempts`):

- done: nothing more;
- walltime, having changed something in the run directory: the next attempt continues
  (however many it takes); walltime without a change stops the chain, saying so;
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

from fmnist.io import FmnistError, file_lock, write_json_atomic
from fmnist.pipeline.attempts import (
    CANCELLED,
    DONE,
    WALLTIME,
    AttemptEnd,
    attempt_resources,
    classify_exit,
    parse_walltime_overrides,
    retry_policy,
    walltime_for,
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

# What a job's own bookkeeping writes in the run directory: not progress of its task.
BOOKKEEPING = ("logs", "trace", "jobs.json", "manifest.json")


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
        walltime = walltime_for(task.id, task.step, "", overrides)
        if walltime:
            policy = retry_policy(task.id, task.resources)
            return walltime_seconds(attempt_resources(walltime, None, policy, attempt)[0])
    seconds = environ.get("PBS_WALLTIME", "")
    return int(seconds) if seconds.isdigit() and int(seconds) > 0 else None


def changed_since(run: Path, since: float) -> bool:
    """True when a file of ``run`` outside the job bookkeeping changed after ``since``."""
    for root, dirs, files in os.walk(run):
        if Path(root) == run:
            dirs[:] = [d for d in dirs if d not in BOOKKEEPING]
        for name in files:
            if Path(root) == run and name in BOOKKEEPING:
                continue
            try:
                if os.stat(Path(root) / name).st_mtime > since:
                    return True
            except FileNotFoundError:
                continue  # a temporary file renamed meanwhile
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
    scheduler's SIGTERM (Slurm signals only the batch shell, which is this process).

    ``at_walltime`` says the stop was the walltime's; a SIGTERM earlier than the
    warning is a cancel (``qdel``, ``scancel``).
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

    def __enter__(self) -> WalltimeGuard:
        self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
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
    since = time.time()
    before = oom_kills()
    with guard:
        measured = run_measured(cli_command(task.args), env, on_start=guard.attach)
    end = judge(measured, guard, before, oom_kills())
    progressed = changed_since(run, since)
    verdict = decide(end, progressed, attempt, policy.retries)
    if verdict == "done":
        return AttemptResult(task.id, attempt, measured, end, progressed)
    how = exit_description(measured.returncode)
    if verdict != "next":
        progress(f"[stop]    {task.id}: {verdict} ({how})")
        return AttemptResult(task.id, attempt, measured, end, progressed, note=verdict)
    job_id = submit_next(task, attempt + 1, end)
    progress(
        f"[next]    {task.id}: attempt {attempt} ended ({end.cause}, {how}); "
        f"attempt {attempt + 1} is job {job_id}"
    )
    return AttemptResult(task.id, attempt, measured, end, progressed, next_job=job_id)


# --------------------------------------------------------------------------- the record


def hand_over(
    record_path: Path, flavor: str, task_id: str, new_job: dict, ended: dict
) -> list[str]:
    """Make ``new_job`` the task's job in ``RUN/jobs.json`` and its dependents wait for it.

    ``ended`` (cause, exit status, ...) goes into the task's history with the job it
    replaces. The dependents' states are asked once, for all of them; each one still
    queued gets the new job added to what it waits for. Returns their job ids.
    """
    if not record_path.exists():
        return []  # a job submitted by hand (qsub pbs/train_main.sh): no record to keep
    with file_lock(record_path):
        record = read_record_file(record_path)
        jobs = record.get("jobs", {})
        if task_id not in jobs:
            return []
        old = jobs[task_id]
        history = [{**{k: v for k, v in old.items() if k != "history"}, **ended}]
        jobs[task_id] = {**old, **new_job, "history": history + old.get("history", [])}
        dependents = [t for t, job in jobs.items() if task_id in job.get("needs", [])]
        states = query_states(flavor, [jobs[t]["job_id"] for t in dependents])
        updated = []
        for dependent in dependents:
            job = jobs[dependent]
            state = states.get(job["job_id"])
            if state is None or state.state not in ACTIVE:
                continue
            after = [*job.get("after", []), new_job["job_id"]]
            arrays = {jobs[t]["job_id"] for t in job.get("needs", []) if jobs[t].get("array")}
            deps = tuple(Dependency(j, j in arrays) for j in dict.fromkeys(after))
            run_command(depend_command(flavor, job["job_id"], deps))
            job["after"] = [d.job_id for d in deps]
            updated.append(job["job_id"])
        write_json_atomic(record_path, record)
    return updated


def note_end(record_path: Path, task_id: str, job_id: str, ended: dict) -> None:
    """Record in ``RUN/jobs.json`` how the task's current job ended, when no next attempt
    follows (``status`` shows the cause and why the chain stopped)."""
    if not record_path.exists():
        return
    with file_lock(record_path):
        record = read_record_file(record_path)
        job = record.get("jobs", {}).get(task_id)
        if job is not None and job.get("job_id") == job_id:
            job["end"] = ended
            write_json_atomic(record_path, record)


def read_record_file(path: Path) -> dict:
    """``RUN/jobs.json`` as a dict; a broken one is a one-line error."""
    import json

    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise FmnistError(f"{path}: cannot read the job record ({exc})") from exc


def submit_one(flavor: str, command: list[str]) -> str:
    """Submit one job; its id."""
    return parse_job_id(flavor, run_command(command).stdout)
