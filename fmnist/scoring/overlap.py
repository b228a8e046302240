"""Parsing and inference at once: blocks parsed in a thread, batches streamed to the engine.

The scorer's time is the parser's plus the engine's unless they overlap. A background
thread (:func:`prefetched`) parses the next blocks while the engine scores this one;
:func:`predicted_blocks` turns each block's pixels into the model's input a batch at a
time (:func:`model_batches`) and hands the batches of every block to the engine as one
stream, so its infer requests do not wait for each block to drain before the next one
starts.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from queue import Full, Queue

import numpy as np

from fmnist.data import CLASS_NAMES, IMAGE_SHAPE, PIXELS
from fmnist.scoring.rows import ParsedBlock

PAD_ROWS = 32  # a block's last batch is padded to a multiple of this (see padded_rows)
CONVERT_ROWS = 256  # rows gathered and converted at a time (fits in a core's cache)
PREFETCH_BLOCKS = 2  # blocks parsed ahead of the engine: evens out uneven blocks
INPUT_SHAPE = (*IMAGE_SHAPE, 1)  # what the models take: channels last


def padded_rows(rows: int, batch_size: int) -> int:
    """Rows of the model input of ``rows`` images: whole batches, the rest padded to PAD_ROWS.

    Engines keep what they build for each batch size they see (kernels, buffers, traced
    graphs), and every block's odd remainder would otherwise add one, so memory would
    grow with the input.
    """
    whole = rows // batch_size * batch_size
    rest = rows - whole
    return whole + -(-rest // PAD_ROWS) * PAD_ROWS


def model_input(pixels: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Write uint8 ``pixels`` (n, 784) into float32 ``images`` (m >= n, 28, 28, 1); return it.

    Values are ``pixel / 255`` in float32, as :func:`fmnist.data.to_model_input` makes
    them, and rows past ``n`` are blank. ``pixels`` may be a transposed view (the
    readers fill columns): it is gathered into rows a few hundred at a time, so both
    sides of the copy stay in cache, and converted with no temporary in float32.
    """
    rows = len(pixels)
    flat = images.reshape(-1, PIXELS)
    flat[rows:] = 0
    gathered = np.empty((min(rows, CONVERT_ROWS), PIXELS), np.uint8)
    for start in range(0, rows, CONVERT_ROWS):
        stop = min(start + CONVERT_ROWS, rows)
        chunk = gathered[: stop - start]
        np.copyto(chunk, pixels[start:stop])
        np.divide(chunk, np.float32(255), out=flat[start:stop], dtype=np.float32)
    return images


def model_batches(pixels: np.ndarray, batch_size: int) -> Iterator[np.ndarray]:
    """The model input of ``pixels``, ``batch_size`` rows at a time, the last one padded.

    Every batch is written into the same array, which holds one batch until the next
    is asked for: nothing the size of a block is made in float32, and nothing is
    allocated per batch (at 800 KB, each would be mapped and faulted in afresh).
    """
    scratch = np.empty((batch_size, *INPUT_SHAPE), np.float32)
    for start in range(0, len(pixels), batch_size):
        rows = pixels[start : start + batch_size]
        yield model_input(rows, scratch[: padded_rows(len(rows), batch_size)])


def scored_blocks(
    engine, blocks: Iterator[ParsedBlock], batch_size: int
) -> Iterator[tuple[ParsedBlock, np.ndarray]]:
    """Each parsed block, in order, with the probabilities (n, 10) of its valid rows.

    Blocks are parsed up to PREFETCH_BLOCKS ahead in a background thread. A reader may
    reuse its buffer, so each block is parsed before the next one is read, and only
    parsed blocks cross threads.
    """
    return predicted_blocks(engine, prefetched(blocks, PREFETCH_BLOCKS), batch_size)


@dataclass
class _Waiting:
    """A block whose batches are with the engine, and the outputs back so far."""

    parsed: ParsedBlock
    batches: int
    outputs: list[np.ndarray] = field(default_factory=list)


def predicted_blocks(
    engine, blocks: Iterator[ParsedBlock], batch_size: int
) -> Iterator[tuple[ParsedBlock, np.ndarray]]:
    """Each block, in order, with the probabilities (n, 10) of its valid rows.

    An engine with ``predict_many`` (OpenVINO) gets the batches of every block as one
    stream, so its parallel infer requests stay busy from one block to the next; a
    block comes back once its last batch has. It must be done with a batch's array
    when it asks for the next batch (the OpenVINO engine copies it into a request).
    """
    many = getattr(engine, "predict_many", None)
    if many is None:
        for parsed in blocks:
            outputs = [engine.predict(batch) for batch in model_batches(parsed.pixels, batch_size)]
            yield parsed, _probabilities(parsed, outputs)
        return
    waiting: deque[_Waiting] = deque()

    def stream() -> Iterator[np.ndarray]:
        for parsed in blocks:
            waiting.append(_Waiting(parsed, -(-len(parsed.pixels) // batch_size)))
            yield from model_batches(parsed.pixels, batch_size)

    for output in many(stream()):
        yield from _finished(waiting)  # blocks without valid rows, ahead of this output
        waiting[0].outputs.append(output)
        yield from _finished(waiting)
    yield from _finished(waiting)


def _probabilities(parsed: ParsedBlock, outputs: list[np.ndarray]) -> np.ndarray:
    if not outputs:
        return np.empty((0, len(CLASS_NAMES)), np.float32)
    return np.concatenate(outputs)[: len(parsed.row_ids)]  # without the padding


def _finished(waiting: deque[_Waiting]) -> Iterator[tuple[ParsedBlock, np.ndarray]]:
    while waiting and len(waiting[0].outputs) == waiting[0].batches:
        done = waiting.popleft()
        yield done.parsed, _probabilities(done.parsed, done.outputs)


_DONE = object()


def prefetched(items: Iterator, depth: int = 1) -> Iterator:
    """Yield from ``items``, computed in a background thread up to ``depth`` items ahead.

    pyarrow's parser and the engines release the GIL, so the next block is parsed
    while this one is scored. An exception in the thread is raised
    here; stopping early stops the thread.
    """
    queue: Queue = Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                queue.put(entry, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_DONE, None))
        except BaseException as exc:  # handed to the consumer, raised there
            put((None, exc))

    thread = threading.Thread(target=produce, name="block-reader", daemon=True)
    thread.start()
    try:
        while True:
            item, error = queue.get()
            if error is not None:
                raise error
            if item is _DONE:
                return
            yield item
    finally:
        stop.set()
        thread.join()
