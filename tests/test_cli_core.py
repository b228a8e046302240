"""The core commands through the CLI: data, models, train (with resume), evaluate."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from click.testing import CliRunner

from fmnist.cli import main
from fmnist.io import RunLayout, sha256_file


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def test_every_command_has_help_with_an_example():
    for command in (
        ["data", "info"],
        ["data", "verify"],
        ["data", "to-csv"],
        ["models"],
        ["train"],
        ["evaluate"],
        ["run"],
    ):
        result = invoke(*command, "--help")
        assert result.exit_code == 0 and "Example" in result.output, command


def test_data_verify_and_info():
    result = invoke("data", "verify")
    assert result.exit_code == 0 and result.output.count("sha256 ok") == 4
    assert "test: 10000 images" in invoke("data", "info").output


def test_to_csv_writes_kaggle_rows(tmp_path):
    out = tmp_path / "test.csv"
    result = invoke("data", "to-csv", "--split", "test", "--limit", "30", "--out", out)
    assert result.exit_code == 0 and "wrote 30 rows" in result.output
    frame = pd.read_csv(out)
    assert frame.shape == (30, 785) and frame.columns[0] == "label"


def test_models_json_lists_the_three_networks():
    described = json.loads(invoke("models", "--json").output)
    assert [d["params"] for d in described] == [13_017_770, 114_890, 840_586]


def test_unknown_model_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(main, ["train", "--model", "vgg", "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: unknown model 'vgg'; valid models: main, backup1, backup2"
    ]


def test_unknown_recipe_is_a_one_line_error(tmp_path):
    args = ["train", "--model", "backup1", "--recipe", "fastest", "--out", str(tmp_path)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "error: unknown recipe 'fastest'; valid recipes: seed, tuned, tuned-wd, tuned-flip, "
        "quick, fast, peak"
    ]
    assert not (tmp_path / "models").exists()  # refused before any data is loaded


def test_missing_model_file_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["evaluate", "--run", str(tmp_path), "--model", "backup1"])
    assert result.exit_code == 1
    assert "model.keras: model file not found" in result.output


def test_corrupt_model_file_is_a_clear_error(tmp_path):
    path = RunLayout(tmp_path).keras_model("backup1")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not a zip")
    evaluate = ["evaluate", "--run", str(tmp_path), "--model", "backup1"]
    result = CliRunner().invoke(main, evaluate)
    assert result.exit_code == 1 and f"{path}: not recorded in " in result.output
    assert CliRunner().invoke(main, ["adopt", str(tmp_path), str(path)]).exit_code == 0
    result = CliRunner().invoke(main, evaluate)
    assert result.exit_code == 1
    assert f"error: {path}: cannot be read as a Keras model (truncated or corrupt)" in result.output


def test_train_summary_reports_the_kept_epoch_not_the_last():
    from fmnist.train import TrainResult, train_summary

    history = pd.DataFrame({"epoch": [1, 2, 3], "val_accuracy": [0.90, 0.95, 0.93]})
    kept_best = TrainResult("m.keras", history, 12.0, "0" * 64, best_epoch=2)
    assert train_summary("main", kept_best) == (
        "trained main: 3 epochs in 12.0s, kept epoch 2 (val_accuracy 0.9500) -> m.keras"
    )
    kept_last = TrainResult("m.keras", history, 12.0, "0" * 64)
    assert "kept epoch 3 (val_accuracy 0.9300)" in train_summary("main", kept_last)


@pytest.mark.slow
def test_train_then_evaluate_backup1(tmp_path):
    run = tmp_path / "run"
    result = invoke("train", "--model", "backup1", "--epochs", "1", "--limit", "4000", "--out", run)
    assert result.exit_code == 0, result.output
    layout = RunLayout(run)
    history = pd.read_parquet(layout.history("backup1"))
    assert list(history.columns) == [
        "epoch",
        "loss",
        "accuracy",
        "val_loss",
        "val_accuracy",
        "lr",
        "seconds",
    ]
    assert history["epoch"].tolist() == [1] and history["lr"].iloc[0] == pytest.approx(1e-3)
    manifest = json.loads(layout.manifest.read_text())
    entry = manifest["models"]["backup1"]
    assert entry["keras_sha256"] == sha256_file(layout.keras_model("backup1"))
    assert entry["train_images"] == 4000 and entry["config"]["batch_size"] == 64
    machine = next(iter(manifest["machine"].values()))
    assert machine["cpu_model"] and "tensorflow" in json.dumps(machine["libraries"])
    assert (layout.figures_dir / "backup1__curves.png").stat().st_size > 1000

    result = invoke("evaluate", "--run", run, "--model", "backup1", "--limit", "1000")
    assert result.exit_code == 0, result.output
    assert "weighted avg" in result.output and "Ankle boot" in result.output
    metrics = pd.read_parquet(layout.metrics("backup1", "keras-predict"))
    confusion = pd.read_parquet(layout.confusion("backup1", "keras-predict"))
    assert len(metrics) == 12 and metrics["support"].iloc[:10].sum() == 1000
    counts = confusion.drop(columns=["true_label", "true_name"]).to_numpy()
    assert counts.sum() == 1000
    # Accuracy in the Parquet file equals the trace of its confusion matrix.
    assert metrics["accuracy"].iloc[0] == pytest.approx(counts.trace() / 1000)
    assert metrics["accuracy"].iloc[0] > 0.5  # one epoch on 4,000 images learns something
    assert f"Accuracy: {metrics['accuracy'].iloc[0]:.4f}" in result.output


@pytest.mark.slow
def test_killed_training_resumes_from_its_last_finished_epoch(tmp_path):
    run = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "fmnist",
        "train",
        "--model",
        "backup1",
        "--epochs",
        "3",
        "--limit",
        "2000",
        "--out",
        str(run),
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    state = RunLayout(run).model_dir("backup1") / "checkpoint" / "state.json"
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not state.exists() and time.time() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # a job killed at its walltime
    process.wait()
    assert state.exists(), "the first epoch never finished"
    finished = json.loads(state.read_text())["epoch"]
    assert finished < 3 and not RunLayout(run).keras_model("backup1").exists()

    changed = subprocess.run(
        [*args, "--batch-size", "32"], env=env, capture_output=True, text=True, timeout=300
    )
    assert changed.returncode == 1 and "different configuration" in changed.stderr

    # Stopped early: --epochs set to what finished writes the model and keeps the checkpoint.
    stop_args = list(args)
    stop_args[args.index("--epochs") + 1] = str(finished)
    stopped = subprocess.run(stop_args, env=env, capture_output=True, text=True, timeout=300)
    assert stopped.returncode == 0, stopped.stderr
    assert RunLayout(run).keras_model("backup1").exists() and state.exists()
    assert len(pd.read_parquet(RunLayout(run).history("backup1"))) == finished

    # ... and the full budget continues from there, then removes the checkpoint.
    result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert f"resuming backup1 after epoch {finished}/3" in result.stderr
    history = pd.read_parquet(RunLayout(run).history("backup1"))
    assert history["epoch"].tolist() == [1, 2, 3]
    assert history["lr"].tolist() == pytest.approx([1e-3, 9e-4, 8.1e-4])
    assert not state.parent.exists()
