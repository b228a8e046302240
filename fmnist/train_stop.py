"""A training stopped mid-epoch by SIGTERM, and where its next run picks it up.

A scheduler job near its walltime sends SIGTERM (the job's own timer, PBS at the limit,
Slurm's warning passed on by ``fmnist-batch step``). :class:`StopRequest` turns it into a
flag; :func:`stop_callback` checks the flag after every batch, saves the model with its
optimizer (so a per-step learning-rate schedule goes on from its step count) and the
:class:`Position` (the epoch in progress, the batches done, the seed stream it drew its
order from), and stops ``fit``. The command then exits ``CONTINUE_EXIT``.

The next run rebuilds that epoch's order (:func:`remaining_batches`: the same tf.data
shuffle from the same seeds, walked to where it stopped), trains on the batches not yet
seen, then goes on with whole epochs. Nothing here knows the training recipe.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fmnist.io import write_json_atomic

# EX_TEMPFAIL: "try again later"; the pipeline reads it as saved-and-ready-to-continue.
CONTINUE_EXIT = 75
POSITION_FILE = "position.json"
PARTIAL_MODEL = "partial.keras"


class TrainingStopped(Exception):
    """Training stopped on request, its state saved; the command exits CONTINUE_EXIT."""


@dataclass(frozen=True)
class Position:
    """Where a stopped training was: in 0-based ``epoch``, after ``batches`` of it.

    ``stream_epoch``: the epoch its run started at, which seeds the data order it drew
    (``train.resume_seed``); ``rows`` and ``best``: its finished epochs' history.
    """

    epoch: int
    batches: int
    stream_epoch: int
    rows: list
    best: dict

    def save(self, checkpoint: Path) -> None:
        write_json_atomic(Path(checkpoint) / POSITION_FILE, asdict(self))

    @classmethod
    def load(cls, checkpoint: Path) -> Position | None:
        path = Path(checkpoint) / POSITION_FILE
        if not path.exists() or not (Path(checkpoint) / PARTIAL_MODEL).exists():
            return None
        return cls(**json.loads(path.read_text()))


def clear_position(checkpoint: Path) -> None:
    """Forget a mid-epoch position once its epoch has finished (position file first)."""
    (Path(checkpoint) / POSITION_FILE).unlink(missing_ok=True)
    (Path(checkpoint) / PARTIAL_MODEL).unlink(missing_ok=True)


_early: list[bool] = []  # a SIGTERM caught by catch_early() before a StopRequest ran


@contextmanager
def catch_early():
    """Catch SIGTERM from the start of a command (its imports and data loading take a
    while on a busy node): the StopRequest that follows sees it, so the training stops
    after its first batch instead of dying with nothing saved. The handler that was there
    comes back at the end (a command run in-process leaves its caller as it was)."""
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: _early.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _early.clear()


class StopRequest:
    """SIGTERM as a flag while the ``with`` block runs (the old handler comes back after)."""

    def __init__(self) -> None:
        self.requested = False

    def __enter__(self) -> StopRequest:
        self._previous = signal.signal(signal.SIGTERM, self._on_signal)
        self.requested = bool(_early)
        return self

    def _on_signal(self, signum, frame) -> None:
        self.requested = True

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGTERM, self._previous)


def stop_callback(
    request: StopRequest,
    first_batch: Callable[[int], int],
    save: Callable[[int, int], None],
):
    """A Keras callback: after a batch, if a stop was requested, ``save(epoch, batches)``
    and stop training. ``first_batch(epoch)`` is the batches of ``epoch`` done before
    this ``fit`` (a resumed partial epoch starts after them)."""
    import keras

    class StopOnRequest(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

        def on_train_batch_end(self, batch, logs=None):
            if not request.requested or self.model.stop_training:
                return
            if batch + 1 == self.params.get("steps"):
                return  # the epoch's last batch: let it end, recorded (on_epoch_end)
            save(self.epoch, first_batch(self.epoch) + batch + 1)
            self.model.stop_training = True

        def on_epoch_end(self, epoch, logs=None):
            # Stopped at an epoch's end: its checkpoint is the position.
            if request.requested:
                self.model.stop_training = True

    return StopOnRequest()


def remaining_batches(
    size: int, batch_size: int, seed: int, epochs_before: int, batches_done: int
) -> list[np.ndarray]:
    """The index batches of a stopped epoch still to train on (its order rebuilt).

    The order is that of ``tf.data``'s ``shuffle(size, seed, reshuffle_each_iteration=True)``
    over ``size`` elements, batched, in its iteration ``epochs_before`` (0-based) under
    the global seed ``seed``, as the stopped run drew it; the first ``batches_done``
    batches are left out. Only indices are shuffled: cheap, even for whole epochs.
    """
    import tensorflow as tf

    tf.random.set_seed(seed)
    order = tf.data.Dataset.range(size).shuffle(size, seed=seed, reshuffle_each_iteration=True)
    order = order.batch(batch_size)
    for _ in range(epochs_before):
        for _ in order:
            pass
    return [batch.numpy() for batch in order.skip(batches_done)]
