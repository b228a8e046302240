"""Training: the seed's recipe (and an improved one), per-epoch progress, resumable runs.

After every finished epoch the model, optimizer state and history are checkpointed
under ``RUN/models/<model>/checkpoint/``; running the same command again after a
job was killed resumes from the last finished epoch. Running it with ``--epochs`` at
most the epochs already done stops the run there: the model is written and the
checkpoint kept, so a later run with a larger ``--epochs`` continues it.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fmnist.architectures import create_model, get_architecture
from fmnist.data import Split, load_dataset, to_model_input, train_validation_split
from fmnist.io import (
    FmnistError,
    RunLayout,
    atomic_path,
    sha256_file,
    write_json_atomic,
    write_parquet_atomic,
)
from fmnist.jobenv import record_job
from fmnist.manifest import TrainingRecord, record_training

HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]


@dataclass(frozen=True)
class Recipe:
    """How a network is trained; ``seed`` is the report's own recipe."""

    name: str
    learning_rate: float = 1e-3
    lr_decay: float = 0.9  # learning rate = learning_rate * lr_decay ** epoch
    label_smoothing: float = 0.0
    restore_best: bool = False  # keep the weights of the best validation epoch
    augment: bool = False
    shift: float = 0.05  # augmentation's random translation, a fraction of the image; 0: flips only
    weight_decay: float = 0.0  # decoupled (AdamW); 0 keeps plain Adam
    # BatchNormalization's moving-average momentum; None keeps the layers' own (Keras: 0.99).
    batch_norm_momentum: float | None = None


