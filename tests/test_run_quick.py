"""`fmnist-batch run --profile quick` end to end on the real dataset, through every step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

PROJECT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_quick_profile_runs_every_step_and_a_rerun_skips_them(tmp_path):
    # The project's own DAG and quick profile, on one model to keep the suite short
    # (the scheduler tests and the shared fixtures cover the other two models).
    spec = (PROJECT / "jobs" / "pipeline.toml").read_text()
    spec = spec.replace('models = ["main", "backup1", "backup2"]', 'models = ["backup1"]', 1)
    (tmp_path / "pipeline.toml").write_text(spec)
    env = {
        **os.environ,
        "FMNIST_PIPELINE": str(tmp_path / "pipeline.toml"),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    run = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "fmnist",
        "run",
        "--profile",
        "quick",
        "--out",
        str(run),
        "--jobs",
        "2",
    ]

    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = {
        line.split()[1].split(":")[0]
        for line in result.stderr.splitlines()
        if line.startswith("[done]")
    }
    assert {"train", "optimize", "evaluate", "benchmark", "score", "report"} <= steps
    assert (run / "report" / "report.html").stat().st_size > 10_000
    metrics = pd.read_parquet(run / "metrics" / "backup1__openvino-int8.parquet")
    assert metrics["images"].iloc[0] == 2000 and 0 < metrics["accuracy"].iloc[0] <= 1
    assert list((run / "timings").glob("*.parquet"))

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    started = [line for line in again.stderr.splitlines() if line.startswith("[start]")]
    # Every step's outputs are complete, the score array's too (its shards' success
    # markers): nothing runs again.
    assert started == [], again.stderr
    assert "[skip]    score:backup1 (outputs complete)" in again.stderr
