"""What every input reader hands the scorer: parsed rows, rejects, shards, and the value rule.

A reader (:mod:`fmnist.scoring.csv_input`, :mod:`fmnist.scoring.parquet_input`) cuts its
input into shards and each shard into :class:`ParsedBlock` s: the valid rows as uint8
arrays and a :class:`Reject` for every other row. Row ids are 0-based data rows of the
input, global across shards, whatever the format. The rule for one value (what is a
pixel, what is a label) and the refusal of normalized images live here so that both
formats apply the same ones.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

LABELS = 10  # labels are 0-9
PIXEL_MAX = 255  # pixels are 0-255
NORMALIZED_SAMPLE_ROWS = 200  # rows looked at to tell normalized images apart
CACHE_LINE = 64  # bytes


@dataclass(frozen=True)
class Reject:
    """A data row that could not be scored, and why.

    ``line`` is the 1-based line of a text input and None where the format has no lines
    (Parquet); ``raw`` is the row as text, cut to 200 characters.
    """

    row_id: int
    line: int | None
    kind: str
    reason: str
    raw: str


@dataclass
class ParsedBlock:
    """The valid rows of a block as arrays, and the rejected ones."""

    row_ids: np.ndarray  # int64, ascending
    pixels: np.ndarray  # uint8 (n, 784), possibly a transposed view
    labels: np.ndarray | None  # uint8 (n,) when the input has labels
    rejects: list[Reject] = field(default_factory=list)

    @property
    def rows(self) -> int:
        """Rows read: the valid ones and the rejected ones."""
        return len(self.row_ids) + len(self.rejects)


def join_blocks(parts: list[ParsedBlock]) -> ParsedBlock:
    """One block of ``parts`` in their order (at least one; all with labels or none)."""
    if len(parts) == 1:
        return parts[0]
    labels = [p.labels for p in parts]
    return ParsedBlock(
        row_ids=np.concatenate([p.row_ids for p in parts]),
        pixels=np.concatenate([p.pixels for p in parts]),
        labels=None if labels[0] is None else np.concatenate(labels),
        rejects=[r for p in parts for r in p.rejects],
    )


def column_major_pixels(rows: int, pixels: int = 784) -> np.ndarray:
    """An empty uint8 (pixels, rows) array for readers that fill images a column at a time.

    Its ``.T`` is the (rows, pixels) view a :class:`ParsedBlock` holds. Each pixel's row
    is spaced by an odd number of cache lines: gathering images back into rows reads
    one line from each of the 784 rows, and at a power-of-two spacing (8,192-row
    batches) those lines all fall into the same few cache sets and evict one another,
    which makes the gather several times slower.
    """
    lines = -(-rows // CACHE_LINE) | 1
    return np.empty((pixels, lines * CACHE_LINE), dtype=np.uint8)[:, :rows]


def reject_position(path, reject: Reject) -> str:
    """``FILE:LINE`` for a text input, ``FILE: row R`` for one without lines."""
    if reject.line is None:
        return f"{path}: row {reject.row_id}"
    return f"{path}:{reject.line}"


@dataclass
class InputShard:
    """One shard of an input, opened: its parsed blocks and what its marker records.

    ``cut`` holds the marker fields that say which part of the input the shard is
    (byte range, row blocks or row groups). ``valid_rows_at_most`` bounds the valid rows
    the shard can hold (None when unknown), so a reject limit can stop it early only
    when the limit cannot be met any more.
    """

    blocks: Iterator[ParsedBlock]
    cut: dict
    valid_rows_at_most: int | None


@dataclass(frozen=True)
class ExpectedShard:
    """What the input says shard ``index`` must hold, re-derived by ``verify``."""

    index: int
    rows: int
    cut: dict  # marker fields of the cut, compared as they are; None values are not checked
    row_ranges: tuple[tuple[int, int], ...]  # [start, stop) row id ranges

    def row_ids(self) -> np.ndarray:
        return np.concatenate(
            [np.arange(a, b, dtype=np.int64) for a, b in self.row_ranges] or [np.empty(0, np.int64)]
        )


# --------------------------------------------------------------------------- one value


def highest(is_label: bool) -> int:
    """The largest valid value: 9 for a label, 255 for a pixel."""
    return LABELS - 1 if is_label else PIXEL_MAX


def number_problem(number: float, name: str, is_label: bool, shown: str) -> tuple[str, str] | None:
    """(kind, reason) when ``number`` is not a valid label (0-9) or pixel (0-255), else None.

    The one rule of a value and its reject message, whatever the format. A whole number
    written as a float (``12.0``) is valid; ``shown`` is how the value reads in the
    input, for the reason. What the value is decides the kind, not how it is written:
    ``1e3`` is above 255 and ``-1`` a label out of range.
    """
    if math.isnan(number):
        return "nan", f"{name} is NaN"
    if math.isinf(number):
        return "non_integer", f"{name} is {shown!r}, not an integer"
    if is_label and number < 0 and number.is_integer():
        return "label_out_of_range", f"label is {shown}, outside 0-{highest(True)}"
    if number < 0:
        return "negative", f"{name} is {shown}, negative"
    if not number.is_integer():
        return "fractional", f"{name} is {shown}, fractional"
    if is_label and number > highest(True):
        return "label_out_of_range", f"label is {shown}, outside 0-{highest(True)}"
    if number > PIXEL_MAX:
        return "over_255", f"{name} is {shown}, above {PIXEL_MAX}"
    return None


def valid_values(values: np.ndarray, is_label: bool) -> np.ndarray:
    """Which of ``values`` (floats, NaN for null) :func:`number_problem` accepts, at once.

    The same rule for readers that check whole columns: whole numbers from 0 to
    :func:`highest`; NaN and infinities are not.
    """
    with np.errstate(invalid="ignore"):
        return (values >= 0) & (values <= highest(is_label)) & (values == np.floor(values))


# --------------------------------------------------------------------------- normalized images


def normalized_example(pixels: np.ndarray) -> float | None:
    """A value that shows ``pixels`` are normalized images (0-1 fractions), else None.

    Normalized means: no value above 1, and some strictly between 0 and 1. Such a file
    would have every row rejected as fractional, so readers refuse it up front.
    """
    values = np.asarray(pixels, dtype=np.float64).ravel()
    values = values[np.isfinite(values)]
    if not values.size or values.max() > 1:
        return None
    fractions = values[(values > 0) & (values < 1)]
    return float(fractions[0]) if fractions.size else None


def normalized_message(path, example: float, where: str) -> str:
    """The one-line refusal of a file of normalized images."""
    return (
        f"{path}: pixels are normalized to 0-1 (found {example:g} in {where} and no value "
        "above 1); expected integers 0-255 as in Fashion-MNIST: multiply by 255 and round "
        "before scoring"
    )
