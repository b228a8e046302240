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
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from fmnist.io import FmnistError
from fmnist.pipeline import Pipeline, Task, array_size, cli_command, expand


@dataclass(frozen=True)
class StepSelection:
    """Which step, which placeholder values are pinned, which profile scalars are set."""

    step: str
    pins: dict[str, str]  # placeholder -> value (model -> main)
    scalars: dict[str, str]  # profile scalar -> value (shards -> 8)


def env_name(key: str) -> str:
    """The variable that sets a placeholder or profile value: ``FMNIST_NODE_TYPE``."""
    return "FMNIST_" + key.upper()


def scalar_overrides(
    pipeline: Pipeline, profile_name: str, environ: Mapping[str, str]
) -> dict[str, str]:
    """Profile scalars set by ``FMNIST_<NAME>`` variables (``FMNIST_SHARDS=8``).

    ``run``, ``submit`` and every job read them the same way, so an array job's size and
    the shard count its elements see always agree.
    """
    profile = pipeline.profile(profile_name)
    return {
        key: environ[env_name(key)]
        for key, value in profile.values.items()
        if not isinstance(value, list) and environ.get(env_name(key))
    }


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


def _element_indices(task: Task, index_in_job: int | None) -> list[int | None]:
    size = array_size(task)
    if size is None:
        return [None]
    if index_in_job is not None:
        # One element of an array job: the scheduler chose the index.
        if not 0 <= index_in_job < size:
            raise FmnistError(f"{task.id}: array index {index_in_job} outside 0..{size - 1}")
        return [index_in_job]
    return list(range(size))  # outside an array job: every element in turn, like `run`


def run_tasks(
    tasks: list[Task],
    environ: Mapping[str, str],
    force: bool = False,
    progress: Callable[[str], None] = print,
) -> None:
    """Run each task's command in turn, output inherited (it lands in the job's log).

    A task whose outputs are complete is skipped unless ``force``; the first failure
    stops with an error naming the task and its exit status.
    """
    from fmnist.jobenv import parse_job_environment

    index_in_job = parse_job_environment(environ).array_index
    for task in tasks:
        if not force and task.complete():
            progress(f"[skip]    {task.id} (outputs complete)")
            continue
        for index in _element_indices(task, index_in_job):
            env = {**environ, "FMNIST_TASK_ID": task.id}
            label = task.id
            if index is not None:
                env["FMNIST_ARRAY_INDEX"] = str(index)
                label += f"[{index}]"
            progress(f"[start]   {label}: fmnist-batch {shlex.join(task.args)}")
            result = subprocess.run(cli_command(task.args), env=env)
            if result.returncode != 0:
                raise FmnistError(f"{label} failed with exit status {result.returncode}")
            progress(f"[done]    {label}")
