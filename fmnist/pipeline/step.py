"""``fmnist-batch step``: run one task of the pipeline DAG, the way a job script asks for it.

The job scripts under ``pbs/`` hold no logic: each names a step (``train:main``,
``evaluate``) and this module finds the task(s) in ``jobs/pipeline.toml`` with the
profile's arguments, exactly as ``fmnist-batch run`` would run them. Which instance of
a fanned-out step to run comes from the task id (``train:main``) or from
``FMNIST_<PLACEHOLDER>`` variables (``FMNIST_MODEL=main``, ``FMNIST_NODE_TYPE=spr``);
``FMNIST_<NAME>`` also sets a scalar of the profile (``FMNIST_SHARDS=8``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from fmnist.io import FmnistError, default_run_dir
from fmnist.jobenv import job_recorded, parse_job_environment, record_job
from fmnist.nodetypes import FLAVORS
from fmnist.pipeline.executor import run_job_tasks
from fmnist.pipeline.spec import Pipeline, Task, env_name, expand, load_pipeline, scalar_overrides


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
    """``fmnist-batch step``: run the task(s) ``selector`` and the environment pick."""
    run = run or default_run_dir(profile)
    tasks = select_tasks(load_pipeline(), profile, run, selector, environ)
    ran = run_job_tasks(tasks, environ, force=force, progress=progress)
    # Every scheduler job records itself in the run's manifest; most commands do it
    # themselves, this covers those that do not (data to-csv).
    job = parse_job_environment(environ)
    if ran and job.scheduler in FLAVORS and not job_recorded(run):
        record_job(run, f"step {selector}", task_id=ran[-1])
