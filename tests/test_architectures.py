"""The three networks against the seed report's layer tables, row by row."""

from __future__ import annotations

import pytest

from fmnist.architectures import create_model, describe, layer_table, model_names
from fmnist.io import FmnistError

# Copied from the seed report: layer (type), output shape, params.
SEED_TABLES = {
    "main": """
conv2d (Conv2D)	(None, 28, 28, 32)	320
batch_normalization (BatchNormalization)	(None, 28, 28, 32)	128
conv2d_1 (Conv2D)	(None, 28, 28, 32)	9248
batch_normalization_1 (BatchNormalization)	(None, 28, 28, 32)	128
dropout (Dropout)	(None, 28, 28, 32)	0
conv2d_2 (Conv2D)	(None, 28, 28, 64)	18496
max_pooling2d (MaxPooling2D)	(None, 14, 14, 64)	0
dropout_1 (Dropout)	(None, 14, 14, 64)	0
conv2d_3 (Conv2D)	(None, 14, 14, 128)	73856
batch_normalization_2 (BatchNormalization)	(None, 14, 14, 128)	512
dropout_2 (Dropout)	(None, 14, 14, 128)	0
flatten (Flatten)	(None, 25088)	0
dense (Dense)	(None, 512)	12845568
batch_normalization_3 (BatchNormalization)	(None, 512)	2048
dropout_3 (Dropout)	(None, 512)	0
dense_1 (Dense)	(None, 128)	65664
batch_normalization_4 (BatchNormalization)	(None, 128)	512
dropout_4 (Dropout)	(None, 128)	0
dense_2 (Dense)	(None, 10)	1290
""",
    "backup1": """
conv2d (Conv2D)	(None, 26, 26, 32)	320
max_pooling2d (MaxPooling2D)	(None, 13, 13, 32)	0
conv2d_1 (Conv2D)	(None, 7, 7, 64)	18496
max_pooling2d_1 (MaxPooling2D)	(None, 3, 3, 64)	0
conv2d_2 (Conv2D)	(None, 2, 2, 64)	36928
max_pooling2d_2 (MaxPooling2D)	(None, 1, 1, 64)	0
flatten (Flatten)	(None, 64)	0
dense (Dense)	(None, 128)	8320
dropout (Dropout)	(None, 128)	0
dense_1 (Dense)	(None, 128)	16512
dropout_1 (Dropout)	(None, 128)	0
dense_2 (Dense)	(None, 128)	16512
dropout_2 (Dropout)	(None, 128)	0
dense_3 (Dense)	(None, 128)	16512
dropout_3 (Dropout)	(None, 128)	0
dense_4 (Dense)	(None, 10)	1290
""",
    "backup2": """
conv2d (Conv2D)	(None, 28, 28, 32)	320
max_pooling2d (MaxPooling2D)	(None, 14, 14, 32)	0
conv2d_1 (Conv2D)	(None, 14, 14, 64)	18496
max_pooling2d_1 (MaxPooling2D)	(None, 7, 7, 64)	0
dropout (Dropout)	(None, 7, 7, 64)	0
batch_normalization (BatchNormalization)	(None, 7, 7, 64)	256
conv2d_2 (Conv2D)	(None, 7, 7, 128)	73856
conv2d_3 (Conv2D)	(None, 7, 7, 128)	147584
max_pooling2d_2 (MaxPooling2D)	(None, 3, 3, 128)	0
dropout_1 (Dropout)	(None, 3, 3, 128)	0
flatten (Flatten)	(None, 1152)	0
batch_normalization_1 (BatchNormalization)	(None, 1152)	4608
dense (Dense)	(None, 512)	590336
dropout_2 (Dropout)	(None, 512)	0
dense_1 (Dense)	(None, 10)	5130
""",
}
SEED_TOTALS = {
    "main": (13_017_770, None, None),
    "backup1": (114_890, 114_890, 0),
    "backup2": (840_586, 838_154, 2_432),
}


def parse_seed_table(text: str) -> list[tuple[str, str, tuple, int]]:
    rows = []
    for line in text.strip().splitlines():
        layer, shape, params = line.split("\t")
        name, kind = layer.split(" (")
        dims = tuple(None if d.strip() == "None" else int(d) for d in shape.strip("()").split(","))
        rows.append((name, kind.rstrip(")"), dims, int(params)))
    return rows


@pytest.mark.parametrize("name", ["main", "backup1", "backup2"])
def test_every_row_matches_the_seed_table(name):
    expected = parse_seed_table(SEED_TABLES[name])
    actual = [(r.name, r.type, r.output_shape, r.params) for r in layer_table(create_model(name))]
    assert actual == expected


@pytest.mark.parametrize("name", ["main", "backup1", "backup2"])
def test_parameter_totals(name):
    total, trainable, frozen = SEED_TOTALS[name]
    described = describe(name)
    assert described["params"] == total
    if trainable is not None:
        assert described["trainable_params"] == trainable
        assert described["non_trainable_params"] == frozen


def test_registry_lists_the_seed_order_and_rejects_unknown_names():
    assert model_names() == ["main", "backup1", "backup2"]
    with pytest.raises(FmnistError, match="valid models: main, backup1, backup2"):
        create_model("resnet50")
