"""Shared fixtures: the real dataset and a small run directory with all three models trained."""

from __future__ import annotations

import os
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
