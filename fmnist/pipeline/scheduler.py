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
file mode     -W umask=022                 -W umask=022                 the submitter's umask
state         qstat -f -t                  qstat -x -f -t               scontrol show job, sacct
parent fails  dependents deleted (C 271)   dependents deleted (F)       cancelled / pending
never runs    qsub refuses (exit 190)      Q, "Can Never Run" comment   sbatch refuses, or
                                                                        BadConstraints
============  ===========================  ===========================  =======================

Everything here except :func:`run_command` and the query/cancel edges is a pure function
of its arguments, so the dialects are unit-tested without a scheduler.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass, field

from fmnist.io import FmnistError
from fmnist.pipeline.attempts import DONE, classify_pbs, classify_slurm
from fmnist.pipeline.nodetypes import FLAVORS

# Job states, normalised across flavors.
QUEUED, WAITING, HELD, RUNNING = (
    "queued",
    "waiting",  # held by the scheduler until the jobs it depends on end well
    "held",  # held by a user or an administrator
    "running",
)
COMPLETED, FAILED, CANCELLED, FINISHED, UNKNOWN, BLOCKED, UNRUNNABLE = (
    "completed",
    "failed",
    "cancelled",  # deleted or cancelled; deleted before it ran when a job it needs failed
    "finished",  # ended, exit status not reported (Slurm's qstat wrapper): outputs decide
    "unknown",  # the scheduler no longer knows the job
    "blocked",  # queued behind a job that failed: it will never start
    "unrunnable",  # queued, but no node can ever satisfy its request
)
ACTIVE = (QUEUED, WAITING, HELD, RUNNING)
# Still in the queue, but it will never start: resubmitting replaces these.
STUCK = (BLOCKED, UNRUNNABLE)


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
    umask: str | None = None  # the mode mask of the job's files (PBS: -W umask=)
    warning: int | None = None  # seconds: Slurm signals the job this long before its walltime


@dataclass(frozen=True)
class JobState:
    """What the scheduler says of a job (an array job: of all its elements together)."""

    state: str
    detail: str = ""  # the scheduler's own word: PENDING (Dependency), C, exit status...
    elements: dict[str, str] = field(default_factory=dict)  # array index -> state
    cause: str = ""  # how it ended (fmnist.pipeline.attempts), once it has ended


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
    # Torque holds a plain afterok on an array id forever: arrays need afterokarray.
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
        if job.umask:
            # PBS jobs otherwise write their logs (and, on PBS Pro, every file) with 077.
            command += ["-W", f"umask={job.umask}"]
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
        if job.warning:
            # B: the batch shell, which is `fmnist-batch step` (the scripts exec it). USR1,
            # not TERM: Slurm may send it up to a minute early, and a TERM then would
            # look like scancel's.
            command.append(f"--signal=B:USR1@{job.warning}")
        if job.array:
            command.append(f"--array=0-{job.array - 1}")
        if job.after:
            command.append("--dependency=afterok:" + ":".join(d.job_id for d in job.after))
        return [*command, job.script]
    raise FmnistError(f"unknown scheduler {flavor!r}; valid: {', '.join(FLAVORS)}")


def depend_command(flavor: str, job_id: str, after: tuple[Dependency, ...]) -> list[str]:
    """The command that makes queued job ``job_id`` wait for ``after`` instead.

    The next attempt of a task adds its job to its dependents' lists this way, before the
    attempt that hands over exits 0 (PBS Pro deletes a dependent when the job it was
    submitted after fails, even once its list no longer names that job).
    """
    if not after:
        raise FmnistError(f"{job_id}: a dependency update needs at least one job")
    if flavor == "slurm":
        ids = ":".join(d.job_id for d in after)
        return ["scontrol", "update", f"JobId={job_id}", f"Dependency=afterok:{ids}"]
    if flavor in ("torque", "pbspro"):
        return ["qalter", *_pbs_depend(flavor, after), job_id]
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
    order = (RUNNING, QUEUED, WAITING, HELD, UNRUNNABLE, BLOCKED, FAILED, CANCELLED)
    for state in (*order, FINISHED, UNKNOWN):
        if state in states:
            return state
    return COMPLETED if states else UNKNOWN


