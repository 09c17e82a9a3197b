"""``bench run --dataset``: a user's test set, checked against the network and the folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench import data
from tests.conftest import invoke

COMMON = ["--models", "nt-nn", "--n", "12", "--verifiers", "ibp,crown", "--attacks", "fgsm",
          "--quiet"]


def _write(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    np.savez(path, images=images, labels=labels)
    return path


def test_the_same_images_as_floats_in_image_shape_give_the_same_leaderboard(tmp_path):
    images, labels = data.mnist_test(12)
    floats = (images.astype(np.float64) / 255.0).reshape(12, 1, 28, 28)
    path = _write(tmp_path / "mine.npz", floats, labels)
    code, _, err = invoke(["run", *COMMON, "--out", str(tmp_path / "a")])
    assert code == 0, err
    code, _, err = invoke(["run", *COMMON, "--out", str(tmp_path / "b"), "--dataset", str(path)])
    assert code == 0, err
    columns = ["model", "eps", "method", "n", "error", "mean_bound", "status"]
    a = pd.read_csv(tmp_path / "a" / "leaderboard.csv")[columns]
    b = pd.read_csv(tmp_path / "b" / "leaderboard.csv")[columns]
    pd.testing.assert_frame_equal(a, b, rtol=1e-12)
    # another dataset, or the default one, into that folder is refused in one line
    code, _, err = invoke(["run", *COMMON, "--out", str(tmp_path / "b")])
    assert code == 1 and err.count("\n") == 1 and "another dataset" in err
    code, _, err = invoke(["run", *COMMON, "--out", str(tmp_path / "a"), "--dataset", str(path)])
    assert code == 1 and err.count("\n") == 1 and "another dataset" in err


def test_bad_datasets_are_one_line(tmp_path):
    images, labels = data.mnist_test(12)
    cases = {
        "outside.npz": (images.astype(np.float32) / 100.0, labels),        # up to 2.55
        "wide.npz": (images[:, :100], labels),                            # 100 inputs
        "labels.npz": (images, labels[:5]),
        "classes.npz": (images, labels + 10),
    }
    for name, (x, y) in cases.items():
        path = _write(tmp_path / name, x, y)
        code, _, err = invoke(["run", *COMMON, "--out", str(tmp_path / name[:-4]),
                               "--dataset", str(path)])
        assert code == 1 and err.count("\n") == 1, (name, err)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    code, _, err = invoke(["run", *COMMON, "--out", str(tmp_path / "junk"),
                           "--dataset", str(tmp_path / "junk.npz")])
    assert code == 1 and err.count("\n") == 1 and "junk.npz" in err
    few = _write(tmp_path / "few.npz", images, labels)                   # 12 images
    code, _, err = invoke(["run", *COMMON, "--n", "50", "--out", str(tmp_path / "few"),
                           "--dataset", str(few)])
    assert code == 1 and err.count("\n") == 1 and "has 12 images" in err
