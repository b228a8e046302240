"""A training stopped mid-epoch by SIGTERM goes on where it was: the rest of that epoch's
order, and the per-step learning-rate schedule from its step count."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
from click.testing import CliRunner

import fmnist.train as train
from fmnist.train import TrainConfig, train_model
from fmnist.train_stop import (
    CONTINUE_EXIT,
    POSITION_FILE,
    Position,
    StopRequest,
    remaining_batches,
)
from fmnist.training_data import training_dataset


def _indexed_images(n: int) -> np.ndarray:
    # Each image carries its index in two pixels, so a batch says which images it holds.
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    images[:, 0, 0], images[:, 0, 1] = np.arange(n) // 256, np.arange(n) % 256
    return images


def _indices(batch) -> list[int]:
    x = np.rint(batch[0].numpy()[:, 0, :2, 0] * 255).astype(int)
    return (x[:, 0] * 256 + x[:, 1]).tolist()


@pytest.mark.parametrize("epochs_before, batches_done", [(0, 0), (0, 3), (2, 5)])
def test_remaining_batches_are_the_rest_of_the_stopped_epochs_order(epochs_before, batches_done):
    import tensorflow as tf

    n, size, seed = 300, 32, 1234
    tf.random.set_seed(seed)  # as train._start seeds a run before building its dataset
    dataset = training_dataset(
        _indexed_images(n), np.zeros(n), batch_size=size, one_hot=False, flip=False,
        shift=0.0, seed=seed,
    )  # fmt: skip
    epochs = [[_indices(batch) for batch in dataset] for _ in range(epochs_before + 1)]
    stopped = epochs[epochs_before]
    rest = remaining_batches(n, size, seed, epochs_before, batches_done)
    assert [b.tolist() for b in rest] == stopped[batches_done:]
    seen = sorted(i for b in stopped[:batches_done] for i in b)
    assert sorted(np.concatenate(rest).tolist() + seen) == list(range(n))  # each image once


class _StopAfter(StopRequest):
    """A real SIGTERM to this process at the ``n``-th look (the stop callback looks after
    every batch and at every epoch's end); StopRequest's handler turns it into the request."""

    n = 0

    @property
    def requested(self) -> bool:
        self._asked = getattr(self, "_asked", 0) + 1
        if self._asked == type(self).n and not self._flag:
            os.kill(os.getpid(), signal.SIGTERM)
        return self._flag

    @requested.setter
    def requested(self, value: bool) -> None:
        self._flag = value


@pytest.mark.slow
def test_a_training_stopped_mid_epoch_goes_on_where_it_was(tmp_path, dataset_dir, monkeypatch):
    # One-cycle: a per-step schedule, whose rate at each epoch's end tells the step count.
    config = TrainConfig(
        "backup1", epochs=2, limit=1500, batch_size=100, recipe="fast", data_dir=str(dataset_dir)
    )
    whole = train_model(config, tmp_path / "whole", progress=lambda _: None).history

    # 15 batches an epoch (1,500 images), one more look at its end: 5 into the second.
    _StopAfter.n = 21
    monkeypatch.setattr(train, "StopRequest", _StopAfter)
    with pytest.raises(train.TrainingStopped):
        train_model(config, tmp_path / "stopped", progress=lambda _: None)
    checkpoint = tmp_path / "stopped" / "models" / "backup1" / "checkpoint"
    position = Position.load(checkpoint)
    assert (position.epoch, position.batches, position.stream_epoch) == (1, 5, 0)
    assert [row["epoch"] for row in position.rows] == [1]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is gone

    monkeypatch.setattr(train, "StopRequest", StopRequest)
    messages = []
    resumed = train_model(config, tmp_path / "stopped", progress=messages.append).history
    assert "resuming backup1 in epoch 2/2 after 5 batches" in messages
    assert resumed["epoch"].tolist() == [1, 2]
    # The schedule went on from its step: the same rate at the end as without a stop.
    assert resumed["lr"].tolist() == pytest.approx(whole["lr"].tolist())
    assert resumed["loss"].iloc[0] == pytest.approx(whole["loss"].iloc[0])
    assert not (checkpoint / POSITION_FILE).exists()

    # A stop at an epoch's last batch lets the epoch end: its checkpoint is the position.
    _StopAfter.n = 15
    monkeypatch.setattr(train, "StopRequest", _StopAfter)
    with pytest.raises(train.TrainingStopped):
        train_model(config, tmp_path / "at-the-end", progress=lambda _: None)
    checkpoint = tmp_path / "at-the-end" / "models" / "backup1" / "checkpoint"
    assert Position.load(checkpoint) is None
    assert json.loads((checkpoint / "state.json").read_text())["epoch"] == 1


def test_the_train_command_exits_continue_when_stopped(tmp_path, monkeypatch):
    from fmnist.cli import main

    def stopped(config, run, progress):
        raise train.TrainingStopped("stopped in epoch 2, its position saved")

    monkeypatch.setattr(train, "train_model", stopped)
    result = CliRunner().invoke(main, ["train", "--model", "backup1", "--out", str(tmp_path)])
    assert result.exit_code == CONTINUE_EXIT == 75
    assert "train backup1: stopped in epoch 2, its position saved" in result.output


def test_position_round_trip(tmp_path):
    (tmp_path / "partial.keras").write_text("model")
    Position(3, 7, 2, [{"epoch": 1}], {"acc": 0.5}).save(tmp_path)
    assert json.loads((tmp_path / POSITION_FILE).read_text())["batches"] == 7
    assert Position.load(tmp_path) == Position(3, 7, 2, [{"epoch": 1}], {"acc": 0.5})
    (tmp_path / "partial.keras").unlink()
    assert Position.load(tmp_path) is None  # the model is part of the position
