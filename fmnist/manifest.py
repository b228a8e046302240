"""The run manifest (``RUN/manifest.json``): the one module that writes and reads it.

Each kind of record has one writer here and one dataclass the readers get:

    models.<model>                   TrainingRecord   train (and adopt, for model.keras)
    openvino.<model>                 IrRecord         optimize (and adopt, for an IR)
    evaluations.<model>__<variant>   EvaluationRecord evaluate, or why it was skipped
    jobs.<job key>                   JobRecord        every job that wrote into the run
    machine.<host>                   MachineRecord    the host of those jobs
    adopted.<run-relative file>      AdoptionRecord   a model file accepted by hand

Every write is a read-modify-write of the whole file under the run's manifest lock,
renamed into place, so parallel jobs never lose each other's records. Readers are
lenient: a field a record lacks reads as its default, so a report can still read a
run an older version wrote. The SHA-256 of every model file lives here too, and
:func:`check_model_files` compares the files on disk with it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fmnist.io import FmnistError, RunLayout, file_lock, sha256_cached, write_json_atomic

SHA_PREFIX = 12  # hex digits of a hash shown in messages


def _known(cls, entry: Any) -> dict:
    """The keys of ``entry`` that ``cls`` has as fields (a foreign or old record reads too)."""
    if not isinstance(entry, dict):
        return {}
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in entry.items() if k in names}


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# --------------------------------------------------------------------------- records


@dataclass(frozen=True)
class TrainingRecord:
    """``models.<model>``: how a model was trained, and the SHA-256 of its model.keras."""

    keras_sha256: str | None = None
    config: dict = field(default_factory=dict)
    recipe: dict = field(default_factory=dict)
    train_images: int | None = None
    validation_images: int | None = None
    epochs_run: int | None = None
    best_epoch: int | None = None
    wall_seconds: float | None = None
    resumed_from_epoch: int | None = None
    params: int | None = None
    training_precision: str | None = None  # Keras' dtype policy the epochs ran under
    native_bf16: bool | None = None  # whether the CPU ran bf16 natively
    images_per_second: float | None = None  # training images per second of the epochs run
    # A distilled model's teacher: its network name in this run, or the model.keras path
    # given with `train --teacher`; and that file's SHA-256.
    teacher: str | None = None
    teacher_sha256: str | None = None

    @classmethod
    def from_dict(cls, entry: Any) -> TrainingRecord:
        return cls(**_known(cls, entry))


@dataclass(frozen=True)
class IrRecord:
    """``openvino.<model>``: the f32 IR and, after ``optimize --int8``, the INT8 IR.

    ``f32`` and ``int8`` each hold at least ``xml``, ``xml_sha256`` and ``bin_sha256``;
    ``int8`` also the INT8 check's figures and method (read by the report).
    """

    f32: dict = field(default_factory=dict)
    int8: dict | None = None
    config: dict = field(default_factory=dict)
    seconds: float | None = None

    @classmethod
    def from_dict(cls, entry: Any) -> IrRecord:
        known = _known(cls, entry)
        known["f32"] = known.get("f32") if isinstance(known.get("f32"), dict) else {}
        if not isinstance(known.get("int8"), dict):
            known["int8"] = None
        return cls(**known)

    def files(self, precision: str) -> dict | None:
        """The record of one IR (``f32`` or ``int8``), if there is one."""
        return self.int8 if precision == "int8" else (self.f32 or None)


@dataclass(frozen=True)
class EvaluationRecord:
    """``evaluations.<model>__<variant>``: overall test figures, or why it was skipped."""

    accuracy: float | None = None
    loss: float | None = None
    mean_confidence: float | None = None
    mean_abs_dp_vs_f32: float | None = None
    lost_vs_f32: float | None = None
    gained_vs_f32: float | None = None
    images: int | None = None
    executed_precision: str | None = None
    skipped: str | None = None

    @classmethod
    def from_dict(cls, entry: Any) -> EvaluationRecord:
        return cls(**_known(cls, entry))


@dataclass(frozen=True)
class JobRecord:
    """``jobs.<key>``: which job ran which command in the run, where and when."""

    command: str = ""
    scheduler: str | None = None
    job_id: str | None = None
    array_job_id: str | None = None
    array_index: int | None = None
    job_name: str | None = None
    submit_dir: str | None = None
    node_type: str | None = None
    task_id: str | None = None
    host: str | None = None
    git_revision: str | None = None
    argv: list = field(default_factory=list)
    finished: str | None = None

    @classmethod
    def from_dict(cls, entry: Any) -> JobRecord:
        return cls(**_known(cls, entry))


@dataclass(frozen=True)
class MachineRecord:
    """``machine.<host>``: the host a job ran on (:class:`fmnist.system.MachineInfo`)."""

    host: str | None = None
    cpu_model: str | None = None
    isa_flags: list = field(default_factory=list)
    logical_cpus: int | None = None
    usable_cpus: int | None = None
    python: str | None = None
    libraries: dict = field(default_factory=dict)
    git_revision: str | None = None

    @classmethod
    def from_dict(cls, entry: Any) -> MachineRecord:
        return cls(**_known(cls, entry))


@dataclass(frozen=True)
class AdoptionRecord:
    """``adopted.<file>``: a model file accepted by hand (``fmnist-batch adopt``)."""

    sha256: str
    previous_sha256: str | None
    adopted: str  # when (UTC)
    reason: str = ""

    @classmethod
    def from_dict(cls, entry: Any) -> AdoptionRecord:
        known = _known(cls, entry)
        return cls(
            sha256=str(known.get("sha256", "")),
            previous_sha256=known.get("previous_sha256"),
            adopted=str(known.get("adopted", "")),
            reason=str(known.get("reason", "")),
        )


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class Manifest:
    """One run's manifest, read: every record typed, empty sections where none exist."""

    models: dict[str, TrainingRecord] = field(default_factory=dict)
    openvino: dict[str, IrRecord] = field(default_factory=dict)
    evaluations: dict[str, EvaluationRecord] = field(default_factory=dict)
    jobs: dict[str, JobRecord] = field(default_factory=dict)
    machines: dict[str, MachineRecord] = field(default_factory=dict)
    adopted: dict[str, AdoptionRecord] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        data = data if isinstance(data, dict) else {}

        def section(name: str, record) -> dict:
            entries = data.get(name)
            if not isinstance(entries, dict):
                return {}
            return {str(k): record.from_dict(v) for k, v in entries.items()}

        return cls(
            models=section("models", TrainingRecord),
            openvino=section("openvino", IrRecord),
            evaluations=section("evaluations", EvaluationRecord),
            jobs=section("jobs", JobRecord),
            machines=section("machine", MachineRecord),
            adopted=section("adopted", AdoptionRecord),
        )

    def evaluation(self, model: str, variant: str) -> EvaluationRecord:
        """The record of one evaluation; an empty one where none was written."""
        return self.evaluations.get(f"{model}__{variant}", EvaluationRecord())

    def int8(self, model: str) -> dict | None:
        """The INT8 IR's record of ``model`` (method, check, layers), if optimize made one."""
        record = self.openvino.get(model)
        return record.int8 if record else None

    def node_types(self) -> list[str]:
        """The node types the run's jobs recorded, sorted."""
        return sorted({str(job.node_type) for job in self.jobs.values() if job.node_type})

    def git_revisions(self) -> list[str]:
        """The code revisions the run's jobs ran, sorted."""
        return sorted({str(job.git_revision) for job in self.jobs.values() if job.git_revision})

    def recorded_sha256(self, run_relative: str) -> str | None:
        """The SHA-256 the manifest holds for a model file (a path relative to the run)."""
        return self.model_hashes().get(run_relative)

    def model_hashes(self) -> dict[str, str]:
        """Run-relative path -> recorded SHA-256 of every model file the manifest knows."""
        hashes = {}
        for model, training in self.models.items():
            if training.keras_sha256:
                hashes[f"models/{model}/model.keras"] = training.keras_sha256
        for model, ir in self.openvino.items():
            for precision in ("f32", "int8"):
                record = ir.files(precision) or {}
                base = f"models/{model}/openvino/{precision}/model"
                for suffix in ("xml", "bin"):
                    if record.get(f"{suffix}_sha256"):
                        hashes[f"{base}.{suffix}"] = record[f"{suffix}_sha256"]
        return hashes


