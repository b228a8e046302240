"""Training: the seed's recipe (and an improved one), per-epoch progress, resumable runs.

After every finished epoch the model, optimizer state and history are checkpointed
under ``RUN/models/<model>/checkpoint/``; running the same command again after a
job was killed resumes from the last finished epoch. Running it with ``--epochs`` at
most the epochs already done stops the run there: the model is written and the
checkpoint kept, so a later run with a larger ``--epochs`` continues it.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fmnist.architectures import create_model, get_architecture
from fmnist.data import Split, load_dataset, train_validation_split
from fmnist.io import (
    FmnistError,
    RunLayout,
    atomic_path,
    enclosing_run,
    sha256_cached,
    sha256_file,
    write_json_atomic,
    write_parquet_atomic,
)
from fmnist.manifest import TrainingRecord, check_model_files, record_training
from fmnist.recipes import (
    RECIPES,
    Recipe,
    learning_rate,
    recipe_for,
    training_precision,
    warmup_steps,
)
from fmnist.system import has_native_bf16
from fmnist.train_stop import (
    PARTIAL_MODEL,
    Position,
    StopRequest,
    TrainingStopped,
    clear_position,
    remaining_batches,
    stop_callback,
)
from fmnist.training_data import (
    flip_averaged_probabilities,
    mix_targets,
    shifted_views,
    training_dataset,
    validation_dataset,
)

__all__ = ["RECIPES", "Recipe", "TrainConfig", "learning_rate", "train_model"]

HISTORY_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides a training run; recorded in the manifest.

    ``epochs`` and ``batch_size`` left as None take the recipe's values.
    """

    model: str
    epochs: int | None = None
    batch_size: int | None = None
    limit: int | None = None
    seed: int = 0
    validation_fraction: float = 0.1
    patience: int | None = None
    recipe: str = "seed"
    augment: bool | None = None  # None: the recipe decides
    data_dir: str | None = None
    # A distilling recipe's teacher from elsewhere: a model.keras path (None: the recipe's
    # teacher network in the run trained into).
    teacher: str | None = None

    def resolved_recipe(self) -> Recipe:
        return recipe_for(self.recipe, self.model)

    def with_recipe_defaults(self) -> TrainConfig:
        """This config with the recipe's epochs and batch size where none were given."""
        recipe = self.resolved_recipe()
        return replace(
            self,
            epochs=recipe.epochs if self.epochs is None else self.epochs,
            batch_size=recipe.batch_size if self.batch_size is None else self.batch_size,
        )

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


def scale_dropout(model, recipe: Recipe) -> None:
    """Multiply every Dropout layer's rate by the recipe's ``dropout_scale`` for training.

    Like the momentum, a training setting kept in a checkpoint (a resumed run keeps it);
    the published model is rebuilt with the architecture's own rates (``inference_copy``).
    """
    import keras

    for layer in model.layers:
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = layer.rate * recipe.dropout_scale


def _compile(model, recipe: Recipe, steps_per_epoch: int, epochs: int) -> None:
    """Compile with the recipe's loss, optimizer and (one-cycle) per-step schedule."""
    import keras

    if recipe.one_hot:
        loss = keras.losses.CategoricalCrossentropy(label_smoothing=recipe.label_smoothing)
    else:
        loss = keras.losses.SparseCategoricalCrossentropy()
    rate = recipe.learning_rate
    if recipe.schedule == "one-cycle":
        # Keras' own schedule, so it is saved with the optimizer and a resumed run goes
        # on from its optimizer's step count. one_cycle_rate() mirrors it.
        total = steps_per_epoch * epochs
        warmup = warmup_steps(recipe, total)
        rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0,
            decay_steps=max(total - warmup, 1),
            alpha=0.0,
            warmup_target=recipe.learning_rate,
            warmup_steps=warmup,
        )
    if recipe.weight_decay:
        optimizer = keras.optimizers.AdamW(learning_rate=rate, weight_decay=recipe.weight_decay)
    else:
        optimizer = keras.optimizers.Adam(learning_rate=rate)
    model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])


