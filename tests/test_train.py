"""Training internals: the learning-rate schedule and what a resumed run starts from."""

from __future__ import annotations

import numpy as np
import pytest

from fmnist.train import (
    RECIPES,
    TrainConfig,
    learning_rate,
    resume_seed,
    train_model,
    training_data,
)


def test_a_fresh_run_uses_its_seed_and_a_resumed_one_a_new_stream_per_resume_point():
    assert resume_seed(0, 0) == 0
    assert resume_seed(7, 0) == 7
    resumed = [resume_seed(0, epoch) for epoch in range(1, 6)]
    assert len(set(resumed) | {0}) == 6  # no resume point repeats another's stream
    assert resumed == [resume_seed(0, epoch) for epoch in range(1, 6)]  # deterministic
    assert resume_seed(1, 3) != resume_seed(0, 3)


def test_the_schedule_decays_per_epoch():
    recipe = TrainConfig("backup1", recipe="seed").resolved_recipe()
    assert [learning_rate(recipe, e) for e in range(3)] == pytest.approx([1e-3, 9e-4, 8.1e-4])


def _first_batch(config: TrainConfig, start_epoch: int) -> np.ndarray:
    images = np.arange(64 * 28 * 28, dtype=np.float32).reshape(64, 28, 28, 1) / (64 * 784)
    targets = np.eye(10, dtype=np.float32)[np.arange(64) % 10]
    dataset = training_data(images, targets, config, start_epoch)["x"]
    return next(iter(dataset))[0].numpy()


def test_an_augmented_run_resumes_with_its_own_order_and_augmentations():
    config = TrainConfig("backup1", batch_size=16, recipe="tuned-flip")
    fresh = _first_batch(config, 0)
    assert np.array_equal(fresh, _first_batch(config, 0))  # seeded
    assert not np.array_equal(fresh, _first_batch(config, 3))  # not epoch 1 replayed


def test_flip_only_augmentation_moves_no_pixel_off_its_row():
    assert RECIPES["tuned-flip"].augment and RECIPES["tuned-flip"].shift == 0
    batch = _first_batch(TrainConfig("backup1", batch_size=64, recipe="tuned-flip"), 0)
    rows = np.sort(batch.reshape(64, 28, 28), axis=2)  # a flip only reorders a row
    originals = np.arange(64 * 784, dtype=np.float32).reshape(64, 28, 28) / (64 * 784)
    assert {tuple(r.ravel()) for r in rows} <= {tuple(o.ravel()) for o in originals}


def test_an_unaugmented_run_feeds_arrays_that_keras_shuffles():
    images, targets = np.zeros((8, 28, 28, 1), np.float32), np.zeros(8, np.int32)
    args = training_data(images, targets, TrainConfig("backup1", recipe="tuned"))
    assert args["x"] is images and args["shuffle"] and args["batch_size"] == 64


class _Interrupt(Exception):
    pass


@pytest.mark.slow
def test_a_resumed_epoch_trains_like_an_uninterrupted_one(tmp_path, dataset_dir):
    # With the fresh run's seed, a resumed run replayed its first epoch's exact batches
    # and dropout masks: training accuracy jumped (0.72 -> 0.93 on 4,000 images) while
    # the network was fitting replayed noise. The resumed epoch must look like the
    # uninterrupted run's same epoch, up to the noise of a different random stream.
    config = TrainConfig("backup2", epochs=2, limit=4000, recipe="tuned", data_dir=str(dataset_dir))
    whole = train_model(config, tmp_path / "whole", progress=lambda _: None).history

    def stop_after_first_epoch(message: str) -> None:
        if message.startswith("epoch 1/"):
            raise _Interrupt

    with pytest.raises(_Interrupt):
        train_model(config, tmp_path / "resumed", progress=stop_after_first_epoch)
    resumed = train_model(config, tmp_path / "resumed", progress=lambda _: None).history

    assert resumed["epoch"].tolist() == [1, 2]
    assert resumed["loss"].iloc[0] == pytest.approx(whole["loss"].iloc[0])  # same first epoch
    assert abs(resumed["accuracy"].iloc[1] - whole["accuracy"].iloc[1]) < 0.08
    assert abs(resumed["loss"].iloc[1] - whole["loss"].iloc[1]) < 0.15
