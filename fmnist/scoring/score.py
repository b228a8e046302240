"""Batch scoring: CSV or Parquet images to Parquet predictions, in shards that survive kills.

``score_shard`` streams one shard of the input (see :mod:`fmnist.scoring.inputs`) through
an engine in throughput mode and writes the shard's part, rejects and marker files
(:mod:`fmnist.scoring.shards`). Both Parquet files are written to temporary names and
renamed when complete, the rejects first, then the part; the marker is written last.
A shard is finished only when its marker exists and agrees with its files, the input
and the model, so a killed process leaves nothing that looks finished and running the
same command again redoes exactly the unfinished shards. A shard whose rejected rows
pass ``--max-rejects`` is not finished either: it leaves no files, and the command
fails with a summary once the other shards are done.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from fmnist.architectures import get_architecture
from fmnist.engines import available_variants, create_engine, variant_artifact
from fmnist.engines.int8_check import Int8Check
from fmnist.faults import as_fmnist_error
from fmnist.io import FmnistError, RunLayout, atomic_path, sha256_cached, sha256_file
from fmnist.manifest import check_model_files, model_files
from fmnist.scoring.csv_input import BLOCK_BYTES, GZIP_BLOCK_ROWS
from fmnist.scoring.inputs import ScoringInput, input_fingerprint, open_input
from fmnist.scoring.overlap import scored_blocks
from fmnist.scoring.rows import InputShard, ParsedBlock, Reject, reject_position
from fmnist.scoring.shards import (
    DEFAULT_MAX_REJECTS,
    REJECT_SCHEMA,
    BufferedWriter,
    RejectLimit,
    ShardMarker,
    clean_stale_temporaries,
    part_name,
    prediction_schema,
    predictions_table,
    rejects_name,
    rejects_table,
    shard_finished,
    shard_lock,
)
from fmnist.system import peak_rss_bytes, rss_bytes

ON_BAD_ROW = ("reject", "fail")
M_MMAP_THRESHOLD = -3  # mallopt parameter number in glibc's malloc.h


@dataclass(frozen=True)
class ScoreConfig:
    """What to score with what, and where the shards go."""

    input: Path
    run: Path
    model: str
    variant: str
    out_dir: Path
    shards: int = 1
    on_bad_row: str = "reject"
    max_rejects: str = DEFAULT_MAX_REJECTS  # N rows or P% of a shard's rows (RejectLimit)
    probabilities: bool = False
    batch_size: int = 256
    block_bytes: int = BLOCK_BYTES
    gzip_block_rows: int = GZIP_BLOCK_ROWS  # gzip shards take every N-th block of this many rows
    row_group_rows: int = 65_536  # large groups, filled alike by small and large inputs


@dataclass(frozen=True)
class ShardResult:
    """How one shard ended: scored now, or skipped because it was already finished."""

    index: int
    shards: int
    status: str  # scored | skipped | over-limit
    rows_read: int
    predicted: int
    rejected: int
    seconds: float
    rows_per_second: float
    peak_rss_bytes: int
    part: Path
    summary: str = ""  # why a shard is over the reject limit


class RejectLimitExceeded(FmnistError):
    """Shards passed ``--max-rejects``; the finished ones are kept, the others left undone."""

    def __init__(self, message: str, results: list[ShardResult]):
        super().__init__(message)
        self.results = results


def input_stem(path: Path | str) -> str:
    """``test.csv.gz`` or ``test.parquet`` -> ``test``: the input's name under predictions/."""
    name = Path(path).name
    for suffix in (".gz", ".csv", ".parquet", ".pq"):
        name = name.removesuffix(suffix)
    return name or "input"


def default_out_dir(run: Path | str, input_path: Path | str, model: str) -> Path:
    """RUN/predictions/<input stem>/<model>/."""
    return RunLayout(Path(run)).predictions_dir / input_stem(input_path) / model


# --------------------------------------------------------------------------- choices


def _overall_metrics(path: Path) -> dict | None:
    # The overall figures are repeated on every row of a metrics file; the first will do.
    if not path.is_file():
        return None
    rows = pq.read_table(path).slice(0, 1).to_pylist()
    return rows[0] if rows else None