# Slurm's reasons for a pending job that no node will ever run as it is.
_SLURM_NEVER = (
    "BadConstraints",
    "PartitionConfig",
    "PartitionNodeLimit",
    "PartitionTimeLimit",
    "ReqNodeNotAvail",
    "InvalidAccount",
    "InvalidQOS",
)


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
        word = reason.split(",")[0]  # ReqNodeNotAvail,_UnavailableNodes:vm
        if state == QUEUED:
            if word == "DependencyNeverSatisfied":
                state = BLOCKED  # clusters without kill_invalid_depend leave these queued
            elif word == "Dependency":
                state = WAITING
            elif word in _SLURM_NEVER:
                state = UNRUNNABLE
        cause = ""
        if state in (COMPLETED, FAILED, CANCELLED):
            cause = classify_slurm(raw, fields.get("ExitCode", "")).cause
        key = fields.get("ArrayJobId") or fields["JobId"]
        index = fields.get("ArrayTaskId") or ""
        elements.setdefault(key, {})[index] = (state, detail, cause)
    return {key: _fold(parts) for key, parts in elements.items()}


def parse_sacct(text: str) -> dict[str, JobState]:
    """States from ``sacct -n -P -X -o JobID,State,ExitCode``: ``12|COMPLETED|0:0``."""
    elements: dict[str, dict[str, tuple[str, str, str]]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 2 or not parts[0]:
            continue
        job, _, index = parts[0].partition("_")
        raw = parts[1].split()[0]  # "CANCELLED by 0"
        state = _SLURM_STATES.get(raw, UNKNOWN)
        cause = ""
        if state in (COMPLETED, FAILED, CANCELLED):
            cause = classify_slurm(raw, parts[2] if len(parts) > 2 else "").cause
        elements.setdefault(job, {})[index] = (state, parts[1], cause)
    return {key: _fold(parts) for key, parts in elements.items()}


def parse_qstat_attributes(text: str) -> dict[str, dict[str, str]]:
    """``qstat -f`` blocks as job id -> attributes (names lower-cased).

    Both PBS families wrap long values onto lines that start with a tab and carry no
    ``name =``; such a line continues the value above it.
    """
    jobs: dict[str, dict[str, str]] = {}
    for block in re.split(r"\n(?=Job Id:)", text.strip()):
        match = re.match(r"Job Id:\s*(\S+)", block)
        if not match:
            continue
        attributes: dict[str, str] = {}
        last = None
        for line in block.splitlines()[1:]:
            pair = re.match(r"^\s+([\w.]+)\s*=\s?(.*)$", line)
            if pair:
                last = pair.group(1).lower()
                attributes[last] = pair.group(2).rstrip()
            elif last and line.startswith("\t"):
                attributes[last] += line.strip()
        jobs[match.group(1)] = attributes
    return jobs


def _waits_for_dependency(attributes: dict[str, str]) -> bool:
    # Only a system hold ("s") on a job with an after* dependency: the scheduler releases
    # it when the jobs it needs end well. A user's or operator's hold ("u", "o") stays.
    hold = attributes.get("hold_types", "n")
    return hold == "s" and "after" in attributes.get("depend", "")


def pbs_state(flavor: str, attributes: dict[str, str]) -> JobState:
    """One job's state from its ``qstat -f`` attributes (Torque, PBS Pro, Slurm's wrapper)."""
    letter = attributes.get("job_state", "")
    exit_status = attributes.get("exit_status")
    comment = attributes.get("comment", "")
    detail = letter + (f" exit {exit_status}" if exit_status is not None else "")
    if "deleted" in comment.lower() and letter in ("C", "F", "X"):
        # Torque: "Job deleted as result of dependency on job 3.srv", C with exit 271.
        return JobState(CANCELLED, f"{detail}: {comment}", cause=classify_pbs(flavor, None).cause)
    if "deleted" in comment.lower() and letter in ("H", "Q", "W"):
        # Torque 6.1 can leave a job it deleted for its dependency in the queue, held for
        # good ("deleted because its dependency of array 67[].srv can never be satisfied").
        return JobState(BLOCKED, f"{detail}: {comment}")
    if letter in ("C", "F", "X"):
        if exit_status is None:
            if flavor == "pbspro":
                # PBS Pro deletes an afterok dependent of a failed job: it ends F with no
                # exit status, never having run (qdel of a queued job looks the same).
                cause = classify_pbs(flavor, None).cause
                return JobState(CANCELLED, f"{detail}: deleted before it ran", cause=cause)
            return JobState(FINISHED, detail)  # Slurm's qstat wrapper reports none
        state = COMPLETED if exit_status.strip() == "0" else FAILED
        number = int(exit_status) if exit_status.strip().lstrip("-").isdigit() else 1
        return JobState(state, detail, cause=classify_pbs(flavor, number).cause)
    state = _PBS_STATES.get(letter, UNKNOWN)
    if letter == "H" and _waits_for_dependency(attributes):
        state = WAITING
        detail = f"H (waits for {attributes['depend']})"
    elif letter == "Q" and comment.startswith("Can Never Run"):
        state = UNRUNNABLE  # PBS Pro keeps a job no node can satisfy queued forever
    if comment and state in (QUEUED, HELD, UNRUNNABLE):
        detail = f"{detail}: {comment}"
    return JobState(state, detail)


_ELEMENT = re.compile(r"^(\d+)\[(\d+)\](.*)$")


def parse_qstat_full(text: str, flavor: str = "torque") -> dict[str, JobState]:
    """States from Torque's ``qstat -f -t`` or PBS Pro's ``qstat -x -f -t``, by job id.

    Array elements (``12[3].srv``) are folded into their array's id (``12[].srv``): the
    array's state comes from its elements when they are listed, else from its own line.
    """
    jobs: dict[str, JobState] = {}
    elements: dict[str, dict[str, tuple[str, str]]] = {}
    for job_id, attributes in parse_qstat_attributes(text).items():
        state = pbs_state(flavor, attributes)
        element = _ELEMENT.match(job_id)
        if element:
            parent = f"{element.group(1)}[]{element.group(3)}"
            elements.setdefault(parent, {})[element.group(2)] = (
                state.state,
                state.detail,
                state.cause,
            )
        else:
            jobs[job_id] = state
    for parent, parts in elements.items():
        folded = _fold(parts)
        own = jobs.get(parent)
        if own and own.state == CANCELLED and folded.state != RUNNING:
            # Deleted as a whole.
            folded = JobState(CANCELLED, own.detail, folded.elements, own.cause)
        elif own and own.state in (WAITING, HELD, UNRUNNABLE) and folded.state == QUEUED:
            folded = JobState(own.state, own.detail, folded.elements)  # the array's hold
        jobs[parent] = folded
    return jobs


def _fold(parts: dict[str, tuple[str, str, str]]) -> JobState:
    if list(parts) == [""]:
        state, detail, cause = parts[""]
        return JobState(state, detail, cause=cause)
    state = combine_states(state for state, _, _ in parts.values())
    details = sorted({detail for _, detail, _ in parts.values()})
    # An array ended as its first element that did not end well (else done).
    causes = [cause for _, _, cause in sorted(parts.values()) if cause]
    cause = next((c for c in causes if c != DONE), causes[0] if causes else "")
    return JobState(state, ", ".join(details), {k: s for k, (s, _, _) in parts.items()}, cause)


# --------------------------------------------------------------------------- edges


def command_environ(environ: dict[str, str]) -> dict[str, str]:
    """The environment scheduler commands run with (pure).

    Inside a PBS job (Torque, PBS Pro) the job's login shell rebuilds PATH, and another
    flavor's ``qsub`` (Slurm's wrapper) can come first: the submitter's PATH
    (``PBS_O_PATH``) goes in front, so a job submits its next attempt where it came from.
    """
    if environ.get("PBS_JOBID") and environ.get("PBS_O_PATH"):
        return {**environ, "PATH": environ["PBS_O_PATH"] + os.pathsep + environ.get("PATH", "")}
    return environ


def run_command(
    command: list[str], check: bool = True, unset: Iterable[str] = ()
) -> subprocess.CompletedProcess:
    """Run a scheduler command; a missing program or a failure is a one-line FmnistError.

    ``unset``: variables left out of its environment. A job submitting the next attempt
    leaves out those it passes with ``-v``: PBS Pro's ``-V`` would export its own values
    over them.
    """
    env = command_environ({k: v for k, v in os.environ.items() if k not in set(unset)})
    program = shutil.which(command[0], path=env.get("PATH")) or command[0]
    try:
        # errors="replace": Torque's qstat can print garbage bytes in its error messages.
        result = subprocess.run(
            [program, *command[1:]],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=120,
            env=env,
        )
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
                ["sacct", "-n", "-P", "-X", "-o", "JobID,State,ExitCode", "-j", ",".join(missing)],
                False,
            )
            if result.returncode == 0:
                states.update(parse_sacct(result.stdout))
        return {job_id: states[job_id] for job_id in job_ids if job_id in states}
    # PBS Pro shows finished jobs only with -x (job history); Torque's -x means XML, and
    # it keeps finished jobs (C) for keep_completed seconds. -t lists array elements;
    # Slurm's qstat wrapper (plain numeric ids) has no -t.
    command = ["qstat", "-x", "-f"] if flavor == "pbspro" else ["qstat", "-f"]

    def ask(ids: list[str], wanted: list[str]) -> tuple[dict[str, JobState], bool]:
        nonlocal command
        flags = ["-t"] if any("[]" in job_id for job_id in wanted) else []
        result = run_command([*command, *flags, *ids], False)
        if "-x" in command and "not configured to maintain job history" in result.stderr:
            # PBS Pro with job history off refuses -x altogether: ask without it, for the
            # jobs still queued or running; finished ones are forgotten.
            command = ["qstat", "-f"]
            result = run_command([*command, *flags, *ids], False)
        return pick(parse_qstat_full(result.stdout, flavor), wanted), result.returncode == 0

    found, answered = ask(job_ids, job_ids)
    missing = [job_id for job_id in job_ids if job_id not in found]
    if not answered and missing:
        # Some ids are unknown (purged). Torque's qstat then stops answering for the
        # rest of a long list (it prints "Unable to communicate" with a garbled server
        # name): ask once more, for every job the server knows, and pick ours. Still
        # one question per look, however many jobs the run has.
        found.update(ask([], missing)[0])
    return found


def pick(states: dict[str, JobState], job_ids: list[str]) -> dict[str, JobState]:
    """The states of ``job_ids`` among a qstat answer's (pure).

    The wrapper's and some servers' qstat print the id without the server suffix.
    """
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
    """The scheduler of this machine, judged by the ``qstat``/``sbatch`` first on PATH.

    ``qstat --version`` names PBS Pro (``pbs_version = ...``) and Torque
    (``Version: 6.1.3``); Slurm's qsub wrapper answers neither, and Slurm is used when
    ``sbatch`` is on PATH.
    """
    if shutil.which("qstat"):
        result = run_command(["qstat", "--version"], check=False)
        text = (result.stdout + result.stderr).lower()
        if "pbs_version" in text:
            return "pbspro"
        if result.returncode == 0 and text.startswith("version:"):
            return "torque"
    if shutil.which("sbatch"):
        return "slurm"
    if shutil.which("qsub"):
        return "torque"
    raise FmnistError("no scheduler found (neither sbatch nor qsub on PATH); use `run` instead")
