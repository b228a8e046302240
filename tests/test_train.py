"""Training internals: the learning-rate schedule and what a resumed run starts from."""

from __future__ import annotations

import numpy as np
import pytest

from fmnist.io import FmnistError, RunLayout
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


def _images(n: int = 64) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (n, 28, 28), dtype=np.uint8)


def _first_batch(config: TrainConfig, start_epoch: int) -> tuple[np.ndarray, np.ndarray]:
    images, labels = _images(), np.arange(64) % 10
    dataset = training_data(images, labels, config.with_recipe_defaults(), start_epoch)
    x, y = next(iter(dataset))
    return x.numpy(), y.numpy()


def test_an_augmented_run_resumes_with_its_own_order_and_augmentations():
    config = TrainConfig("backup1", batch_size=16, recipe="tuned-flip")
    fresh = _first_batch(config, 0)[0]
    assert np.array_equal(fresh, _first_batch(config, 0)[0])  # seeded
    assert not np.array_equal(fresh, _first_batch(config, 3)[0])  # not epoch 1 replayed


def test_flip_only_augmentation_moves_no_pixel_off_its_row():
    assert RECIPES["tuned-flip"].augment and RECIPES["tuned-flip"].shift == 0
    batch = _first_batch(TrainConfig("backup1", batch_size=64, recipe="tuned-flip"), 0)[0]
    rows = np.sort(batch.reshape(64, 28, 28), axis=2)  # a flip only reorders a row
    originals = np.sort(_images().astype(np.float32) / 255.0, axis=2)
    assert {r.tobytes() for r in rows} <= {o.tobytes() for o in originals}
    assert {r.tobytes() for r in rows} == {o.tobytes() for o in originals}  # every image once


def test_an_unaugmented_run_feeds_every_image_scaled_once_per_epoch_in_a_new_order():
    config = TrainConfig("backup1", batch_size=64, recipe="tuned", augment=False)
    x, y = _first_batch(config, 0)
    assert x.shape == (64, 28, 28, 1) and x.dtype == np.float32 and x.max() <= 1.0
    assert y.shape == (64, 10)  # label smoothing needs one-hot targets
    by_image = {img.tobytes(): i for i, img in enumerate(_images().astype(np.float32) / 255.0)}
    order = [by_image[img.reshape(28, 28).tobytes()] for img in x]
    assert sorted(order) == list(range(64)) and order != list(range(64))  # shuffled
    assert [int(np.argmax(t)) for t in y] == [i % 10 for i in order]  # labels follow
    seed = TrainConfig("backup1", batch_size=64, recipe="seed").with_recipe_defaults()
    assert next(iter(training_data(_images(), np.arange(64) % 10, seed)))[1].shape == (64,)


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


def test_the_quick_recipe_sets_batch_norm_momentum_and_nothing_of_the_architecture():
    from fmnist.architectures import create_model, layer_table
    from fmnist.train import apply_batch_norm_momentum

    def momenta(model) -> list[float]:
        return [layer.momentum for layer in model.layers if "batch_norm" in layer.name]

    model = create_model("backup2")
    before = layer_table(model)
    apply_batch_norm_momentum(model, RECIPES["quick"])
    assert momenta(model) == [0.7, 0.7]
    assert layer_table(model) == before and model.count_params() == 840_586
    untouched = create_model("backup2")
    apply_batch_norm_momentum(untouched, RECIPES["seed"])
    assert momenta(untouched) == [0.99, 0.99]  # the layers' own


def test_dropout_scale_changes_the_training_rates_not_the_published_network():
    from dataclasses import replace

    from fmnist.architectures import create_model, layer_table
    from fmnist.train import inference_copy, scale_dropout

    def rates(model) -> list[float]:
        return [layer.rate for layer in model.layers if "dropout" in layer.name]

    trained = create_model("backup2")
    before = layer_table(trained)
    scale_dropout(trained, replace(RECIPES["seed"], dropout_scale=0.5))
    assert rates(trained) == [0.125, 0.125, 0.25]
    assert layer_table(trained) == before
    published = inference_copy(trained, "backup2", RECIPES["seed"])
    assert rates(published) == [0.25, 0.25, 0.5]  # the architecture's own
    with pytest.raises(FmnistError, match="dropout_scale"):
        replace(RECIPES["seed"], dropout_scale=1.5)


