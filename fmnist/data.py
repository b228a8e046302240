"""Fashion-MNIST: find, parse, check and preprocess the dataset.

Sources, in the order they are tried: an explicit directory, ``FMNIST_DATA_DIR``,
Debian's ``dataset-fashion-mnist`` package, the Keras cache. Each holds the four
original IDX ``.gz`` files. Kaggle-format CSV (``label,pixel1..pixel784``) loads too.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fmnist.io import FmnistError, atomic_path

# The seed report's class names, in label order.
CLASS_NAMES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IMAGE_SHAPE = (28, 28)
PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
SPLIT_SIZES = {"train": 60_000, "test": 10_000}
FILES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}
# SHA-256 of the decompressed IDX files: the .gz bytes differ between sources.
SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
KERAS_CACHE_DIR = Path.home() / ".keras" / "datasets" / "fashion-mnist"
DOWNLOAD_URL = "https://storage.googleapis.com/tensorflow/tf-keras-datasets/"
IDX_MAGIC = {"images": 0x00000803, "labels": 0x00000801}
CSV_HEADER = ["label"] + [f"pixel{i}" for i in range(1, PIXELS + 1)]


@dataclass(frozen=True)
class Split:
    """Raw images (uint8, N x 28 x 28) and labels (uint8, N)."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def head(self, limit: int | None) -> Split:
        """The first ``limit`` examples (all of them when ``limit`` is None)."""
        if limit is None or limit >= len(self):
            return self
        return Split(self.images[:limit], self.labels[:limit])


@dataclass(frozen=True)
class FashionMNIST:
    """The train and test splits and where they were loaded from."""

    train: Split
    test: Split
    source: Path


# --------------------------------------------------------------------------- locating


def candidate_dirs(data_dir: Path | str | None = None) -> list[tuple[str, Path]]:
    """Where the IDX files are looked for, in order, with a label for each place."""
    places = []
    if data_dir:
        places.append(("--data-dir", Path(data_dir)))
    if os.environ.get("FMNIST_DATA_DIR"):
        places.append(("FMNIST_DATA_DIR", Path(os.environ["FMNIST_DATA_DIR"])))
    places.append(("Debian package dataset-fashion-mnist", DEBIAN_DIR))
    places.append(("Keras cache", KERAS_CACHE_DIR))
    return places


