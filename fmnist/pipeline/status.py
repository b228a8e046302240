"""``fmnist-batch status``: each submitted task's job, its state, its outputs, and why.

The outputs decide: a task is done when every output it declares is on disk and its job
is no longer queued or running; a task that declares none is done only when its job is
known to have exited 0. A deleted, cancelled or forgotten job is never done. A task that
is not done says why: the log of a failed job, the failed task a deleted one waited for,
the scheduler's reason for a job no node can run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fmnist.io import FmnistError
from fmnist.pipeline.scheduler import (
    ACTIVE,
    BLOCKED,
    CANCELLED,
    COMPLETED,
    FAILED,
    FINISHED,
    STUCK,
    UNKNOWN,
    UNRUNNABLE,
    WAITING,
    JobState,
    array_log_path,
    query_states,
)
from fmnist.pipeline.submit import JOBS_FILE, read_record

DONE, INCOMPLETE = "done", "incomplete"
# Task states that stop everything downstream: the cause of a "never ran".
BROKEN = (FAILED, INCOMPLETE, UNRUNNABLE)
NOT_RUN = (CANCELLED, BLOCKED, WAITING, UNKNOWN)


@dataclass(frozen=True)
class TaskStatus:
    """A task's job, what the scheduler says of it, what is on disk, and why."""

    task_id: str
    job_id: str
    state: str  # done | incomplete | the scheduler's normalised state
    detail: str  # the scheduler's own words
    outputs_present: int
    outputs_total: int
    note: str = ""  # why it is not done: the failed task it waited for, the log to read
    attempts: list[dict] = field(default_factory=list)  # oldest first: job, cause, ...
    cause: str = ""  # how its current job ended (fmnist.pipeline.attempts), once it has


def task_attempts(job: dict, current: JobState) -> list[dict]:
    """Every attempt of a task, oldest first: its job id, attempt number and cause.

    The ended ones come from the record the jobs keep (``history``, ``end``); the
    current one's cause, when its job wrote none, from the scheduler's record.
    """
    attempts = []
    for old in reversed(job.get("history", [])):
        attempts.append(
            {
                "attempt": old.get("attempt", 1),
                "job_id": old.get("job_id"),
                "cause": old.get("cause") or "resubmitted",
                "exit_status": old.get("exit_status"),
                "signal": old.get("signal"),
            }
        )
    end = job.get("end") or {}
    if end.get("job_id") not in (None, job["job_id"]):
        end = {}  # a record of an earlier job: this one has not ended yet
    attempts.append(
        {
            "attempt": job.get("attempt", 1),
            "job_id": job["job_id"],
            "cause": end.get("cause") or current.cause or current.state,
            "exit_status": end.get("exit_status"),
            "signal": end.get("signal"),
        }
    )
    return attempts


def format_attempts(attempts: list[dict]) -> str:
    """``1 walltime, 2 walltime, 3 done``."""
    return ", ".join(f"{a['attempt']} {a['cause']}" for a in attempts)


def _task_state(outputs: list[Path], present: int, scheduler: JobState) -> tuple[str, str]:
    """The task's state and the detail shown, from its outputs and its job (pure rule).

    Outputs decide: a task is done when every declared output is on disk and its job is
    no longer queued or running. A task that declares no outputs is done only when its
    job is known to have exited 0, never when it was deleted, cancelled or forgotten.
    """
    detail = scheduler.detail
    complete = bool(outputs) and present == len(outputs)
    if scheduler.state in ACTIVE or scheduler.state in STUCK:
        return scheduler.state, detail
    if complete:
        if scheduler.state == UNKNOWN:
            detail = "done by its outputs: the scheduler no longer knows the job"
        return DONE, detail
    if not outputs and scheduler.state == COMPLETED:
        return DONE, detail
    if scheduler.state in (COMPLETED, FINISHED):
        return INCOMPLETE, f"{detail}; ended, but its outputs are not all there"
    if scheduler.state == UNKNOWN:
        gone = "the scheduler no longer knows the job (finished and forgotten, or job history off)"
        if outputs:
            return UNKNOWN, f"{gone}; its outputs are incomplete"
        return UNKNOWN, gone
    return scheduler.state, detail


def element_logs(flavor: str, log: str) -> str:
    """Where an array job's elements log, ``<i>`` standing for the index."""
    if flavor == "torque":
        return f"{log}-<i>"  # Torque appends -<index> to the path it was given
    return array_log_path(flavor, log).replace("^array_index^", "<i>").replace("%a", "<i>")