def training_data(
    images: np.ndarray,
    labels: np.ndarray,
    config: TrainConfig,
    start_epoch: int = 0,
    ordered: bool = False,
    soft_targets: np.ndarray | None = None,
):
    """The tf.data batches a run of ``config`` trains on, from uint8 images and labels.

    The order and augmentations are drawn from the per-resume-point stream of the global
    seed (``resume_seed``), so a resumed run does not replay epoch 1; ``ordered``: in the
    order given (the rest of a stopped epoch). ``soft_targets``: a distilling run's
    targets, one row per image (:func:`distillation_targets`).
    """
    recipe = config.resolved_recipe()
    augment = config.uses_augmentation()
    return training_dataset(
        images,
        labels,
        batch_size=config.batch_size,
        one_hot=recipe.one_hot,
        flip=augment,
        shift=recipe.shift if augment else 0.0,
        seed=resume_seed(config.seed, start_epoch),
        shuffle=not ordered,
        soft_targets=soft_targets,
    )


def progress_line(row: dict, epochs: int, elapsed: float, epochs_timed: int) -> str:
    """One epoch's progress: its metrics, the time so far and an estimate of the time left.

    The estimate is the mean time of the ``epochs_timed`` epochs this process trained,
    times the epochs still to go.
    """
    left = elapsed / max(epochs_timed, 1) * (epochs - row["epoch"])
    validated = not np.isnan(row["val_accuracy"])
    val = (
        f"val_loss {row['val_loss']:.4f}  val_acc {row['val_accuracy']:.4f}  " if validated else ""
    )
    return (
        f"epoch {row['epoch']}/{epochs}  loss {row['loss']:.4f}  acc {row['accuracy']:.4f}  "
        f"{val}lr {row['lr']:.2e}  {row['seconds']:.1f}s  "
        f"elapsed {_clock(elapsed)}  left ~{_clock(left)}"
    )


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def due_for_validation(recipe: Recipe, epoch: int, epochs: int) -> bool:
    """Whether 1-based ``epoch`` is validated: every ``validate_every``-th, and the last."""
    return epoch == epochs or epoch % recipe.validate_every == 0


class _EpochRecorder:
    """Keras callback: validate when due, checkpoint after each epoch, report progress.

    Keras' own callbacks do not keep this module's resume contract, so it is written
    here: ``ModelCheckpoint`` writes in place (a job killed mid-write leaves a file that
    looks finished) and starts its best value afresh on every ``fit``; ``BackupAndRestore``
    deletes its backup when ``fit`` ends, which loses a run stopped early that a larger
    ``--epochs`` should continue, and keeps neither the history rows nor the epoch count
    that the fresh random stream of a resumed run (``resume_seed``) is drawn from before
    ``fit`` starts; ``EarlyStopping(restore_best_weights=True)`` keeps the best weights
    only in memory. Every file here is written atomically and ``state.json`` last.
    It comes first among the callbacks: the validation it adds to ``logs`` is what the
    others (early stopping) read.
    """

    def __new__(cls, *args, **kwargs):
        import keras

        # Subclass lazily so importing this module does not import TensorFlow.
        class Recorder(keras.callbacks.Callback):
            def __init__(
                self,
                checkpoint: Path,
                start: _Start,
                recipe: Recipe,
                epochs: int,
                validation,
                progress: Callable[[str], None],
            ):
                super().__init__()
                self.checkpoint, self.rows, self.recipe = checkpoint, start.rows, recipe
                self.epochs, self.progress, self.best = epochs, progress, start.best
                self.validation = validation
                self.started = self.fit_started = time.perf_counter()
                self.epochs_timed = 0

            def on_epoch_begin(self, epoch, logs=None):
                self.started = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                if self.model.stop_training:
                    return  # stopped mid-epoch on request: the epoch is not finished
                logs = logs if logs is not None else {}
                if due_for_validation(self.recipe, epoch + 1, self.epochs):
                    scores = self.model.evaluate(self.validation, verbose=0, return_dict=True)
                    logs.update(val_loss=scores["loss"], val_accuracy=scores["accuracy"])
                row = {
                    "epoch": epoch + 1,
                    "loss": float(logs.get("loss", np.nan)),
                    "accuracy": float(logs.get("accuracy", np.nan)),
                    "val_loss": float(logs.get("val_loss", np.nan)),
                    "val_accuracy": float(logs.get("val_accuracy", np.nan)),
                    "lr": float(np.asarray(self.model.optimizer.learning_rate)),
                    "seconds": time.perf_counter() - self.started,
                }
                self.rows.append(row)
                self.epochs_timed += 1
                if self.recipe.restore_best and row["val_accuracy"] > self.best.get("acc", -1):
                    self.best.update(acc=row["val_accuracy"], epoch=row["epoch"])
                    save_atomic(self.checkpoint / "best.weights.h5", self.model.save_weights)
                save_atomic(self.checkpoint / "last.keras", self.model.save)
                # The state file is written last: it is what marks the epoch as finished.
                write_json_atomic(
                    self.checkpoint / "state.json",
                    {"epoch": row["epoch"], "rows": self.rows, "best": self.best},
                )
                elapsed = time.perf_counter() - self.fit_started
                self.progress(progress_line(row, self.epochs, elapsed, self.epochs_timed))

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
    _same_config(checkpoint, config)
    return json.loads(state_path.read_text())