def default_variant(run: Path | str, model: str) -> tuple[str, str]:
    """The variant to score with by default, and why.

    INT8 when its test metrics and f32's exist and pass the INT8 check
    (:meth:`fmnist.engines.int8_check.Int8Check.acceptable`: accuracy, loss, mean
    confidence, mean |Δp| against f32), else OpenVINO f32 when its IR exists, else Keras.
    """
    available = available_variants()
    layout = RunLayout(Path(run))
    f32 = _overall_metrics(layout.metrics(model, "openvino-f32"))
    int8 = _overall_metrics(layout.metrics(model, "openvino-int8"))
    if (
        "openvino-int8" in available
        and f32 is not None
        and int8 is not None
        and variant_artifact(run, model, "openvino-int8").is_file()
    ):
        accepted, why = Int8Check.from_metrics(f32, int8).acceptable()
        if accepted:
            return "openvino-int8", why
        fallback = why
    else:
        fallback = "no int8 and f32 metrics to compare"
    if "openvino-f32" in available and variant_artifact(run, model, "openvino-f32").is_file():
        return "openvino-f32", fallback
    return "keras-predict", fallback + "; no OpenVINO f32 IR"


def parse_shard_option(
    text: str | None, workers: int = 1, array_index: Callable[[], int] | None = None
):
    """``--shard`` text to (shard indices to run here, shard count).

    ``I/N`` one shard; ``auto/N`` the shard of this array job, ``array_index()`` (the
    caller reads it from its job environment); ``all/N`` every shard; none: every shard
    of ``workers`` shards.
    """
    if text is None:
        return list(range(workers)), workers
    which, sep, count_text = text.partition("/")
    try:
        count = int(count_text)
    except ValueError:
        count = 0
    if not sep or count < 1:
        raise FmnistError(f"--shard {text!r}: expected I/N, auto/N or all/N with N >= 1")
    if which == "all":
        return list(range(count)), count
    if which == "auto":
        if array_index is None:
            raise FmnistError(f"--shard {text!r}: no array index to take the shard from")
        index = array_index()
        if not 0 <= index < count:
            raise FmnistError(
                f"array index {index} is outside 0-{count - 1} for --shard auto/{count} "
                "(submit the array as 0..N-1, or set FMNIST_ARRAY_BASE=1 for 1..N)"
            )
        return [index], count
    try:
        index = int(which)
    except ValueError as exc:
        raise FmnistError(f"--shard {text!r}: expected I/N, auto/N or all/N") from exc
    if not 0 <= index < count:
        raise FmnistError(f"--shard {text!r}: shard index must be in 0-{count - 1}")
    return [index], count


# --------------------------------------------------------------------------- model identity


def model_sha256(path: Path | str) -> str:
    """SHA-256 of a model file; for an OpenVINO IR, of model.xml followed by model.bin.

    Hashed once per process (:func:`fmnist.io.sha256_cached`): every shard asks.
    """
    files = model_files(path)
    for file in files:
        if not file.is_file():
            raise FmnistError(f"{file}: model file not found (train/optimize the model first)")
    return sha256_cached(*files)


_ENGINES: dict[tuple, object] = {}


def cached_engine(run: Path, model: str, variant: str):
    """One throughput engine per (run, model, variant) per process: workers reuse it."""
    key = (str(Path(run).resolve()), model, variant)
    if key not in _ENGINES:
        _ENGINES[key] = create_engine(run, model, variant, mode="throughput")
    return _ENGINES[key]


# --------------------------------------------------------------------------- scoring


def _bad_row_error(source: ScoringInput, reject: Reject) -> FmnistError:
    return FmnistError(
        f"{reject_position(source.path, reject)}: {reject.reason} (--on-bad-row fail)"
    )


@dataclass
class _RejectTally:
    """How many rows of each kind a shard rejected, and the first of them."""

    kinds: Counter = field(default_factory=Counter)
    first: Reject | None = None

    def add(self, rejects: list[Reject]) -> None:
        self.first = self.first or rejects[0]
        self.kinds.update(reject.kind for reject in rejects)


class _OverLimit(Exception):
    """A shard passed the reject limit: unwinds its writes, so its files are not kept."""

    def __init__(self, rows_read: int, rejected: int, early: bool):
        super().__init__(f"{rejected} of {rows_read} rows rejected")
        self.rows_read, self.rejected, self.early = rows_read, rejected, early


