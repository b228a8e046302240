"""The seed report's three CNNs, layer for layer, in a registry by name.

Each builder reads like the seed's layer table: the same layer order, output shapes,
parameter counts and layer names. ``create_model(name)`` is the only way in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from fmnist.io import FmnistError

INPUT_SHAPE = (28, 28, 1)
NUM_CLASSES = 10


@dataclass(frozen=True)
class Architecture:
    """A registered network: its name, the seed's title for it, and its builder."""

    name: str
    seed_title: str
    description: str
    builder: Callable


@dataclass(frozen=True)
class LayerRow:
    """One row of a Keras summary table."""

    name: str
    type: str
    output_shape: tuple
    params: int


_REGISTRY: dict[str, Architecture] = {}


def register(name: str, seed_title: str, description: str):
    """Decorator that adds an architecture builder to the registry under ``name``."""

    def wrap(builder: Callable) -> Callable:
        _REGISTRY[name] = Architecture(name, seed_title, description, builder)
        return builder

    return wrap


def model_names() -> list[str]:
    """Registered architecture names, in the seed's order."""
    return list(_REGISTRY)


def get_architecture(name: str) -> Architecture:
    """The registered architecture ``name``, or an error listing the valid names."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise FmnistError(
            f"unknown model {name!r}; valid models: {', '.join(model_names())}"
        ) from None


def create_model(name: str):
    """Build the (uncompiled) Keras model registered under ``name``."""
    return get_architecture(name).builder()


@register("main", "MAIN_Fashionmnistcnn_AshutoshJha", "Model 1: 4 conv + BN, 3 dense, 13.0 M")
def build_main():
    from keras import Input, Sequential, layers

    return Sequential(
        [
            Input(INPUT_SHAPE),
            layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2d"),
            layers.BatchNormalization(name="batch_normalization"),
            layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2d_1"),
            layers.BatchNormalization(name="batch_normalization_1"),
            layers.Dropout(0.25, name="dropout"),
            layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2d_2"),
            layers.MaxPooling2D(2, name="max_pooling2d"),
            layers.Dropout(0.25, name="dropout_1"),
            layers.Conv2D(128, 3, padding="same", activation="relu", name="conv2d_3"),
            layers.BatchNormalization(name="batch_normalization_2"),
            layers.Dropout(0.25, name="dropout_2"),
            layers.Flatten(name="flatten"),
            layers.Dense(512, activation="relu", name="dense"),
            layers.BatchNormalization(name="batch_normalization_3"),
            layers.Dropout(0.5, name="dropout_3"),
            layers.Dense(128, activation="relu", name="dense_1"),
            layers.BatchNormalization(name="batch_normalization_4"),
            layers.Dropout(0.5, name="dropout_4"),
            layers.Dense(NUM_CLASSES, activation="softmax", name="dense_2"),
        ],
        name="main",
    )


@register("backup1", "1stBackup_Ashutoshjha", "Model 2: 3 strided conv, 4 dense, 115 k")
def build_backup1():
    from keras import Input, Sequential, layers

    # The seed's shapes 13 -> 7 and 3 -> 2 are only reachable with stride 2 and
    # 'same' padding on the second and third convolutions.
    return Sequential(
        [
            Input(INPUT_SHAPE),
            layers.Conv2D(32, 3, activation="relu", name="conv2d"),
            layers.MaxPooling2D(2, name="max_pooling2d"),
            layers.Conv2D(64, 3, strides=2, padding="same", activation="relu", name="conv2d_1"),
            layers.MaxPooling2D(2, name="max_pooling2d_1"),
            layers.Conv2D(64, 3, strides=2, padding="same", activation="relu", name="conv2d_2"),
            layers.MaxPooling2D(2, name="max_pooling2d_2"),
            layers.Flatten(name="flatten"),
            layers.Dense(128, activation="relu", name="dense"),
            layers.Dropout(0.2, name="dropout"),
            layers.Dense(128, activation="relu", name="dense_1"),
            layers.Dropout(0.2, name="dropout_1"),
            layers.Dense(128, activation="relu", name="dense_2"),
            layers.Dropout(0.2, name="dropout_2"),
            layers.Dense(128, activation="relu", name="dense_3"),
            layers.Dropout(0.2, name="dropout_3"),
            layers.Dense(NUM_CLASSES, activation="softmax", name="dense_4"),
        ],
        name="backup1",
    )


@register("backup2", "2ndBackup_cnnAshutosh", "Model 3: 4 conv + BN, 2 dense, 841 k")
def build_backup2():
    from keras import Input, Sequential, layers

    return Sequential(
        [
            Input(INPUT_SHAPE),
            layers.Conv2D(32, 3, padding="same", activation="relu", name="conv2d"),
            layers.MaxPooling2D(2, name="max_pooling2d"),
            layers.Conv2D(64, 3, padding="same", activation="relu", name="conv2d_1"),
            layers.MaxPooling2D(2, name="max_pooling2d_1"),
            layers.Dropout(0.25, name="dropout"),
            layers.BatchNormalization(name="batch_normalization"),
            layers.Conv2D(128, 3, padding="same", activation="relu", name="conv2d_2"),
            layers.Conv2D(128, 3, padding="same", activation="relu", name="conv2d_3"),
            layers.MaxPooling2D(2, name="max_pooling2d_2"),
            layers.Dropout(0.25, name="dropout_1"),
            layers.Flatten(name="flatten"),
            layers.BatchNormalization(name="batch_normalization_1"),
            layers.Dense(512, activation="relu", name="dense"),
            layers.Dropout(0.5, name="dropout_2"),
            layers.Dense(NUM_CLASSES, activation="softmax", name="dense_1"),
        ],
        name="backup2",
    )


def layer_table(model) -> list[LayerRow]:
    """The model's summary table: name, layer type, output shape and parameter count."""
    return [
        LayerRow(
            name=layer.name,
            type=type(layer).__name__,
            output_shape=tuple(layer.output.shape),
            params=layer.count_params(),
        )
        for layer in model.layers
    ]


def describe(name: str) -> dict:
    """A JSON-ready description of an architecture: layers and parameter counts."""
    model = create_model(name)
    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    total = model.count_params()
    arch = get_architecture(name)
    return {
        "name": name,
        "seed_title": arch.seed_title,
        "description": arch.description,
        "params": total,
        "trainable_params": trainable,
        "non_trainable_params": total - trainable,
        "layers": [
            {**asdict(row), "output_shape": list(row.output_shape)} for row in layer_table(model)
        ],
    }
