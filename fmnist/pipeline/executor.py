"""The one local executor: tasks of the DAG run as ``fmnist-batch`` processes on this machine.

``fmnist-batch run`` runs the whole DAG here (independent tasks in parallel, each with
a log file under ``RUN/logs/``); ``fmnist-batch step``, what every scheduler job runs,
runs the task(s) of its job the same way with the output left in the job's log. An
array task runs one element per process with ``FMNIST_ARRAY_INDEX`` set: all of them in
turn here, or only the scheduler's element inside an array job.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from fmnist.io import FmnistError, default_run_dir
from fmnist.pipeline.attempts import AttemptEnd, RetryPolicy, classify_exit, retry_policy
from fmnist.pipeline.jobenv import parse_job_environment
from fmnist.pipeline.spec import Task, array_size, expand, load_pipeline, scalar_overrides
from fmnist.trace import TraceRow, append_rows, trace_row, utc


@dataclass
class TaskOutcome:
    """How one task ended on this machine."""

    task_id: str
    status: str  # done | skipped | failed | held
    seconds: float = 0.0
    log: Path | None = None
    returncode: int | None = None
    runs: list[ProcessRun] = field(default_factory=list)  # every attempt of every element


def cli_command(args: tuple[str, ...]) -> list[str]:
    """The process command line that runs ``fmnist-batch ARGS`` with this interpreter."""
    return [sys.executable, "-m", "fmnist", *args]


def exit_description(returncode: int) -> str:
    """'exit status 1', or for a process a signal ended 'SIGSEGV (exit status -11)'."""
    if returncode >= 0:
        return f"exit status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"{name} (exit status {returncode})"


def log_path(log_dir: Path, task_id: str, index: int | None = None) -> Path:
    """Where a task (or one element of an array task) logs: ``logs/train__main.log``."""
    suffix = "" if index is None else f".{index}"
    return Path(log_dir) / f"{task_id.replace(':', '__')}{suffix}.log"


def element_indices(task: Task, index_in_job: int | None = None) -> list[int | None]:
    """The array elements to run here: [None] for a plain task, the job's one, or all."""
    size = array_size(task)
    if size is None:
        return [None]
    if index_in_job is not None:
        # One element of an array job: the scheduler chose the index.
        if not 0 <= index_in_job < size:
            raise FmnistError(
                f"{task.id}: array index {index_in_job} outside 0..{size - 1} "
                "(submit the array as 0..N-1, or set FMNIST_ARRAY_BASE=1 for 1..N)"
            )
        return [index_in_job]
    return list(range(size))  # outside an array job: every element in turn


@dataclass(frozen=True)
class ProcessRun:
    """One process of a task, measured: when it ran, how it ended, what it used."""

    started: float  # epoch seconds
    ended: float
    returncode: int
    cpu_s: float  # user + system CPU of the process and its children
    peak_rss_mb: float
    end: AttemptEnd
    element: int | None = None  # the array element it ran, if any


def run_measured(
    command: list[str],
    env: Mapping[str, str],
    stdout=None,
    stderr=None,
    classify: Callable[[int], AttemptEnd] = classify_exit,
    on_start: Callable[[subprocess.Popen], None] | None = None,
) -> ProcessRun:
    """Run ``command`` to its end and measure it with ``wait4`` (its own rusage only, so
    tasks running side by side in threads do not mix).

    ``on_start`` gets the process as soon as it runs (a job forwards signals to it);
    ``classify`` judges its exit status.
    """
    started = time.time()
    process = subprocess.Popen(command, stdout=stdout, stderr=stderr, env=env)
    if on_start is not None:
        on_start(process)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return ProcessRun(
        started=started,
        ended=time.time(),
        returncode=process.returncode,
        cpu_s=usage.ru_utime + usage.ru_stime,
        peak_rss_mb=usage.ru_maxrss / 1024,  # KiB on Linux
        end=classify(process.returncode),
    )


def _run_element(
    task: Task, env: Mapping[str, str], log: Path | None, policy: RetryPolicy
) -> list[ProcessRun]:
    """Run one element of ``task``, again while its end is worth another attempt
    (:mod:`fmnist.pipeline.attempts`) and the step's ``retries`` allow; every attempt.

    Output goes to ``log``, or with None to this process's own output. Every command
    resumes from its run directory, so another attempt redoes only what is missing.
    """
    command = cli_command(task.args)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
    runs: list[ProcessRun] = []
    with open(log, "w") if log is not None else contextlib.nullcontext() as handle:
        if handle is not None:
            handle.write("$ fmnist-batch " + shlex.join(task.args) + "\n")
            handle.flush()
        stderr = None if handle is None else subprocess.STDOUT
        while True:
            runs.append(run_measured(command, env, handle, stderr))
            attempt, end = len(runs), runs[-1].end
            if not end.retried or not policy.attempts_left(attempt):
                break
            note = (
                f"[retry]   {task.id}: attempt {attempt} ended by "
                f"{exit_description(runs[-1].returncode)} ({end.cause}); "
                f"attempt {attempt + 1} of {policy.retries + 1}"
            )
            print(note, file=handle or sys.stderr, flush=True)
    return runs


