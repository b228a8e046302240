"""Integration tests on a real scheduler: the one-node Slurm cluster of scripts/start-slurm.sh.

Jobs go through Slurm's own sbatch and its Torque-compatible qsub wrapper, run the
pbs/ scripts and the real fmnist-batch commands, on a tiny profile of the project's own
jobs/pipeline.toml (one model, one epoch on a few hundred images) so the whole DAG stays
within minutes. The tests skip, saying why, only when the cluster cannot start.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from fmnist.pipeline.scheduler import ACTIVE, COMPLETED, cancel_jobs, query_states
from fmnist.pipeline.submit import read_record, run_status

PROJECT = Path(__file__).resolve().parent.parent
FMNIST = [sys.executable, "-m", "fmnist"]

pytestmark = [pytest.mark.scheduler, pytest.mark.slow]


@pytest.fixture(scope="session")
def slurm_cluster() -> str:
    """Start (or find) the one-node cluster; skip with the reason when it cannot start."""
    if not shutil.which("sbatch") or not shutil.which("qsub"):
        reason = "Slurm is not installed (apt-get install slurm-wlm slurm-wlm-torque munge)"
        print(f"\nscheduler tests skipped: {reason}")
        pytest.skip(reason)
    result = subprocess.run(
        [str(PROJECT / "scripts" / "start-slurm.sh")], capture_output=True, text=True
    )
    if result.returncode != 0:
        reason = "the Slurm cluster did not start: " + result.stderr.strip()
        print(f"\nscheduler tests skipped: {reason}")
        pytest.skip(reason)
    return result.stderr.strip()


def toml_value(value) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)  # strings, numbers, booleans and lists read the same in TOML


def toml_key(key: str) -> str:
    # Task ids ("train:backup1") are not bare keys: quote them.
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def pipeline_toml(spec: dict) -> str:
    """A pipeline spec as TOML text (profiles with args, then the steps)."""
    lines = []
    for name, profile in spec["profiles"].items():
        lines.append(f"[profiles.{name}]")
        lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in profile.items() if k != "args"]
        lines.append(f"[profiles.{name}.args]")
        lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in profile.get("args", {}).items()]
    for step in spec["steps"]:
        lines.append("[[steps]]")
        lines += [f"{toml_key(k)} = {toml_value(v)}" for k, v in step.items()]
    return "\n".join(lines) + "\n"


def tiny_spec(directory: Path) -> Path:
    """jobs/pipeline.toml with a tiny `quick` profile, plus an array step that records
    what each element saw of its job (the DAG's own steps are kept as they are)."""
    spec = tomllib.loads((PROJECT / "jobs" / "pipeline.toml").read_text())
    quick = spec["profiles"]["quick"]
    quick.update(models=["backup1"], node_types=["local"], eval_limit=200)
    if "variants" in quick:
        quick["variants"] = quick["variants"][:1]
    args = quick.setdefault("args", {})
    args.update(train="--epochs 1 --limit 300", evaluate="--limit {eval_limit}")
    if "score-input" in args:
        args["score-input"] = "--limit 200"
    if "optimize" in args:
        args["optimize"] += " --validation-size 200"
    if "benchmark" in args:
        args["benchmark"] += " --variants openvino-f32 --batch-sizes 1 --max-seconds 0.2"
    script = directory / "probe_array.sh"
    script.write_text(
        (PROJECT / "pbs" / "score_array.sh")
        .read_text()
        .replace("fmnist-batch step score", "fmnist-batch step probe")
    )
    spec["steps"].append(
        {
            "name": "probe",
            "needs": ["evaluate"],
            "command": "jobenv --save {run}/jobenv",
            "outputs": ["jobenv/probe.0.json", "jobenv/probe.1.json"],
            "resources": {"script": str(script), "walltime": "00:05:00", "array": "2"},
        }
    )
    path = directory / "pipeline.toml"
    path.write_text(pipeline_toml(spec))
    return path


def one_cpu_catalog(directory: Path) -> Path:
    """The node-type catalog with `local` jobs asking Slurm for one CPU, not two: two jobs
    of the DAG run at once on the 2-CPU test node."""
    text = (PROJECT / "jobs" / "node_types.toml").read_text()
    local = text.index("[node_types.local]")
    path = directory / "node_types.toml"
    path.write_text(text[:local] + text[local:].replace('slurm = ""', 'slurm = "--ntasks=1"'))
    return path


@pytest.fixture
def job_env(tmp_path):
    """The environment jobs are submitted with; afterwards, jobs a failed test left in the
    queue are cancelled so they cannot hold up the next test."""
    env = {
        **os.environ,
        "FMNIST_PIPELINE": str(tiny_spec(tmp_path)),
        "FMNIST_NODE_TYPES": str(one_cpu_catalog(tmp_path)),
        "FMNIST_VENV": sys.prefix,
    }
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    for name in ("FMNIST_EXECUTOR", "FMNIST_NODE_TYPE", "FMNIST_MODEL", "FMNIST_EVAL_LIMIT"):
        env.pop(name, None)
    yield env
    for record in tmp_path.rglob("jobs.json"):
        job_ids = [job["job_id"] for job in json.loads(record.read_text())["jobs"].values()]
        active = [j for j, state in query_states("slurm", job_ids).items() if state.state in ACTIVE]
        cancel_jobs("slurm", active)


def wait_for_run(run: Path, timeout: float = 420) -> dict[str, str]:
    """Wait until no job of the run is queued or running; task id -> state."""
    deadline = time.monotonic() + timeout
    while True:
        states = {s.task_id: s.state for s in run_status(run)}
        if not any(state in ACTIVE for state in states.values()):
            return states
        if time.monotonic() > deadline:
            pytest.fail(f"jobs of {run} still active after {timeout}s: {states}")
        time.sleep(2)


def downstream(record: dict, roots: set[str]) -> set[str]:
    """Every task that needs one of ``roots``, directly or not."""
    found = set(roots)
    for task_id in record["order"]:
        if set(record["jobs"][task_id]["needs"]) & found:
            found.add(task_id)
    return found - roots


def test_qsub_trains_main_through_the_scheduler(slurm_cluster, tmp_path, job_env):
    run = tmp_path / "run"
    submitted = subprocess.run(
        ["qsub", "-V", "-v", f"FMNIST_RUN={run},FMNIST_PROFILE=quick",
         str(PROJECT / "pbs" / "train_main.sh")],
        env=job_env, cwd=tmp_path, capture_output=True, text=True, check=True,
    )  # fmt: skip
    job_id = submitted.stdout.strip()
    deadline = time.monotonic() + 300
    while (state := query_states("slurm", [job_id]).get(job_id)) is None or state.state in ACTIVE:
        if time.monotonic() > deadline:
            cancel_jobs("slurm", [job_id])
            pytest.fail(f"job {job_id} still {state} after 300s")
        time.sleep(2)
    # The wrapper names the logs after the script, stdout and stderr apart.
    log = "".join((tmp_path / f"train_main.sh.{k}{job_id}").read_text() for k in "oe")
    assert state.state == COMPLETED, log
    assert (run / "models" / "main" / "model.keras").is_file()
    assert "[done]    train:main" in log
    jobs = json.loads((run / "manifest.json").read_text())["jobs"]
    assert jobs[job_id]["scheduler"] == "slurm"
    assert jobs[job_id]["job_name"] == "train_main"
    assert jobs[job_id]["task_id"] == "train:main"


def test_submit_runs_the_dag_holds_back_after_a_failure_and_resumes(
    slurm_cluster, tmp_path, job_env
):
    run = tmp_path / "run"
    submit = [*FMNIST, "submit", "--scheduler", "slurm", "--profile", "quick"]
    submit += ["--node-type", "local", "--out", str(run)]

    # 1. evaluate is made to fail (a bad value for its --limit): what needs it must not run.
    failing = {**job_env, "FMNIST_EVAL_LIMIT": "not-a-number"}
    subprocess.run(submit, env=failing, cwd=PROJECT, check=True)
    first = read_record(run)
    # Resuming while the jobs are queued or running keeps them all.
    again = subprocess.run(
        [*submit, "--resume"], env=failing, cwd=PROJECT, capture_output=True, text=True
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("0 job(s) submitted"), again.stdout
    assert read_record(run)["jobs"] == first["jobs"]
    states = wait_for_run(run)
    evaluate = {t for t in first["order"] if t.startswith("evaluate:")}
    held = downstream(first, evaluate)
    assert "probe" in held
    assert all(states[t] == "failed" for t in evaluate), states
    assert all(states[t] == "cancelled" for t in held), states  # afterok never satisfied
    assert states["train:backup1"] == "done"
    assert not (run / "jobenv").exists()

    # 2. --resume submits only what is incomplete; finished jobs are not repeated.
    subprocess.run([*submit, "--resume"], env=job_env, cwd=PROJECT, check=True)
    second = read_record(run)
    resubmitted = {t for t, job in second["jobs"].items() if job["history"]}
    assert resubmitted == {t for t, state in states.items() if state != "done"}
    assert second["jobs"]["train:backup1"]["job_id"] == first["jobs"]["train:backup1"]["job_id"]
    states = wait_for_run(run)
    assert set(states.values()) == {"done"}, states

    # The array job: two elements of one Slurm array, each with its own index.
    elements = [json.loads((run / f"jobenv/probe.{i}.json").read_text()) for i in (0, 1)]
    assert [e["array_index"] for e in elements] == [0, 1]
    assert {e["array_job_id"] for e in elements} == {second["jobs"]["probe"]["job_id"]}
    assert {(e["scheduler"], e["node_type"], e["task_id"]) for e in elements} == {
        ("slurm", "local", "probe")
    }
    assert (run / "logs" / "probe.0.log").is_file() and (run / "logs" / "probe.1.log").is_file()
    assert "[done]    train:backup1" in (run / "logs" / "train__backup1.log").read_text()
    assert (run / "models" / "backup1" / "model.keras").is_file()
    if "report" in second["order"]:
        assert (run / "report" / "report.html").is_file()

    status = subprocess.run(
        [*FMNIST, "status", str(run)], env=job_env, capture_output=True, text=True, check=True
    )
    assert f"{len(states)}/{len(states)} tasks done" in status.stdout
    assert "train:backup1" in status.stdout


TWO_STEP_SPEC = """
[profiles.quick]
node_types = ["local"]

[[steps]]
name = "evaluate"
command = "jobenv --save {run}/jobenv"
outputs = ["jobenv/evaluate.json"]

[[steps]]
name = "report"
needs = ["evaluate"]
command = "jobenv --save {run}/jobenv"
outputs = ["jobenv/report.json"]
"""


def test_torque_flavor_through_the_qsub_wrapper(slurm_cluster, tmp_path, job_env):
    """The Torque dialect (qsub -W depend=afterok, qstat -f) against a real qsub."""
    spec = tmp_path / "two_steps.toml"
    spec.write_text(TWO_STEP_SPEC)
    env = {**job_env, "FMNIST_PIPELINE": str(spec)}
    run = tmp_path / "run"
    subprocess.run(
        [*FMNIST, "submit", "--scheduler", "torque", "--node-type", "local", "--out", str(run)],
        env=env, cwd=PROJECT, check=True,
    )  # fmt: skip
    record = read_record(run)
    assert record["jobs"]["report"]["after"] == [record["jobs"]["evaluate"]["job_id"]]
    assert (
        "depend=afterok:" + record["jobs"]["evaluate"]["job_id"]
        in record["jobs"]["report"]["command"]
    )
    states = wait_for_run(run, timeout=180)
    assert states == {"evaluate": "done", "report": "done"}
    seen = json.loads((run / "jobenv" / "report.json").read_text())
    assert seen["job_id"] == record["jobs"]["report"]["job_id"]
    assert seen["job_name"] == "report"
