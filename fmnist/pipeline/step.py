"""``fmnist-batch step``: run one task of the pipeline DAG, the way a job script asks for it.

The job scripts under ``pbs/`` hold no logic: each names a step (``train:main``,
``evaluate``) and this module finds the task(s) in ``jobs/pipeline.toml`` with the
profile's arguments, exactly as ``fmnist-batch run`` would run them. Which instance of
a fanned-out step to run comes from the task id (``train:main``) or from
``FMNIST_<PLACEHOLDER>`` variables (``FMNIST_MODEL=main``, ``FMNIST_NODE_TYPE=spr``);
``FMNIST_<NAME>`` also sets a scalar of the profile (``FMNIST_SHARDS=8``).
"""

from __future__ import annotations

import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from fmnist.io import DEFAULT_PROFILE, FmnistError, default_run_dir
from fmnist.pipeline.attempts import AttemptEnd, parse_walltime_overrides
from fmnist.pipeline.executor import TaskOutcome, run_job_tasks, trace_rows
from fmnist.pipeline.handover import hand_over, note_end, run_attempt, submit_one
from fmnist.pipeline.jobenv import JobEnvironment, job_recorded, parse_job_environment, record_job
from fmnist.pipeline.nodetypes import FLAVORS, load_node_types
from fmnist.pipeline.scheduler import submit_command
from fmnist.pipeline.spec import (
    Pipeline,
    Task,
    array_size,
    env_name,
    expand,
    load_pipeline,
    scalar_overrides,
)
from fmnist.pipeline.submit import JOBS_FILE, SubmitSettings, now, plan_jobs
from fmnist.resources import pipeline_spec
from fmnist.trace import append_rows, parse_time


@dataclass(frozen=True)
class StepSelection:
    """Which step, which placeholder values are pinned, which profile scalars are set."""

    step: str
    pins: dict[str, str]  # placeholder -> value (model -> main)
    scalars: dict[str, str]  # profile scalar -> value (shards -> 8)


def select(
    pipeline: Pipeline, profile_name: str, selector: str, environ: Mapping[str, str]
) -> StepSelection:
    """Parse ``step[:value...]`` and the ``FMNIST_*`` variables into a selection."""
    name, *values = selector.split(":")
    steps = {step.name: step for step in pipeline.steps}
    if name not in steps:
        raise FmnistError(
            f"no step {name!r} in {pipeline.source}; steps: {', '.join(steps) or 'none'}"
        )
    keys = list(steps[name].for_each)
    if len(values) > len(keys):
        raise FmnistError(
            f"{selector!r}: step {name!r} fans out over {keys or 'nothing'}, "
            f"so it takes at most {len(keys)} value(s) after the name"
        )
    pins = dict(zip(keys, values, strict=False))
    for key in keys[len(values) :]:
        if environ.get(env_name(key)):
            pins[key] = environ[env_name(key)]
    return StepSelection(name, pins, scalar_overrides(pipeline, profile_name, environ))


def select_tasks(
    pipeline: Pipeline,
    profile_name: str,
    run: Path | str,
    selector: str,
    environ: Mapping[str, str],
) -> list[Task]:
    """The tasks of the DAG that ``selector`` and the environment pick, in DAG order."""
    selection = select(pipeline, profile_name, selector, environ)
    step = next(s for s in pipeline.steps if s.name == selection.step)
    overrides: dict = dict(selection.scalars)
    for key, value in selection.pins.items():
        overrides[step.for_each[key]] = [value]  # the profile list this placeholder walks
    tasks = [t for t in expand(pipeline, profile_name, run, overrides) if t.step == step.name]
    if not tasks:
        raise FmnistError(f"{selector!r}: no task of step {step.name!r} for this profile")
    return tasks