def _idx_file(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def find_dataset_dir(data_dir: Path | str | None = None) -> Path:
    """The first place holding all four IDX files, or an error saying where we looked."""
    places = candidate_dirs(data_dir)
    for label, directory in places:
        if all(_idx_file(directory, stem) for stem in FILES.values()):
            return directory
        if label == "--data-dir":
            # An explicit directory that lacks the files is a mistake, not a fallback.
            missing = [s for s in FILES.values() if not _idx_file(directory, s)]
            raise FmnistError(f"{directory}: missing Fashion-MNIST file(s) {', '.join(missing)}")
    looked = "; ".join(f"{label}: {path}" for label, path in places)
    raise FmnistError(
        f"Fashion-MNIST not found (looked in {looked}). Get it with one of: "
        "'apt-get install dataset-fashion-mnist', "
        "'--data-dir DIR' or FMNIST_DATA_DIR=DIR pointing at the four IDX .gz files, "
        "or 'fmnist-batch data download' where the network allows"
    )


def download(target: Path = KERAS_CACHE_DIR) -> Path:
    """Download the four IDX files into the Keras cache (needs network access)."""
    target.mkdir(parents=True, exist_ok=True)
    for stem in FILES.values():
        destination = target / f"{stem}.gz"
        if destination.exists():
            continue
        try:
            with urllib.request.urlopen(DOWNLOAD_URL + f"{stem}.gz", timeout=60) as response:
                payload = response.read()
        except OSError as exc:
            raise FmnistError(f"download of {stem}.gz from {DOWNLOAD_URL} failed: {exc}") from exc
        with atomic_path(destination) as tmp:
            tmp.write_bytes(payload)
    return target


# --------------------------------------------------------------------------- IDX


def read_idx_bytes(path: Path) -> bytes:
    """The decompressed bytes of an IDX file (``.gz`` or plain)."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise FmnistError(f"{path}: file not found") from exc
    except (OSError, EOFError, zlib.error) as exc:
        raise FmnistError(f"{path}: corrupt or truncated gzip data ({exc})") from exc


def parse_idx(payload: bytes, kind: str, source: Path | str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes holding ``kind`` ('images' or 'labels') into a uint8 array."""
    header_dims = 3 if kind == "images" else 1
    header_size = 4 + 4 * header_dims
    if len(payload) < 4:
        raise FmnistError(f"{source}: truncated IDX header ({len(payload)} bytes)")
    (magic,) = struct.unpack(">i", payload[:4])
    if magic != IDX_MAGIC[kind]:
        raise FmnistError(
            f"{source}: wrong IDX magic number {magic:#010x} for {kind} "
            f"(expected {IDX_MAGIC[kind]:#010x})"
        )
    if len(payload) < header_size:
        raise FmnistError(f"{source}: truncated IDX header ({len(payload)} bytes)")
    dims = struct.unpack(f">{header_dims}i", payload[4:header_size])
    expected = int(np.prod(dims))
    body = payload[header_size:]
    if len(body) != expected:
        raise FmnistError(
            f"{source}: IDX body has {len(body)} bytes, header {dims} needs {expected} "
            "(truncated or corrupt file)"
        )
    array = np.frombuffer(body, dtype=np.uint8).reshape(dims)
    if kind == "images" and tuple(dims[1:]) != IMAGE_SHAPE:
        raise FmnistError(f"{source}: images are {dims[1:]}, expected {IMAGE_SHAPE}")
    if kind == "labels" and array.size and array.max() > 9:
        raise FmnistError(f"{source}: label {int(array.max())} outside 0-9")
    return array


def load_split(directory: Path, split: str) -> Split:
    """Load one split ('train' or 'test') from the IDX files in ``directory``."""
    arrays = {}
    for kind in ("images", "labels"):
        stem = FILES[(split, kind)]
        path = _idx_file(directory, stem)
        if path is None:
            raise FmnistError(f"{directory}: missing {stem}.gz")
        arrays[kind] = parse_idx(read_idx_bytes(path), kind, path)
    if len(arrays["images"]) != len(arrays["labels"]):
        raise FmnistError(
            f"{directory}: {split} has {len(arrays['images'])} images "
            f"but {len(arrays['labels'])} labels"
        )
    return Split(arrays["images"], arrays["labels"])


def load_dataset(data_dir: Path | str | None = None) -> FashionMNIST:
    """Load both splits from the first place that holds the IDX files."""
    directory = find_dataset_dir(data_dir)
    return FashionMNIST(load_split(directory, "train"), load_split(directory, "test"), directory)


@dataclass(frozen=True)
class FileCheck:
    """The result of checking one IDX file against the known checksum and shape."""

    name: str
    path: Path
    sha256: str
    sha256_ok: bool
    count: int
    count_ok: bool

    @property
    def ok(self) -> bool:
        return self.sha256_ok and self.count_ok


def verify_dataset(data_dir: Path | str | None = None) -> list[FileCheck]:
    """Check every IDX file: parses, expected count, SHA-256 of the decompressed bytes."""
    directory = find_dataset_dir(data_dir)
    checks = []
    for (split, kind), stem in FILES.items():
        path = _idx_file(directory, stem)
        payload = read_idx_bytes(path)
        array = parse_idx(payload, kind, path)
        digest = hashlib.sha256(payload).hexdigest()
        checks.append(
            FileCheck(
                name=stem,
                path=path,
                sha256=digest,
                sha256_ok=digest == SHA256[stem],
                count=len(array),
                count_ok=len(array) == SPLIT_SIZES[split],
            )
        )
    return checks


# --------------------------------------------------------------------------- CSV


def csv_lines(split: Split, header: bool = True) -> Iterator[str]:
    """Kaggle-format CSV lines for a split."""
    if header:
        yield ",".join(CSV_HEADER) + "\n"
    flat = np.concatenate([split.labels[:, None], split.images.reshape(len(split), -1)], axis=1)
    for row in flat:
        yield ",".join(map(str, row.tolist())) + "\n"


def write_csv(split: Split, out: Path | str, header: bool = True, repeat: int = 1) -> int:
    """Write a split as Kaggle-format CSV (``.gz`` compresses), ``repeat`` times over.

    Returns the number of data rows written. The file appears only when complete.
    """
    out = Path(out)
    # Render once, write many times: a 1M-row file is the test split repeated.
    lines = list(csv_lines(split, header=False))
    body = "".join(lines).encode()
    with atomic_path(out) as tmp:
        opener = gzip.open if out.suffix == ".gz" else open
        with opener(tmp, "wb") as handle:
            if header:
                handle.write((",".join(CSV_HEADER) + "\n").encode())
            for _ in range(repeat):
                handle.write(body)
    return len(split) * repeat


# --------------------------------------------------------------------------- preprocessing


def to_model_input(images: np.ndarray) -> np.ndarray:
    """Scale uint8 images by 1/255 into float32, channels-last (N, 28, 28, 1)."""
    return (images.astype(np.float32) / 255.0)[..., np.newaxis]


def train_validation_split(
    split: Split, validation_fraction: float = 0.1, seed: int = 0
) -> tuple[Split, Split]:
    """Hold out a seeded random validation subset of the training split."""
    order = np.random.default_rng(seed).permutation(len(split))
    n_val = int(round(len(split) * validation_fraction))
    val_idx, train_idx = np.sort(order[:n_val]), np.sort(order[n_val:])
    return (
        Split(split.images[train_idx], split.labels[train_idx]),
        Split(split.images[val_idx], split.labels[val_idx]),
    )
