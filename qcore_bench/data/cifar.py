"""CIFAR-10 and CIFAR-100 through torchvision, never downloaded implicitly.

Benchmark machines (cluster nodes) often have no internet, and a download started by
many cells at once would race; so the files must already be there, and a missing copy
is an error that says where they were looked for and how to get them.
"""

from __future__ import annotations

import os
import pathlib

import torch

from qcore_bench.data.bundle import DatasetError, ImageData, channel_stats, limit

DEFAULT_ROOT = "~/.cache/qcore-bench/data"


def default_root() -> pathlib.Path:
    """Where data sets live when a suite gives no root: $QCORE_DATA, else the user cache."""
    return pathlib.Path(os.environ.get("QCORE_DATA") or DEFAULT_ROOT).expanduser()


def _load(name: str, root: str | None, max_train: int | None, max_test: int | None) -> ImageData:
    import torchvision

    dataset_cls = getattr(torchvision.datasets, name)
    where = pathlib.Path(root).expanduser() if root is not None else default_root()
    try:
        train = dataset_cls(str(where), train=True, download=False)
        test = dataset_cls(str(where), train=False, download=False)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        folder = where / dataset_cls.base_folder
        raise DatasetError(
            f"{name} not found (or corrupted) in {folder}. On a machine with internet run\n"
            f"    python -c \"import torchvision; torchvision.datasets.{name}('{where}', download=True)\"\n"
            f"and copy {folder} to this machine, or point data.root (or $QCORE_DATA) at a folder "
            f"that holds {dataset_cls.base_folder}/."
        ) from err
    train_x = torch.from_numpy(train.data).permute(0, 3, 1, 2).contiguous()
    mean, std = channel_stats(train_x)
    data = ImageData(
        train_x=train_x,
        train_y=torch.tensor(train.targets, dtype=torch.int64),
        test_x=torch.from_numpy(test.data).permute(0, 3, 1, 2).contiguous(),
        test_y=torch.tensor(test.targets, dtype=torch.int64),
        classes=tuple(train.classes),
        mean=mean,
        std=std,
        crop_padding=4,
        flip=True,
    )
    return limit(data, max_train, max_test)


def load_cifar10(root: str | None, cache_dir: pathlib.Path, max_train: int | None = None,
                 max_test: int | None = None) -> ImageData:
    """CIFAR-10 from root (default: $QCORE_DATA or ~/.cache/qcore-bench/data); cache_dir is unused.

    ``max_train`` / ``max_test`` keep a fixed class-stratified subset (CPU-scale protocols).
    """
    return _load("CIFAR10", root, max_train, max_test)


def load_cifar100(root: str | None, cache_dir: pathlib.Path, max_train: int | None = None,
                  max_test: int | None = None) -> ImageData:
    """CIFAR-100 (fine labels) from root, as load_cifar10; cache_dir is unused."""
    return _load("CIFAR100", root, max_train, max_test)
