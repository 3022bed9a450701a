"""Datasets for the training demo that need no download.

`synthetic` (the default) is generated from a seed and needs nothing: ten classes of
64-feature points, each class a fixed random prototype (an 8x8 "image" of values in
[0, 1]) plus Gaussian noise, so classes overlap and accuracy is not trivially 100%.
`digits` is scikit-learn's bundled 8x8 handwritten digits (1797 images, 64 features
scaled to [0, 1]), used when scikit-learn is installed (`pip install scikit-learn`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Dataset", "synthetic", "digits", "load", "DATASETS"]


@dataclass(frozen=True)
class Dataset:
    """Train and test arrays: float64 features (n, 64) and int64 labels (n,)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    @property
    def features(self) -> int:
        """Number of input features."""
        return self.x_train.shape[1]

    @property
    def classes(self) -> int:
        """Number of classes (labels are 0 .. classes - 1)."""
        return int(max(self.y_train.max(), self.y_test.max())) + 1


def _split(name: str, x: np.ndarray, y: np.ndarray, seed: int, test: float = 0.2) -> Dataset:
    """A seeded shuffle, then the last `test` fraction held out."""
    order = np.random.default_rng(seed).permutation(len(y))
    n_test = int(round(len(y) * test))
    tr, te = order[:-n_test], order[-n_test:]
    return Dataset(name, x[tr], y[tr], x[te], y[te])


def synthetic(n: int = 2000, seed: int = 0, noise: float = 0.6) -> Dataset:
    """Ten noisy classes around seeded prototypes in [0, 1]^64 (the default demo data)."""
    rng = np.random.default_rng(seed)
    prototypes = rng.random((10, 64))
    y = rng.integers(0, 10, n)
    x = prototypes[y] + noise * rng.standard_normal((n, 64))
    return _split("synthetic", x, y.astype(np.int64), seed)


def digits(seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits, features divided by 16 (needs scikit-learn)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise ImportError("the digits dataset needs scikit-learn: pip install scikit-learn "
                          "(or use --data synthetic, which needs nothing)") from err
    bunch = load_digits()
    return _split("digits", bunch.data.astype(np.float64) / 16.0,
                  bunch.target.astype(np.int64), seed)


DATASETS = {"synthetic": synthetic, "digits": digits}


def load(name: str = "auto", seed: int = 0) -> Dataset:
    """A dataset by name; "auto" is digits when scikit-learn is installed, else synthetic."""
    if name == "auto":
        try:
            return digits(seed)
        except ImportError:
            return synthetic(seed=seed)
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from auto, {', '.join(DATASETS)}")
    return DATASETS[name](seed=seed)
