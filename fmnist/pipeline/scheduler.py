"""Batch-scheduler flavors: the exact qsub/sbatch command lines, job ids and job states.

Three flavors speak three dialects of the same ideas:

============  ===========================  ===========================  =======================
              Torque (Intel DevCloud)      PBS Pro / OpenPBS            Slurm
============  ===========================  ===========================  =======================
submit        qsub -N name -l walltime=..  qsub -N name -l walltime=..  sbatch --job-name=...
environment   -V -v FMNIST_RUN=...         -V -v FMNIST_RUN=...         --export=ALL,...
array         -t 0-3 (id ``12[].srv``)     -J 0-3 (id ``12[].srv``)     --array=0-3
after         -W depend=afterok:ID[:ID]    -W depend=afterok:ID[:ID]    --dependency=afterok:ID
after array   afterokarray:ID              afterok:ID                   afterok:ID
state         qstat -f                     qstat -x -f                  scontrol show job, sacct
============  ===========================  ===========================  =======================

Everything here except :func:`run_command` and the query/cancel edges is a pure function
of its arguments, so the dialects are unit-tested without a scheduler.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field

from fmnist.io import FmnistError
from fmnist.nodetypes import FLAVORS

# Job states, normalised across flavors.
QUEUED, HELD, RUNNING = "queued", "held", "running"
COMPLETED, FAILED, CANCELLED, FINISHED, UNKNOWN, BLOCKED = (
    "completed",
    "failed",
    "cancelled",
    "finished",  # ended, exit status not reported (Slurm's qstat wrapper): outputs decide
    "unknown",  # the scheduler no longer knows the job
    "blocked",  # queued behind a job that failed: it will never start
)
ACTIVE = (QUEUED, HELD, RUNNING)


@dataclass(frozen=True)
class Dependency:
    """A job this one waits for, and whether it is an array job (Torque says so)."""

    job_id: str
    array: bool = False


@dataclass(frozen=True)
class Submission:
    """Everything one qsub/sbatch call needs; flavor-neutral."""

    name: str
    script: str
    walltime: str
    request: tuple[str, ...]  # the node type's arguments for this flavor
    env: dict[str, str]
    log: str  # the job's joined stdout/stderr; for arrays see array_log_path
    array: int | None = None
    after: tuple[Dependency, ...] = ()


@dataclass(frozen=True)
class JobState:
    """What the scheduler says of a job (an array job: of all its elements together)."""

    state: str
    detail: str = ""  # the scheduler's own word: PENDING (Dependency), C, exit status...
    elements: dict[str, str] = field(default_factory=dict)  # array index -> state


def _check_env(env: dict[str, str]) -> None:
    for key, value in env.items():
        # Both -v and --export split on commas; a value with one would be cut silently.
        if "," in value or "\n" in value:
            raise FmnistError(f"{key}={value!r}: values passed to jobs cannot contain commas")


def array_log_path(flavor: str, log: str) -> str:
    """The log path of an array job's elements, with the flavor's index placeholder.

    ``logs/score.log`` -> ``logs/score.%a.log`` (Slurm), ``logs/score.^array_index^.log``
    (PBS Pro); Torque appends ``-<index>`` to the path itself.
    """
    stem = log[: -len(".log")] if log.endswith(".log") else log
    if flavor == "slurm":
        return f"{stem}.%a.log"
    if flavor == "pbspro":
        return f"{stem}.^array_index^.log"
    return log


def _pbs_depend(flavor: str, after: Iterable[Dependency]) -> list[str]:
    plain = [d.job_id for d in after if flavor == "pbspro" or not d.array]
    arrays = [d.job_id for d in after if flavor == "torque" and d.array]
    clauses = []
    if plain:
        clauses.append("afterok:" + ":".join(plain))
    clauses.extend(f"afterokarray:{job_id}" for job_id in arrays)
    return ["-W", "depend=" + ",".join(clauses)] if clauses else []


def submit_command(flavor: str, job: Submission) -> list[str]:
    """The exact command line that submits ``job`` with ``flavor``'s dialect."""
    _check_env(job.env)
    exported = ",".join(f"{k}={v}" for k, v in job.env.items())
    if flavor in ("torque", "pbspro"):
        command = ["qsub", "-N", job.name, "-l", f"walltime={job.walltime}", *job.request]
        log = array_log_path(flavor, job.log) if job.array else job.log
        command += ["-j", "oe", "-o", log, "-V"]
        if exported:
            command += ["-v", exported]
        if job.array:
            command += ["-t" if flavor == "torque" else "-J", f"0-{job.array - 1}"]
        command += _pbs_depend(flavor, job.after)
        return [*command, job.script]
    if flavor == "slurm":
        log = array_log_path(flavor, job.log) if job.array else job.log
        command = [
            "sbatch",
            "--parsable",
            f"--job-name={job.name}",
            f"--time={job.walltime}",
            *job.request,
            f"--output={log}",
            "--export=ALL" + ("," + exported if exported else ""),
        ]
        if job.array:
            command.append(f"--array=0-{job.array - 1}")
        if job.after:
            command.append("--dependency=afterok:" + ":".join(d.job_id for d in job.after))
        return [*command, job.script]
    raise FmnistError(f"unknown scheduler {flavor!r}; valid: {', '.join(FLAVORS)}")