def _same_config(checkpoint: Path, config: TrainConfig) -> None:
    """Refuse to resume a checkpoint of another configuration (the epochs may differ)."""
    saved_config = json.loads((checkpoint / "config.json").read_text())
    # Only the epoch budget may change on resume: extend a run, or stop it early and
    # keep what it learned by resuming with --epochs set to the epochs already done.
    current = json.loads(json.dumps(asdict(config)))
    saved_config["epochs"] = current["epochs"]
    saved_config.setdefault("teacher", None)  # a checkpoint from before distillation
    if saved_config != current:
        raise FmnistError(
            f"{checkpoint}: an interrupted run with a different configuration is here; "
            "use another --out or delete the checkpoint directory"
        )


def train_model(
    config: TrainConfig, run: Path | str, progress: Callable[[str], None] = print
) -> TrainResult:
    """Train ``config.model`` into ``run``, resuming an interrupted run of the same config."""
    get_architecture(config.model)  # fail on an unknown name before loading data
    config = config.with_recipe_defaults()
    recipe = config.resolved_recipe()
    precision = training_precision(recipe)
    layout = RunLayout(Path(run))
    teacher = resolve_teacher(config, recipe, layout)  # before anything is written
    checkpoint = _checkpoint_dir(layout, config.model)
    checkpoint.mkdir(parents=True, exist_ok=True)
    # SIGTERM (a job's walltime) saves where the training is and stops it: TrainingStopped.
    # Caught from here on, so one that comes while the data loads stops after a batch.
    with StopRequest() as stop:
        splits = _splits(config)
        trained_on = (with_teacher_views(splits[0], recipe, config.seed), splits[1])
        soft_targets = None
        if teacher is not None:  # in float32, before the training's dtype policy
            soft_targets = distillation_targets(
                teacher, recipe, trained_on[0], checkpoint, progress
            )
        with _dtype_policy(precision):
            steps_per_epoch = math.ceil(len(trained_on[0]) / config.batch_size)
            start = _start(config, recipe, checkpoint, progress, steps_per_epoch)
            started = time.perf_counter()
            if start.epoch < config.epochs:
                _fit(start, config, recipe, trained_on, checkpoint, progress, stop, soft_targets)
            if recipe.restore_best and (checkpoint / "best.weights.h5").exists():
                start.model.load_weights(checkpoint / "best.weights.h5")

    def record(result: TrainResult) -> None:
        training = _training_record(config, recipe, splits, result, precision, teacher)
        record_training(layout.root, config.model, training)

    result = _write_model(layout, config.model, recipe, start, started, record)
    if start.epoch < config.epochs:
        shutil.rmtree(checkpoint, ignore_errors=True)
    # Else this call only wrote out a run stopped early (--epochs <= epochs done): the
    # checkpoint stays, so running again with a larger --epochs continues training.
    return result


