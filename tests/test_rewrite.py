"""Flatten + Dense heads rewritten as convolutions: same function, different kernel."""

from __future__ import annotations

import numpy as np
import pytest

from fmnist.architectures import create_model
from fmnist.data import to_model_input
from fmnist.engines.rewrite import dense_heads_as_convolutions


@pytest.fixture(scope="module")
def images(dataset):
    return to_model_input(dataset.test.images[:64])


def test_main_head_becomes_a_14x14_convolution_with_the_same_outputs(images):
    model = create_model("main")  # random weights: the identity must not depend on training
    rewritten, rewrites = dense_heads_as_convolutions(model)
    assert [(r.dense, r.convolution, r.kernel, r.weights) for r in rewrites] == [
        ("dense", "dense_as_conv", (14, 14), 25088 * 512)
    ]
    assert rewritten.count_params() == model.count_params()
    assert "dense_as_conv" in [layer.name for layer in rewritten.layers]
    expected = model.predict_on_batch(images)
    got = rewritten.predict_on_batch(images)
    assert np.max(np.abs(got - expected)) < 1e-5


def test_small_heads_are_left_alone_unless_asked():
    import keras

    model = keras.Sequential(
        [keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(5, name="head")]
    )
    same, rewrites = dense_heads_as_convolutions(model)
    assert same is model and rewrites == []
    rewritten, rewrites = dense_heads_as_convolutions(model, min_weights=0)
    assert [(r.dense, r.kernel, r.weights) for r in rewrites] == [("head", (4, 4), 240)]
    features = np.random.default_rng(0).random((8, 4, 4, 3), dtype=np.float32)
    difference = rewritten.predict_on_batch(features) - model.predict_on_batch(features)
    assert np.max(np.abs(difference)) < 1e-5


def test_a_1x1_map_or_a_batch_norm_after_flatten_is_not_rewritten():
    # backup1 flattens a 1x1x64 map (already a matrix product); backup2 normalizes the
    # flattened features before its dense layer, so it has no Flatten + Dense pair.
    for name in ("backup1", "backup2"):
        model = create_model(name)
        assert dense_heads_as_convolutions(model, min_weights=0) == (model, [])
