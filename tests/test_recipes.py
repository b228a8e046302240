"""The `fast` recipes: per-network settings, the one-cycle schedule, the bf16 decision,
progress lines, FLOP counts, and real short trainings that learn."""

from __future__ import annotations

import math

import pytest

from fmnist.io import FmnistError
from fmnist.recipes import (
    RECIPES,
    one_cycle_rate,
    recipe_for,
    training_precision,
    warmup_steps,
)
from fmnist.system import has_native_bf16
from fmnist.train import TrainConfig, due_for_validation, progress_line, train_model


def test_fast_has_a_recipe_per_network_and_shared_ones_serve_every_network():
    fast = {name: recipe_for("fast", name) for name in ("main", "backup1", "backup2")}
    assert {r.schedule for r in fast.values()} == {"one-cycle"}
    assert fast["main"] is not fast["backup1"] and fast["main"] != fast["backup1"]
    assert recipe_for("seed", "main") is recipe_for("seed", "backup2") is RECIPES["seed"]
    with pytest.raises(FmnistError, match="unknown recipe 'fastest'; valid recipes: seed"):
        recipe_for("fastest", "main")


def test_the_config_takes_epochs_and_batch_size_from_the_recipe_unless_given():
    resolved = TrainConfig("backup2", recipe="fast").with_recipe_defaults()
    assert (resolved.epochs, resolved.batch_size) == (
        recipe_for("fast", "backup2").epochs,
        recipe_for("fast", "backup2").batch_size,
    )
    given = TrainConfig("backup2", recipe="fast", epochs=1, batch_size=32).with_recipe_defaults()
    assert (given.epochs, given.batch_size) == (1, 32)
    assert TrainConfig("main").with_recipe_defaults().epochs == 40  # the seed's


def test_one_cycle_warms_up_linearly_then_falls_to_zero_as_keras_runs_it():
    import keras

    recipe = recipe_for("fast", "backup1")
    total = 1000
    warmup = warmup_steps(recipe, total)
    assert warmup == 200
    rates = [one_cycle_rate(recipe, step, total) for step in (0, 100, 200, 600, 1000)]
    peak = recipe.learning_rate
    assert rates == pytest.approx([0, peak / 2, peak, peak / 2, 0], abs=1e-9)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, total - warmup, alpha=0.0, warmup_target=peak, warmup_steps=warmup
    )
    for step in (0, 50, 199, 200, 433, 999):
        assert float(schedule(step)) == pytest.approx(
            one_cycle_rate(recipe, step, total), rel=1e-5, abs=1e-7
        )


@pytest.mark.parametrize(
    ("flags", "cap", "native"),
    [
        ({"avx512f", "avx512_bf16"}, "", True),
        ({"amx_bf16", "amx_tile"}, "", True),
        ({"avx2", "avx512f", "avx512_vnni"}, "", False),
        ({"avx512f", "avx512_bf16"}, "AVX2", False),
        ({"avx512f", "avx512_bf16"}, "avx512_core_vnni", False),
        ({"avx512f", "avx512_bf16"}, "AVX512_CORE_BF16", True),
    ],
)
def test_bf16_is_native_only_with_its_instructions_and_no_lower_isa_cap(flags, cap, native):
    assert has_native_bf16(flags, cap) is native


def test_bf16_native_recipes_train_in_f32_where_bf16_would_be_emulated():
    fast = recipe_for("fast", "backup2")
    assert fast.precision == "bf16-native"
    assert training_precision(fast, native_bf16=True) == "mixed_bfloat16"
    assert training_precision(fast, native_bf16=False) == "float32"
    assert training_precision(RECIPES["seed"], native_bf16=True) == "float32"


def test_validation_runs_every_nth_epoch_and_always_the_last():
    recipe = recipe_for("fast", "main")
    every_third = type(recipe)(**{**recipe.__dict__, "validate_every": 3})
    assert [e for e in range(1, 8) if due_for_validation(every_third, e, 7)] == [3, 6, 7]
    assert all(due_for_validation(recipe_for("seed", "main"), e, 5) for e in range(1, 6))


def test_a_progress_line_shows_the_time_so_far_and_an_estimate_of_the_time_left():
    row = dict(epoch=3, loss=0.5, accuracy=0.8, val_loss=0.4, val_accuracy=0.85)
    line = progress_line({**row, "lr": 1e-3, "seconds": 61.0}, 10, elapsed=180.0, epochs_timed=3)
    assert line.startswith("epoch 3/10  loss 0.5000  acc 0.8000  val_loss 0.4000")
    assert "elapsed 0:03:00  left ~0:07:00" in line  # 60 s an epoch, 7 to go
    resumed = progress_line({**row, "lr": 1e-3, "seconds": 61.0}, 10, 60.0, epochs_timed=1)
    assert "left ~0:07:00" in resumed  # only the epochs this process timed count
    unvalidated = {**row, "val_loss": math.nan, "val_accuracy": math.nan, "lr": 0, "seconds": 1}
    assert "val_acc" not in progress_line(unvalidated, 10, 1.0, 1)


