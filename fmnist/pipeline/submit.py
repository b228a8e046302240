"""``fmnist-batch submit``: the pipeline DAG as scheduler jobs with dependencies.

The DAG is the one ``fmnist-batch run`` executes (``fmnist.pipeline.expand`` over
``jobs/pipeline.toml``): one job per task, running ``pbs/<script>`` which calls
``fmnist-batch step <task>``; each job waits (afterok) for the jobs of the tasks it
needs, so a failed job holds back everything downstream. A step declares its job in
the TOML and needs no code here::

    resources = { script = "pbs/score_array.sh", walltime = "02:00:00", array = "{shards}" }

``script`` defaults to ``pbs/<step>.sh``, ``walltime`` to one hour; ``array = N`` makes the
task one array job of N elements. Steps that fan out over ``node_type`` go to that node
type; every other job goes to the first node type requested.

Job ids land in ``RUN/jobs.json`` (written after every submission, so an interrupted
submit still knows what it sent; ``fmnist.pipeline.status`` reads it); ``--resume`` keeps
queued and running jobs, skips tasks whose outputs are complete and submits the rest.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from fmnist.io import (
    DEFAULT_PROFILE,
    FmnistError,
    current_umask,
    default_run_dir,
    file_lock,
    write_json_atomic,
)
from fmnist.pipeline.attempts import (
    memory_mb,
    parse_walltime_overrides,
    task_attempt_resources,
    walltime_seconds,
    walltime_warning,
)
from fmnist.pipeline.executor import log_path
from fmnist.pipeline.nodes import list_nodes, node_offers
from fmnist.pipeline.nodetypes import NodeType, check_names, load_node_types, split_names
from fmnist.pipeline.scheduler import (
    ACTIVE,
    COMPLETED,
    STUCK,
    Dependency,
    Submission,
    cancel_jobs,
    detect_flavor,
    parse_job_id,
    query_states,
    run_command,
    submit_command,
)
from fmnist.pipeline.spec import (
    Pipeline,
    Task,
    array_size,
    env_name,
    expand,
    scalar_overrides,
)
from fmnist.resources import pipeline_spec, scripts_dir

JOBS_FILE = "jobs.json"
DEFAULT_WALLTIME = "01:00:00"


@dataclass(frozen=True)
class PlannedJob:
    """One task of the DAG as a scheduler job (before it has an id)."""

    task: Task
    submission: Submission  # dependencies are filled in at submit time
    node_type: str

    @property
    def array(self) -> int | None:
        return self.submission.array


@dataclass
class SubmitSettings:
    """What a submission was made with; recorded in jobs.json and reused by --resume.

    ``scheduler`` is None until detected (``submit`` checks the DAG first).
    """

    scheduler: str | None
    profile: str
    node_types: list[str]
    pipeline: str
    run: str
    walltimes: dict[str, str] = field(default_factory=dict)  # step or task id -> HH:MM:SS

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class SubmitResult:
    """What one submit call did, task by task."""

    record: dict
    actions: dict[str, str] = field(default_factory=dict)  # task id -> submitted|kept|complete


def job_name(task_id: str) -> str:
    """A scheduler job name for a task: ``benchmark:main:spr`` -> ``benchmark_main_spr``."""
    return task_id.replace(":", "_")


def _script(task: Task) -> Path:
    # A relative script ("pbs/train_main.sh") is one of the job scripts the project
    # ships, wherever they are installed (fmnist.resources).
    script = Path(task.resources.get("script") or f"pbs/{task.step}.sh")
    script = script if script.is_absolute() else scripts_dir() / script.name
    if not script.exists():
        raise FmnistError(
            f"task {task.id}: job script {script} not found "
            "(set resources.script for this step in the pipeline spec)"
        )
    return script


def task_walltime(task: Task, overrides: dict[str, str], attempt: int = 1) -> str:
    """The walltime of a task's attempt ``attempt``: ``--walltime`` for the task, else for
    its step, else ``resources.walltime`` (default one hour), grown per attempt as the
    step's ``grow.walltime`` says."""
    return _task_resources(task, overrides, attempt)[0]


def task_memory_mb(task: Task, attempt: int = 1) -> int | None:
    """The memory of a task's attempt ``attempt`` in MB: ``resources.memory`` grown per
    attempt as the step's ``grow.memory`` says; None when the step asks for none."""
    memory = _task_resources(task, {}, attempt)[1]
    return memory_mb(memory) if memory else None