def _load(path: Path) -> dict:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise FmnistError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise FmnistError(f"{path}: not a manifest (a JSON object was expected)")
    return data


def read_manifest(run: Path | str) -> Manifest:
    """The run's manifest, typed; an empty one when the run has none yet.

    Reading takes no lock and writes nothing: a read-only run reads as well as any.
    """
    return Manifest.from_dict(_load(RunLayout(Path(run)).manifest))


def manifest_dict(run: Path | str) -> dict:
    """The run's manifest as the plain JSON object it is on disk (``{}`` when none)."""
    return _load(RunLayout(Path(run)).manifest)


# --------------------------------------------------------------------------- writing


def _update(run: Path | str, change: Callable[[dict], None]) -> None:
    """Apply ``change`` to the manifest's JSON object under the run's manifest lock."""
    path = RunLayout(Path(run)).manifest
    with file_lock(path):
        data = _load(path)
        change(data)
        write_json_atomic(path, data)


def _set(data: dict, section: str, key: str, value: Any) -> None:
    if not isinstance(data.get(section), dict):
        data[section] = {}
    data[section][key] = value


def record_training(run: Path | str, model: str, record: TrainingRecord) -> None:
    """Write ``models.<model>`` (replacing an earlier training's record)."""
    _update(run, lambda data: _set(data, "models", model, asdict(record)))


