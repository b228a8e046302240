"""The run manifest's one owner (fmnist.manifest): its writers, its readers, model hashes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fmnist.io import FmnistError, RunLayout, sha256_file
from fmnist.manifest import (
    EvaluationRecord,
    IrRecord,
    JobRecord,
    MachineRecord,
    ModelMismatch,
    TrainingRecord,
    adopt_model_files,
    check_model_files,
    manifest_dict,
    read_manifest,
    record_evaluation,
    record_ir,
    record_job_entry,
    record_training,
)
from fmnist.pipeline.jobenv import record_job
from fmnist.pipeline.spec import expand, load_pipeline


def test_each_record_reads_back_typed(tmp_path):
    record_training(tmp_path, "main", TrainingRecord(keras_sha256="a" * 64, epochs_run=3))
    record_evaluation(tmp_path, "main", "openvino-bf16", EvaluationRecord(skipped="no bf16"))
    record_evaluation(tmp_path, "main", "keras-predict", EvaluationRecord(accuracy=0.9, images=5))
    job = JobRecord(command="train main", node_type="icx", git_revision="b" * 40)
    record_job_entry(tmp_path, "7", job, MachineRecord(host="n1", usable_cpus=2))
    manifest = read_manifest(tmp_path)
    assert manifest.models["main"].epochs_run == 3
    assert manifest.evaluation("main", "openvino-bf16").skipped == "no bf16"
    assert manifest.evaluation("main", "keras-predict").accuracy == 0.9
    assert manifest.evaluation("main", "openvino-int8") == EvaluationRecord()
    assert manifest.jobs["7"].command == "train main"
    assert manifest.node_types() == ["icx"] and manifest.git_revisions() == ["b" * 40]
    assert manifest.machines["n1"].usable_cpus == 2
    # On disk, the sections DESIGN.md names.
    assert set(manifest_dict(tmp_path)) == {"models", "evaluations", "jobs", "machine"}


def test_a_distilled_model_records_its_teacher_and_an_older_record_reads_without_one(tmp_path):
    taught = TrainingRecord(keras_sha256="a" * 64, teacher="main", teacher_sha256="c" * 64)
    record_training(tmp_path, "backup2", taught)
    assert read_manifest(tmp_path).models["backup2"] == taught
    older = TrainingRecord.from_dict({"keras_sha256": "a" * 64, "epochs_run": 12})
    assert older.teacher is None and older.teacher_sha256 is None and older.epochs_run == 12


def test_an_f32_only_ir_record_keeps_the_int8_one(tmp_path):
    int8 = {"xml": "models/m/openvino/int8/model.xml", "method": "ptq", "bin_sha256": "c"}
    record_ir(tmp_path, "m", IrRecord(f32={"xml_sha256": "1"}, int8=int8))
    record_ir(tmp_path, "m", IrRecord(f32={"xml_sha256": "2"}))
    manifest = read_manifest(tmp_path)
    assert manifest.openvino["m"].f32 == {"xml_sha256": "2"}
    assert manifest.int8("m")["method"] == "ptq"


def test_reading_is_lenient_and_writes_nothing(tmp_path):
    assert read_manifest(tmp_path) == read_manifest(tmp_path / "none")  # empty, no error
    path = RunLayout(tmp_path).manifest
    # A field a record lacks reads as its default; an unknown one is ignored.
    path.write_text(json.dumps({"models": {"m": {"wall_seconds": 3, "new": 1}}, "jobs": []}))
    before = sorted(os.listdir(tmp_path))
    manifest = read_manifest(tmp_path)
    assert manifest.models["m"].wall_seconds == 3 and manifest.models["m"].keras_sha256 is None
    assert manifest.jobs == {}
    assert sorted(os.listdir(tmp_path)) == before  # no lock file, nothing written
    path.write_text("{not json")
    with pytest.raises(FmnistError, match="manifest.json: not valid JSON"):
        read_manifest(tmp_path)


def fake_model(run, model="m", content=b"weights"):
    path = RunLayout(run).keras_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_a_model_file_must_have_the_recorded_hash(tmp_path):
    path = fake_model(tmp_path)
    recorded = sha256_file(path)
    with pytest.raises(ModelMismatch, match="not recorded in .*manifest.json") as unknown:
        check_model_files(tmp_path, path)
    assert f"fmnist-batch adopt {tmp_path} models/m/model.keras" in str(unknown.value)
    record_training(tmp_path, "m", TrainingRecord(keras_sha256=recorded))
    check_model_files(tmp_path, path)
    path.write_bytes(b"other weights")
    with pytest.raises(ModelMismatch) as changed:
        check_model_files(tmp_path, path)
    message = str(changed.value)
    assert message.startswith(f"{path}: sha256 {sha256_file(path)[:12]} ")
    assert f"not the recorded {recorded[:12]}" in message and "re-run train" in message


def test_an_ir_is_checked_with_its_weights(tmp_path):
    xml = RunLayout(tmp_path).openvino_ir("m", "int8")
    xml.parent.mkdir(parents=True)
    xml.write_text("<net/>")
    xml.with_suffix(".bin").write_bytes(b"\0" * 64)
    files = {"xml_sha256": sha256_file(xml), "bin_sha256": sha256_file(xml.with_suffix(".bin"))}
    record_ir(tmp_path, "m", IrRecord(int8=files))
    check_model_files(tmp_path, xml)
    xml.with_suffix(".bin").write_bytes(b"\1" * 64)  # the same size, other bytes
    with pytest.raises(ModelMismatch, match=r"model\.bin: sha256 .* re-run optimize"):
        check_model_files(tmp_path, xml)


def test_adopt_records_the_file_where_its_producer_would(tmp_path):
    path = fake_model(tmp_path)
    record_training(tmp_path, "m", TrainingRecord(keras_sha256="0" * 64, epochs_run=2))
    [(adopted, previous, found)] = adopt_model_files(tmp_path, ["models/m/model.keras"], "kept")
    assert (adopted, previous, found) == (path, "0" * 64, sha256_file(path))
    check_model_files(tmp_path, path)
    manifest = read_manifest(tmp_path)
    assert manifest.models["m"].epochs_run == 2  # the training record stays
    note = manifest.adopted["models/m/model.keras"]
    assert note.previous_sha256 == "0" * 64 and note.reason == "kept"
    with pytest.raises(FmnistError, match="not a model file of the run"):
        adopt_model_files(tmp_path, [RunLayout(tmp_path).manifest])


def test_record_job_cannot_fail_a_finished_job(tmp_path, mounts):
    # A run on a read-only mount: the job's outputs went elsewhere and are complete.
    record_training(tmp_path, "m", TrainingRecord(keras_sha256="a" * 64))
    view = mounts.read_only(tmp_path, tmp_path.parent / f"{tmp_path.name}-ro")
    code = (
        "import sys; from fmnist.pipeline.jobenv import record_job; "
        "sys.exit(0 if record_job(sys.argv[1], 'score x') is False else 3)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(view)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("warning: ") and "the file system is read-only" in line
    assert "Traceback" not in result.stderr
    assert read_manifest(view).jobs == {}
    assert record_job(tmp_path, "score x") is True  # where it can be written, it is


def test_the_benchmark_marker_is_named_by_the_run_layout(tmp_path):
    tasks = expand(load_pipeline(), "quick", tmp_path)
    [task] = [t for t in tasks if t.id == "benchmark:backup1:local"]
    assert task.outputs == (RunLayout(tmp_path).benchmark_marker("backup1", "local"),)