RECIPES = {
    "seed": Recipe("seed"),
    # Label smoothing and best-epoch restore: same architecture, same epochs, no augmentation
    # (strong augmentation made these small networks underfit in 40 epochs).
    "tuned": Recipe("tuned", lr_decay=0.92, label_smoothing=0.1, restore_best=True),
    # tuned plus decoupled weight decay, for networks that overfit their dense head.
    "tuned-wd": Recipe(
        "tuned-wd", lr_decay=0.92, label_smoothing=0.1, restore_best=True, weight_decay=0.05
    ),
    # tuned plus horizontal flips: twice the images without moving the small networks'
    # few spatial positions (translations made them underfit).
    "tuned-flip": Recipe(
        "tuned-flip", lr_decay=0.92, label_smoothing=0.1, restore_best=True, augment=True, shift=0.0
    ),
    # For runs of up to a few hundred steps (the `quick` profile). At momentum 0.99 the moving
    # BatchNorm statistics still describe the first batches' weights when such a run ends,
    # and main predicts one class for every image; at 0.7 they follow the last few
    # batches. A faster start and decay suit 2-3 epochs.
    "quick": Recipe("quick", learning_rate=2e-3, lr_decay=0.8, batch_norm_momentum=0.7),
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; recorded in the manifest."""

    model: str
    epochs: int = 40
    batch_size: int = 64
    limit: int | None = None
    seed: int = 0
    validation_fraction: float = 0.1
    patience: int | None = None
    recipe: str = "seed"
    augment: bool | None = None  # None: the recipe decides
    data_dir: str | None = None

    def resolved_recipe(self) -> Recipe:
        if self.recipe not in RECIPES:
            raise FmnistError(f"unknown recipe {self.recipe!r}; valid: {', '.join(RECIPES)}")
        return RECIPES[self.recipe]

    def uses_augmentation(self) -> bool:
        return self.resolved_recipe().augment if self.augment is None else self.augment


@dataclass
class TrainResult:
    """What a training run produced."""

    model_path: Path
    history: pd.DataFrame
    wall_seconds: float
    sha256: str
    resumed_from_epoch: int = 0
    best_epoch: int | None = None
    extra: dict = field(default_factory=dict)


def learning_rate(recipe: Recipe, epoch: int) -> float:
    """The scheduled learning rate for a 0-based epoch."""
    return recipe.learning_rate * recipe.lr_decay**epoch


def _checkpoint_dir(layout: RunLayout, model: str) -> Path:
    return layout.model_dir(model) / "checkpoint"


def apply_batch_norm_momentum(model, recipe: Recipe) -> None:
    """Set the recipe's moving-average momentum on every BatchNormalization layer.

    A training setting, not an architecture change: the layers, their shapes and their
    parameter counts stay the same. It is saved with the model, so a resumed run keeps it.
    """
    import keras

    if recipe.batch_norm_momentum is None:
        return
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = recipe.batch_norm_momentum


def _compile(model, recipe: Recipe) -> None:
    import keras

    if recipe.label_smoothing:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing)
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
    if recipe.weight_decay:
        optimizer = keras.optimizers.AdamW(
            learning_rate=recipe.learning_rate, weight_decay=recipe.weight_decay
        )
    else:
        optimizer = keras.optimizers.Adam(learning_rate=recipe.learning_rate)
    model.compile(
        optimizer=optimizer,
        loss=loss,
        metrics=["accuracy"],
    )


def _targets(labels: np.ndarray, recipe: Recipe) -> np.ndarray:
    # Keras' sparse cross-entropy has no label smoothing: one-hot the labels instead.
    if recipe.label_smoothing:
        return np.eye(10, dtype=np.float32)[labels]
    return labels.astype(np.int32)


def _augmented_dataset(images, targets, batch_size: int, shift: float, seed: int):
    import keras
    import tensorflow as tf

    layers = [keras.layers.RandomFlip("horizontal", seed=seed)]
    if shift:
        layers.append(keras.layers.RandomTranslation(shift, shift, seed=seed))
    augment = keras.Sequential(layers)
    dataset = tf.data.Dataset.from_tensor_slices((images, targets))
    dataset = dataset.shuffle(len(images), seed=seed).batch(batch_size)
    return dataset.map(lambda x, y: (augment(x, training=True), y)).prefetch(2)


def training_data(
    images: np.ndarray, targets: np.ndarray, config: TrainConfig, start_epoch: int = 0
) -> dict:
    """``model.fit`` keyword arguments that feed the training images, augmented or not.

    An augmented run draws its order and augmentations from the same per-resume-point
    stream as the global seed (``resume_seed``), so a resumed run does not replay epoch 1.
    """
    if not config.uses_augmentation():
        return {"x": images, "y": targets, "batch_size": config.batch_size, "shuffle": True}
    dataset = _augmented_dataset(
        images,
        targets,
        config.batch_size,
        config.resolved_recipe().shift,
        resume_seed(config.seed, start_epoch),
    )
    return {"x": dataset, "shuffle": False}  # the dataset shuffles itself


class _EpochRecorder:
    """Keras callback: checkpoint after each epoch and report progress.

    Keras' own callbacks do not keep this module's resume contract, so it is written
    here: ``ModelCheckpoint`` writes in place (a job killed mid-write leaves a file that
    looks finished) and starts its best value afresh on every ``fit``; ``BackupAndRestore``
    deletes its backup when ``fit`` ends, which loses a run stopped early that a larger
    ``--epochs`` should continue, and keeps neither the history rows nor the epoch count
    that the fresh random stream of a resumed run (``resume_seed``) is drawn from before
    ``fit`` starts; ``EarlyStopping(restore_best_weights=True)`` keeps the best weights
    only in memory. Every file here is written atomically and ``state.json`` last.
    """

    def __new__(cls, *args, **kwargs):
        import keras

        # Subclass lazily so importing this module does not import TensorFlow.
        class Recorder(keras.callbacks.Callback):
            def __init__(
                self,
                checkpoint: Path,
                rows: list,
                recipe: Recipe,
                epochs: int,
                progress: Callable[[str], None],
                best: dict,
            ):
                super().__init__()
                self.checkpoint, self.rows, self.recipe = checkpoint, rows, recipe
                self.epochs, self.progress, self.best = epochs, progress, best
                self.started = 0.0

            def on_epoch_begin(self, epoch, logs=None):
                self.started = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                logs = logs or {}
                row = {
                    "epoch": epoch + 1,
                    "loss": float(logs.get("loss", np.nan)),
                    "accuracy": float(logs.get("accuracy", np.nan)),
                    "val_loss": float(logs.get("val_loss", np.nan)),
                    "val_accuracy": float(logs.get("val_accuracy", np.nan)),
                    "lr": learning_rate(self.recipe, epoch),
                    "seconds": time.perf_counter() - self.started,
                }
                self.rows.append(row)
                if self.recipe.restore_best and row["val_accuracy"] > self.best.get("acc", -1):
                    self.best.update(acc=row["val_accuracy"], epoch=row["epoch"])
                    save_atomic(self.checkpoint / "best.weights.h5", self.model.save_weights)
                save_atomic(self.checkpoint / "last.keras", self.model.save)
                # The state file is written last: it is what marks the epoch as finished.
                write_json_atomic(
                    self.checkpoint / "state.json",
                    {"epoch": row["epoch"], "rows": self.rows, "best": self.best},
                )
                self.progress(
                    f"epoch {row['epoch']}/{self.epochs}  loss {row['loss']:.4f}  "
                    f"acc {row['accuracy']:.4f}  val_loss {row['val_loss']:.4f}  "
                    f"val_acc {row['val_accuracy']:.4f}  lr {row['lr']:.2e}  "
                    f"{row['seconds']:.1f}s"
                )

        return Recorder(*args, **kwargs)


def save_atomic(
    path: Path,
    saver: Callable[[Path], None],
    before_rename: Callable[[Path], None] | None = None,
) -> None:
    """Save through a Keras saver (``model.save``, ``save_weights``) atomically.

    Keras picks the format from the file name, so the temporary file keeps the suffix.
    ``before_rename`` gets the saved temporary file before it takes ``path``'s name; when
    it raises, ``path`` is left as it was.
    """
    suffix = ".weights.h5" if path.name.endswith(".weights.h5") else path.suffix
    with atomic_path(path) as tmp:
        keras_tmp = tmp.with_name(tmp.name + suffix)
        try:
            saver(keras_tmp)
            keras_tmp.replace(tmp)
        finally:
            keras_tmp.unlink(missing_ok=True)
        if before_rename is not None:
            before_rename(tmp)


def resume_seed(seed: int, start_epoch: int) -> int:
    """The global random seed of a run that starts after ``start_epoch`` finished epochs.

    A fresh run uses ``seed`` itself. A resumed one must not: the loaded model's dropout
    layers redraw their seeds from the global generator and the shuffle restarts, so the
    same seed would replay the first epochs' exact (batch, dropout mask) pairs, and the
    network fits that replayed noise instead of being regularized by it.
    """
    if start_epoch == 0:
        return seed
    return int(np.random.SeedSequence([seed, start_epoch]).generate_state(1)[0])


def _checkpoint_state(checkpoint: Path, config: TrainConfig) -> dict | None:
    """The state of an interrupted run of ``config`` in ``checkpoint``, if there is one."""
    state_path = checkpoint / "state.json"
    if not state_path.exists() or not (checkpoint / "last.keras").exists():
        return None
    saved_config = json.loads((checkpoint / "config.json").read_text())
    # Only the epoch budget may change on resume: extend a run, or stop it early and
    # keep what it learned by resuming with --epochs set to the epochs already done.
    current = json.loads(json.dumps(asdict(config)))
    saved_config["epochs"] = current["epochs"]
    if saved_config != current:
        raise FmnistError(
            f"{checkpoint}: an interrupted run with a different configuration is here; "
            "use another --out or delete the checkpoint directory"
        )
    return json.loads(state_path.read_text())


def train_model(
    config: TrainConfig, run: Path | str, progress: Callable[[str], None] = print
) -> TrainResult:
    """Train ``config.model`` into ``run``, resuming an interrupted run of the same config."""
    get_architecture(config.model)  # fail on an unknown name before loading data
    recipe = config.resolved_recipe()
    layout = RunLayout(Path(run))
    checkpoint = _checkpoint_dir(layout, config.model)
    checkpoint.mkdir(parents=True, exist_ok=True)
    splits = _splits(config)
    start = _start(config, recipe, checkpoint, progress)
    started = time.perf_counter()
    if start.epoch < config.epochs:
        _fit(start, config, recipe, splits, checkpoint, progress)
    if recipe.restore_best and (checkpoint / "best.weights.h5").exists():
        start.model.load_weights(checkpoint / "best.weights.h5")

    def record(result: TrainResult) -> None:
        training = _training_record(config, recipe, splits, result)
        record_training(layout.root, config.model, training)

    result = _write_model(layout, config.model, start, started, record)
    record_job(layout.root, f"train {config.model}")
    if start.epoch < config.epochs:
        shutil.rmtree(checkpoint, ignore_errors=True)
    # Else this call only wrote out a run stopped early (--epochs <= epochs done): the
    # checkpoint stays, so running again with a larger --epochs continues training.
    return result


def _splits(config: TrainConfig) -> tuple[Split, Split]:
    """The training and validation splits of ``config`` (``limit`` cuts both)."""
    dataset = load_dataset(config.data_dir)
    train_split, val_split = train_validation_split(
        dataset.train, config.validation_fraction, config.seed
    )
    if config.limit:
        train_split = train_split.head(config.limit)
        val_split = val_split.head(max(500, config.limit // 9))
    return train_split, val_split


@dataclass
class _Start:
    """Where a run starts: a fresh model, or the last checkpoint of an interrupted run."""

    model: Any
    epoch: int  # epochs finished before this call
    rows: list[dict]  # their history rows; the epoch recorder appends to this list
    best: dict  # the best validation epoch so far ("acc", "epoch"), for restore_best


def _start(
    config: TrainConfig, recipe: Recipe, checkpoint: Path, progress: Callable[[str], None]
) -> _Start:
    """Resume from ``checkpoint`` or start afresh, with the random seed of that start point.

    The config is written beside the checkpoint, for a later resume to compare with.
    """
    import keras

    state = _checkpoint_state(checkpoint, config)
    epoch = state["epoch"] if state else 0
    # Seeded before the model is loaded or built: its initial weights draw from it.
    keras.utils.set_random_seed(resume_seed(config.seed, epoch))
    model = keras.models.load_model(checkpoint / "last.keras") if state else None
    write_json_atomic(checkpoint / "config.json", asdict(config))
    if state is None:
        return _Start(_new_model(config.model, recipe), 0, [], {})
    progress(f"resuming {config.model} after epoch {epoch}/{config.epochs}")
    return _Start(model, epoch, list(state["rows"]), dict(state.get("best") or {}))


def _new_model(name: str, recipe: Recipe):
    """A freshly built network, compiled with the recipe's loss and optimizer."""
    model = create_model(name)
    apply_batch_norm_momentum(model, recipe)
    _compile(model, recipe)
    return model


def _fit(
    start: _Start,
    config: TrainConfig,
    recipe: Recipe,
    splits: tuple[Split, Split],
    checkpoint: Path,
    progress: Callable[[str], None],
) -> None:
    """Train from ``start.epoch`` to ``config.epochs``, checkpointing after every epoch."""
    import keras

    train_split, val_split = splits
    x_train, x_val = to_model_input(train_split.images), to_model_input(val_split.images)
    y_train, y_val = _targets(train_split.labels, recipe), _targets(val_split.labels, recipe)
    callbacks = [
        keras.callbacks.LearningRateScheduler(lambda epoch: learning_rate(recipe, epoch)),
        _EpochRecorder(checkpoint, start.rows, recipe, config.epochs, progress, start.best),
    ]
    if config.patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=config.patience)
        )
    start.model.fit(
        **training_data(x_train, y_train, config, start.epoch),
        epochs=config.epochs,
        initial_epoch=start.epoch,
        validation_data=(x_val, y_val),
        callbacks=callbacks,
        verbose=0,
    )


