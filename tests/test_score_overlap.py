"""Parsing and inference at once: model input, batches streamed across blocks, prefetch."""

from __future__ import annotations

import shutil
from collections import deque

import numpy as np
import pandas as pd
import pytest

from fmnist.data import to_model_input
from fmnist.engines import create_engine
from fmnist.engines.optimize import OptimizeConfig, optimize_model
from fmnist.io import FmnistError
from fmnist.scoring.overlap import (
    model_batches,
    model_input,
    padded_rows,
    predicted_blocks,
    prefetched,
)
from fmnist.scoring.rows import CACHE_LINE, ParsedBlock, column_major_pixels
from fmnist.scoring.score import ScoreConfig, score_shards
from fmnist.scoring.shards import part_name

MODEL = "backup1"


def test_padded_rows_pad_only_the_last_batch_to_a_multiple_of_32():
    rows = (0, 1, 32, 33, 128, 300)
    assert [padded_rows(n, 128) for n in rows] == [0, 32, 32, 64, 128, 320]


@pytest.mark.parametrize("transposed", [False, True])
def test_model_batches_are_to_model_input_with_a_blank_padded_last_batch(dataset, transposed):
    images = dataset.test.images[:300]
    pixels = images.reshape(300, 784)
    if transposed:  # as the readers hand them over: a view of a column-major array
        by_column = column_major_pixels(300)
        by_column[:] = pixels.T
        pixels = by_column.T
    batches = [batch.copy() for batch in model_batches(pixels, 128)]
    assert [batch.shape for batch in batches] == [(128, 28, 28, 1)] * 2 + [(64, 28, 28, 1)]
    assert all(batch.dtype == np.float32 for batch in batches)
    got = np.concatenate(batches)
    assert np.array_equal(got[:300], to_model_input(images))  # the same values, bit for bit
    assert not got[300:].any()
    assert list(model_batches(pixels[:0], 128)) == []


def test_model_input_blanks_the_rows_after_the_images(dataset):
    images = np.full((40, 28, 28, 1), 7.0, np.float32)
    pixels = dataset.test.images[:33].reshape(33, 784)
    assert model_input(pixels, images) is images
    assert np.array_equal(images[:33], to_model_input(dataset.test.images[:33]))
    assert not images[33:].any()


def test_column_major_pixels_spaces_pixel_rows_by_an_odd_number_of_cache_lines():
    for rows in (1, 64, 7_100, 7_168, 8_192):
        by_column = column_major_pixels(rows)
        assert by_column.shape == (784, rows) and by_column.T.shape == (rows, 784)
        spacing = by_column.strides[0]
        assert spacing >= rows and spacing % CACHE_LINE == 0 and (spacing // CACHE_LINE) % 2


class FirstPixels:
    """An engine whose "probabilities" are the first 10 inputs of each image."""

    def predict(self, batch: np.ndarray) -> np.ndarray:
        return batch.reshape(-1, 784)[:, :10].copy()


class Streaming(FirstPixels):
    """The same with ``predict_many``, pulling batches ahead of its results like OpenVINO."""

    def __init__(self, ahead: int):
        self.ahead = ahead

    def predict_many(self, batches):
        pending: deque = deque()
        for batch in batches:
            pending.append(self.predict(batch))
            if len(pending) > self.ahead:
                yield pending.popleft()
        yield from pending


def blocks_of(dataset, sizes: list[int]) -> list[ParsedBlock]:
    blocks, start = [], 0
    for size in sizes:
        pixels = dataset.test.images[start : start + size].reshape(size, 784)
        blocks.append(ParsedBlock(np.arange(start, start + size), pixels, None))
        start += size
    return blocks


@pytest.mark.parametrize("engine", [FirstPixels(), Streaming(0), Streaming(1), Streaming(5)])
def test_predicted_blocks_come_back_in_order_with_their_own_rows(dataset, engine):
    sizes = [0, 300, 0, 5, 0, 0, 256, 0]  # blocks of rejected rows only hold no batch
    blocks = blocks_of(dataset, sizes)
    got = list(predicted_blocks(engine, iter(blocks), 128))
    assert [id(parsed) for parsed, _ in got] == [id(block) for block in blocks]
    for parsed, probs in got:
        expected = to_model_input(dataset.test.images[parsed.row_ids]).reshape(-1, 784)
        assert np.array_equal(probs, expected[:, :10])


def test_prefetched_keeps_order_raises_errors_and_stops_early():
    assert list(prefetched(iter(range(50)), depth=2)) == list(range(50))

    def failing():
        yield 1
        raise FmnistError("broken input at row 7")

    got = []
    with pytest.raises(FmnistError, match="row 7"):
        for item in prefetched(failing()):
            got.append(item)
    assert got == [1]
    produced = []

    def endless():
        for i in range(10**9):
            produced.append(i)
            yield i

    stream = prefetched(endless())
    assert next(stream) == 0
    stream.close()  # joins the thread: it must notice and stop
    assert len(produced) < 5


# --------------------------------------------------------------------------- with OpenVINO


@pytest.fixture(scope="module")
def openvino_run(trained_run, tmp_path_factory):
    """A copy of the trained run with backup1's f32 IR."""
    run = tmp_path_factory.mktemp("openvino") / "run"
    shutil.copytree(trained_run, run)
    optimize_model(run, OptimizeConfig(MODEL, parity_size=64), progress=lambda m: None)
    return run


def test_openvino_scores_across_blocks_like_its_own_batches(
    tmp_path, openvino_run, real_csv_factory, dataset
):
    rows = 1_000
    source = real_csv_factory(rows)
    config = ScoreConfig(
        input=source,
        run=openvino_run,
        model=MODEL,
        variant="openvino-f32",
        out_dir=tmp_path / "out",
        probabilities=True,
        block_bytes=100_000,  # blocks of about 45 rows: many blocks, each with a short batch
        batch_size=32,
    )
    score_shards(config, [0], progress=lambda m: None)
    frame = pd.read_parquet(config.out_dir / part_name(0, 1))
    engine = create_engine(openvino_run, MODEL, "openvino-f32", mode="latency")
    images = to_model_input(dataset.test.images[:rows])
    expected = np.concatenate([engine.predict(images[i : i + 32]) for i in range(0, rows, 32)])
    assert np.array_equal(frame["row_id"], np.arange(rows))
    probs = frame[[f"prob_{k}" for k in range(10)]].to_numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert np.array_equal(frame["pred"], expected.argmax(axis=1))


def test_predict_many_copies_each_batch_and_stopped_early_leaves_the_engine_ready(
    openvino_run, dataset
):
    engine = create_engine(openvino_run, MODEL, "openvino-f32", mode="throughput")
    assert engine.queued_requests == 2 * engine.requests
    batches = [to_model_input(dataset.test.images[i : i + 64]) for i in range(0, 640, 64)]
    stream = engine.predict_many(iter(batches))
    first = next(stream)
    stream.close()  # waits for the requests still running
    scratch = np.empty_like(batches[0])

    def reused():  # every batch in the same array, as the scorer hands them over
        for batch in batches:
            scratch[:] = batch
            yield scratch

    again = list(engine.predict_many(reused()))
    assert len(again) == len(batches)
    np.testing.assert_allclose(again[0], first, atol=1e-6)
    np.testing.assert_allclose(
        np.concatenate(again), engine.predict(np.concatenate(batches)), atol=1e-5
    )
