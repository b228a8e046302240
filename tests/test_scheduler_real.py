"""The real schedulers: Slurm, OpenPBS (PBS Pro) and Torque, each running real jobs.

Every test runs on each flavor (the ``cluster`` fixture of conftest.py): Slurm from
scripts/start-slurm.sh, OpenPBS and Torque as .ci/run starts them. Jobs run the pbs/
scripts and the real fmnist-batch commands. The README's scheduler lines are run exactly
as written, on the flavor each names, in a scratch copy of the project directory (its
``pbs/`` and ``.venv``), so ``$PWD/outputs/quick`` is the scratch run directory.

The story per flavor: the README trains ``main`` by hand; ``submit --profile quick``
sends the project's quick DAG (every model and variant) with one step made to fail;
``status`` names the failed step and every step that never ran; the cause is fixed and
``--resume`` submits exactly the incomplete steps, with their dependencies, through to
the report; the README's node-type line benchmarks on a node type the cluster has. A
node type no node offers is warned about, then refused (Torque, Slurm) or shown as never
running (PBS Pro).
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from conftest import Cluster, missing

from fmnist.manifest import manifest_dict
from fmnist.pipeline.nodes import list_nodes, node_offers
from fmnist.pipeline.nodetypes import load_node_types
from fmnist.pipeline.scheduler import ACTIVE, COMPLETED, STUCK, JobState, cancel_jobs, query_states
from fmnist.pipeline.status import run_status
from fmnist.pipeline.submit import read_record

PROJECT = Path(__file__).resolve().parent.parent
FMNIST = [sys.executable, "-m", "fmnist"]
# The story's DAG: on Torque (what DevCloud ran) the project's quick profile as it is (3-5
# minutes on 2 cores); on Slurm and PBS Pro the same steps, scripts and dependencies cut to
# one model, one variant and small inputs (about half of that), since what differs between
# the flavors is the scheduling, and the quick profile's own work runs in test_run_quick.
# FMNIST_SCHEDULER_DAG=quick or =reduced sets one DAG for every flavor.
DAG_VARIABLE = "FMNIST_SCHEDULER_DAG"
FULL_WIDTH_FLAVOR = "torque"
README_FLAVORS = {"# Torque": "torque", "# PBS Pro / OpenPBS": "pbspro", "# Slurm": "slurm"}


# --------------------------------------------------------------------------- the README


def readme_scheduler_lines(text: str | None = None) -> dict[str, list[str]]:
    """The command lines of the README's "On a cluster" section, by the flavor they are for.

    The first block's ``# Torque``, ``# PBS Pro / OpenPBS`` and ``# Slurm`` comments say
    whose lines follow; the lines of the blocks after it (``fmnist-batch submit ...``) are
    for every flavor (``any``).
    """
    text = text if text is not None else (PROJECT / "README.md").read_text()
    section = re.search(r"^## On a cluster\n(.*?)(?=^## )", text, re.MULTILINE | re.DOTALL)
    assert section, "README.md has no '## On a cluster' section"
    blocks = re.findall(r"^```bash\n(.*?)^```", section.group(1), re.MULTILINE | re.DOTALL)
    assert len(blocks) >= 2, "the README's 'On a cluster' section lost its command blocks"
    lines: dict[str, list[str]] = {"torque": [], "pbspro": [], "slurm": [], "any": []}
    flavor = None
    for line in blocks[0].splitlines():
        if line.startswith("#"):
            flavor = README_FLAVORS.get(line.strip())
            assert flavor, f"README: {line!r} names no flavor ({', '.join(README_FLAVORS)})"
        elif line.strip():
            assert flavor, f"README: {line!r} comes before any '# <flavor>' line"
            lines[flavor].append(line.split("  #")[0].strip())
    for block in blocks[1:]:
        lines["any"] += [ln.split("  #")[0].strip() for ln in block.splitlines() if ln.strip()]
    return lines


def readme_line(lines: dict[str, list[str]], flavor: str, needle: str) -> str:
    found = [line for line in lines[flavor] if needle in line]
    assert len(found) == 1, f"README: one {flavor} line with {needle!r} expected, found {found}"
    return found[0]


def scratch_project(tmp_path: Path) -> Path:
    """A directory that looks like the project to the README's lines: pbs/ and .venv."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "pbs").symlink_to(PROJECT / "pbs")
    (project / ".venv").symlink_to(sys.prefix)
    return project