@pytest.mark.slow
def test_a_short_quick_run_predicts_more_than_one_class(tmp_path, dataset_dir, dataset):
    # 47 steps at the layers' own BatchNorm momentum (0.99) leave moving statistics of
    # the first batches' weights: backup2 scored 10-16 % (one class for nearly every
    # image). The quick recipe's statistics follow the last batches: about 74 %.
    import keras

    from fmnist.data import to_model_input

    config = TrainConfig("backup2", epochs=1, limit=3000, recipe="quick", data_dir=str(dataset_dir))
    result = train_model(config, tmp_path, progress=lambda _: None)
    model = keras.models.load_model(result.model_path)
    assert {layer.momentum for layer in model.layers if "batch_norm" in layer.name} == {0.7}
    images, labels = to_model_input(dataset.test.images[:1000]), dataset.test.labels[:1000]
    predicted = model.predict(images, verbose=0).argmax(axis=1)
    assert len(set(predicted)) == 10
    assert (predicted == labels).mean() >= 0.6


# --------------------------------------------------------------------------- distillation


def _teacher_rows(n: int) -> np.ndarray:
    return np.random.default_rng(2).dirichlet(np.ones(10), n).astype(np.float32)


def test_distillation_targets_are_probability_rows_and_alpha_zero_is_the_one_hot_label():
    from fmnist.training_data import mix_targets

    labels, teacher = np.arange(30) % 10, _teacher_rows(30)
    for alpha in (0.0, 0.3, 0.7, 1.0):
        mixed = mix_targets(labels, teacher, alpha)
        assert mixed.dtype == np.float32 and mixed.shape == (30, 10)
        assert mixed.sum(axis=1) == pytest.approx(np.ones(30), abs=1e-6)
    assert np.array_equal(mix_targets(labels, teacher, 0.0), np.eye(10)[labels])
    assert mix_targets(labels, teacher, 1.0) == pytest.approx(teacher)
    half = mix_targets(labels, teacher, 0.5)
    assert half[0, 0] == pytest.approx(0.5 + teacher[0, 0] / 2)


def test_the_teachers_cached_rows_are_named_by_the_split_they_were_computed_for():
    from fmnist.data import Split
    from fmnist.train import teacher_cache_name

    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)
    labels = np.arange(40, dtype=np.uint8) % 10
    split = Split(images, labels)
    reordered = Split(images[::-1].copy(), labels[::-1].copy())  # another seed's order
    name = teacher_cache_name("ab" * 32, split)
    assert name == teacher_cache_name("ab" * 32, Split(images.copy(), labels.copy()))
    assert name.startswith("teacher-" + "ab" * 8 + "-40-") and name.endswith(".npy")
    assert teacher_cache_name("ab" * 32, reordered) != name  # same length, other rows
    assert teacher_cache_name("cd" * 32, split) != name


def test_teacher_views_are_the_images_then_copies_moved_by_at_most_two_pixels():
    from fmnist.data import Split
    from fmnist.recipes import Recipe
    from fmnist.train import with_teacher_views
    from fmnist.training_data import shifted_views

    # One lit pixel per image, away from the edges: a view's moved pixel shows its offset.
    images = np.zeros((50, 28, 28), dtype=np.uint8)
    spots = np.random.default_rng(4).integers(3, 25, (50, 2))
    images[np.arange(50), spots[:, 0], spots[:, 1]] = 200
    views = shifted_views(images, 4, seed=7)
    assert views.shape == (200, 28, 28) and views.dtype == np.uint8
    assert np.array_equal(views[:50], images)  # the images themselves come first
    offsets = set()
    for k in range(1, 4):
        for i in range(50):
            [[y, x]] = np.argwhere(views[k * 50 + i])
            dy, dx = y - spots[i, 0], x - spots[i, 1]
            assert (dy, dx) != (0, 0) and max(abs(dy), abs(dx)) <= 2
            assert views[k * 50 + i, y, x] == 200
            offsets.add((dy, dx))
    assert len(offsets) > 12  # drawn across the 24 offsets, not one for all
    assert np.array_equal(shifted_views(images, 4, seed=7), views)  # a resumed run's views
    assert not np.array_equal(shifted_views(images, 4, seed=8), views)
    # A pixel moved past the border is gone; the uncovered edge is background.
    edge = np.zeros((1, 28, 28), dtype=np.uint8)
    edge[0, :, 0] = 255
    moved = shifted_views(np.repeat(edge, 40, axis=0), 2, seed=1)[40:]
    assert all(m.sum() in (0, 255 * 28, 255 * 27, 255 * 26) for m in moved)
    assert shifted_views(images, 1, seed=7) is images

    split = Split(images, np.arange(50, dtype=np.uint8) % 10)
    plain = Recipe("x", teacher="main", distill_weight=0.5)
    assert with_teacher_views(split, plain, 0) is split
    viewed = with_teacher_views(split, Recipe("x", teacher="main", teacher_views=3), 0)
    assert len(viewed) == 150 and np.array_equal(viewed.labels, np.tile(split.labels, 3))
    with pytest.raises(FmnistError, match="teacher_views without a teacher"):
        Recipe("x", teacher_views=2)
    with pytest.raises(FmnistError, match="teacher_views must be at least 1"):
        Recipe("x", teacher="main", teacher_views=0)