def parse_job_id(flavor: str, stdout: str) -> str:
    """The job id a submit command printed (``12.server``, ``12[].server``, ``12``)."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise FmnistError(f"{flavor}: the submit command printed no job id")
    last = lines[-1]
    if flavor == "slurm":
        job_id = last.split(";")[0]  # --parsable: id[;cluster]
        if not job_id.isdigit():
            raise FmnistError(f"sbatch printed {last!r}, not a job id")
        return job_id
    if not re.match(r"^\d+(\[\])?(\.[\w.-]+)?$", last):
        raise FmnistError(f"qsub printed {last!r}, not a job id")
    return last


# --------------------------------------------------------------------------- states

_SLURM_STATES = {
    "PENDING": QUEUED,
    "REQUEUED": QUEUED,
    "REQUEUE_HOLD": HELD,
    "SUSPENDED": HELD,
    "CONFIGURING": RUNNING,
    "RUNNING": RUNNING,
    "COMPLETING": RUNNING,
    "STAGE_OUT": RUNNING,
    "COMPLETED": COMPLETED,
    "FAILED": FAILED,
    "TIMEOUT": FAILED,
    "NODE_FAIL": FAILED,
    "OUT_OF_MEMORY": FAILED,
    "BOOT_FAIL": FAILED,
    "DEADLINE": FAILED,
    "CANCELLED": CANCELLED,
    "PREEMPTED": CANCELLED,
    "REVOKED": CANCELLED,
}

_PBS_STATES = {
    "Q": QUEUED,
    "W": QUEUED,
    "T": QUEUED,
    "S": HELD,
    "H": HELD,
    "U": HELD,
    "R": RUNNING,
    "E": RUNNING,
    "B": RUNNING,  # PBS Pro: an array job whose elements have begun
    "M": UNKNOWN,  # moved to another server
}


def combine_states(states: Iterable[str]) -> str:
    """One state for an array job from its elements' states."""
    states = list(states)
    for state in (RUNNING, QUEUED, HELD, BLOCKED, FAILED, CANCELLED, FINISHED, UNKNOWN):
        if state in states:
            return state
    return COMPLETED if states else UNKNOWN


def parse_scontrol_jobs(text: str) -> dict[str, JobState]:
    """States from ``scontrol show job -o`` (one job or array element a line), by job id.

    Array elements are folded into their array job's id.
    """
    elements: dict[str, dict[str, tuple[str, str]]] = {}
    for line in text.splitlines():
        fields = dict(re.findall(r"(\w+)=(\S*)", line))
        if "JobId" not in fields or "JobState" not in fields:
            continue
        raw, reason = fields["JobState"], fields.get("Reason", "None")
        detail = raw if reason == "None" else f"{raw} ({reason})"
        state = _SLURM_STATES.get(raw, UNKNOWN)
        if state == QUEUED and reason == "DependencyNeverSatisfied":
            state = BLOCKED  # clusters without kill_invalid_depend leave these queued
        key = fields.get("ArrayJobId") or fields["JobId"]
        index = fields.get("ArrayTaskId") or ""
        elements.setdefault(key, {})[index] = (state, detail)
    return {key: _fold(parts) for key, parts in elements.items()}


