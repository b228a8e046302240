"""`fmnist-batch run --profile quick` end to end, as a user runs it after `pip install .`.

The installed wheel (not the checkout) runs the project's own quick profile from a
directory outside the checkout, on the real dataset, through every step of the DAG.
"""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import wheel_cli

from fmnist.engines import VARIANTS
from fmnist.engines.openvino import cpu_capabilities
from fmnist.io import RunLayout
from fmnist.manifest import manifest_dict

MODELS = ("main", "backup1", "backup2")


@pytest.mark.slow
def test_quick_profile_runs_every_step_and_a_rerun_skips_them(installed_wheel, tmp_path):
    run = tmp_path / "run"
    command = ("run", "--profile", "quick", "--out", str(run), "--jobs", "2")

    result = wheel_cli(installed_wheel, *command, cwd=tmp_path, timeout=1500)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = {
        line.split()[1].split(":")[0]
        for line in result.stderr.splitlines()
        if line.startswith("[done]")
    }
    assert {"train", "optimize", "evaluate", "benchmark", "score", "report"} <= steps
    assert (run / "report" / "report.html").stat().st_size > 10_000
    markdown = (run / "report" / "report.md").read_text()
    quantization = markdown.split("## INT8 quantization", 1)[1].split("\n## ", 1)[0]
    for model in MODELS:
        method = manifest_dict(run)["openvino"][model]["int8"]["method"]
        assert f"| **{model}** | {method} |" in quantization, quantization
    # The quick job shows real models: every variant this CPU can run is evaluated on the
    # 2,000 test images and reaches 75 %; openvino-bf16 is skipped, with its reason,
    # only where the CPU plugin reports no native bf16.
    runnable = [v for v in VARIANTS if v != "openvino-bf16" or "BF16" in cpu_capabilities()]
    manifest = manifest_dict(run)
    for model in MODELS:
        for variant in runnable:
            metrics = pd.read_parquet(RunLayout(run).metrics(model, variant))
            accuracy = metrics["accuracy"].iloc[0]
            assert metrics["images"].iloc[0] == 2000, (model, variant)
            assert accuracy >= 0.75, (model, variant, accuracy)
        if "openvino-bf16" not in runnable:
            assert "bf16" in manifest["evaluations"][f"{model}__openvino-bf16"]["skipped"]
    timings = pd.concat(pd.read_parquet(p) for p in (run / "timings").glob("*.parquet"))
    assert set(timings["variant"]) == set(VARIANTS)  # benchmarked, or skipped with a reason
    assert set(timings["model"]) == set(MODELS)
    # Every job recorded itself: one per task, array elements each on their own.
    commands = {job["command"].split()[0] for job in manifest["jobs"].values()}
    assert {"train", "optimize", "evaluate", "benchmark", "score", "verify", "report"} <= commands

    again = wheel_cli(installed_wheel, *command, cwd=tmp_path, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    started = [line for line in again.stderr.splitlines() if line.startswith("[start]")]
    # Every step's outputs are complete, the score arrays' too (their shards' success
    # markers): nothing runs again.
    assert started == [], again.stderr
    for model in MODELS:
        assert f"[skip]    score:{model} (outputs complete)" in again.stderr