def test_alpha_zero_feeds_the_batches_a_non_distilling_run_is_fed():
    from fmnist.training_data import mix_targets

    config = TrainConfig("backup1", batch_size=16, recipe="tuned-flip").with_recipe_defaults()
    labels = np.arange(64) % 10
    plain = next(iter(training_data(_images(), labels, config)))
    soft = mix_targets(labels, _teacher_rows(64), 0.0)
    taught = next(iter(training_data(_images(), labels, config, soft_targets=soft)))
    assert np.array_equal(plain[0].numpy(), taught[0].numpy())  # same order and flips
    assert np.array_equal(plain[1].numpy(), taught[1].numpy())  # the same one-hot rows
    # A real teacher's rows travel with their images through the shuffle.
    teacher = mix_targets(labels, _teacher_rows(64), 0.6)
    x, y = next(iter(training_data(_images(), labels, config, soft_targets=teacher)))
    by_row = {row.tobytes(): i for i, row in enumerate(teacher)}
    order = [by_row[row.tobytes()] for row in y.numpy()]
    for image, i in zip(x.numpy()[..., 0], order, strict=True):
        original = _images()[i].astype(np.float32) / 255.0
        assert np.array_equal(image, original) or np.array_equal(image, original[:, ::-1])


def test_the_teacher_probabilities_average_each_image_with_its_flip():
    from fmnist.training_data import flip_averaged_probabilities

    weights = np.random.default_rng(3).normal(size=(784, 10)).astype(np.float32)

    def predict(batch):  # a teacher that tells left from right
        logits = batch.reshape(len(batch), -1) @ weights
        exp = np.exp(logits - logits.max(axis=1, keepdims=True))
        return exp / exp.sum(axis=1, keepdims=True)

    images = _images(7)
    averaged = flip_averaged_probabilities(predict, images, batch_size=3)  # a ragged last batch
    scaled = images.astype(np.float32)[..., None] / 255.0
    expected = (predict(scaled) + predict(scaled[:, :, ::-1])) / 2
    assert averaged.shape == (7, 10) and averaged == pytest.approx(expected, abs=1e-6)
    assert averaged.sum(axis=1) == pytest.approx(np.ones(7), abs=1e-5)
    assert not np.allclose(predict(scaled), predict(scaled[:, :, ::-1]))  # flips matter to it
    mirrored = flip_averaged_probabilities(predict, images[:, :, ::-1].copy(), batch_size=3)
    assert mirrored == pytest.approx(averaged, abs=1e-6)  # the same for a flipped image


def test_a_missing_or_unreadable_teacher_is_a_one_line_error(tmp_path):
    from click.testing import CliRunner

    from fmnist.cli import main

    def train(*args):
        base = ["train", "--model", "backup2", "--out", str(tmp_path / "run")]
        return CliRunner().invoke(main, [*base, *args])

    own = tmp_path / "run" / "models" / "main" / "model.keras"
    result = train("--recipe", "peak")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: teacher {own}: model file not found "
        f"(train main into {tmp_path / 'run'} first, or give --teacher PATH)"
    ]
    elsewhere = tmp_path / "other" / "main.keras"
    result = train("--recipe", "peak", "--teacher", str(elsewhere))
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"error: teacher {elsewhere}: model file not found (check --teacher)"
    ]
    assert not (tmp_path / "run" / "models").exists()  # refused before anything is written
    result = train("--recipe", "fast", "--teacher", str(elsewhere))
    assert result.exit_code == 1
    assert "recipe 'fast' does not distill backup2" in result.output
    # A teacher in a run directory must be the file its run recorded.
    other_run = tmp_path / "other"
    RunLayout(other_run).keras_model("main").parent.mkdir(parents=True)
    RunLayout(other_run).keras_model("main").write_bytes(b"not a zip")
    (other_run / "manifest.json").write_text("{}")
    result = train("--recipe", "peak", "--teacher", str(RunLayout(other_run).keras_model("main")))
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert "model.keras: not recorded in" in result.output


def test_a_teacher_that_keras_cannot_read_is_named(tmp_path):
    from fmnist.io import FmnistError
    from fmnist.train import _load_teacher

    corrupt = tmp_path / "model.keras"
    corrupt.write_bytes(b"not a zip")
    with pytest.raises(FmnistError, match=f"teacher {corrupt}: cannot be loaded"):
        _load_teacher(corrupt)
