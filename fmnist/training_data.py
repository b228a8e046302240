"""The training input pipeline: tf.data end to end, no Python per batch.

The uint8 images stay in memory as they are loaded (54,000 x 784 bytes); each batch is
shuffled, scaled to [0, 1], one-hot encoded when the loss smooths labels, and augmented
inside TensorFlow's graph, and the next batches are prepared while the model trains on
this one (prefetch).
"""

from __future__ import annotations

import numpy as np

NUM_CLASSES = 10
VALIDATION_BATCH = 500


def training_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    *,
    batch_size: int,
    one_hot: bool,
    flip: bool,
    shift: float,
    seed: int,
    shuffle: bool = True,
    soft_targets: np.ndarray | None = None,
):
    """Shuffled, scaled, optionally augmented batches of ``(images, targets)``.

    ``images``: uint8 (N, 28, 28); ``flip``: random horizontal flips; ``shift``: random
    translations up to this fraction of the image (0: none). The order and the
    augmentations are drawn from ``seed`` and differ every epoch; ``shuffle=False`` keeps
    the order given (the rest of an epoch a stopped run had begun). ``soft_targets``:
    float (N, 10) rows that replace the labels as targets (:func:`mix_targets`).
    """
    import tensorflow as tf

    augment = _augmenter(flip, shift, seed)
    if soft_targets is not None:
        if soft_targets.shape != (len(images), NUM_CLASSES):
            raise ValueError(f"soft_targets: shape {soft_targets.shape}, not ({len(images)}, 10)")
        one_hot = False  # the rows are the targets already
        targets = soft_targets.astype(np.float32)
    else:
        targets = labels.astype(np.int32)
    dataset = tf.data.Dataset.from_tensor_slices((images, targets))
    if shuffle:
        dataset = dataset.shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)

    def prepare(x, y):
        x = _scale(x)
        if augment is not None:
            x = augment(x, training=True)
        return x, (tf.one_hot(y, NUM_CLASSES) if one_hot else y)

    # Not parallel: the augmenter's random state is one stream, and a batch's preparation
    # costs far less than its training step, so prefetch alone keeps the model fed.
    return dataset.map(prepare).prefetch(tf.data.AUTOTUNE)


def validation_dataset(images: np.ndarray, labels: np.ndarray, *, one_hot: bool):
    """Scaled batches of ``(images, targets)`` in their order, for evaluation."""
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices((images, labels.astype(np.int32)))

    def prepare(x, y):
        return _scale(x), (tf.one_hot(y, NUM_CLASSES) if one_hot else y)

    return dataset.batch(VALIDATION_BATCH).map(prepare).cache().prefetch(tf.data.AUTOTUNE)


def mix_targets(labels: np.ndarray, teacher: np.ndarray, weight: float) -> np.ndarray:
    """Distillation targets: ``(1 - weight) * one-hot(labels) + weight * teacher``, float32.

    ``teacher``: (N, 10) class probabilities; each row of the result sums to 1 as theirs do.
    """
    one_hot = np.eye(NUM_CLASSES, dtype=np.float32)[labels.astype(np.int64)]
    return ((1.0 - weight) * one_hot + weight * teacher.astype(np.float32)).astype(np.float32)


def flip_averaged_probabilities(predict, images: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """The mean of ``predict`` on each uint8 image and on its horizontal flip, (N, 10) float32.

    ``predict`` maps a float32 (B, 28, 28, 1) batch in [0, 1] to (B, 10) probabilities
    (a teacher network). Averaged over both orientations, the result holds for a flipped
    and an unflipped copy alike, so random flips in training need no teacher per batch.
    """
    out = np.empty((len(images), NUM_CLASSES), dtype=np.float32)
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].astype(np.float32)[..., np.newaxis] / 255.0
        both = np.concatenate([batch, batch[:, :, ::-1]])
        probs = np.asarray(predict(both), dtype=np.float32)
        out[start : start + len(batch)] = (probs[: len(batch)] + probs[len(batch) :]) / 2
    return out


def shifted_views(images: np.ndarray, views: int, seed: int, max_shift: int = 2) -> np.ndarray:
    """``images`` followed by ``views - 1`` shifted copies of them, uint8 (N * views, 28, 28).

    Each copy of an image moves it by a random whole-pixel offset of up to ``max_shift`` in
    each direction (never none), filling the uncovered edge with background (0). Drawn from
    ``seed`` alone, so a resumed run rebuilds the same views (and finds their cached
    teacher probabilities).
    """
    if views <= 1:
        return images
    rng = np.random.default_rng(seed)
    size = 2 * max_shift + 1
    # Every offset but (0, 0), indexed 0 .. size**2 - 2.
    offsets = [(dy, dx) for dy in range(-max_shift, max_shift + 1)
               for dx in range(-max_shift, max_shift + 1) if dy or dx]  # fmt: skip
    padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift)))
    height, width = images.shape[1:]
    out = [images]
    for _ in range(views - 1):
        chosen = rng.integers(0, size * size - 1, size=len(images))
        view = np.empty_like(images)
        for index, (dy, dx) in enumerate(offsets):
            rows = np.flatnonzero(chosen == index)
            # The image moved by (dy, dx): the window of the padded image that starts
            # max_shift - dy rows and max_shift - dx columns in.
            top, left = max_shift - dy, max_shift - dx
            view[rows] = padded[rows, top : top + height, left : left + width]
        out.append(view)
    return np.concatenate(out)


def _scale(images):
    """uint8 (B, 28, 28) to float32 (B, 28, 28, 1) in [0, 1], as ``data.to_model_input``."""
    import tensorflow as tf

    return tf.cast(images, tf.float32)[..., tf.newaxis] / 255.0


def _augmenter(flip: bool, shift: float, seed: int):
    """A Keras preprocessing stack of the requested augmentations, or None.

    Keras' random layers keep their generator state in a variable, so each epoch draws
    new flips (a plain seeded TensorFlow op in a dataset function would replay them).
    """
    import keras

    layers = []
    if flip:
        layers.append(keras.layers.RandomFlip("horizontal", seed=seed))
    if shift:
        layers.append(keras.layers.RandomTranslation(shift, shift, seed=seed))
    return keras.Sequential(layers) if layers else None
