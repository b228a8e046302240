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


@pytest.fixture(scope="session")
def images_parquet(dataset):
    """Write the first ``rows`` real test images as Parquet in a layout `score` reads.

    ``layout`` is ``columns`` (label, pixel1..pixel784), ``fixed-list`` or ``list`` (one
    column ``pixels`` of 784 values); ``dtype`` is the values' type; ``edit`` may change
    the (rows, 784) pixels and labels (as float64, NaN for null) before writing.
    """
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    def write(path, rows, layout="columns", dtype="uint8", label=True, group_rows=70, edit=None):
        pixels = dataset.test.images[:rows].reshape(rows, -1).astype(np.float64)
        labels = dataset.test.labels[:rows].astype(np.float64)
        if edit is not None:
            edit(pixels, labels)

        def values(array):
            missing = np.isnan(array)
            return pa.array(np.where(missing, 0, array).astype(dtype), mask=missing)

        columns = {"label": values(labels)} if label else {}
        if layout == "columns":
            columns.update({f"pixel{i + 1}": values(pixels[:, i]) for i in range(pixels.shape[1])})
        else:
            flat = values(pixels.ravel())
            if layout == "fixed-list":
                columns["pixels"] = pa.FixedSizeListArray.from_arrays(flat, pixels.shape[1])
            else:
                offsets = pa.array(np.arange(0, len(flat) + 1, pixels.shape[1]), pa.int32())
                columns["pixels"] = pa.ListArray.from_arrays(offsets, flat)
        pq.write_table(pa.table(columns), path, row_group_size=group_rows)
        return path

    return write