def score_shard(
    config: ScoreConfig, index: int, progress: Callable[[str], None] | None = None
) -> ShardResult:
    """Score shard ``index`` of ``config.shards``, unless it is already finished.

    A shard whose rejected rows pass ``config.max_rejects`` keeps no files and comes
    back with status ``over-limit`` and a summary; so does a finished one whose
    recorded rejects pass a stricter limit than it was scored with.
    """
    progress = progress or _stderr
    count = config.shards
    label = f"shard {index}/{count}"
    limit = RejectLimit.parse(config.max_rejects)
    source = open_input(config.input)
    fingerprint = input_fingerprint(source.path)
    expected_sha = model_sha256(variant_artifact(config.run, config.model, config.variant))
    out_dir = config.out_dir
    part = out_dir / part_name(index, count)
    with shard_lock(out_dir, index, count):
        expected = {
            "shard": index,
            "shards": count,
            "input_fingerprint": fingerprint,
            "model_sha256": expected_sha,
            "variant": config.variant,
            **source.identity(),
            "probabilities": config.probabilities,
            **source.cut_settings(config.gzip_block_rows),
        }
        finished = shard_finished(out_dir, index, count, expected)
        if finished and limit.exceeded(finished.rejected, finished.rows_read):
            summary = (
                f"finished earlier with {finished.rejected:,} of {finished.rows_read:,} rows "
                f"rejected (under --max-rejects {finished.max_rejects}), more than "
                f"--max-rejects {limit} allows ({limit.allowed(finished.rows_read):,})"
            )
            progress(f"{label}: {summary}")
            return _result(finished, "over-limit", part, summary)
        if finished:
            progress(f"{label}: already finished, skipped ({part})")
            return _result(finished, "skipped", part)
        if clean_stale_temporaries(out_dir, index, count):
            progress(f"{label}: removed temporary files of an unfinished run")
        # The marker goes first: from here until the new one is written, the shard
        # must not look finished even if the process dies. Then the stale part and
        # rejects, so a rerun after a full disk needs no more room than the first run.
        ShardMarker.path(out_dir, index, count).unlink(missing_ok=True)
        for stale in (part, out_dir / rejects_name(index, count)):
            stale.unlink(missing_ok=True)
        try:
            return _score_unfinished(config, source, index, limit, fingerprint, progress)
        except OSError as exc:
            # A full disk or a read-only mount, here or in a worker: one line naming
            # where (pyarrow's writers name no file), with nothing that looks finished.
            raise as_fmnist_error(exc, out_dir) from None


