"""scikit-learn's bundled 8x8 handwritten digits: a real data set that needs no download.

It is small enough (1,797 images) for the CPU quick-start suite and the tests, and real
enough that selectors behave as they do on larger sets.
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch

from qcore_bench.data.catalog import describe
from qcore_bench.data.bundle import ImageData, channel_stats

# The train/test split is part of the data set's definition (the scikit-learn copy comes
# without one), so it is drawn with this constant seed and never with the cell's seed:
# every run, on every machine, tests on the same 20 %.
SPLIT_SEED = 0
TEST_FRACTION = 0.2


def _stratified_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test indices with TEST_FRACTION of every class in test."""
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = [], []
    for cls in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == cls))
        n_test = int(round(TEST_FRACTION * len(members)))
        test.append(members[:n_test])
        train.append(members[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


@describe("Digits")
def load_digits(root: str | None, cache_dir: pathlib.Path) -> ImageData:
    """Load the digits (root and cache_dir are unused: the data ships with scikit-learn)."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    # Pixel values are the integers 0..16; stretch them to the full uint8 range.
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # [N, 1, 8, 8]
    labels = bunch.target.astype(np.int64)
    train_idx, test_idx = _stratified_split(labels)
    train_x = torch.from_numpy(images[train_idx])
    mean, std = channel_stats(train_x)
    return ImageData(
        train_x=train_x,
        train_y=torch.from_numpy(labels[train_idx]),
        test_x=torch.from_numpy(images[test_idx]),
        test_y=torch.from_numpy(labels[test_idx]),
        classes=tuple(str(int(name)) for name in bunch.target_names),
        mean=mean,
        std=std,
        crop_padding=1,
        flip=False,  # digits are not mirror-symmetric
    )