def _causes(task_id: str, jobs: dict, by_id: dict[str, str]) -> list[str]:
    """The nearest tasks upstream of ``task_id`` that failed (or cannot run)."""
    causes: list[str] = []
    seen: set[str] = set()
    stack = list(jobs.get(task_id, {}).get("needs", []))
    while stack:
        need = stack.pop(0)
        if need in seen or need not in by_id:
            continue
        seen.add(need)
        if by_id[need] in BROKEN:
            causes.append(need)
        elif by_id[need] in NOT_RUN:
            stack.extend(jobs[need].get("needs", []))
    return causes


def task_statuses(run: Path | str, states: dict[str, JobState], record: dict) -> list[TaskStatus]:
    """Combine the record, the scheduler's states and the files on disk (pure)."""
    run = Path(run)
    jobs = record.get("jobs", {})
    order = [t for t in record.get("order", []) if t in jobs]
    order += [t for t in jobs if t not in order]
    rows = {}
    for task_id in order:
        job = jobs[task_id]
        outputs = [run / o for o in job.get("outputs", [])]
        present = sum(path.exists() for path in outputs)
        scheduler = states.get(job["job_id"], JobState(UNKNOWN, "not known to the scheduler"))
        state, detail = _task_state(outputs, present, scheduler)
        rows[task_id] = (job, state, detail, present, len(outputs))
    by_id = {task_id: row[1] for task_id, row in rows.items()}
    flavor = record.get("settings", {}).get("scheduler") or ""
    statuses = []
    for task_id, (job, state, detail, present, total) in rows.items():
        note = ""
        scheduler = states.get(job["job_id"], JobState(UNKNOWN))
        attempts = task_attempts(job, scheduler)
        stopped = (job.get("end") or {}).get("note", "")
        if stopped and state != DONE:
            note = stopped  # the job said why no next attempt followed
        elif state in (FAILED, INCOMPLETE) and job.get("log"):
            note = f"see {element_logs(flavor, job['log']) if job.get('array') else job['log']}"
        elif state in NOT_RUN or state == BLOCKED:
            causes = ", ".join(_causes(task_id, jobs, by_id))
            if causes and state == WAITING:
                note = f"waits for {causes}, which failed: it will not run"
            elif causes:
                note = f"never ran: {causes} failed"
        elif state == UNRUNNABLE:
            note = "no node can run it: cancel it, or resubmit with another --node-type"
        cause = attempts[-1]["cause"] if state not in ACTIVE else ""
        statuses.append(
            TaskStatus(task_id, job["job_id"], state, detail, present, total, note, attempts, cause)
        )
    return statuses


def status_summary(statuses: list[TaskStatus], run: Path | str = "RUN") -> str:
    """The last lines of ``status``: how many tasks are done, what failed and what never ran."""
    done = sum(s.state == DONE for s in statuses)
    lines = [f"{done}/{len(statuses)} tasks done"]
    failed = [s for s in statuses if s.state in BROKEN]
    if failed:
        lines.append("failed: " + ", ".join(f"{s.task_id} ({s.state})" for s in failed))
    never = [s for s in statuses if s.note.startswith(("never ran", "waits for"))]
    if never:
        lines.append("never ran: " + ", ".join(s.task_id for s in never))
    if failed or never:
        lines.append(f"fix the cause, then `fmnist-batch submit --out {run} --resume`")
    return "\n".join(lines)


def run_status(run: Path | str) -> list[TaskStatus]:
    """The status of every submitted task of ``run`` (asks the scheduler)."""
    record = read_record(run)
    if record is None:
        raise FmnistError(f"{Path(run) / JOBS_FILE}: not found; nothing was submitted for {run}")
    flavor = record["settings"]["scheduler"]
    states = query_states(flavor, [job["job_id"] for job in record["jobs"].values()])
    return task_statuses(run, states, record)


def format_statuses(statuses: list[TaskStatus]) -> str:
    """A plain-text table of task states; the last column says why a task is not done."""
    rows = [("TASK", "JOB", "STATE", "OUTPUTS", "ATTEMPTS", "WHY / SCHEDULER SAYS")]
    for s in statuses:
        outputs = f"{s.outputs_present}/{s.outputs_total}"
        why = "; ".join(part for part in (s.note, s.detail) if part)
        rows.append((s.task_id, s.job_id, s.state, outputs, format_attempts(s.attempts), why))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    )
