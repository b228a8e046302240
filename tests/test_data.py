"""Dataset loading: IDX and CSV parsing, good and corrupt, locating, splits, export."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from fmnist.data import (
    CLASS_NAMES,
    Split,
    find_dataset_dir,
    load_dataset,
    parse_idx,
    read_idx_bytes,
    to_model_input,
    train_validation_split,
    verify_dataset,
    write_csv,
)
from fmnist.io import FmnistError


def idx_images(images: np.ndarray) -> bytes:
    return struct.pack(">iiii", 0x803, *images.shape) + images.astype(np.uint8).tobytes()


def idx_labels(labels: np.ndarray) -> bytes:
    return struct.pack(">ii", 0x801, len(labels)) + labels.astype(np.uint8).tobytes()


def write_idx_dir(directory, n_train=12, n_test=6):
    rng = np.random.default_rng(1)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28))
        labels = np.arange(n) % 10
        images_gz, labels_gz = gzip.compress(idx_images(images)), gzip.compress(idx_labels(labels))
        (directory / f"{prefix}-images-idx3-ubyte.gz").write_bytes(images_gz)
        (directory / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(labels_gz)
    return directory


def test_parse_idx_roundtrip():
    images = np.arange(2 * 28 * 28).reshape(2, 28, 28) % 256
    assert np.array_equal(parse_idx(idx_images(images), "images"), images)
    assert list(parse_idx(idx_labels(np.array([3, 9])), "labels")) == [3, 9]


@pytest.mark.parametrize(
    ("payload", "kind", "message"),
    [
        (idx_labels(np.array([1, 2]))[:-1], "labels", "truncated or corrupt"),
        (idx_labels(np.array([1, 2])), "images", "wrong IDX magic number"),
        (b"\x00\x00", "labels", "truncated IDX header"),
        (idx_labels(np.array([1, 12])), "labels", "label 12 outside 0-9"),
        (struct.pack(">iiii", 0x803, 1, 27, 28) + bytes(27 * 28), "images", r"expected \(28, 28\)"),
    ],
)
def test_parse_idx_rejects_bad_files_naming_them(payload, kind, message):
    with pytest.raises(FmnistError, match=f"^bad.idx: .*{message}"):
        parse_idx(payload, kind, "bad.idx")


def test_truncated_gzip_names_the_file(tmp_path):
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(idx_labels(np.arange(100) % 10))[:30])
    with pytest.raises(FmnistError, match=f"{path}: corrupt or truncated gzip"):
        read_idx_bytes(path)


def test_search_order_prefers_explicit_dir_then_env(tmp_path, monkeypatch):
    explicit = tmp_path / "a"
    explicit.mkdir()
    write_idx_dir(explicit)
    env_dir = tmp_path / "b"
    env_dir.mkdir()
    write_idx_dir(env_dir)
    monkeypatch.setenv("FMNIST_DATA_DIR", str(env_dir))
    assert find_dataset_dir(explicit) == explicit
    assert find_dataset_dir() == env_dir
    dataset = load_dataset(explicit)
    assert len(dataset.train) == 12 and len(dataset.test) == 6


def test_missing_dataset_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    import fmnist.data as data

    monkeypatch.delenv("FMNIST_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "DEBIAN_DIR", tmp_path / "debian")
    monkeypatch.setattr(data, "KERAS_CACHE_DIR", tmp_path / "keras")
    with pytest.raises(FmnistError) as error:
        find_dataset_dir()
    message = str(error.value)
    assert str(tmp_path / "debian") in message and str(tmp_path / "keras") in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "FMNIST_DATA_DIR" in message and "data download" in message


def test_explicit_dir_without_files_is_an_error(tmp_path):
    with pytest.raises(FmnistError, match="missing Fashion-MNIST file"):
        find_dataset_dir(tmp_path)


def test_real_dataset_shapes_and_checksums(dataset, dataset_dir):
    assert dataset.train.images.shape == (60_000, 28, 28)
    assert dataset.test.images.shape == (10_000, 28, 28)
    assert np.bincount(dataset.test.labels).tolist() == [1000] * 10
    assert all(check.ok for check in verify_dataset(dataset_dir))
    assert len(CLASS_NAMES) == 10 and CLASS_NAMES[0] == "T-shirt/top"


def test_validation_split_is_seeded_and_disjoint(dataset):
    train, val = train_validation_split(dataset.train, 0.1, seed=0)
    again, _ = train_validation_split(dataset.train, 0.1, seed=0)
    other, _ = train_validation_split(dataset.train, 0.1, seed=1)
    assert (len(train), len(val)) == (54_000, 6_000)
    assert np.array_equal(train.labels, again.labels)
    assert not np.array_equal(train.labels, other.labels)


def test_model_input_is_scaled_channels_last():
    x = to_model_input(np.full((2, 28, 28), 255, dtype=np.uint8))
    assert x.shape == (2, 28, 28, 1) and x.dtype == np.float32 and x.max() == 1.0


@pytest.mark.parametrize("name", ["rows.csv", "rows.csv.gz"])
@pytest.mark.parametrize("header", [True, False])
def test_csv_roundtrip_with_and_without_header(tmp_path, dataset, name, header):
    subset = dataset.test.head(25)
    write_csv(subset, tmp_path / name, header=header, repeat=2)
    rows = np.loadtxt(tmp_path / name, delimiter=",", skiprows=int(header), dtype=np.uint8)
    assert rows.shape == (50, 785)
    assert np.array_equal(rows[:25, 1:].reshape(-1, 28, 28), subset.images)
    assert np.array_equal(rows[25:, 0], subset.labels)


def test_csv_header_is_kaggle_format(tmp_path):
    write_csv(Split(np.zeros((1, 28, 28), np.uint8), np.array([7], np.uint8)), tmp_path / "a.csv")
    header, row = (tmp_path / "a.csv").read_text().splitlines()
    assert header.split(",")[:3] == ["label", "pixel1", "pixel2"] and header.endswith("pixel784")
    assert row == "7," + ",".join(["0"] * 784)
