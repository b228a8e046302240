"""Shared fixtures: the real dataset and a small run directory with all three models trained."""

from __future__ import annotations

import os
import subprocess
import sysconfig
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

PROJECT = Path(__file__).resolve().parent.parent


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


@pytest.fixture(scope="session")
def installed_wheel(tmp_path_factory) -> Path:
    """A fresh virtualenv with fmnist-batch installed from this checkout as a wheel.

    Its heavy dependencies (TensorFlow, OpenVINO) come from the test interpreter's
    site-packages through a .pth file rather than a second download; fmnist itself
    is built and installed into the new environment.
    """
    venv = tmp_path_factory.mktemp("wheel") / "venv"
    subprocess.run(["python3", "-m", "venv", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "zz-test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "install", "-q", "--no-deps"]
        + ["--no-build-isolation", str(PROJECT)],
        check=True,
        capture_output=True,
    )
    return venv


def wheel_cli(venv: Path, *args: str, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    """``fmnist-batch ARGS`` of the installed wheel, run in ``cwd`` (outside the checkout)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FMNIST_")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return subprocess.run(
        [str(venv / "bin" / "fmnist-batch"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        **kwargs,
    )
