"""Outputs under real faults: a swapped model, a full disk, a read-only mount, a killed scorer.

The faults are real: a second model trained with another seed, a tmpfs of a few hundred
KiB, a read-only bind mount, SIGKILL of the scoring process. The mounts need root
(``mounts`` fixture: skipped with its reason otherwise, required in CI). Each failing
command must exit non-zero with one ``error: PATH: reason`` line and no traceback, and
leave nothing that looks finished; each finishing one must account for every row.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import SCORE_MODEL as MODEL
from conftest import SCORE_ROWS as ROWS
from conftest import check_predictions, read_parts, run_with_model, score_args

from fmnist.cli import main
from fmnist.faults import describe
from fmnist.io import RunLayout, sha256_file, write_text_atomic
from fmnist.manifest import read_manifest
from fmnist.scoring.shards import marker_name, part_name, rejects_name
from fmnist.scoring.verify import verify_predictions


def fmnist(*args: str, **kwargs) -> subprocess.CompletedProcess:
    """``fmnist-batch ARGS`` in a fresh process, as a job runs it."""
    argv = [sys.executable, "-m", "fmnist", *map(str, args)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, **kwargs)


def one_error(stderr: str) -> str:
    """The one ``error:`` line of a failed command (and no traceback)."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr
    return errors[0]


def nothing_finished(out: Path) -> None:
    """No shard of ``out`` has its success marker: nothing looks finished."""
    assert not list(out.glob("part-*.success.json")), os.listdir(out)


# --------------------------------------------------------------------------- units


def test_os_errors_read_as_path_and_reason():
    full = OSError(errno.ENOSPC, "No space left on device", "/scratch/out/part.parquet")
    assert describe(full) == "/scratch/out/part.parquet: the disk is full (no space left on device)"
    # pyarrow's writers name no file: the caller says where.
    arrow = OSError(errno.EROFS, "Error writing bytes to file. Detail: [errno 30]")
    assert describe(arrow, "/run/x") == "/run/x: the file system is read-only"
    denied = PermissionError(errno.EACCES, "Permission denied", "/run/manifest.json")
    assert describe(denied).startswith("/run/manifest.json: permission denied (not writable")
    assert "ulimit -n" in describe(OSError(errno.EMFILE, "Too many open files", "/x"))


# --------------------------------------------------------------------------- the recorded model


@pytest.fixture(scope="session")
def other_model(tmp_path_factory, dataset_dir) -> Path:
    """A second valid backup1, trained with another seed: what a careless copy puts in a run."""
    from fmnist.train import TrainConfig, train_model

    run = tmp_path_factory.mktemp("other-seed")
    config = TrainConfig(model=MODEL, epochs=1, limit=500, seed=1)
    train_model(config, run, progress=lambda m: None)
    return RunLayout(run).keras_model(MODEL)


def test_a_swapped_model_is_refused_until_adopted(tmp_path, trained_run, sample_csv, other_model):
    run = run_with_model(trained_run, MODEL, tmp_path)
    keras = RunLayout(run).keras_model(MODEL)
    recorded, swapped = sha256_file(keras), sha256_file(other_model)
    shutil.copy2(other_model, keras)
    out = tmp_path / "out"
    runner = CliRunner()
    for argv in (
        score_args(sample_csv, run, out),
        ["evaluate", "--run", run, "--model", MODEL, "--limit", "50"],
        ["benchmark", "--run", run, "--model", MODEL, "--variants", "keras-predict"],
        ["optimize", "--run", run, "--model", MODEL],
    ):
        result = runner.invoke(main, [str(a) for a in argv])
        assert result.exit_code == 1, result.output
        line = one_error(result.output)
        assert line.startswith(f"error: {keras}: sha256 {swapped[:12]} is not the recorded ")
        assert recorded[:12] in line and f"fmnist-batch adopt {run} models/" in line
    assert not out.exists() or not list(out.iterdir())
    assert not RunLayout(run).metrics_dir.exists() and not RunLayout(run).timings_dir.exists()

    adopted = runner.invoke(main, ["adopt", str(run), "models/backup1/model.keras"])
    assert adopted.exit_code == 0, adopted.output
    assert f"sha256 {swapped[:12]} (was {recorded[:12]})" in adopted.output
    assert read_manifest(run).models[MODEL].keras_sha256 == swapped
    result = runner.invoke(main, score_args(sample_csv, run, out))
    assert result.exit_code == 0, result.output
    assert verify_predictions(out).predicted == ROWS


def test_unknown_and_unreadable_models_say_what_is_wrong(tmp_path, trained_run, sample_csv):
    run = run_with_model(trained_run, MODEL, tmp_path)
    runner = CliRunner()
    argv = ["score", str(sample_csv), "--run", str(run), "--model", "foo"]
    line = one_error(runner.invoke(main, argv).output)
    assert line == "error: unknown model 'foo'; valid models: main, backup1, backup2"
    keras = RunLayout(run).keras_model(MODEL)
    keras.write_bytes(keras.read_bytes()[:100_000])  # truncated
    runner.invoke(main, ["adopt", str(run), str(keras)])  # so that loading is what fails
    result = runner.invoke(main, ["evaluate", "--run", str(run), "--model", MODEL])
    assert result.exit_code == 1
    assert one_error(result.output) == (
        f"error: {keras}: cannot be read as a Keras model (truncated or corrupt)"
    )


# --------------------------------------------------------------------------- a full disk


