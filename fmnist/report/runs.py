"""Read everything the report needs from run directories into plain DataFrames.

This is the only report module that touches the file system on the way in; it reads each
file through the file's owner (the manifest through :mod:`fmnist.manifest`, timings
through :mod:`fmnist.bench.timings`, shard markers through :mod:`fmnist.scoring.shards`).
Other stages write the files while this code is read, so every reader is lenient: a
missing file is an empty frame, an unreadable one is recorded in ``RunData.problems``
with its reason. Nothing here writes into a run.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow.parquet as pq

from fmnist.bench.timings import conform as conform_timings
from fmnist.io import FmnistError, RunLayout
from fmnist.manifest import Manifest, read_manifest
from fmnist.scoring.shards import ShardMarker, parse_shard_file, part_name

# What the report shows of each shard's success marker, and the marker field it comes from.
MARKER_COLUMNS = {
    "rows_read": "rows_read",
    "rows_predicted": "predicted",
    "rows_rejected": "rejected",
    "seconds": "seconds",
    "variant": "variant",
    "peak_rss_bytes": "peak_rss_bytes",
}


@dataclass
class RunData:
    """Everything read from one run directory; empty frames where a stage has not run."""

    label: str
    root: Path
    manifest: Manifest
    models: list[str]
    params: dict[str, int]
    histories: dict[str, pd.DataFrame]
    metrics: pd.DataFrame  # every metrics Parquet concatenated: per-class and average rows
    confusions: dict[tuple[str, str], pd.DataFrame]
    timings: pd.DataFrame  # the timings schema's columns (fmnist.bench.timings) plus 'file'
    scoring: pd.DataFrame  # one row per prediction part: input, model, part, marker fields
    problems: list[str] = field(default_factory=list)  # files present but unreadable
    # Lookups the report repeats for many cells, memoised by their arguments.
    cache: dict[tuple, Any] = field(default_factory=dict, repr=False, compare=False)

    @property
    def layout(self) -> RunLayout:
        return RunLayout(self.root)

    def has_ir(self, model: str, precision: str) -> bool:
        return self.layout.openvino_ir(model, precision).exists()


def read_runs(paths: list[Path | str]) -> list[RunData]:
    """Read several run directories, labelled by their names (made unique when they clash)."""
    roots = [Path(p) for p in paths]
    labels = run_labels(roots)
    return [read_run(root, label) for root, label in zip(roots, labels, strict=True)]


def run_labels(roots: list[Path]) -> list[str]:
    """Short unique labels: the directory name, with parent names added where names clash."""
    resolved = [root.resolve() for root in roots]
    depth = 1
    while True:
        labels = ["/".join(r.parts[-depth:]) for r in resolved]
        if len(set(labels)) == len(labels) or depth >= max(len(r.parts) for r in resolved):
            break
        depth += 1
    # The same directory given twice still needs two distinct labels.
    seen: dict[str, int] = {}
    unique = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return unique


def read_run(root: Path | str, label: str | None = None) -> RunData:
    """Read one run directory; raise FmnistError only when it is not a run directory at all."""
    root = Path(root)
    layout = RunLayout(root)
    if not root.is_dir():
        raise FmnistError(f"{root}: run directory not found")
    if not any(
        p.exists()
        for p in (layout.manifest, root / "models", layout.metrics_dir, layout.timings_dir)
    ):
        raise FmnistError(
            f"{root}: not a run directory (no manifest.json, models/, metrics/ or timings/)"
        )
    problems: list[str] = []
    manifest = _read_manifest(root, problems)
    histories = _read_histories(layout, problems)
    metrics, confusions = _read_metrics(layout, problems)
    timings = _read_timings(layout, problems)
    scoring = _read_scoring(layout, problems)
    models = sorted(
        set(manifest.models)
        | {p.name for p in (root / "models").glob("*") if p.is_dir()}
        | set(metrics.get("model", pd.Series(dtype=str)).dropna())
        | set(timings["model"].dropna())
    )
    params = {m: n for m in models if (n := _parameter_count(layout, m, manifest)) is not None}
    return RunData(
        label=label or root.resolve().name,
        root=root,
        manifest=manifest,
        models=models,
        params=params,
        histories=histories,
        metrics=metrics,
        confusions=confusions,
        timings=timings,
        scoring=scoring,
        problems=problems,
    )


def _relative(layout: RunLayout, path: Path) -> str:
    try:
        return str(path.relative_to(layout.root))
    except ValueError:
        return str(path)


def _read_manifest(root: Path, problems: list[str]) -> Manifest:
    try:
        return read_manifest(root)
    except FmnistError as exc:
        problems.append(str(exc))
        return Manifest()


def _read_parquet(layout: RunLayout, path: Path, problems: list[str]) -> pd.DataFrame | None:
    try:
        return pq.read_table(path).to_pandas()
    except Exception as exc:  # a truncated or foreign file: report it, keep going
        problems.append(f"{_relative(layout, path)}: unreadable ({type(exc).__name__}: {exc})")
        return None


def _read_histories(layout: RunLayout, problems: list[str]) -> dict[str, pd.DataFrame]:
    histories = {}
    for path in sorted((layout.root / "models").glob("*/history.parquet")):
        frame = _read_parquet(layout, path, problems)
        if frame is not None:
            histories[path.parent.name] = frame
    return histories


def _read_metrics(
    layout: RunLayout, problems: list[str]
) -> tuple[pd.DataFrame, dict[tuple[str, str], pd.DataFrame]]:
    frames, confusions = [], {}
    for path in sorted(layout.metrics_dir.glob("*.parquet")):
        parts = path.stem.split("__")
        if len(parts) < 2:
            continue
        frame = _read_parquet(layout, path, problems)
        if frame is None:
            continue
        model, variant = parts[0], parts[1]
        if len(parts) == 3 and parts[2] == "confusion":
            confusions[(model, variant)] = frame
            continue
        frame = frame.copy()
        # The file name is the contract; the columns are a convenience.
        frame["model"] = model
        frame["variant"] = variant
        frame["file"] = _relative(layout, path)
        frames.append(frame)
    metrics = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return metrics, confusions


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))
    except (TypeError, ValueError):
        return False


def _read_timings(layout: RunLayout, problems: list[str]) -> pd.DataFrame:
    frames = []
    for path in sorted(layout.timings_dir.glob("*.parquet")):
        frame = _read_parquet(layout, path, problems)
        if frame is None:
            continue
        frame = frame.copy()
        frame["file"] = _relative(layout, path)
        frames.append(frame)
    if not frames:
        return conform_timings(pd.DataFrame({"file": pd.Series(dtype=str)}))
    frame = conform_timings(pd.concat(frames, ignore_index=True))
    # Lookups take the last matching row: order re-runs by when they were measured.
    order = frame["timestamp"].map(lambda v: "" if _missing(v) else str(v))
    return frame.iloc[order.argsort(kind="stable")].reset_index(drop=True)


def _read_scoring(layout: RunLayout, problems: list[str]) -> pd.DataFrame:
    """One row per prediction part (or marker): input, model, part index, marker figures."""
    rows = []
    for model_dir in sorted(p for p in layout.predictions_dir.glob("*/*") if p.is_dir()):
        shards: dict[tuple[int, int], set[str]] = {}
        for path in model_dir.iterdir():
            shard = parse_shard_file(path.name)  # temporary files and strays do not parse
            if shard and shard[0] != "rejects":
                shards.setdefault(shard[1:], set()).add(shard[0])
        for (index, total), kinds in sorted(shards.items()):
            row: dict[str, Any] = {
                "input": model_dir.parent.name,
                "model": model_dir.name,
                "part": part_name(index, total).removesuffix(".parquet"),
                "part_index": index,
                "part_total": total,
                "has_parquet": "part" in kinds,
                "has_marker": "marker" in kinds,
                **dict.fromkeys(MARKER_COLUMNS),
            }
            if "marker" in kinds:
                try:
                    marker = ShardMarker.read(ShardMarker.path(model_dir, index, total))
                    row.update({c: getattr(marker, f) for c, f in MARKER_COLUMNS.items()})
                except FmnistError as exc:
                    problems.append(f"{_relative(layout, model_dir)}: {exc}")
                    row["has_marker"] = False
            rows.append(row)
    columns = [
        "input",
        "model",
        "part",
        "part_index",
        "part_total",
        "has_parquet",
        "has_marker",
        *MARKER_COLUMNS,
    ]
    return pd.DataFrame(rows, columns=columns)


class _MemberFile(io.RawIOBase):
    """A read-only, seekable view of a stored (uncompressed) zip member.

    h5py reads only the few bytes it needs through it; ``ZipFile.open`` would re-read
    the archive from the start on every backward seek.
    """

    def __init__(self, handle, start: int, size: int):
        super().__init__()
        self.handle, self.start, self.size, self.position = handle, start, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def readinto(self, buffer) -> int:
        count = max(0, min(len(buffer), self.size - self.position))
        self.handle.seek(self.start + self.position)
        data = self.handle.read(count)
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)


def _stored_member(archive: zipfile.ZipFile, handle, name: str) -> io.RawIOBase:
    info = archive.getinfo(name)
    if info.compress_type != zipfile.ZIP_STORED:
        with archive.open(info) as member:
            return io.BytesIO(member.read())
    # The local header (30 bytes + name + extra) precedes the member's bytes.
    handle.seek(info.header_offset)
    header = handle.read(30)
    name_length = int.from_bytes(header[26:28], "little")
    extra_length = int.from_bytes(header[28:30], "little")
    start = info.header_offset + 30 + name_length + extra_length
    return _MemberFile(handle, start, info.file_size)


def _parameter_count(layout: RunLayout, model: str, manifest: Manifest) -> int | None:
    """Parameters of a trained model: from the manifest, else counted in model.keras.

    A ``.keras`` file is a zip holding ``model.weights.h5``; its ``layers/`` group has
    every variable Keras counts in ``count_params`` (the optimizer state lives apart).
    Counting there reads only the HDF5 metadata and avoids importing TensorFlow.
    """
    training = manifest.models.get(model)
    recorded = training.params if training else None
    if isinstance(recorded, int):
        return recorded
    path = layout.keras_model(model)
    if not path.is_file():
        return None
    try:
        import h5py

        total = 0

        def count(name: str, obj: Any) -> None:
            nonlocal total
            if isinstance(obj, h5py.Dataset) and name.startswith("layers/"):
                total += int(obj.size)

        with open(path, "rb") as handle, zipfile.ZipFile(handle) as archive:
            member = _stored_member(archive, handle, "model.weights.h5")
            with h5py.File(member, "r") as weights:
                weights.visititems(count)
        return total
    except Exception:  # an unreadable model is reported by the stages that load it
        return None
