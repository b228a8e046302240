"""`fmnist-batch run --profile quick` end to end on the real dataset, through every step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from fmnist.engines import VARIANTS
from fmnist.engines.openvino import cpu_capabilities
from fmnist.io import RunLayout, read_manifest

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
    # The quick job shows real models: every variant this CPU can run is evaluated on the
    # 2,000 test images and reaches 75 %; openvino-bf16 is skipped, with its reason,
    # only where the CPU plugin reports no native bf16.
    runnable = [v for v in VARIANTS if v != "openvino-bf16" or "BF16" in cpu_capabilities()]
    for variant in runnable:
        metrics = pd.read_parquet(RunLayout(run).metrics("backup1", variant))
        assert metrics["images"].iloc[0] == 2000, variant
        assert metrics["accuracy"].iloc[0] >= 0.75, (variant, metrics["accuracy"].iloc[0])
    if "openvino-bf16" not in runnable:
        skipped = read_manifest(run)["evaluations"]["backup1__openvino-bf16"]["skipped"]
        assert "bf16" in skipped
    timings = pd.concat(pd.read_parquet(p) for p in (run / "timings").glob("*.parquet"))
    assert set(timings["variant"]) == set(VARIANTS)  # benchmarked, or skipped with a reason

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    started = [line for line in again.stderr.splitlines() if line.startswith("[start]")]
    # Array steps declare no outputs: they run again, and each shard skips itself.
    assert [line.split()[1] for line in started] == ["score:backup1:"], again.stderr
    logs = "".join(p.read_text() for p in (run / "logs").glob("score__backup1*.log"))
    assert logs.count("already finished, skipped") == 2