def plain_environment(cluster: Cluster) -> dict[str, str]:
    """A user's shell: the cluster's commands and the venv's on PATH, no FMNIST_* set."""
    env = {k: v for k, v in cluster.environ().items() if not k.startswith("FMNIST_")}
    env["PATH"] = str(Path(sys.prefix) / "bin") + os.pathsep + env["PATH"]
    return env


def shell(line: str, cwd: Path, env: dict, umask: str = "022") -> subprocess.CompletedProcess:
    """Run one README line with bash, as a user would type it."""
    return subprocess.run(
        ["bash", "-c", f"umask {umask}; {line}"],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def submitted_id(flavor: str, result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    if flavor == "slurm":
        return re.search(r"Submitted batch job (\d+)", result.stdout).group(1)
    return result.stdout.strip().splitlines()[-1]


# --------------------------------------------------------------------------- waiting


def wait_for_job(flavor: str, job_id: str, timeout: float = 600) -> JobState:
    """Wait until the job is neither queued nor running; its final state."""
    deadline = time.monotonic() + timeout
    while True:
        state = query_states(flavor, [job_id]).get(job_id)
        if state is not None and state.state not in ACTIVE:
            return state
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id} still {state} after {timeout}s")
        time.sleep(2)


def job_log(directory: Path, name: str, job_id: str, timeout: float = 60) -> str:
    """The job's joined output, ``NAME.oSEQ`` in its submit directory (PBS and the
    scripts' #SBATCH --output alike), once it is whole.

    PBS copies the log there after the job ends, so the file can exist before all of it
    is in: read it once its size has settled (the same over two looks a second apart)
    and it ends with a whole line.
    """
    path = directory / f"{name}.o{job_id.split('.')[0]}"
    deadline = time.monotonic() + timeout
    last_size = -1
    while time.monotonic() < deadline:
        if path.exists():
            size = path.stat().st_size
            if size == last_size and size and path.read_bytes().endswith(b"\n"):
                return path.read_text()
            last_size = size
        time.sleep(1)
    return path.read_text() if path.exists() else f"(no log {path})"


def wait_for_run(run: Path, timeout: float = 1500) -> dict[str, str]:
    """Wait until no job of the run is queued or running; task id -> state."""
    deadline = time.monotonic() + timeout
    while True:
        states = {s.task_id: s.state for s in run_status(run)}
        if not any(state in ACTIVE for state in states.values()):
            return states
        if time.monotonic() > deadline:
            pytest.fail(f"jobs of {run} still active after {timeout}s: {states}")
        time.sleep(3)


def downstream(record: dict, roots: set[str]) -> set[str]:
    """Every task that needs one of ``roots``, directly or not."""
    found = set(roots)
    for task_id in record["order"]:
        if set(record["jobs"].get(task_id, {}).get("needs", [])) & found:
            found.add(task_id)
    return found - roots


# --------------------------------------------------------------------------- fixtures


def toml_value(value) -> str:
    if isinstance(value, dict):
        pairs = (f"{toml_key(k)} = {toml_value(v)}" for k, v in value.items())
        return "{ " + ", ".join(pairs) + " }"
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


def reduced_quick_spec(directory: Path) -> Path:
    """jobs/pipeline.toml as it is, its steps, scripts and DAG, with a `quick` profile cut
    to one model (main, which the README line trains), one variant and small inputs."""
    spec = tomllib.loads((PROJECT / "jobs" / "pipeline.toml").read_text())
    quick = spec["profiles"]["quick"]
    quick.update(models=["main"], variants=["openvino-f32"])
    args = quick.setdefault("args", {})
    for key in [k for k in args if k.startswith("train:")]:
        del args[key]
    args.update(train="--epochs 1 --limit 300", evaluate="--limit 200")
    args["score-input"] = "--limit 200"
    args["optimize"] = args.get("optimize", "") + " --validation-size 200"
    args["benchmark"] = (
        args.get("benchmark", "") + " --variants openvino-f32 --batch-sizes 1 --max-seconds 0.2"
    )
    path = directory / "pipeline.toml"
    path.write_text(pipeline_toml(spec))
    return path


def one_cpu_catalog(directory: Path, flavor: str) -> Path:
    """The node-type catalog with `local` jobs asking for one CPU, not two (two jobs of the
    DAG share the 2-CPU test node), and a type no node offers, `nowhere`."""
    text = (PROJECT / "jobs" / "node_types.toml").read_text()
    local = text.index("[node_types.local]")
    tail = text[local:]
    assert "cpus = 2" in tail, "jobs/node_types.toml: the local entry lost its `cpus = 2`"
    nowhere = (
        '\n[node_types.nowhere]\ndescription = "a node type no test node has"\n'
        'cpus = 1\nlabel = "nowhere"\n'
    )
    path = directory / "node_types.toml"
    path.write_text(text[:local] + tail.replace("cpus = 2", "cpus = 1") + nowhere)
    return path


@pytest.fixture
def submitted(cluster):
    """Job ids and run directories a test submits; whatever is still queued or running
    when it ends is cancelled, so a failed test cannot hold up the next one."""
    jobs: list[str] = []
    runs: list[Path] = []
    yield jobs, runs
    for run in runs:
        record = read_record(run) if run.exists() else None
        jobs += [job["job_id"] for job in (record or {}).get("jobs", {}).values()]
    states = query_states(cluster.flavor, jobs) if jobs else {}
    alive = [j for j, state in states.items() if state.state in (*ACTIVE, *STUCK)]
    if alive:
        cancel_jobs(cluster.flavor, alive)


def node_type_on(cluster: Cluster, name: str) -> None:
    """Fail or skip unless a node of the cluster offers the catalog's node type ``name``."""
    node_type = load_node_types()[name]
    nodes = list_nodes(cluster.flavor) or []
    if not any(node_offers(node, cluster.flavor, node_type) for node in nodes):
        hint = {
            "pbspro": "OPENPBS_CPU_TYPE=local,icx ../shared/tools/openpbs/start.sh",
            "torque": "TORQUE_CPU_TYPE=local,icx ../shared/tools/torque/start.sh",
            "slurm": "scripts/start-slurm.sh",
        }[cluster.flavor]
        missing(cluster.flavor, f"no node offers node type {name} ({hint} sets it)")


def assert_readable(*paths: Path, group_writable: bool | None = False) -> None:
    """Files the team can read: the job's umask was the user's (or 022), not 077.

    ``group_writable`` None: either (PBS Pro keeps a script's ``#PBS -W umask=022`` over
    the command line's, so its logs are 022 where the user's umask is 002).
    """
    for path in paths:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o044 == 0o044, f"{path}: mode {mode:o}, not readable by group and others"
        if group_writable is not None:
            assert bool(mode & 0o020) == group_writable, f"{path}: mode {mode:o}"


def manifest_entries(run: Path, task_id: str) -> list[dict]:
    return [e for e in manifest_dict(run).get("jobs", {}).values() if e.get("task_id") == task_id]


# --------------------------------------------------------------------------- the story


@pytest.mark.scheduler
@pytest.mark.slow
def test_readme_lines_the_quick_dag_a_failure_and_resume(cluster, tmp_path, submitted):
    flavor = cluster.flavor
    jobs, runs = submitted
    lines = readme_scheduler_lines()
    project = scratch_project(tmp_path)
    run = project / "outputs" / "quick"
    runs.append(run)
    plain = plain_environment(cluster)
    phases = [("start", time.monotonic())]

    # 1. The README trains main by hand: the job script alone, exactly as written.
    result = shell(readme_line(lines, flavor, "pbs/train_main.sh"), project, plain)
    job_id = submitted_id(flavor, result)
    jobs.append(job_id)
    state = wait_for_job(flavor, job_id)
    log = job_log(project, "train_main", job_id)
    assert state.state == COMPLETED, log
    assert "[done]    train:main" in log
    model = run / "models" / "main" / "model.keras"
    assert model.is_file()
    assert_readable(model, project / f"train_main.o{job_id.split('.')[0]}")
    [entry] = manifest_entries(run, "train:main")
    assert (entry["scheduler"], entry["job_id"]) == (flavor, job_id)
    assert entry["job_name"] == "train_main"
    assert entry["host"] in cluster.hosts and entry["node_type"] == "local"

    phases.append(("README train", time.monotonic()))

    # 2. The whole quick DAG, with the user's umask 002, and one step made to fail:
    #    a file stands where score:main writes its shards.
    in_the_way = run / "predictions" / "test" / "main"
    in_the_way.parent.mkdir(parents=True)
    in_the_way.write_text("not a directory")
    dag_env = {**plain, "FMNIST_NODE_TYPES": str(one_cpu_catalog(tmp_path, flavor))}
    default_dag = "quick" if flavor == FULL_WIDTH_FLAVOR else "reduced"
    if os.environ.get(DAG_VARIABLE, default_dag) == "reduced":
        dag_env["FMNIST_PIPELINE"] = str(reduced_quick_spec(tmp_path))
    submit, status, resume = (
        readme_line(lines, "any", "--profile quick"),
        readme_line(lines, "any", "status"),
        readme_line(lines, "any", "--resume"),
    )
    result = shell(submit, project, dag_env, umask="002")
    assert result.returncode == 0, result.stderr
    assert "[complete]  train:main (outputs on disk)" in result.stderr
    first = read_record(run)
    assert first["settings"]["scheduler"] == flavor  # detected from PATH
    assert "train:main" not in first["jobs"]
    # Jobs behind their dependencies wait; the scheduler's hold is not a user's.
    early = {s.task_id: s.state for s in run_status(run)}
    assert early["report"] == "waiting", early

    states = wait_for_run(run)
    assert states["score:main"] == "failed", states
    never = downstream(first, {"score:main"})
    assert never == {"score-verify:main", "report"}
    # Deleted by PBS Pro and Torque, cancelled by Slurm; Torque 6.1 may instead leave one
    # held for good, which status calls blocked.
    assert {states[t] for t in never} <= {"cancelled", "blocked"}, states
    assert {t for t, s in states.items() if s != "done"} == {"score:main", *never}, states
    result = shell(status, project, dag_env)
    assert result.returncode == 0, result.stderr
    assert "failed: score:main (failed)" in result.stdout, result.stdout
    assert "never ran: score-verify:main, report" in result.stdout, result.stdout
    assert "never ran: score:main failed" in result.stdout, result.stdout
    assert "see logs/score__main." in result.stdout, result.stdout
    assert "then `fmnist-batch submit --out outputs/quick --resume`" in result.stdout

    phases.append(("DAG with a failure", time.monotonic()))

    # 3. The cause fixed, --resume submits exactly the incomplete steps, each after the
    #    new jobs of what it needs, through to the report.
    in_the_way.unlink()
    result = shell(resume, project, dag_env, umask="002")
    assert result.returncode == 0, result.stderr
    second = read_record(run)
    resubmitted = {t for t, job in second["jobs"].items() if job["history"]}
    assert resubmitted == {"score:main", *never}
    new = {t: second["jobs"][t]["job_id"] for t in resubmitted}
    assert second["jobs"]["score-verify:main"]["after"] == [new["score:main"]]
    assert set(second["jobs"]["report"]["after"]) == {new["score:main"], new["score-verify:main"]}
    for task_id in set(first["jobs"]) - resubmitted:
        assert second["jobs"][task_id]["job_id"] == first["jobs"][task_id]["job_id"]
    states = wait_for_run(run)
    assert set(states.values()) == {"done"}, states
    report = run / "report" / "report.html"
    assert report.stat().st_size > 10_000
    metrics = run / "metrics" / "main__openvino-f32.parquet"
    assert_readable(report, metrics, group_writable=True)
    assert_readable(run / "logs" / "report.log", group_writable=None)
    result = shell(status, project, dag_env)
    assert f"{len(states)}/{len(states)} tasks done" in result.stdout, result.stdout

    # Every job recorded itself in the manifest: scheduler, job id, array index, node
    # type, host.
    for task_id, job in second["jobs"].items():
        entries = manifest_entries(run, task_id)
        assert entries, f"{task_id}: job {job['job_id']} left no entry in the manifest"
        for entry in entries:
            assert entry["scheduler"] == flavor, entry
            assert entry["host"] in cluster.hosts, entry
            assert entry["node_type"] == "local", entry
            if job["array"]:
                assert entry["array_job_id"] == job["job_id"], entry
            else:
                assert entry["job_id"] == job["job_id"], entry
        if job["array"]:
            assert sorted(e["array_index"] for e in entries) == list(range(job["array"]))

    phases.append(("resume", time.monotonic()))

    # 4. The README's node-type line: the benchmark on a node type the cluster has.
    line = readme_line(lines, flavor, "pbs/benchmark.sh")
    node_type = re.search(r"FMNIST_NODE_TYPE=(\w+)", line).group(1)
    node_type_on(cluster, node_type)
    job_id = submitted_id(flavor, shell(line, project, plain))
    jobs.append(job_id)
    state = wait_for_job(flavor, job_id)
    log = job_log(project, "benchmark", job_id)
    assert state.state == COMPLETED, log
    assert (run / "timings" / f"main__{node_type}.complete").is_file(), log
    [entry] = manifest_entries(run, f"benchmark:main:{node_type}")
    assert (entry["node_type"], entry["scheduler"]) == (node_type, flavor)
    assert entry["host"] in cluster.hosts

    # 5. The README's array line: both elements find their shard finished.
    line = readme_line(lines, flavor, "pbs/score_array.sh")
    job_id = submitted_id(flavor, shell(line, project, plain))
    jobs.append(job_id)
    state = wait_for_job(flavor, job_id)
    assert state.state == COMPLETED, state
    logs = "".join(p.read_text() for p in project.glob("score.o*"))
    for index in (0, 1):
        assert f"[skip]    score:main[{index}] (outputs complete)" in logs, logs
    phases.append(("node type and array lines", time.monotonic()))
    spans = ", ".join(f"{name} {t - phases[i][1]:.0f}s" for i, (name, t) in enumerate(phases[1:]))
    print(f"\n{flavor}: {phases[-1][1] - phases[0][1]:.0f}s ({spans})")


@pytest.mark.scheduler
@pytest.mark.slow
def test_a_node_type_no_node_offers(cluster, tmp_path, submitted):
    """Submit warns; Torque and Slurm refuse the job, PBS Pro queues it and says why."""
    jobs, runs = submitted
    spec = tmp_path / "pipeline.toml"
    spec.write_text(
        '[profiles.quick]\nnode_types = ["local"]\n\n'
        '[[steps]]\nname = "evaluate"\ncommand = "jobenv --save {run}/jobenv"\n'
        'outputs = ["jobenv/evaluate.json"]\n'
    )
    env = {
        **cluster.environ(),
        "FMNIST_PIPELINE": str(spec),
        "FMNIST_NODE_TYPES": str(one_cpu_catalog(tmp_path, cluster.flavor)),
    }
    run = tmp_path / "run"
    runs.append(run)
    command = [*FMNIST, "submit", "--node-type", "nowhere", "--out", str(run)]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert "warning: node type 'nowhere'" in result.stderr and "matches no node" in result.stderr
    if cluster.flavor == "torque":
        assert result.returncode == 1
        assert "qsub failed (exit 190)" in result.stderr
        assert "cannot locate feasible nodes" in result.stderr
        return
    if cluster.flavor == "slurm":
        assert result.returncode == 1
        assert "Invalid feature specification" in result.stderr
        return
    assert result.returncode == 0, result.stderr
    deadline = time.monotonic() + 120
    while (status := run_status(run)[0]).state != "unrunnable":
        assert time.monotonic() < deadline, f"never marked as unable to run: {status}"
        time.sleep(2)
    assert "Can Never Run" in status.detail and "cpu_type" in status.detail
    shown = subprocess.run([*FMNIST, "status", str(run)], env=env, capture_output=True, text=True)
    assert "unrunnable" in shown.stdout and "Can Never Run" in shown.stdout, shown.stdout


@pytest.mark.scheduler
@pytest.mark.slow
def test_status_with_job_history_off(pbspro_cluster, tmp_path, monkeypatch):
    """PBS Pro with job history off (its default) forgets finished jobs and refuses
    ``qstat -x``: status still sees the running job, and judges the finished one by its
    outputs, saying so."""
    env = pbspro_cluster.environ()
    monkeypatch.setenv("PATH", env["PATH"])
    spec = tmp_path / "pipeline.toml"
    spec.write_text(
        '[profiles.quick]\nnode_types = ["local"]\n\n'
        '[[steps]]\nname = "evaluate"\ncommand = "jobenv --save {run}/jobenv"\n'
        'outputs = ["jobenv/evaluate.json"]\n\n'
        '[[steps]]\nname = "report"\nneeds = ["evaluate"]\n'
        'command = "data to-csv --split test --limit 1 --out {run}/wait.csv"\n'
        'outputs = ["never-written"]\n'
    )
    run = tmp_path / "run"
    subprocess.run(
        [*FMNIST, "submit", "--scheduler", "pbspro", "--out", str(run)],
        env={**env, "FMNIST_PIPELINE": str(spec)}, check=True, capture_output=True,
    )  # fmt: skip
    record = read_record(run)
    hold = record["jobs"]["report"]["job_id"]
    # The report job waits on a user hold until the test lets it go.
    subprocess.run(["qhold", hold], env=env, check=True, capture_output=True)

    def history(value: str) -> None:
        command = ["qmgr", "-c", f"set server job_history_enable = {value}"]
        subprocess.run(command, env=env, check=True, capture_output=True)

    deadline = time.monotonic() + 300
    while not (run / "jobenv" / "evaluate.json").exists():
        assert time.monotonic() < deadline, "the evaluate job did not run"
        time.sleep(1)
    time.sleep(3)  # its job ends a moment after it wrote its output
    history("False")
    try:
        statuses = {s.task_id: s for s in run_status(run)}
    finally:
        history("True")
        cancel_jobs("pbspro", [hold])
    assert statuses["evaluate"].state == "done"
    assert "the scheduler no longer knows the job" in statuses["evaluate"].detail
    assert statuses["report"].state == "held", statuses["report"]


@pytest.mark.scheduler
@pytest.mark.slow
def test_slurm_qsub_wrapper_runs_a_job_script_alone(slurm_cluster, tmp_path, monkeypatch):
    """Slurm's Torque-style qsub takes a job script as it is, #PBS lines and all."""
    project = scratch_project(tmp_path)
    run = project / "outputs" / "quick"
    line = f"qsub -v FMNIST_RUN={run},FMNIST_PROFILE=quick pbs/score_input.sh"
    job_id = submitted_id("torque", shell(line, project, plain_environment(slurm_cluster)))
    state = wait_for_job("slurm", job_id)
    # The wrapper names the logs after the script, stdout and stderr apart.
    log = "".join((project / f"score_input.sh.{k}{job_id}").read_text() for k in "oe")
    assert state.state == COMPLETED, log
    assert (run / "inputs" / "test.csv").is_file()
    [entry] = manifest_entries(run, "score-input")
    assert (entry["scheduler"], entry["job_id"]) == ("slurm", job_id)
    assert_readable(run / "inputs" / "test.csv")


def test_readme_lines_parse():
    """The parser finds every flavor's lines (and would fail on a README that lost them);
    docs/scheduler.md shows the same lines."""
    lines = readme_scheduler_lines()
    by_flavor = "".join(
        f"{heading}\n" + "".join(f"{line}\n" for line in lines[flavor])
        for heading, flavor in README_FLAVORS.items()
    )
    assert f"```bash\n{by_flavor}```" in (PROJECT / "docs" / "scheduler.md").read_text()
    for flavor in ("torque", "pbspro", "slurm"):
        for needle in ("pbs/train_main.sh", "pbs/benchmark.sh", "pbs/score_array.sh"):
            readme_line(lines, flavor, needle)
    assert readme_line(lines, "torque", "benchmark").startswith("qsub -l nodes=1:icx:ppn=2 ")
    assert readme_line(lines, "pbspro", "benchmark").startswith(
        "qsub -l select=1:ncpus=2:cpu_type=icx "
    )
    assert readme_line(lines, "slurm", "benchmark").startswith("sbatch --constraint=icx ")
    with pytest.raises(AssertionError, match="no flavor"):
        readme_scheduler_lines("## On a cluster\n```bash\n# LSF\nbsub x\n```\n```bash\n```\n## X")


def test_the_reduced_dag_keeps_the_pipelines_steps_and_task_keyed_needs(tmp_path):
    """The reduced spec is the project's pipeline but for the quick profile's size: the
    other profiles (with quoted task ids as keys) and the steps read back unchanged."""
    original = tomllib.loads((PROJECT / "jobs" / "pipeline.toml").read_text())
    reduced = tomllib.loads(reduced_quick_spec(tmp_path).read_text())
    assert reduced["steps"] == original["steps"]
    for name in set(original["profiles"]) - {"quick"}:
        assert reduced["profiles"][name] == original["profiles"][name]
    assert reduced["profiles"]["quick"]["models"] == ["main"]