def _write_model(
    layout: RunLayout,
    model: str,
    start: _Start,
    started: float,
    record: Callable[[TrainResult], None],
) -> TrainResult:
    """Write the trained model, its history and its training curves; what the run produced.

    ``record`` gets the result (with the model's SHA-256) before model.keras takes its
    name: a model.keras on disk always has its record, and a record that cannot be
    written leaves no model.keras (the checkpoint stays, to write it again). The wall
    time is the epochs' own; a run that trained no epoch counts from ``started``.
    """
    history = pd.DataFrame(start.rows, columns=HISTORY_COLUMNS)
    model_path = layout.keras_model(model)
    write_parquet_atomic(layout.history(model), history)
    wall = float(history["seconds"].sum()) if len(history) else time.perf_counter() - started

    from fmnist.plots import plot_training_curves

    plot_training_curves(history, model, layout.figures_dir / f"{model}__curves.png")
    results: list[TrainResult] = []

    def publish(saved: Path) -> None:
        result = TrainResult(
            model_path=model_path,
            history=history,
            wall_seconds=wall,
            sha256=sha256_file(saved),
            resumed_from_epoch=start.epoch,
            best_epoch=start.best.get("epoch"),
        )
        record(result)
        results.append(result)

    save_atomic(model_path, start.model.save, before_rename=publish)
    return results[0]