@dataclass(frozen=True)
class Teacher:
    """The model.keras whose predictions teach a distilling run, as the manifest records it."""

    path: Path
    name: str  # the teacher network's name in this run, or the path given with --teacher
    sha256: str


def resolve_teacher(config: TrainConfig, recipe: Recipe, layout: RunLayout) -> Teacher | None:
    """The teacher of a distilling run, its file checked; None for a recipe that does not distill.

    The recipe's teacher network in the run trained into, or ``config.teacher`` (a
    model.keras from elsewhere). A model.keras inside a run directory must have the
    SHA-256 its run's manifest recorded (:func:`fmnist.manifest.check_model_files`).
    """
    if recipe.teacher is None:
        if config.teacher is not None:
            raise FmnistError(
                f"--teacher {config.teacher}: recipe {config.recipe!r} does not distill "
                f"{config.model} (a recipe with a teacher does, e.g. peak)"
            )
        return None
    if config.teacher is not None:
        path, name = Path(config.teacher).absolute(), str(Path(config.teacher).absolute())
        hint = "check --teacher"
    else:
        path, name = layout.keras_model(recipe.teacher).absolute(), recipe.teacher
        hint = f"train {recipe.teacher} into {layout.root} first, or give --teacher PATH"
    if not path.is_file():
        raise FmnistError(f"teacher {path}: model file not found ({hint})")
    run = enclosing_run(path.parent)
    if run is not None:
        check_model_files(run, path)
    return Teacher(path, name, sha256_cached(path))


def with_teacher_views(train_split: Split, recipe: Recipe, seed: int) -> Split:
    """The examples a run trains on: ``train_split``, with the recipe's shifted views of
    each image after the images themselves (:func:`shifted_views`), labels repeated."""
    if recipe.teacher_views <= 1:
        return train_split
    images = shifted_views(train_split.images, recipe.teacher_views, seed)
    return Split(images, np.tile(train_split.labels, recipe.teacher_views))


def teacher_cache_name(teacher_sha256: str, train_split: Split) -> str:
    """The file name of a teacher's probabilities on ``train_split``.

    Named by the teacher's SHA-256 and a digest of the split's images and labels, in
    their order: rows computed for another split (another seed or limit) are never
    read back as this one's, whatever its length.
    """
    digest = hashlib.sha256(train_split.images.tobytes())
    digest.update(train_split.labels.tobytes())
    return f"teacher-{teacher_sha256[:16]}-{len(train_split)}-{digest.hexdigest()[:16]}.npy"


def distillation_targets(
    teacher: Teacher,
    recipe: Recipe,
    train_split: Split,
    checkpoint: Path,
    progress: Callable[[str], None],
) -> np.ndarray:
    """The training split's targets: one-hot labels mixed with the teacher's probabilities.

    The teacher's probabilities are the mean over each image and its horizontal flip,
    computed once and kept beside the checkpoint (a resumed run reads them back).
    ``train_split`` holds the recipe's views too (:func:`with_teacher_views`): the teacher
    sees each view as the student will.
    """
    cache = checkpoint / teacher_cache_name(teacher.sha256, train_split)
    if cache.is_file():
        probabilities = np.load(cache)
    else:
        model = _load_teacher(teacher.path)
        started = time.perf_counter()
        probabilities = flip_averaged_probabilities(
            lambda batch: model(batch, training=False), train_split.images
        )
        with atomic_path(cache) as tmp, open(tmp, "wb") as out:
            np.save(out, probabilities)
        views = recipe.teacher_views
        examples = f"{len(train_split)} images"
        if views > 1:
            examples = (
                f"{len(train_split) // views} images, {views - 1} shifted views of each "
                f"({len(train_split)} in all),"
            )
        progress(
            f"teacher {teacher.name}: probabilities of {examples} and their flips "
            f"in {time.perf_counter() - started:.1f}s"
        )
    return mix_targets(train_split.labels, probabilities, recipe.distill_weight)