def test_a_full_disk_is_one_line_and_leaves_nothing_finished(
    tmp_path, trained_run, sample_csv, mounts
):
    out = mounts.tmpfs(tmp_path / "small", "8k")  # less than one shard needs
    for workers in ("1", "2"):
        result = fmnist(
            *score_args(sample_csv, trained_run, out, "--probabilities"),
            "--shard", "all/2", "--workers", workers,
        )  # fmt: skip
        assert result.returncode == 1, result.stderr
        assert (
            one_error(result.stderr) == f"error: {out}: the disk is full (no space left on device)"
        )
        nothing_finished(out)
        if workers == "1":  # (joblib kills a failed task's siblings: theirs may stay)
            assert not list(out.glob(".*.tmp"))  # no temporary file left to fill the disk
    with pytest.raises(Exception, match="not finished|no part"):
        verify_predictions(out)


def test_a_rerun_after_a_full_disk_needs_no_more_room_than_the_first(
    tmp_path, trained_run, sample_csv, mounts
):
    # A shard that was written but not finished (its marker never came): its stale part
    # and rejects go before it is written again, so a disk that holds the shard once
    # is enough.
    done = tmp_path / "done"
    assert CliRunner().invoke(main, score_args(sample_csv, trained_run, done)).exit_code == 0
    part, rejects = done / part_name(0, 1), done / rejects_name(0, 1)
    pages = sum(-(-p.stat().st_size // 4096) for p in (part, rejects, done / marker_name(0, 1)))
    out = mounts.tmpfs(tmp_path / "small", f"{(pages + 2) * 4}k")
    shutil.copy2(part, out)
    shutil.copy2(rejects, out)
    # The padding of a full tmpfs, so that the second copy of the part has no room.
    free = shutil.disk_usage(out).free
    (out / "padding").write_bytes(b"\0" * max(0, free - part.stat().st_size * 3 // 2))
    result = CliRunner().invoke(main, score_args(sample_csv, trained_run, out))
    assert result.exit_code == 0, result.output
    assert verify_predictions(out).predicted == ROWS


# --------------------------------------------------------------------------- read-only


def test_a_read_only_run_scores_elsewhere_and_verifies(tmp_path, trained_run, sample_csv, mounts):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    scored = run / "predictions" / "sample" / MODEL
    assert CliRunner().invoke(main, score_args(sample_csv, run, scored)).exit_code == 0
    view = mounts.read_only(run, tmp_path / "run-ro")
    before = sorted(str(p.relative_to(view)) for p in view.rglob("*"))

    out = tmp_path / "writable"
    result = fmnist(*score_args(sample_csv, view, out))
    assert result.returncode == 0, result.stderr
    [warning] = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert "the file system is read-only" in warning and "Traceback" not in result.stderr
    assert verify_predictions(out).predicted == ROWS  # every row, in = predicted + rejected

    verified = fmnist("verify", view / "predictions" / "sample" / MODEL)
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith(f"ok: 1 shard(s), {ROWS} input rows = {ROWS} predicted")
    assert sorted(str(p.relative_to(view)) for p in view.rglob("*")) == before

    # Writing into it is one line naming where.
    inside = view / "predictions" / "again"
    result = fmnist(*score_args(sample_csv, view, inside))
    assert result.returncode == 1
    line = one_error(result.stderr)
    assert line.startswith(f"error: {view}") and line.endswith(": the file system is read-only")


def test_a_manifest_that_cannot_be_written_is_one_line(tmp_path, mounts):
    run = tmp_path / "run"
    write_text_atomic(RunLayout(run).manifest, "{}\n")
    write_text_atomic(RunLayout(run).keras_model(MODEL), "weights")
    view = mounts.read_only(run, tmp_path / "run-ro")
    result = fmnist("adopt", view, "models/backup1/model.keras")
    assert result.returncode == 1
    assert one_error(result.stderr) == (
        f"error: {view}/.manifest.json.lock: the file system is read-only"
    )
    assert read_manifest(view).models == {}


# --------------------------------------------------------------------------- kill -9


def children(pid: int) -> set[int]:
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found |= {int(c) for c in (task / "children").read_text().split()}
        except OSError:
            pass
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_workers_die_with_a_killed_scorer_and_a_rerun_finishes(
    tmp_path, trained_run, real_csv_factory, dataset
):
    source = real_csv_factory(2000)  # batch 1: a few seconds a shard
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "fmnist", *score_args(source, trained_run, out)]
    argv += ["--shard", "all/2", "--workers", "2", "--batch-size", "1"]
    with open(tmp_path / "killed.log", "w") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        # Kill the scorer once a worker writes a shard: the other is idle or busy too.
        while not list(out.glob(".part-*.tmp")) if out.exists() else True:
            assert process.poll() is None, (tmp_path / "killed.log").read_text()
            assert time.monotonic() < deadline
            time.sleep(0.01)
        workers = {pid for pid in children(process.pid) if alive(pid)}
        assert len(workers) >= 2, workers
        process.send_signal(signal.SIGKILL)
        assert process.wait() == -signal.SIGKILL
    killed_at = time.monotonic()
    while any(alive(pid) for pid in workers) and time.monotonic() - killed_at < 10:
        time.sleep(0.05)
    assert not [pid for pid in workers if alive(pid)], "workers outlived their parent"
    nothing_finished(out)

    rerun = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.count(" scored: ") == 2
    assert verify_predictions(out).predicted == 2000
    from fmnist.data import to_model_input
    from fmnist.engines import create_engine

    engine = create_engine(trained_run, MODEL, "keras-predict", mode="throughput")
    reference = engine.predict(to_model_input(dataset.test.images[:2000]))
    check_predictions(read_parts(out, 2), reference, np.arange(2000))