def run_step(
    selector: str,
    run: Path | str | None,
    profile: str,
    environ: Mapping[str, str],
    force: bool = False,
    progress: Callable[[str], None] = print,
) -> None:
    """``fmnist-batch step``: run the task(s) ``selector`` and the environment pick.

    In a scheduler job that runs one plain task, the task runs under the job's walltime
    and a next attempt follows when its end calls for one (:mod:`.handover`).
    """
    run = Path(run or default_run_dir(profile))
    tasks = select_tasks(load_pipeline(), profile, run, selector, environ)
    job = parse_job_environment(environ)
    if job.scheduler in FLAVORS and len(tasks) == 1 and array_size(tasks[0]) is None:
        ran = _run_in_job(tasks[0], run, environ, job, force, progress)
    else:
        submitted = parse_time(environ.get("FMNIST_SUBMITTED"))

        def trace(task: Task, outcome: TaskOutcome) -> None:
            if job.scheduler in FLAVORS:  # run's own tasks write theirs themselves
                rows = trace_rows(
                    task.id,
                    outcome.runs,
                    lambda element: job.job_id,
                    job.node_type,
                    job.host,
                    submitted.timestamp() if submitted else None,
                    int(environ.get("FMNIST_ATTEMPT") or 1),
                )
                append_rows(run, rows)

        ran = run_job_tasks(tasks, environ, force=force, progress=progress, ended=trace)
    # Every scheduler job records itself in the run's manifest; most commands do it
    # themselves, this covers those that do not (data to-csv).
    if ran and job.scheduler in FLAVORS and not job_recorded(run):
        record_job(run, f"step {selector}", task_id=ran[-1])


def _run_in_job(
    task: Task,
    run: Path,
    environ: Mapping[str, str],
    job: JobEnvironment,
    force: bool,
    progress: Callable[[str], None],
) -> list[str]:
    """One attempt of ``task`` in this scheduler job; the next one submitted if due."""
    if not force and task.complete():
        progress(f"[skip]    {task.id} (outputs complete)")
        return []
    progress(f"[start]   {task.id}: fmnist-batch {shlex.join(task.args)}")
    record = run / JOBS_FILE

    def submit_next(task: Task, attempt: int, end: AttemptEnd) -> str:
        settings = SubmitSettings(
            scheduler=job.scheduler,
            profile=environ.get("FMNIST_PROFILE") or DEFAULT_PROFILE,
            node_types=[job.node_type],
            pipeline=environ.get("FMNIST_PIPELINE") or str(pipeline_spec().resolve()),
            run=str(run),
            walltimes=parse_walltime_overrides(environ.get("FMNIST_WALLTIME", "").split()),
        )
        [planned] = plan_jobs([task], settings, load_node_types(), attempt)
        command = submit_command(job.scheduler, planned.submission)
        job_id = submit_one(job.scheduler, command, planned.submission.env)
        new_job = {
            "job_id": job_id,
            "command": command,
            "submitted_at": now(),
            "attempt": attempt,
            "walltime": planned.submission.walltime,
            "log": str(Path(planned.submission.log).relative_to(run)),
        }
        waiting = hand_over(record, job.scheduler, task.id, new_job, _ended(job, end))
        if waiting:
            progress(f"[next]    {task.id}: job(s) {', '.join(waiting)} now wait for {job_id}")
        return job_id

    result = run_attempt(task, run, environ, submit_next, progress)
    submitted = parse_time(environ.get("FMNIST_SUBMITTED"))
    measured = replace(result.run, end=result.end)  # the cause as the job judged it
    rows = trace_rows(
        task.id,
        [measured],
        lambda element: job.job_id,
        job.node_type,
        job.host,
        submitted.timestamp() if submitted else None,
        result.attempt,
    )
    append_rows(run, rows)
    if result.next_job:
        return [task.id]
    note_end(record, task.id, job.job_id, {**_ended(job, result.end), "note": result.note})
    if not result.complete:
        raise FmnistError(f"{task.id}: {result.note}")
    progress(f"[done]    {task.id}")
    return [task.id]


def _ended(job: JobEnvironment, end: AttemptEnd) -> dict:
    return {
        "job_id": job.job_id,
        "cause": end.cause,
        "exit_status": end.exit_status,
        "signal": end.signal,
        "ended_at": now(),
    }