def _load_teacher(path: Path):
    """The teacher network at ``path``, or a one-line error naming the file."""
    import keras

    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # a truncated or foreign file: Keras raises many kinds
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise FmnistError(f"teacher {path}: cannot be loaded ({reason})") from exc
    if tuple(model.output_shape) != (None, 10):
        raise FmnistError(f"teacher {path}: output shape {model.output_shape}, not (None, 10)")
    return model


@contextmanager
def _dtype_policy(name: str):
    """Build and train under Keras' dtype policy ``name``; float32 again afterwards."""
    import keras

    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy("float32")


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
    partial: Position | None = None  # where a run stopped mid-epoch, to go on from


def _start(
    config: TrainConfig,
    recipe: Recipe,
    checkpoint: Path,
    progress: Callable[[str], None],
    steps_per_epoch: int,
) -> _Start:
    """Resume from ``checkpoint`` or start afresh, with the random seed of that start point.

    The config is written beside the checkpoint, for a later resume to compare with.
    """
    import keras

    state = _checkpoint_state(checkpoint, config)
    epoch = state["epoch"] if state else 0
    # A position inside the epoch after the last finished one: go on from there.
    partial = (
        Position.load(checkpoint) if (state or (checkpoint / "config.json").exists()) else None
    )
    partial = partial if partial is not None and partial.epoch == epoch else None
    # Seeded before the model is loaded or built: its initial weights draw from it.
    keras.utils.set_random_seed(resume_seed(config.seed, epoch))
    write_json_atomic(checkpoint / "config.json", asdict(config))
    if partial is not None:
        model = keras.models.load_model(checkpoint / PARTIAL_MODEL)
        progress(
            f"resuming {config.model} in epoch {epoch + 1}/{config.epochs} "
            f"after {partial.batches} batches"
        )
        return _Start(model, epoch, list(partial.rows), dict(partial.best), partial)
    if state is None:
        return _Start(_new_model(config, recipe, steps_per_epoch), 0, [], {})
    model = keras.models.load_model(checkpoint / "last.keras")
    progress(f"resuming {config.model} after epoch {epoch}/{config.epochs}")
    return _Start(model, epoch, list(state["rows"]), dict(state.get("best") or {}))


def _new_model(config: TrainConfig, recipe: Recipe, steps_per_epoch: int):
    """A freshly built network, compiled with the recipe's loss, optimizer and schedule."""
    model = create_model(config.model)
    apply_batch_norm_momentum(model, recipe)
    scale_dropout(model, recipe)
    _compile(model, recipe, steps_per_epoch, config.epochs)
    return model