def record_ir(run: Path | str, model: str, record: IrRecord) -> None:
    """Write ``openvino.<model>``; an f32-only record keeps the INT8 IR recorded earlier.

    An f32-only re-run of optimize does not touch the INT8 IR, which stays on disk and
    stays what it was: its record must stay too.
    """

    def change(data: dict) -> None:
        previous = IrRecord.from_dict((data.get("openvino") or {}).get(model))
        int8 = record.int8 if record.int8 is not None else previous.int8
        entry = {**asdict(record), "int8": int8}
        _set(data, "openvino", model, {k: v for k, v in entry.items() if v is not None})

    _update(run, change)


def record_evaluation(run: Path | str, model: str, variant: str, record: EvaluationRecord) -> None:
    """Write ``evaluations.<model>__<variant>``: the figures, or ``skipped`` and why."""
    _update(run, lambda data: _set(data, "evaluations", f"{model}__{variant}", asdict(record)))


def record_job_entry(
    run: Path | str, key: str, job: JobRecord, machine: MachineRecord | None
) -> None:
    """Write ``jobs.<key>`` and the host's ``machine.<host>`` in one update."""

    def change(data: dict) -> None:
        if machine is not None and machine.host:
            _set(data, "machine", machine.host, asdict(machine))
        _set(data, "jobs", key, asdict(job))

    _update(run, change)


# --------------------------------------------------------------------------- model files


def _relative(layout: RunLayout, path: Path) -> str:
    """``path`` relative to the run, as the manifest names it (a ValueError outside it)."""
    try:
        # As given first: a run whose models/ is a symbolic link elsewhere still counts.
        return Path(path).relative_to(layout.root).as_posix()
    except ValueError:
        return Path(path).resolve().relative_to(layout.root.resolve()).as_posix()


def model_files(artifact: Path | str) -> list[Path]:
    """The files of one model artifact: model.keras, or an IR's model.xml and model.bin."""
    artifact = Path(artifact)
    if artifact.suffix == ".xml":
        return [artifact, artifact.with_suffix(".bin")]
    return [artifact]


class ModelMismatch(FmnistError):
    """A model file is not the one the manifest recorded (or the manifest does not know it)."""


