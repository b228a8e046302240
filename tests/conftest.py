"""Shared fixtures: the real dataset, a small run directory with all three models trained,
and the real things some tests need (the scheduler clusters, Chromium).

A test that needs a real thing gets it from a fixture here; where it is missing the test
skips with the reason, which ``pytest -rs`` prints. ``FMNIST_REQUIRE=slurm,pbspro,...``
(set by .ci/run) turns that skip into a failure, so CI cannot pass without them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROJECT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------- real things

REQUIRE_VARIABLE = "FMNIST_REQUIRE"
REQUIRABLE = ("slurm", "pbspro", "torque", "chromium")


def required() -> set[str]:
    """The real things ``FMNIST_REQUIRE`` (comma-separated) says the tests must have."""
    names = {n.strip() for n in os.environ.get(REQUIRE_VARIABLE, "").split(",") if n.strip()}
    unknown = names - set(REQUIRABLE)
    if unknown:
        raise pytest.UsageError(
            f"{REQUIRE_VARIABLE}: unknown {', '.join(sorted(unknown))}; "
            f"valid: {', '.join(REQUIRABLE)}"
        )
    return names


def missing(name: str, reason: str) -> NoReturn:
    """The one way a test gives up on a missing real thing: skip saying why, or fail when
    ``FMNIST_REQUIRE`` names it."""
    if name in required():
        pytest.fail(f"{name} is required ({REQUIRE_VARIABLE}) but {reason}", pytrace=False)
    print(f"\n{name} tests skipped: {reason}")
    pytest.skip(f"{name}: {reason}")


def pytest_configure(config):
    required()  # a typo in FMNIST_REQUIRE stops the run at once


def pytest_report_header(config):
    names = sorted(required())
    return f"{REQUIRE_VARIABLE}: {', '.join(names) if names else 'none (missing things skip)'}"


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Chromium executable (Debian's chromium package)."""
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        missing("chromium", "chromium is not installed (apt-get install chromium)")
    return path


@dataclass(frozen=True)
class Cluster:
    """A running scheduler: its flavor, where its commands are, the hosts its jobs run on."""

    flavor: str  # slurm | pbspro | torque
    bin_dir: str | None  # put first on PATH (the OpenPBS and Torque wrappers); None: PATH
    hosts: tuple[str, ...]  # the host names its jobs see

    def environ(self, base: dict | None = None) -> dict[str, str]:
        """``base`` (default: this process's environment) with the cluster's commands first."""
        env = dict(os.environ if base is None else base)
        if self.bin_dir:
            env["PATH"] = self.bin_dir + os.pathsep + env.get("PATH", "")
        return env


def _answers(command: list[str], env: dict) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(command, 1, "", str(exc))


@pytest.fixture(scope="session")
def slurm_cluster() -> Cluster:
    """The one-node Slurm cluster of scripts/start-slurm.sh, started if need be."""
    if not shutil.which("sbatch") or not shutil.which("qsub"):
        missing(
            "slurm", "Slurm is not installed (apt-get install slurm-wlm slurm-wlm-torque munge)"
        )
    result = _answers([str(PROJECT / "scripts" / "start-slurm.sh")], dict(os.environ))
    if result.returncode != 0:
        missing("slurm", "the Slurm cluster did not start: " + result.stderr.strip())
    nodes = _answers(["sinfo", "-h", "-N", "-o", "%N"], dict(os.environ)).stdout.split()
    return Cluster("slurm", None, tuple(dict.fromkeys(nodes)) or (socket.gethostname(),))


def _pbs_cluster(flavor: str, variable: str, default: str, start: str) -> Cluster:
    bin_dir = os.environ.get(variable) or default
    name = {"pbspro": "OpenPBS", "torque": "Torque"}[flavor]
    if not Path(bin_dir, "qsub").exists():
        missing(
            flavor,
            f"{name} is not installed: no {bin_dir}/qsub (start one with {start}, "
            f"or set {variable} to the directory of its qsub)",
        )
    cluster = Cluster(flavor, bin_dir, ())
    env = cluster.environ()
    version = _answers(["qstat", "--version"], env)
    text = (version.stdout + version.stderr).lower()
    if ("pbs_version" in text) != (flavor == "pbspro"):
        missing(flavor, f"{bin_dir}/qstat is not {name}'s: {text.strip()[:200]}")
    server = _answers(["qstat", "-B"], env)
    if server.returncode != 0:
        missing(flavor, f"{name} does not answer (qstat -B): {server.stderr.strip()[:300]}")
    nodes = _answers(["pbsnodes", "-a"], env).stdout
    hosts = tuple(line.strip() for line in nodes.splitlines() if line and not line[0].isspace())
    return Cluster(flavor, bin_dir, hosts)


@pytest.fixture(scope="session")
def pbspro_cluster() -> Cluster:
    """A running OpenPBS / PBS Pro server (``FMNIST_PBSPRO_BIN``, default /opt/pbs-ns/bin)."""
    return _pbs_cluster(
        "pbspro", "FMNIST_PBSPRO_BIN", "/opt/pbs-ns/bin", "../shared/tools/openpbs/start.sh"
    )


@pytest.fixture(scope="session")
def torque_cluster() -> Cluster:
    """A running Torque server (``FMNIST_TORQUE_BIN``, default /opt/torque-ns/bin)."""
    return _pbs_cluster(
        "torque", "FMNIST_TORQUE_BIN", "/opt/torque-ns/bin", "../shared/tools/torque/start.sh"
    )


@pytest.fixture(params=["slurm", "pbspro", "torque"])
def cluster(request, monkeypatch) -> Cluster:
    """Each real scheduler in turn, with its commands first on this process's PATH too."""
    found = request.getfixturevalue(f"{request.param}_cluster")
    monkeypatch.setenv("PATH", found.environ()["PATH"])
    return found


# --------------------------------------------------------------------------- data


@pytest.fixture(scope="session")
def dataset_dir() -> Path:
    """The real Fashion-MNIST IDX files (Debian's dataset-fashion-mnist in CI)."""
    from fmnist.data import find_dataset_dir

    return find_dataset_dir()


@pytest.fixture(scope="session")
def dataset(dataset_dir):
    from fmnist.data import load_dataset

    return load_dataset(dataset_dir)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, dataset_dir) -> Path:
    """A run directory with main, backup1 and backup2 trained for one epoch on a subset.

    Shared by every test that needs trained models (evaluate, optimize, benchmark,
    score, report): treat it as read-only, copy it to write into it.
    """
    from fmnist.train import TrainConfig, train_model

    run = tmp_path_factory.mktemp("trained-run")
    for model, limit in (("backup1", 3000), ("backup2", 2000), ("main", 1000)):
        train_model(TrainConfig(model=model, epochs=1, limit=limit), run, progress=lambda m: None)
    return run


@pytest.fixture(scope="session")
def real_csv_factory(tmp_path_factory, dataset_dir):
    """Write the first ``rows`` real test images as Kaggle CSV with `fmnist-batch data to-csv`.

    Each size is written once per session; the files are read-only for the tests.
    """
    from click.testing import CliRunner

    from fmnist.cli import main

    written: dict[int, Path] = {}

    def write(rows: int) -> Path:
        if rows not in written:
            path = tmp_path_factory.mktemp("csv") / f"test-{rows}.csv"
            args = ["data", "to-csv", "--split", "test", "--limit", str(rows), "--out", str(path)]
            result = CliRunner().invoke(main, args, catch_exceptions=False)
            assert result.exit_code == 0, result.output
            written[rows] = path
        return written[rows]

    return write