def _fit(
    start: _Start,
    config: TrainConfig,
    recipe: Recipe,
    splits: tuple[Split, Split],
    checkpoint: Path,
    progress: Callable[[str], None],
    stop: StopRequest,
    soft_targets: np.ndarray | None = None,
) -> None:
    """Train from ``start.epoch`` to ``config.epochs``, checkpointing after every epoch.

    A run stopped mid-epoch first trains the batches of that epoch it had not reached,
    in the order it drew them (:mod:`fmnist.train_stop`). A stop request saves the
    position and raises :class:`TrainingStopped`.
    """
    import keras

    train_split, val_split = splits
    validation = validation_dataset(val_split.images, val_split.labels, one_hot=recipe.one_hot)
    partial = start.partial
    stream = [partial.stream_epoch if partial else start.epoch]  # the order's seed epoch

    def save(epoch: int, batches: int) -> None:
        save_atomic(checkpoint / PARTIAL_MODEL, start.model.save)  # with the optimizer
        Position(epoch, batches, stream[0], start.rows, start.best).save(checkpoint)

    def first_batch(epoch: int) -> int:
        return partial.batches if partial is not None and epoch == partial.epoch else 0

    callbacks = [
        _EpochRecorder(checkpoint, start, recipe, config.epochs, validation, progress),
        stop_callback(stop, first_batch, save),
    ]
    if recipe.schedule == "step":
        callbacks.append(
            keras.callbacks.LearningRateScheduler(lambda epoch: learning_rate(recipe, epoch))
        )
    if config.patience:
        callbacks.append(
            keras.callbacks.EarlyStopping(monitor="val_accuracy", patience=config.patience)
        )
    epoch = start.epoch
    if partial is not None:
        batches = remaining_batches(
            len(train_split),
            config.batch_size,
            resume_seed(config.seed, partial.stream_epoch),
            partial.epoch - partial.stream_epoch,
            partial.batches,
        )
        # Fresh dropout masks: not those of the stopped run's first batches.
        keras.utils.set_random_seed(resume_seed(config.seed, partial.epoch) + partial.batches)
        order = np.concatenate(batches)
        rest = training_data(
            train_split.images[order],
            train_split.labels[order],
            config,
            ordered=True,
            soft_targets=None if soft_targets is None else soft_targets[order],
        )
        start.model.fit(
            rest, epochs=epoch + 1, initial_epoch=epoch, callbacks=callbacks, shuffle=False,
            verbose=0,
        )  # fmt: skip
        if len(start.rows) > epoch:  # the stopped epoch has ended, recorded
            clear_position(checkpoint)
        if stop.requested:
            raise TrainingStopped(f"stopped in epoch {epoch + 1}, its position saved")
        epoch += 1
        partial = None
        stream[0] = epoch
        keras.utils.set_random_seed(resume_seed(config.seed, epoch))
    if epoch < config.epochs:
        start.model.fit(
            training_data(
                train_split.images, train_split.labels, config, epoch, soft_targets=soft_targets
            ),
            epochs=config.epochs,
            initial_epoch=epoch,
            callbacks=callbacks,
            shuffle=False,  # the dataset shuffles itself
            verbose=0,
        )
    if stop.requested:
        raise TrainingStopped("stopped on request, its position saved")


def inference_copy(model, name: str, recipe: Recipe):
    """An f32 copy of a trained network without optimizer state: what ``model.keras`` holds.

    Mixed-precision training keeps f32 weights but computes in bf16; the copy computes in
    f32 like every engine that reads it, and leaving the optimizer's moments out makes
    ``main``'s file a third of the size (52 MB).
    """
    import keras

    keras.mixed_precision.set_global_policy("float32")
    copy = create_model(name)
    apply_batch_norm_momentum(copy, recipe)
    copy.set_weights(model.get_weights())
    return copy


def _write_model(
    layout: RunLayout,
    model: str,
    recipe: Recipe,
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

    save_atomic(model_path, inference_copy(start.model, model, recipe).save, before_rename=publish)
    return results[0]


def _training_record(
    config: TrainConfig,
    recipe: Recipe,
    splits: tuple[Split, Split],
    result: TrainResult,
    precision: str,
    teacher: Teacher | None = None,
) -> TrainingRecord:
    """What the manifest records of a training run, under ``models.<model>``."""
    train_split, val_split = splits
    trained = result.history.iloc[result.resumed_from_epoch :]
    seconds = float(trained["seconds"].sum())
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
        # Keras' dtype policy the epochs ran under: mixed_bfloat16 only where the CPU runs
        # bf16 natively (recipe precision "bf16-native"), float32 elsewhere.
        training_precision=precision,
        native_bf16=has_native_bf16(),
        # Every example an epoch passed over: the images and their teacher views.
        images_per_second=(
            round(len(train_split) * recipe.teacher_views * len(trained) / seconds, 1)
            if seconds
            else None
        ),
        teacher=teacher.name if teacher else None,
        teacher_sha256=teacher.sha256 if teacher else None,
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