def _score_unfinished(
    config: ScoreConfig,
    source: ScoringInput,
    index: int,
    limit: RejectLimit,
    fingerprint: str,
    progress: Callable[[str], None],
) -> ShardResult:
    """Score a shard that is not finished (its caller holds the shard's lock)."""
    count, out_dir = config.shards, config.out_dir
    label = f"shard {index}/{count}"
    part = out_dir / part_name(index, count)
    engine = cached_engine(config.run, config.model, config.variant)
    metadata = {
        "model": config.model,
        "variant": config.variant,
        "executed_precision": engine.info.executed_precision,
        "model_sha256": model_sha256(engine.info.model_path),
        "input": str(source.path.resolve()),
        "input_fingerprint": fingerprint,
        "shard": index,
        "shards": count,
    }
    schema = prediction_schema(source.has_label, config.probabilities, metadata)
    started, cpu_started = time.perf_counter(), time.process_time()
    shard = source.open_shard(index, count, config.block_bytes, config.gzip_block_rows)
    tally = _RejectTally()
    try:
        rows_read, predicted, rejected = _write_shard(
            config, source, engine, schema, shard, tally, limit, index, progress
        )
    except _OverLimit as over:
        summary = _over_limit_summary(source, over, limit, tally)
        progress(f"{label}: {summary}")
        return ShardResult(
            index=index,
            shards=count,
            status="over-limit",
            rows_read=over.rows_read,
            predicted=0,
            rejected=over.rejected,
            seconds=round(time.perf_counter() - started, 3),
            rows_per_second=0.0,
            peak_rss_bytes=peak_rss_bytes(),
            part=part,
            summary=summary,
        )
    seconds = time.perf_counter() - started
    marker = ShardMarker(
        **metadata,
        **shard.cut,
        **source.identity(),
        input_bytes=source.size,
        probabilities=config.probabilities,
        rows_read=rows_read,
        predicted=predicted,
        rejected=rejected,
        max_rejects=str(limit),
        reject_limit=limit.allowed(rows_read),
        part=part.name,
        part_sha256=sha256_file(part),
        rejects=rejects_name(index, count),
        rejects_sha256=sha256_file(out_dir / rejects_name(index, count)),
        seconds=round(seconds, 3),
        cpu_seconds=round(time.process_time() - cpu_started, 3),  # every thread's
        rows_per_second=round(rows_read / seconds, 1) if seconds > 0 else 0.0,
        peak_rss_bytes=peak_rss_bytes(),
        host=socket.gethostname(),
        pid=os.getpid(),
        finished=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    marker.write(out_dir)
    progress(
        f"{label}: {marker.rows_read:,} rows, {marker.predicted:,} predicted, "
        f"{marker.rejected:,} rejected (--max-rejects {limit}: {marker.reject_limit:,}) in "
        f"{seconds:.1f}s ({marker.rows_per_second:,.0f} rows/s) -> {part}"
    )
    return _result(marker, "scored", part)


def _result(marker: ShardMarker, status: str, part: Path, summary: str = "") -> ShardResult:
    return ShardResult(
        index=marker.shard,
        shards=marker.shards,
        status=status,
        rows_read=marker.rows_read,
        predicted=marker.predicted,
        rejected=marker.rejected,
        seconds=marker.seconds,
        rows_per_second=marker.rows_per_second,
        peak_rss_bytes=marker.peak_rss_bytes,
        part=part,
        summary=summary,
    )


def _over_limit_summary(
    source: ScoringInput,
    over: _OverLimit,
    limit: RejectLimit,
    tally: _RejectTally,
) -> str:
    if over.early:
        counted = f"{over.rejected:,} rejected in the first {over.rows_read:,} rows read"
        past = f"already more than --max-rejects {limit} allows for the whole shard"
    else:
        counted = f"{over.rejected:,} of its {over.rows_read:,} rows rejected"
        past = f"more than --max-rejects {limit} allows ({limit.allowed(over.rows_read):,})"
    common = ", ".join(f"{kind} {n:,}" for kind, n in tally.kinds.most_common(3))
    first = tally.first
    return (
        f"{counted}, {past}; most often {common}; first: "
        f"{reject_position(source.path, first)}: {first.reason}"
    )


def _write_shard(
    config: ScoreConfig,
    source: ScoringInput,
    engine,
    schema: pa.Schema,
    shard: InputShard,
    tally: _RejectTally,
    limit: RejectLimit,
    index: int,
    progress: Callable[[str], None],
) -> tuple[int, int, int]:
    out_dir = config.out_dir
    count = config.shards
    rows_read = 0
    last_report = time.perf_counter()
    # Exiting in reverse order renames the rejects first, then the part.
    with (
        atomic_path(out_dir / part_name(index, count)) as part_tmp,
        atomic_path(out_dir / rejects_name(index, count)) as rejects_tmp,
    ):
        predictions = BufferedWriter(part_tmp, schema, config.row_group_rows)
        rejects = BufferedWriter(rejects_tmp, REJECT_SCHEMA, config.row_group_rows)
        parsed: ParsedBlock
        for parsed, probs in scored_blocks(engine, shard.blocks, config.batch_size):
            if parsed.rejects:
                if config.on_bad_row == "fail":
                    raise _bad_row_error(source, parsed.rejects[0])
                tally.add(parsed.rejects)
                rejects.add(rejects_table(parsed.rejects))
            rows_read += parsed.rows
            if limit.certain_to_exceed(rejects.rows, shard.valid_rows_at_most):
                raise _OverLimit(rows_read, rejects.rows, early=True)
            predictions.add(predictions_table(schema, parsed.row_ids, probs, parsed.labels))
            if time.perf_counter() - last_report >= 5:
                last_report = time.perf_counter()
                progress(
                    f"shard {index}/{count}: {rows_read:,} rows read, {rejects.rows:,} "
                    f"rejected, RSS {rss_bytes() >> 20} MiB"
                )
        if limit.exceeded(rejects.rows, rows_read):
            raise _OverLimit(rows_read, rejects.rows, early=False)
        predictions.close()
        rejects.close()
    return rows_read, predictions.rows, rejects.rows


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _worker_threads(workers: int) -> dict[str, str]:
    # Each worker process gets its share of the cores instead of all of them.
    share = str(max(1, len(os.sched_getaffinity(0)) // workers))
    return {
        name: share
        for name in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")
        if name not in os.environ
    }


def fix_malloc_mmap_threshold(threshold: int = 1 << 18) -> bool:
    """Make glibc serve allocations from ``threshold`` bytes up by mmap, for good.

    glibc raises its mmap threshold each time a large block is freed, after which the
    multi-MB arrays of every block come from per-thread heaps that fragment, and the
    resident size creeps up with the number of blocks. A fixed threshold keeps memory
    flat whatever the input size. True when set (glibc), False elsewhere.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold))
    except (OSError, AttributeError):
        return False


_WATCHED_PARENT: int | None = None


def die_with_parent(parent: int, interval: float = 0.5) -> None:
    """End this process within ``interval`` seconds of ``parent``'s end, however it ends.

    A scorer killed with SIGKILL (a scheduler's walltime, a user) cannot stop its
    workers; each watches its parent instead and kills itself once it is re-parented,
    leaving the shard unfinished for a rerun. A thread polling the parent id, not
    ``PR_SET_PDEATHSIG``: that signal follows the *thread* that started the worker,
    and loky starts replacements from a thread of its own.
    """
    global _WATCHED_PARENT
    if _WATCHED_PARENT == parent:
        return
    _WATCHED_PARENT = parent

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _start_worker(parent: int) -> None:
    """What each worker process does first, before it takes a shard."""
    die_with_parent(parent)
    fix_malloc_mmap_threshold()


def _score_in_worker(config: ScoreConfig, index: int) -> ShardResult:
    try:
        return score_shard(config, index)
    except OSError as exc:  # raised outside a shard's files (loading the model, the input)
        raise as_fmnist_error(exc) from None


def score_shards(
    config: ScoreConfig,
    indices: list[int],
    workers: int = 1,
    progress: Callable[[str], None] | None = None,
) -> list[ShardResult]:
    """Score the given shards, ``workers`` processes at a time (joblib) when more than one.

    Raises :class:`RejectLimitExceeded` after the last shard when any shard passed
    ``--max-rejects``; the shards that finished keep their files and markers.
    """
    get_architecture(config.model)  # an unknown name lists the valid ones
    if config.on_bad_row not in ON_BAD_ROW:
        raise FmnistError(f"--on-bad-row must be one of {', '.join(ON_BAD_ROW)}")
    limit = RejectLimit.parse(config.max_rejects)
    open_input(config.input)  # one-line errors for a bad input before any work
    # The recorded model, checked here once before any worker starts.
    check_model_files(config.run, variant_artifact(config.run, config.model, config.variant))
    results = _score_indices(config, indices, workers, progress)
    over = [result for result in results if result.status == "over-limit"]
    if over:
        kept = len(results) - len(over)
        raise RejectLimitExceeded(
            f"{len(over)} of {len(results)} shard(s) past --max-rejects {limit}: shard "
            f"{over[0].index}/{over[0].shards}: {over[0].summary}. {kept} finished shard(s) "
            "kept; fix the input or raise --max-rejects, then run the same command again",
            results,
        )
    return results


def _score_indices(
    config: ScoreConfig, indices: list[int], workers: int, progress: Callable[[str], None] | None
) -> list[ShardResult]:
    if workers <= 1 or len(indices) <= 1:
        fix_malloc_mmap_threshold()
        return [score_shard(config, index, progress) for index in indices]
    from joblib import Parallel, delayed, parallel_config

    extra = _worker_threads(workers)
    saved = {name: os.environ.get(name) for name in extra}
    os.environ.update(extra)  # loky workers start with this environment
    try:
        # Each worker watches this process from its start, before it loads anything.
        with parallel_config(backend="loky", initializer=_start_worker, initargs=(os.getpid(),)):
            return Parallel(n_jobs=workers)(
                delayed(_score_in_worker)(config, index) for index in indices
            )
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