def _task_resources(task: Task, overrides: dict[str, str], attempt: int) -> tuple[str, str | None]:
    declared = str(task.resources.get("walltime") or DEFAULT_WALLTIME)
    return task_attempt_resources(task.id, task.step, task.resources, overrides, declared, attempt)


def check_walltime_names(overrides: dict[str, str], tasks: list[Task]) -> None:
    """Every ``--walltime`` name is a step or a task of the DAG; else one error."""
    known = {t.id for t in tasks} | {t.step for t in tasks}
    unknown = [name for name in overrides if name and name not in known]
    if unknown:
        steps = ", ".join(dict.fromkeys(t.step for t in tasks))
        raise FmnistError(
            f"--walltime {', '.join(unknown)}: no such step or task in this DAG "
            f"(steps: {steps}; a task is step:value, e.g. train:main)"
        )


def job_environment(
    task: Task, settings: SubmitSettings, node_type: str, walltime: str, attempt: int = 1
) -> dict[str, str]:
    """The variables a task's job gets: run, profile, spec, and its placeholder values.

    ``FMNIST_UMASK`` carries the submitter's umask: the job scripts apply it, so results
    are as readable as the files the user writes by hand. ``FMNIST_WALLTIME`` (the task's
    walltime as given) and ``FMNIST_ATTEMPT`` tell the job its walltime, grown per
    attempt (it hands over to the next attempt before it runs out).
    """
    env = {
        "FMNIST_RUN": settings.run,
        "FMNIST_PROFILE": settings.profile,
        "FMNIST_PIPELINE": settings.pipeline,
        "FMNIST_NODE_TYPE": node_type,
        "FMNIST_UMASK": f"{current_umask():03o}",
        "FMNIST_WALLTIME": walltime,
        "FMNIST_ATTEMPT": str(attempt),
        # When it was handed to the scheduler: its trace row's queue wait counts from it.
        "FMNIST_SUBMITTED": now(),
    }
    for key, value in task.values.items():
        env[env_name(key)] = str(value)
    # The jobs use the interpreter environment that submitted them, wherever they start.
    if sys.prefix != sys.base_prefix:
        env.setdefault("FMNIST_VENV", sys.prefix)
    return env


def plan_jobs(
    tasks: list[Task],
    settings: SubmitSettings,
    catalog: dict[str, NodeType],
    attempt: int = 1,
) -> list[PlannedJob]:
    """One job per task, in dependency order, with the flavor-neutral submission details.

    Every node type a task names is one of ``settings.node_types``, which
    :func:`submit_pipeline` checked against ``catalog``.
    """
    planned = []
    run = Path(settings.run)
    umask = f"{current_umask():03o}" if settings.scheduler in ("torque", "pbspro") else None
    for task in tasks:
        node_type = str(task.values.get("node_type", settings.node_types[0]))
        walltime = task_walltime(task, settings.walltimes, attempt)
        log = log_path(run / "logs", task.id)
        if attempt > 1:  # each attempt keeps its own log
            log = log.with_name(log.name.replace(".log", f".attempt{attempt}.log"))
        submission = Submission(
            name=job_name(task.id),
            script=str(_script(task)),
            walltime=walltime,
            request=catalog[node_type].request(settings.scheduler, task_memory_mb(task, attempt)),
            # The walltime as given: each attempt's job grows it by its attempt number.
            env=job_environment(
                task, settings, node_type, task_walltime(task, settings.walltimes), attempt
            ),
            log=str(log),
            array=array_size(task),
            umask=umask,
            warning=walltime_warning(walltime_seconds(walltime)),
        )
        planned.append(PlannedJob(task, submission, node_type))
    return planned


def shell_variable(task_id: str) -> str:
    """The shell variable that holds a task's job id in a dry-run script."""
    return "JOB_" + "".join(c if c.isalnum() else "_" for c in task_id)


def _shell_word(word: str) -> str:
    if "${JOB_" in word:
        return '"' + word + '"'  # job ids are only known when the script runs
    return shlex.quote(word)


def dry_run_script(
    planned: list[PlannedJob], flavor: str, complete: frozenset[str] = frozenset()
) -> str:
    """The submission as a bash script: each job's id captured for its dependents.

    Tasks in ``complete`` (outputs on disk) get no job, as in a real submission.
    """
    lines = ["#!/usr/bin/env bash", "set -euo pipefail"]
    log_dirs = sorted({str(Path(job.submission.log).parent) for job in planned})
    lines.append("mkdir -p " + " ".join(shlex.quote(d) for d in log_dirs))
    for job in planned:
        if job.task.id in complete:
            lines.append(f"# {job.task.id}: outputs complete, no job")
            continue
        after = tuple(
            Dependency("${" + shell_variable(need) + "}", _is_array(planned, need))
            for need in job.task.needs
            if need not in complete
        )
        submission = replace(job.submission, after=after)
        command = " ".join(_shell_word(word) for word in submit_command(flavor, submission))
        lines.append(f"{shell_variable(job.task.id)}=$({command})")
    return "\n".join(lines) + "\n"