def run_task(
    task: Task,
    env: Mapping[str, str],
    indices: list[int | None],
    log_dir: Path | None = None,
) -> TaskOutcome:
    """Run ``task``'s command once per element, stopping at the first failure.

    Output goes to a log file per element under ``log_dir``, or (None) to this
    process's own output, as a scheduler job wants it.
    """
    started = time.perf_counter()
    returncode, log = 0, None
    policy = retry_policy(task.id, task.resources)
    runs: list[ProcessRun] = []
    for index in indices:
        # A native crash (SIGSEGV in a runtime's kernels, say) then leaves every thread's
        # Python stack in the task's log: the only trace a rare crash in a job leaves.
        element_env = {"PYTHONFAULTHANDLER": "1", **env, "FMNIST_TASK_ID": task.id}
        if index is not None:
            element_env["FMNIST_ARRAY_INDEX"] = str(index)
        log = None if log_dir is None else log_path(log_dir, task.id, index)
        element_runs = _run_element(task, element_env, log, policy)
        runs += [replace(run, element=index) for run in element_runs]
        returncode = element_runs[-1].returncode
        if returncode != 0:
            break
    status = "done" if returncode == 0 else "failed"
    seconds = time.perf_counter() - started
    return TaskOutcome(task.id, status, seconds, log, returncode, runs)


def run_job_tasks(
    tasks: list[Task],
    environ: Mapping[str, str],
    force: bool = False,
    progress: Callable[[str], None] = print,
    ended: Callable[[Task, TaskOutcome], None] = lambda task, outcome: None,
) -> list[str]:
    """Run a scheduler job's tasks in turn (``fmnist-batch step``), output inherited.

    A task whose outputs are complete is skipped unless ``force``; the first failure
    stops with an error naming the task and its exit status, or the signal that ended
    it. ``ended`` hears of every task that ran (its trace rows). Returns the tasks that
    ran.
    """
    index_in_job = parse_job_environment(environ).array_index
    ran = []
    for task in tasks:
        indices = element_indices(task, index_in_job)
        label = task.id + (f"[{indices[0]}]" if indices != [None] and len(indices) == 1 else "")
        # One element of an array job is done when its own outputs are.
        if not force and task.complete(indices[0] if len(indices) == 1 else None):
            progress(f"[skip]    {label} (outputs complete)")
            continue
        progress(f"[start]   {label}: fmnist-batch {shlex.join(task.args)}")
        outcome = run_task(task, environ, indices)
        ended(task, outcome)
        if outcome.status != "done":
            raise FmnistError(f"{label} failed with {exit_description(outcome.returncode)}")
        progress(f"[done]    {label}")
        ran.append(task.id)
    return ran


def _run_logged(task: Task, log_dir: Path, env: dict, progress: Callable[[str], None]):
    # Announced here, when a worker takes it up, not when it is queued behind others.
    progress(f"[start]   {task.id}: fmnist-batch {shlex.join(task.args)}")
    return run_task(task, env, element_indices(task), log_dir)


def run_local(
    tasks: list[Task],
    run: Path | str,
    jobs: int = 1,
    force: bool = False,
    progress: Callable[[str], None] = print,
) -> list[TaskOutcome]:
    """Execute tasks on this machine in dependency order, ``jobs`` at a time.

    Tasks whose outputs are complete are skipped (unless ``force``); a failed task
    holds back everything that depends on it while independent tasks go on.
    """
    from joblib import Parallel, delayed

    log_dir = Path(run) / "logs"
    env = {**os.environ, "FMNIST_EXECUTOR": "local"}
    host = socket.gethostname()
    outcomes: dict[str, TaskOutcome] = {}
    pending = list(tasks)
    while pending:
        pending = _hold_back(pending, outcomes, progress)
        ready = [t for t in pending if all(n in outcomes for n in t.needs)]
        if not ready:
            break
        pending = [t for t in pending if t not in ready]
        to_run = []
        for task in ready:
            if not force and task.complete():
                outcomes[task.id] = TaskOutcome(task.id, "skipped")
                progress(f"[skip]    {task.id} (outputs complete)")
            else:
                to_run.append(task)
        queued = time.time()
        # Unordered results: each task is reported as it finishes.
        results = Parallel(
            n_jobs=max(1, jobs), backend="threading", return_as="generator_unordered"
        )(delayed(_run_logged)(task, log_dir, env, progress) for task in to_run)
        for outcome in results:
            outcomes[outcome.task_id] = outcome
            task = next(t for t in to_run if t.id == outcome.task_id)
            append_rows(run, local_trace_rows(task, outcome, host, queued))
            tail = "" if outcome.status == "done" else f", see {outcome.log}"
            progress(
                f"[{outcome.status}]".ljust(10) + f"{outcome.task_id} "
                f"({outcome.seconds:.1f}s{tail})"
            )
    return [outcomes[t.id] for t in tasks if t.id in outcomes]


