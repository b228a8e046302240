"""The pipeline DAG declared in ``jobs/pipeline.toml``, expanded into concrete tasks.

One declaration serves every executor: ``fmnist-batch run`` executes the tasks on this
machine (:mod:`fmnist.pipeline.executor`), ``fmnist-batch submit`` hands the same tasks
to a batch scheduler, whose jobs run them with ``fmnist-batch step``.
"""

from __future__ import annotations

import itertools
import shlex
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fmnist.io import FmnistError, RunLayout, read_toml
from fmnist.resources import pipeline_spec


@dataclass(frozen=True)
class Step:
    """A step of the DAG, possibly fanned out over profile lists (models, variants, ...)."""

    name: str
    command: str
    outputs: tuple[str, ...] = ()
    needs: tuple[str, ...] = ()
    for_each: dict[str, str] = field(default_factory=dict)  # placeholder -> profile list
    resources: dict = field(default_factory=dict)  # walltime, script, array: for schedulers


@dataclass(frozen=True)
class Profile:
    """Named settings: the lists steps fan out over, scalars, and extra args per step."""

    name: str
    description: str
    values: dict
    args: dict[str, str]
    # Extra needs of single tasks, on tasks expanded before them (of the same step too):
    # "train:backup1" = ["train:main"].
    needs: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Pipeline:
    """Steps in declaration order and the profiles they can run with."""

    steps: tuple[Step, ...]
    profiles: dict[str, Profile]
    source: Path

    def profile(self, name: str) -> Profile:
        if name not in self.profiles:
            raise FmnistError(
                f"unknown profile {name!r} in {self.source}; valid: {', '.join(self.profiles)}"
            )
        return self.profiles[name]


@dataclass(frozen=True)
class Task:
    """One concrete command of the DAG, e.g. ``train:main``."""

    id: str
    step: str
    args: tuple[str, ...]
    outputs: tuple[Path, ...]
    needs: tuple[str, ...]
    values: dict
    resources: dict
    # An array task's outputs element by element (index -> paths); () for a plain task.
    element_outputs: tuple[tuple[Path, ...], ...] = ()

    def complete(self, index: int | None = None) -> bool:
        """True when every declared output exists (a re-run skips the task).

        With ``index``, only array element ``index``'s own outputs count.
        """
        paths = self.outputs
        if index is not None and self.element_outputs:
            paths = self.element_outputs[index]
        return bool(paths) and all(path.exists() for path in paths)


def load_pipeline(path: Path | str | None = None) -> Pipeline:
    """Parse and check a pipeline spec."""
    path = Path(path) if path else pipeline_spec()
    raw = read_toml(path, "pipeline spec")
    steps = tuple(
        Step(
            name=s["name"],
            command=s["command"],
            outputs=tuple(s.get("outputs", ())),
            needs=tuple(s.get("needs", ())),
            for_each=dict(s.get("for_each", {})),
            resources=dict(s.get("resources", {})),
        )
        for s in raw.get("steps", [])
    )
    names = [s.name for s in steps]
    for step in steps:
        unknown = [n for n in step.needs if n not in names[: names.index(step.name)]]
        if unknown:
            raise FmnistError(
                f"{path}: step {step.name!r} needs {unknown}, which are not declared before it"
            )
    profiles = {}
    for name, body in raw.get("profiles", {}).items():
        body = dict(body)
        profiles[name] = Profile(
            name=name,
            description=body.pop("description", ""),
            args=dict(body.pop("args", {})),
            needs={k: list(v) for k, v in body.pop("needs", {}).items()},
            values=body,
        )
    return Pipeline(steps, profiles, path)


def _combinations(step: Step, values: dict) -> list[dict]:
    keys = list(step.for_each)
    lists = []
    for key in keys:
        source = step.for_each[key]
        if source not in values:
            raise FmnistError(f"step {step.name!r} fans out over {source!r}, not in the profile")
        lists.append(list(values[source]))
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*lists)]


def _task_id(step: str, combo: dict) -> str:
    return step + "".join(f":{value}" for value in combo.values())


# Placeholders an array step's outputs may use; each such output is one per element.
ELEMENT_PLACEHOLDERS = ("array_index", "array_size", "shard_marker")


def element_values(index: int, size: int) -> dict:
    """The element placeholders of element ``index`` of ``size``.

    ``shard_marker`` is the success marker a scoring shard writes last; its name belongs
    to :func:`fmnist.scoring.shards.marker_name`.
    """
    from fmnist.scoring.shards import marker_name  # pyarrow: only for array outputs

    return {"array_index": index, "array_size": size, "shard_marker": marker_name(index, size)}


