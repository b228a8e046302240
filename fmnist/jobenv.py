"""What batch job this process belongs to: scheduler, job id, array index, node type.

Read from the environment each scheduler gives its jobs: Torque (``PBS_JOBID``,
``PBS_ARRAYID``), PBS Pro / OpenPBS (``PBS_JOBID``, ``PBS_ARRAY_INDEX``), Slurm
(``SLURM_JOB_ID``, ``SLURM_ARRAY_TASK_ID``, ...) and the local executor of
``fmnist-batch run`` (``FMNIST_EXECUTOR=local``). Manifests, timings and sharded scoring
use it to say which job produced what, on which node type, for which array index.

``FMNIST_NODE_TYPE`` (set by ``fmnist-batch submit`` for each job) names the node type
when the scheduler does not tell; ``FMNIST_ARRAY_INDEX`` is the array index outside a
scheduler (the local executor sets it for each element of an array step).

This module owns the array-index rule: a scheduler's index minus ``FMNIST_ARRAY_BASE``
(default 0; set 1 for arrays submitted as 1..N), the local executor's index as it is.
Sharded scoring and ``fmnist-batch step`` both read it here.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from fmnist.io import FmnistError, write_json_atomic
from fmnist.system import git_revision, machine_info

DEFAULT_NODE_TYPE = "local"
KNOWN_NODE_TYPES = ("skl", "clx", "icx", "spr", "local")


@dataclass(frozen=True)
class JobEnvironment:
    """The batch job around this process (``scheduler`` is ``none`` in a plain shell)."""

    scheduler: str  # torque | pbspro | slurm | local | none
    job_id: str  # the scheduler's id; local-<task> or <host>-<pid> outside a scheduler
    array_job_id: str | None  # the id of the whole array when this is one element
    array_index: int | None
    job_name: str | None
    submit_dir: str | None
    node_type: str
    task_id: str | None  # the pipeline task (train:main) when run by run/submit/step
    host: str

    @property
    def safe_job_id(self) -> str:
        """The job id usable as a file name (``123[4].server`` -> ``123-4-.server``)."""
        return re.sub(r"[^A-Za-z0-9._-]", "-", self.job_id)

    def to_dict(self) -> dict:
        return asdict(self)


ARRAY_BASE_VARIABLE = "FMNIST_ARRAY_BASE"


def _index(value: str | None, name: str, base: str = "0") -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value) - int(base)
    except ValueError as exc:
        raise FmnistError(
            f"{name}={value!r} ({ARRAY_BASE_VARIABLE}={base!r}): an array index must be an integer"
        ) from exc


def _node_type_from_constraint(constraint: str | None, known: tuple[str, ...]) -> str | None:
    # Slurm's constraint is an expression (spr&avx512, [icx|spr]): pick the node-type name.
    for word in re.split(r"[^A-Za-z0-9_-]+", constraint or ""):
        if word in known:
            return word
    return None


def scheduler_of(env: Mapping[str, str]) -> str:
    """Which scheduler started this process, judged from its environment variables."""
    if env.get("SLURM_JOB_ID"):
        return "slurm"
    if env.get("PBS_JOBID"):
        # Both PBS families set PBS_JOBID; only PBS Pro has PBS_ARRAY_INDEX / PBS_JOBDIR,
        # only Torque has PBS_ARRAYID / PBS_NUM_PPN and a TORQUE- version string.
        if "PBS_ARRAY_INDEX" in env or "PBS_JOBDIR" in env:
            return "pbspro"
        return "torque"
    if env.get("FMNIST_EXECUTOR") == "local":
        return "local"
    return "none"


def parse_job_environment(
    env: Mapping[str, str],
    host: str | None = None,
    pid: int | None = None,
    known_node_types: tuple[str, ...] = KNOWN_NODE_TYPES,
) -> JobEnvironment:
    """The job environment described by ``env`` (a pure function of its arguments)."""
    host = host or socket.gethostname()
    pid = os.getpid() if pid is None else pid
    scheduler = scheduler_of(env)
    # Schedulers number array elements as submitted; the local executor always from 0.
    base = env.get(ARRAY_BASE_VARIABLE) or "0"
    # The element our own executor (``run``, or ``step`` walking an array's elements in a
    # plain job) started: the most specific index there is.
    element = _index(env.get("FMNIST_ARRAY_INDEX"), "FMNIST_ARRAY_INDEX")
    task_id = env.get("FMNIST_TASK_ID") or None
    node_type = env.get("FMNIST_NODE_TYPE") or None
    array_job_id = None
    if scheduler == "slurm":
        job_id = env["SLURM_JOB_ID"]
        scheduler_index = _index(env.get("SLURM_ARRAY_TASK_ID"), "SLURM_ARRAY_TASK_ID", base)
        array_job_id = env.get("SLURM_ARRAY_JOB_ID") if scheduler_index is not None else None
        array_index = element if element is not None else scheduler_index
        job_name = env.get("SLURM_JOB_NAME")
        submit_dir = env.get("SLURM_SUBMIT_DIR")
        node_type = (
            _node_type_from_constraint(env.get("SLURM_JOB_CONSTRAINTS"), known_node_types)
            or node_type
        )
    elif scheduler in ("torque", "pbspro"):
        job_id = env["PBS_JOBID"]
        name = "PBS_ARRAYID" if scheduler == "torque" else "PBS_ARRAY_INDEX"
        scheduler_index = _index(env.get(name), name, base)
        if scheduler_index is not None:
            # Element 123[4].server belongs to array 123[].server.
            array_job_id = re.sub(r"\[\d+\]", "[]", job_id)
        array_index = element if element is not None else scheduler_index
        job_name = env.get("PBS_JOBNAME")
        submit_dir = env.get("PBS_O_WORKDIR")
    else:
        array_index = element
        job_name = task_id
        submit_dir = None
        if task_id:
            job_id = "local-" + task_id.replace(":", "-")
            if array_index is not None:
                job_id += f"-{array_index}"
        else:
            job_id = f"{host}-{pid}"
    return JobEnvironment(
        scheduler=scheduler,
        job_id=job_id,
        array_job_id=array_job_id,
        array_index=array_index,
        job_name=job_name,
        submit_dir=submit_dir,
        node_type=node_type or DEFAULT_NODE_TYPE,
        task_id=task_id,
        host=host,
    )


def current() -> JobEnvironment:
    """The job environment of this process."""
    from fmnist.nodetypes import node_type_names

    try:
        known = node_type_names()
    except FmnistError:
        known = KNOWN_NODE_TYPES  # a broken catalog must not stop a job from recording itself
    return parse_job_environment(os.environ, known_node_types=known)


def require_array_index(env: Mapping[str, str]) -> int:
    """The 0-based array index of the job ``env`` describes; an error outside an array job."""
    index = parse_job_environment(env, host="-", pid=0).array_index
    if index is None:
        raise FmnistError(
            "--shard auto/N needs an array index (PBS_ARRAYID, PBS_ARRAY_INDEX, "
            "SLURM_ARRAY_TASK_ID or FMNIST_ARRAY_INDEX): run it as an array job, "
            "or give --shard I/N"
        )
    return index


def _manifest_key(job: JobEnvironment) -> str:
    return job.safe_job_id + (f".{job.array_index}" if job.array_index is not None else "")


def job_recorded(run: Path | str) -> bool:
    """True when this process's job already has its entry in the run's manifest."""
    from fmnist.manifest import read_manifest

    return _manifest_key(current()) in read_manifest(run).jobs


def record_job(run: Path | str, command: str, task_id: str | None = None) -> bool:
    """Record in the run's manifest which job ran ``command`` there, where and when.

    Every job that writes into a run calls this once at its end (train, optimize,
    evaluate, benchmark, score, verify --merge, report into the run; ``fmnist-batch
    step`` for a command that does not, such as ``data to-csv``): ``manifest["jobs"]``
    then says which scheduler job (or local task) produced what, on which node type and
    host, and ``manifest["machine"]`` describes each host with its libraries and code
    revision. ``task_id`` names the pipeline task where the environment does not.

    The job's outputs are complete when this is called: a record that cannot be written
    (a read-only or full run directory) is a warning on stderr, not a failed job. True
    when the record was written.
    """
    from fmnist.manifest import JobRecord, MachineRecord, record_job_entry

    job = current()
    if task_id and not job.task_id:
        job = replace(job, task_id=task_id)
    info = machine_info().to_dict()
    info["git_revision"] = git_revision()
    record = JobRecord(
        **job.to_dict(),
        command=command,
        # Per job too: a host's machine entry keeps only the last job's revision.
        git_revision=info["git_revision"],
        argv=sys.argv[1:],
        finished=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    try:
        record_job_entry(run, _manifest_key(job), record, MachineRecord.from_dict(info))
    except (OSError, FmnistError) as exc:
        from fmnist.faults import describe

        print(
            f"warning: {describe(exc)}; the outputs are complete, the job record was not written",
            file=sys.stderr,
        )
        return False
    return True


def save_job_environment(job: JobEnvironment, directory: Path | str) -> Path:
    """Write ``job`` as JSON to ``DIR/<task>[.<array index>].json`` (or ``<job id>``)."""
    stem = (job.task_id or job.safe_job_id).replace(":", "__")
    if job.array_index is not None:
        stem += f".{job.array_index}"
    path = Path(directory) / f"{stem}.json"
    write_json_atomic(path, job.to_dict())
    return path