def trace_rows(
    task_id: str,
    runs: list[ProcessRun],
    job_id: Callable[[int | None], str],
    node_type: str,
    host: str,
    submitted: float | None,
    first_attempt: int = 1,
) -> list[TraceRow]:
    """The trace rows of a task's processes: one per attempt of each element (pure).

    ``job_id(element)`` names the job of an element; attempts count per element from
    ``first_attempt``; ``submitted`` (epoch seconds) is when the task was handed over.
    """
    rows, attempts = [], {}
    for run in runs:
        attempts[run.element] = attempts.get(run.element, first_attempt - 1) + 1
        label = task_id if run.element is None else f"{task_id}[{run.element}]"
        rows.append(
            trace_row(
                task_id=label,
                job_id=job_id(run.element),
                attempt=attempts[run.element],
                node_type=node_type,
                host=host,
                submitted=None if submitted is None else utc(submitted),
                started=run.started,
                ended=run.ended,
                cpu_s=run.cpu_s,
                peak_rss_mb=run.peak_rss_mb,
                exit_status=run.returncode,
                signal=run.end.signal,
                cause=run.end.cause,
            )
        )
    return rows


def local_trace_rows(task: Task, outcome: TaskOutcome, host: str, queued: float) -> list[TraceRow]:
    """``run``'s trace rows of one task: job ids as the local executor names them."""

    def job_id(element: int | None) -> str:
        return "local-" + task.id.replace(":", "-") + ("" if element is None else f"-{element}")

    node_type = str(task.values.get("node_type", "local"))
    return trace_rows(task.id, outcome.runs, job_id, node_type, host, queued)


def _hold_back(
    pending: list[Task], outcomes: dict[str, TaskOutcome], progress: Callable[[str], None]
) -> list[Task]:
    """Mark held every pending task downstream of a failure; return the others.

    Repeated until nothing changes: a task held here holds back its own dependents in
    the same pass, so none of them is taken as ready with a held step behind it.
    """
    stopped = ("failed", "held")
    while True:
        blocked = [
            t
            for t in pending
            if any(outcomes.get(n) and outcomes[n].status in stopped for n in t.needs)
        ]
        if not blocked:
            return pending
        for task in blocked:
            outcomes[task.id] = TaskOutcome(task.id, "held")
            progress(f"[held]    {task.id} (a step it needs failed)")
        pending = [t for t in pending if t not in blocked]


def plan_pipeline(profile: str, run: Path | str | None = None) -> tuple[list[Task], Path]:
    """The tasks of ``profile`` for ``run`` (default: the run-directory rule), in DAG order.

    ``FMNIST_<NAME>`` variables set profile scalars here as in submit and in every job.
    """
    run = Path(run or default_run_dir(profile))
    pipeline = load_pipeline()
    return expand(pipeline, profile, run, scalar_overrides(pipeline, profile, os.environ)), run


def describe_tasks(tasks: list[Task]) -> str:
    """One line per task: its id, command and what it waits for (``run --dry-run``)."""
    lines = []
    for task in tasks:
        needs = f"  (after {', '.join(task.needs)})" if task.needs else ""
        lines.append(f"{task.id}: fmnist-batch {shlex.join(task.args)}{needs}")
    return "\n".join(lines)


def run_pipeline(
    profile: str,
    run: Path | str | None = None,
    jobs: int = 1,
    force: bool = False,
    progress: Callable[[str], None] = print,
) -> str:
    """``fmnist-batch run``: the whole DAG of ``profile`` here; the summary line.

    Raises naming every step that failed or was held back.
    """
    tasks, run = plan_pipeline(profile, run)
    outcomes = run_local(tasks, run, jobs=jobs, force=force, progress=progress)
    failed = [o for o in outcomes if o.status in ("failed", "held")]
    done = sum(o.status in ("done", "skipped") for o in outcomes)
    summary = f"{done}/{len(tasks)} steps complete in {run}"
    if failed:
        raise FmnistError(
            f"{summary}; {len(failed)} step(s) did not finish: "
            + ", ".join(f"{o.task_id} ({o.status})" for o in failed)
        )
    return summary