def parse_sacct(text: str) -> dict[str, JobState]:
    """States from ``sacct -n -P -X -o JobID,State``: ``12|COMPLETED``, ``13_0|FAILED``."""
    elements: dict[str, dict[str, tuple[str, str]]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 2 or not parts[0]:
            continue
        job, _, index = parts[0].partition("_")
        raw = parts[1].split()[0]  # "CANCELLED by 0"
        elements.setdefault(job, {})[index] = (_SLURM_STATES.get(raw, UNKNOWN), parts[1])
    return {key: _fold(parts) for key, parts in elements.items()}


def parse_qstat_full(text: str) -> dict[str, JobState]:
    """States from Torque's ``qstat -f`` or PBS Pro's ``qstat -x -f``, by job id."""
    jobs: dict[str, JobState] = {}
    for block in re.split(r"\n(?=Job Id:)", text.strip()):
        match = re.match(r"Job Id:\s*(\S+)", block)
        if not match:
            continue
        attributes = {
            key.lower(): value.strip()
            for key, value in re.findall(r"^\s+([\w.]+)\s*=\s*(.*)$", block, re.MULTILINE)
        }
        letter = attributes.get("job_state", "")
        exit_status = attributes.get("exit_status")
        if letter in ("C", "F", "X"):
            if exit_status is None:
                state = FINISHED
            else:
                state = COMPLETED if exit_status.strip() == "0" else FAILED
        else:
            state = _PBS_STATES.get(letter, UNKNOWN)
        detail = letter + (f" exit {exit_status}" if exit_status is not None else "")
        jobs[match.group(1)] = JobState(state, detail)
    return jobs


def _fold(parts: dict[str, tuple[str, str]]) -> JobState:
    if list(parts) == [""]:
        state, detail = parts[""]
        return JobState(state, detail)
    state = combine_states(state for state, _ in parts.values())
    details = sorted({detail for _, detail in parts.values()})
    return JobState(state, ", ".join(details), {k: s for k, (s, _) in parts.items()})


# --------------------------------------------------------------------------- edges


def run_command(command: list[str], check: bool = True) -> subprocess.CompletedProcess:
    """Run a scheduler command; a missing program or a failure is a one-line FmnistError."""
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    except FileNotFoundError as exc:
        raise FmnistError(f"{command[0]}: not found (is this a {command[0]} cluster?)") from exc
    if check and result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        raise FmnistError(
            f"{command[0]} failed (exit {result.returncode}): "
            + (message[-1] if message else "no message")
        )
    return result


def query_states(flavor: str, job_ids: list[str]) -> dict[str, JobState]:
    """What the scheduler knows of ``job_ids``; ids it has forgotten are left out."""
    if not job_ids:
        return {}
    if flavor == "slurm":
        # scontrol knows queued, running and recently finished jobs (MinJobAge) even
        # without accounting; sacct answers for older ones where accounting is on.
        states = parse_scontrol_jobs(run_command(["scontrol", "show", "job", "-o"], False).stdout)
        missing = [job_id for job_id in job_ids if job_id not in states]
        if missing and shutil.which("sacct"):
            result = run_command(
                ["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(missing)], False
            )
            if result.returncode == 0:
                states.update(parse_sacct(result.stdout))
        return {job_id: states[job_id] for job_id in job_ids if job_id in states}
    command = ["qstat", "-x", "-f"] if flavor == "pbspro" else ["qstat", "-f"]
    states = parse_qstat_full(run_command([*command, *job_ids], False).stdout)
    # The wrapper's and some servers' qstat print the id without the server suffix.
    by_number = {job_id.split(".")[0]: state for job_id, state in states.items()}
    found = {}
    for job_id in job_ids:
        state = states.get(job_id) or by_number.get(job_id.split(".")[0])
        if state:
            found[job_id] = state
    return found


def cancel_jobs(flavor: str, job_ids: list[str]) -> None:
    """Cancel jobs (qdel / scancel)."""
    if job_ids:
        run_command(["scancel" if flavor == "slurm" else "qdel", *job_ids])


def detect_flavor() -> str:
    """The scheduler of this machine: Slurm when sbatch exists, else Torque or PBS Pro."""
    if shutil.which("sbatch"):
        return "slurm"
    if shutil.which("qsub"):
        result = run_command(["qstat", "--version"], check=False)
        text = (result.stdout + result.stderr).lower()
        return "pbspro" if "pbs_version" in text else "torque"
    raise FmnistError("no scheduler found (neither sbatch nor qsub on PATH); use `run` instead")