def check_model_files(run: Path | str, artifact: Path | str) -> None:
    """Refuse a model file whose SHA-256 is not the one the run's manifest recorded.

    ``artifact`` is model.keras or an IR's model.xml (model.bin is checked with it). Each
    file is hashed once per process (:func:`fmnist.io.sha256_cached`). The error names
    the file, both hashes and the ways out: re-run train/optimize, or adopt the file.
    """
    layout = RunLayout(Path(run))
    manifest = read_manifest(layout.root)
    for path in model_files(artifact):
        if not path.is_file():
            raise FmnistError(f"{path}: model file not found (train/optimize the model first)")
        relative = _relative(layout, path)
        recorded = manifest.recorded_sha256(relative)
        found = sha256_cached(path)
        if recorded == found:
            continue
        producer = "optimize" if "/openvino/" in relative else "train"
        way_out = (
            f"re-run {producer}, or accept this file with "
            f"`fmnist-batch adopt {layout.root} {relative}`"
        )
        if recorded is None:
            raise ModelMismatch(
                f"{path}: not recorded in {layout.manifest} "
                f"(found sha256 {found[:SHA_PREFIX]}); {way_out}"
            )
        raise ModelMismatch(
            f"{path}: sha256 {found[:SHA_PREFIX]} is not the recorded "
            f"{recorded[:SHA_PREFIX]} (the file changed since {producer} wrote it); {way_out}"
        )


def adopt_model_files(
    run: Path | str, paths: Iterable[Path | str], reason: str = ""
) -> list[tuple[Path, str | None, str]]:
    """Record the files' current SHA-256 as theirs; (path, previous hash, new hash) each.

    Each path is a model.keras or an IR's model.xml or model.bin inside ``run``
    (relative to the run, or absolute). The hash goes where train or optimize would
    have put it, so every later check accepts the file; ``adopted.<file>`` keeps the
    previous hash, when and why.
    """
    layout = RunLayout(Path(run))
    targets = []
    for given in paths:
        path = Path(given)
        path = path if path.is_absolute() or path.exists() else layout.root / path
        if not path.is_file():
            raise FmnistError(f"{given}: model file not found")
        try:
            relative = _relative(layout, path)
        except ValueError as exc:
            raise FmnistError(f"{given}: not inside the run {layout.root}") from exc
        if _slot(relative) is None:
            raise FmnistError(
                f"{given}: not a model file of the run (models/<model>/model.keras or "
                "models/<model>/openvino/<f32|int8>/model.xml|model.bin)"
            )
        targets.append((path, relative))
    hashes = {relative: sha256_cached(path) for path, relative in targets}
    changes: list[tuple[Path, str | None, str]] = []

    def change(data: dict) -> None:
        changes.clear()
        previous = Manifest.from_dict(data).model_hashes()
        for path, relative in targets:
            found = hashes[relative]
            _store_hash(data, relative, found)
            note = AdoptionRecord(found, previous.get(relative), _now(), reason)
            _set(data, "adopted", relative, asdict(note))
            changes.append((path, previous.get(relative), found))

    _update(layout.root, change)
    return changes


def _slot(relative: str) -> tuple[str, str | None, str] | None:
    """(model, IR precision or None, hash key) where a model file's hash is recorded."""
    parts = relative.split("/")
    if len(parts) == 3 and parts[0] == "models" and parts[2] == "model.keras":
        return parts[1], None, "keras_sha256"
    if (
        len(parts) == 5
        and parts[0] == "models"
        and parts[2] == "openvino"
        and parts[3] in ("f32", "int8")
        and parts[4] in ("model.xml", "model.bin")
    ):
        return parts[1], parts[3], parts[4].removeprefix("model.") + "_sha256"
    return None


def _store_hash(data: dict, relative: str, sha: str) -> None:
    model, precision, key = _slot(relative)
    if precision is None:
        entry = (data.get("models") or {}).get(model)
        entry = dict(entry) if isinstance(entry, dict) else {}
        entry[key] = sha
        _set(data, "models", model, entry)
        return
    entry = (data.get("openvino") or {}).get(model)
    entry = dict(entry) if isinstance(entry, dict) else {}
    files = dict(entry.get(precision) or {})
    files.setdefault("xml", f"models/{model}/openvino/{precision}/model.xml")
    files[key] = sha
    entry[precision] = files
    _set(data, "openvino", model, entry)
