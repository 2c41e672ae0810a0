"""CIFAR-10 and CIFAR-100 through torchvision, never downloaded implicitly.

Benchmark machines (cluster nodes) often have no internet, and a download started by
many cells at once would race; so the files must already be there, and a missing copy
is an error that says where they were looked for and how to get them.
"""

from __future__ import annotations

import pathlib
from typing import Any

import torch

from qcore_bench.data.bundle import DatasetError, ImageData, channel_stats, limit
from qcore_bench.data.catalog import describe
from qcore_bench.paths import data_root

# torchvision's folder and files of each set, checked before any cell runs (without importing torchvision)
FILES = {"CIFAR10": ("cifar-10-batches-py", ("batches.meta", "test_batch", *(f"data_batch_{i}" for i in range(1, 6)))),
         "CIFAR100": ("cifar-100-python", ("meta", "train", "test"))}


def _where(root: str | None) -> pathlib.Path:
    return pathlib.Path(root).expanduser() if root is not None else data_root()


def _not_found(name: str, where: pathlib.Path) -> DatasetError:
    folder = where / FILES[name][0]
    return DatasetError(
        f"{name.lower()}: not found (or corrupted) in {folder}; on a machine with internet run "
        f"python -c \"import torchvision; torchvision.datasets.{name}('{where}', download=True)\" and copy "
        f"{folder} here, or point data.root (or $QCORE_DATA) at a folder that holds {FILES[name][0]}/")


def _check(name: str, root: str | None) -> None:
    where = _where(root)
    folder, files = FILES[name]
    if not all((where / folder / f).is_file() for f in files):
        raise _not_found(name, where)


def check_cifar10(root: str | None, **params: Any) -> None:
    """CIFAR-10's files are where the cell will look (the loader checks their contents)."""
    _check("CIFAR10", root)


def check_cifar100(root: str | None, **params: Any) -> None:
    """CIFAR-100's files are where the cell will look."""
    _check("CIFAR100", root)


def _load(name: str, root: str | None, max_train: int | None, max_test: int | None) -> ImageData:
    import torchvision

    dataset_cls = getattr(torchvision.datasets, name)
    where = _where(root)
    try:
        train = dataset_cls(str(where), train=True, download=False)
        test = dataset_cls(str(where), train=False, download=False)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise _not_found(name, where) from err
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


@describe("CIFAR-10", check_cifar10)
def load_cifar10(root: str | None, cache_dir: pathlib.Path, max_train: int | None = None,
                 max_test: int | None = None) -> ImageData:
    """CIFAR-10 from root (default: the data root, see qcore_bench.paths); cache_dir is unused.

    ``max_train`` / ``max_test`` keep a fixed class-stratified subset (CPU-scale protocols).
    """
    return _load("CIFAR10", root, max_train, max_test)


@describe("CIFAR-100", check_cifar100)
def load_cifar100(root: str | None, cache_dir: pathlib.Path, max_train: int | None = None,
                  max_test: int | None = None) -> ImageData:
    """CIFAR-100 (fine labels) from root, as load_cifar10; cache_dir is unused."""
    return _load("CIFAR100", root, max_train, max_test)