def layout_values(scope: dict) -> dict:
    """Run-directory paths :class:`fmnist.io.RunLayout` names, for outputs to use.

    ``{benchmark_marker}``: the marker ``benchmark`` writes when every variant of
    ``{model}`` was measured on ``{node_type}``.
    """
    layout = RunLayout(Path())
    values = {}
    if "model" in scope and "node_type" in scope:
        marker = layout.benchmark_marker(str(scope["model"]), str(scope["node_type"]))
        values["benchmark_marker"] = marker.as_posix()
    return values


def _is_element_template(template: str) -> bool:
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    return bool(fields & set(ELEMENT_PLACEHOLDERS))


def _outputs(step: Step, run: Path, scope: dict, size: int | None):
    """A task's outputs, and element by element for an array task (see Task)."""
    shared = [o for o in step.outputs if not _is_element_template(o)]
    per_element = [o for o in step.outputs if _is_element_template(o)]
    if per_element and size is None:
        raise FmnistError(
            f"step {step.name!r}: outputs use {', '.join(ELEMENT_PLACEHOLDERS)} "
            "but the step is no array (resources.array)"
        )
    scope = {**layout_values(scope), **scope}
    common = tuple(Path(run) / o.format(**scope) for o in shared)
    if not per_element:
        return common, ()
    elements = tuple(
        common
        + tuple(Path(run) / o.format(**scope, **element_values(i, size)) for o in per_element)
        for i in range(size)
    )
    flat = common + tuple(p for element in elements for p in element[len(common) :])
    return flat, elements


def expand(
    pipeline: Pipeline, profile_name: str, run: Path | str, overrides: dict | None = None
) -> list[Task]:
    """Concrete tasks of the DAG for one profile and run directory, in dependency order.

    A task needs the instances of each needed step that agree with it on the
    placeholders they share (``evaluate:main`` needs ``train:main``), or all of them.
    """
    profile = pipeline.profile(profile_name)
    values = {**profile.values, **(overrides or {}), "run": str(run), "profile": profile_name}
    tasks: list[Task] = []
    by_step: dict[str, list[Task]] = {}
    for step in pipeline.steps:
        by_step[step.name] = []
        for combo in _combinations(step, values):
            scope = {k: v for k, v in values.items() if not isinstance(v, list)}
            scope.update(combo)
            scope.update(
                {
                    k: ",".join(map(str, v))
                    for k, v in values.items()
                    if isinstance(v, list) and k not in combo
                }
            )
            task_id = _task_id(step.name, combo)
            try:
                command = step.command.format(**scope)
                # Resources may use placeholders too (script = "pbs/train_{model}.sh").
                resources = {
                    k: v.format(**scope) if isinstance(v, str) else v
                    for k, v in step.resources.items()
                }
                size = _array_size(task_id, resources)
                outputs, element_outputs = _outputs(step, Path(run), scope, size)
            except KeyError as exc:
                raise FmnistError(f"step {step.name!r}: no value for placeholder {exc}") from exc
            # Args for one task ("train:backup1") come after the step's, so they win.
            # A step without for_each has its name as task id: its args count once.
            extra = " ".join(
                profile.args.get(key, "").format(**scope)
                for key in dict.fromkeys((step.name, task_id))
            )
            needs = []
            for needed in step.needs:
                for other in by_step[needed]:
                    shared = set(other.values) & set(combo)
                    if all(other.values[k] == combo[k] for k in shared):
                        needs.append(other.id)
            for needed in profile.needs.get(task_id, ()):
                if not any(t.id == needed for t in tasks):
                    raise FmnistError(
                        f"profile {profile_name!r}: {task_id} needs {needed!r}, "
                        "which is no task expanded before it"
                    )
                needs.append(needed)
            task = Task(
                id=task_id,
                step=step.name,
                args=tuple(shlex.split(command) + shlex.split(extra)),
                outputs=outputs,
                needs=tuple(needs),
                values=combo,
                resources=resources,
                element_outputs=element_outputs,
            )
            by_step[step.name].append(task)
            tasks.append(task)
    return tasks


def array_size(task: Task) -> int | None:
    """Elements of an array task (``resources.array``), None for a plain task.

    On a scheduler an array task is one array job; each element finds its index in the
    job environment (:mod:`fmnist.pipeline.jobenv`). The local executor runs the elements in turn
    with ``FMNIST_ARRAY_INDEX`` set, so both leave the same files.
    """
    return _array_size(task.id, task.resources)


def _array_size(task_id: str, resources: dict) -> int | None:
    size = resources.get("array")
    if size in (None, ""):
        return None
    try:
        size = int(size)
    except ValueError as exc:
        message = f"task {task_id}: resources.array must be a number, not {size!r}"
        raise FmnistError(message) from exc
    if size < 1:
        raise FmnistError(f"task {task_id}: resources.array must be at least 1, not {size}")
    return size


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