def test_training_flops_are_counted_from_the_layers():
    from fmnist.architectures import create_model
    from fmnist.bench.training import forward_flops, training_flops_per_image

    backup1 = create_model("backup1")
    # conv 26x26x(3x3x1)x32, conv 7x7x(3x3x32)x64, conv 2x2x(3x3x64)x64, then the dense
    # layers 64->128, 3x 128->128 and 128->10: two FLOPs per multiply-add.
    macs = 26 * 26 * 9 * 32 + 7 * 7 * 9 * 32 * 64 + 2 * 2 * 9 * 64 * 64
    macs += 64 * 128 + 3 * 128 * 128 + 128 * 10
    assert forward_flops(backup1) == 2 * macs
    assert training_flops_per_image(backup1) == 3 * 2 * macs
    assert forward_flops(create_model("main")) > 30 * forward_flops(backup1)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "limit", "batch_size", "accuracy"),
    [("backup1", 12000, None, 0.7), ("backup2", 6000, 32, 0.7), ("main", 3000, 32, 0.5)],
)
def test_each_fast_recipe_learns_in_a_short_real_run(
    tmp_path, dataset_dir, dataset, model, limit, batch_size, accuracy
):
    # The fast recipes as they are (one-cycle, flips, label smoothing, bf16 where native),
    # on a subset for two epochs of about 200-400 steps (the networks with batch norm at
    # batch 32: their moving statistics need that many steps to describe the last
    # weights): the loss falls and a test subset is mostly right.
    import keras

    from fmnist.data import to_model_input

    config = TrainConfig(
        model,
        epochs=2,
        batch_size=batch_size,
        limit=limit,
        recipe="fast",
        data_dir=str(dataset_dir),
    )
    lines: list[str] = []
    result = train_model(config, tmp_path, progress=lines.append)
    history = result.history
    assert history["loss"].iloc[1] < history["loss"].iloc[0]
    assert [line.split()[1] for line in lines] == ["1/2", "2/2"] and "left ~0:00:00" in lines[1]
    saved = keras.models.load_model(result.model_path)
    assert getattr(saved, "optimizer", None) is None  # an inference copy
    assert {layer.dtype_policy.name for layer in saved.layers} == {"float32"}
    images, labels = to_model_input(dataset.test.images[:1000]), dataset.test.labels[:1000]
    predicted = saved.predict(images, verbose=0).argmax(axis=1)
    assert (predicted == labels).mean() >= accuracy
    from fmnist.manifest import read_manifest

    entry = read_manifest(tmp_path).models[model]
    expected = "mixed_bfloat16" if has_native_bf16() else "float32"
    assert entry.training_precision == expected and entry.native_bf16 == has_native_bf16()
    assert entry.images_per_second > 0
    assert history["lr"].iloc[-1] == pytest.approx(0.0, abs=1e-8)  # the cycle ended at zero


@pytest.mark.slow
def test_the_training_benchmark_measures_in_a_process_of_its_own():
    from fmnist.architectures import create_model
    from fmnist.bench.training import in_subprocess, training_flops_per_image

    measured = in_subprocess("train", "backup1", "float32", "32", "1")
    assert measured["precision"] == "float32" and measured["steps"] >= 10
    assert measured["flops_per_image"] == training_flops_per_image(create_model("backup1"))
    assert measured["images_per_second"] > 0
    assert measured["gflops"] == pytest.approx(
        measured["images_per_second"] * measured["flops_per_image"] / 1e9
    )
    assert in_subprocess("gemm", "float32", "0.2")["gflops"] > 0
    with pytest.raises(RuntimeError, match="unknown measurement 'nothing'"):
        in_subprocess("nothing")


def test_peak_distills_the_small_networks_from_main_and_trains_main_itself():
    assert recipe_for("peak", "main").teacher is None
    for student in ("backup1", "backup2"):
        recipe = recipe_for("peak", student)
        assert recipe.teacher == "main" and 0 < recipe.distill_weight < 1
        assert recipe.one_hot and recipe.schedule == "one-cycle" and recipe.name == "peak"
    with pytest.raises(FmnistError, match="distill_weight without a teacher"):
        type(recipe)("x", distill_weight=0.5)


@pytest.mark.slow
def test_a_distilled_student_learns_from_a_teacher_of_another_run(tmp_path, dataset_dir, dataset):
    # A tiny teacher (backup1, fast, two epochs on 6,000 images, about 75 %) teaches
    # backup2 with the peak recipe on 3,000 images: the student learns, and the manifest
    # names the teacher's file and its SHA-256.
    import keras

    from fmnist.data import to_model_input
    from fmnist.io import sha256_file
    from fmnist.manifest import read_manifest

    teacher_run, student_run = tmp_path / "teacher", tmp_path / "student"
    teach = TrainConfig("backup1", epochs=2, limit=6000, recipe="fast", data_dir=str(dataset_dir))
    teacher = train_model(teach, teacher_run, progress=lambda _: None).model_path
    config = TrainConfig(
        "backup2",
        epochs=2,
        batch_size=32,
        limit=3000,
        recipe="peak",
        teacher=str(teacher),
        data_dir=str(dataset_dir),
    )
    lines: list[str] = []
    result = train_model(config, student_run, progress=lines.append)
    # The teacher sees every example the student trains on: the images and their views.
    views = recipe_for("peak", "backup2").teacher_views
    assert lines[0].startswith(
        f"teacher {teacher}: probabilities of 3000 images, {views - 1} shifted views of each "
        f"({3000 * views} in all), and their flips in "
    ), lines[0]
    history = result.history
    assert history["loss"].iloc[1] < history["loss"].iloc[0]
    student = keras.models.load_model(result.model_path)
    images, labels = to_model_input(dataset.test.images[:1000]), dataset.test.labels[:1000]
    assert (student.predict(images, verbose=0).argmax(axis=1) == labels).mean() >= 0.6
    entry = read_manifest(student_run).models["backup2"]
    assert entry.teacher == str(teacher) and entry.teacher_sha256 == sha256_file(teacher)
    assert entry.recipe["distill_weight"] == recipe_for("peak", "backup2").distill_weight
    assert entry.train_images == 3000  # the split's images, not the views
    assert not (student_run / "models" / "backup2" / "checkpoint").exists()