def _training_record(
    config: TrainConfig, recipe: Recipe, splits: tuple[Split, Split], result: TrainResult
) -> TrainingRecord:
    """What the manifest records of a training run, under ``models.<model>``."""
    train_split, val_split = splits
    return TrainingRecord(
        keras_sha256=result.sha256,
        config=asdict(config),
        recipe=asdict(recipe),
        train_images=len(train_split),
        validation_images=len(val_split),
        epochs_run=len(result.history),
        best_epoch=result.best_epoch,
        wall_seconds=round(result.wall_seconds, 2),
        resumed_from_epoch=result.resumed_from_epoch,
    )


def train_summary(model: str, result: TrainResult) -> str:
    """One line on a finished run: epochs, wall time, and the kept epoch's validation accuracy."""
    line = f"trained {model}: {len(result.history)} epochs in {result.wall_seconds:.1f}s"
    if len(result.history):
        # A best-epoch recipe keeps an earlier epoch: report the weights that were saved.
        kept_epoch = result.best_epoch or int(result.history["epoch"].iloc[-1])
        kept = result.history.loc[result.history["epoch"] == kept_epoch].iloc[-1]
        line += f", kept epoch {kept_epoch} (val_accuracy {kept['val_accuracy']:.4f})"
    return f"{line} -> {result.model_path}"