def _is_array(planned: list[PlannedJob], task_id: str) -> bool:
    return any(job.task.id == task_id and job.array for job in planned)


def now() -> str:
    """The time now, UTC, as ISO 8601 to the second (the job record's clock)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def read_record(run: Path | str) -> dict | None:
    """``RUN/jobs.json``, or None when nothing was submitted for this run."""
    path = Path(run) / JOBS_FILE
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise FmnistError(f"{path}: not valid JSON ({exc})") from exc


def submit_jobs(
    planned: list[PlannedJob],
    settings: SubmitSettings,
    previous: dict | None,
    progress: Callable[[str], None] = print,
    runner: Callable[[list[str]], str] | None = None,
) -> SubmitResult:
    """Submit the planned jobs in order, each after the jobs of the tasks it needs.

    Tasks whose outputs are complete get no job. With a ``previous`` record (--resume),
    a task whose job is still queued or running keeps it, unless a task it needs is
    being submitted again: then the old job (which waits for a job that failed) is
    cancelled and replaced.
    """
    runner = runner or (lambda command: run_command(command).stdout)
    run = Path(settings.run)
    old_jobs = (previous or {}).get("jobs", {})
    states = (
        query_states(settings.scheduler, [j["job_id"] for j in old_jobs.values()])
        if old_jobs
        else {}
    )
    record = {
        "settings": settings.to_dict(),
        "submitted": (previous or {}).get("submitted", []) + [now()],
        "order": [job.task.id for job in planned],  # DAG order (the JSON keys get sorted)
        "jobs": dict(old_jobs),
    }
    result = SubmitResult(record)
    current: dict[str, Dependency] = {}  # task id -> the job its dependents wait for
    for job in planned:
        task = job.task
        old = old_jobs.get(task.id)
        state = states.get(old["job_id"]) if old else None
        needs_resubmitted = any(result.actions.get(n) == "submitted" for n in task.needs)
        # The outputs decide. A step that declares none is complete only when its last
        # job is known to have exited 0: a deleted, cancelled or forgotten job is not.
        ended_well = state is not None and state.state == COMPLETED
        if task.complete() or (not task.outputs and ended_well):
            result.actions[task.id] = "complete"
            why = "outputs on disk" if task.outputs else f"job {old['job_id']} exited 0"
            progress(f"[complete]  {task.id} ({why})")
            continue
        if state and state.state in ACTIVE and not needs_resubmitted:
            result.actions[task.id] = "kept"
            current[task.id] = Dependency(old["job_id"], bool(old.get("array")))
            progress(f"[kept]      {task.id}: job {old['job_id']} is {state.state}")
            continue
        if state and state.state in (*ACTIVE, *STUCK):
            cancel_jobs(settings.scheduler, [old["job_id"]])
            why = "can never run" if state.state in STUCK else "waited for a job resubmitted now"
            progress(f"[cancelled] {task.id}: job {old['job_id']} {why}")
        after = tuple(current[n] for n in task.needs if n in current)
        submission = replace(job.submission, after=after)
        command = submit_command(settings.scheduler, submission)
        job_id = parse_job_id(settings.scheduler, runner(command))
        current[task.id] = Dependency(job_id, bool(job.array))
        result.actions[task.id] = "submitted"
        history = []
        if old:  # earlier jobs of this task, newest first
            history = [{k: v for k, v in old.items() if k != "history"}, *old.get("history", [])]
        record["jobs"][task.id] = {
            "job_id": job_id,
            "name": submission.name,
            "node_type": job.node_type,
            "array": job.array,
            "needs": list(task.needs),
            "after": [d.job_id for d in after],
            "outputs": [str(p.relative_to(run)) for p in task.outputs],
            "log": str(Path(submission.log).relative_to(run)),
            "command": command,
            "submitted_at": now(),
            "attempt": 1,
            "walltime": submission.walltime,
            "history": history,
        }
        # Written after every job: an interrupted submit still knows what it sent. Under
        # the lock the jobs take to hand a task over to its next attempt.
        with file_lock(run / JOBS_FILE):
            write_json_atomic(run / JOBS_FILE, record)
        waits = f" after {', '.join(d.job_id for d in after)}" if after else ""
        progress(f"[submitted] {task.id}: job {job_id}{waits}")
    with file_lock(run / JOBS_FILE):
        write_json_atomic(run / JOBS_FILE, record)
    return result


def submit_pipeline(
    pipeline: Pipeline,
    settings: SubmitSettings,
    dry_run: bool = False,
    resume: bool = False,
    progress: Callable[[str], None] = print,
) -> tuple[list[PlannedJob], SubmitResult | None, str]:
    """Plan the DAG for ``settings`` and submit it (or only render it, with ``dry_run``).

    The DAG and its job scripts are checked before the scheduler is asked anything.
    """
    # The one check of the names: given, or recorded by the submission --resume extends.
    catalog = load_node_types()
    check_names(settings.node_types, catalog)
    overrides = {
        **scalar_overrides(pipeline, settings.profile, os.environ),
        "node_types": settings.node_types,
    }
    tasks = expand(pipeline, settings.profile, settings.run, overrides)
    check_walltime_names(settings.walltimes, tasks)
    for task in tasks:
        _script(task)
    if settings.scheduler is None:
        settings.scheduler = detect_flavor()
    planned = plan_jobs(tasks, settings, catalog)
    complete = frozenset(task.id for task in tasks if task.complete())
    script = dry_run_script(planned, settings.scheduler, complete)
    if dry_run:
        return planned, None, script
    previous = read_record(settings.run)
    if previous and not resume:
        raise FmnistError(
            f"{Path(settings.run) / JOBS_FILE}: jobs were already submitted for this run; "
            "add --resume to submit what is incomplete, or choose another --out"
        )
    if resume and not previous:
        raise FmnistError(f"{Path(settings.run) / JOBS_FILE}: nothing submitted yet to resume")
    for warning in node_type_warnings(settings, catalog):
        progress(f"warning: {warning}")
    # Schedulers open the job's log before the job runs: its directory must exist.
    (Path(settings.run) / "logs").mkdir(parents=True, exist_ok=True)
    return planned, submit_jobs(planned, settings, previous, progress), script


def node_type_warnings(settings: SubmitSettings, catalog: dict[str, NodeType]) -> list[str]:
    """One line per requested node type that no node of the cluster offers.

    Empty when every type matches a node, or when the scheduler does not list its nodes.
    """
    nodes = list_nodes(settings.scheduler)
    if not nodes:
        return []
    warnings = []
    for name in settings.node_types:
        request = catalog[name].request(settings.scheduler)
        if not any(node_offers(node, settings.scheduler, catalog[name]) for node in nodes):
            warnings.append(
                f"node type {name!r} ({' '.join(request) or 'no request'}) matches no node "
                f"of this {settings.scheduler} cluster ({', '.join(n.name for n in nodes)}): "
                "its jobs will be refused or wait forever"
            )
    return warnings


def resolve_settings(
    scheduler: str | None,
    profile: str | None,
    node_types: str | None,
    out: Path | str | None,
    resume: bool,
    walltimes: tuple[str, ...] = (),
) -> SubmitSettings:
    """The settings of a submit call: what was given, else (``resume``) what the run's
    jobs.json recorded, else the defaults (detected flavor, quick, local, this spec).

    ``walltimes`` (``STEP=HH:MM:SS``, ``TASK=HH:MM:SS``) add to those recorded."""
    recorded: dict = {}
    if resume:
        recorded = (read_record(out or default_run_dir(profile)) or {}).get("settings", {})
    profile = profile or recorded.get("profile") or DEFAULT_PROFILE
    return SubmitSettings(
        scheduler=scheduler or recorded.get("scheduler"),  # else detected by submit_pipeline
        profile=profile,
        node_types=(
            split_names(node_types) if node_types else recorded.get("node_types") or ["local"]
        ),
        pipeline=recorded.get("pipeline") or str(pipeline_spec().resolve()),
        run=str(Path(out or default_run_dir(profile)).resolve()),
        walltimes={**recorded.get("walltimes", {}), **parse_walltime_overrides(walltimes)},
    )


def submit_summary(result: SubmitResult, settings: SubmitSettings) -> str:
    """One line on what a submit call did."""
    actions = list(result.actions.values())
    return (
        f"{actions.count('submitted')} job(s) submitted, {actions.count('kept')} kept, "
        f"{actions.count('complete')} task(s) already complete; "
        f"ids in {Path(settings.run) / JOBS_FILE}"
    )
