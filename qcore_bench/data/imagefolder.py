"""Image files in class folders (ImageNet, the CIFAR-10 JPEG copy, user data sets).

The files are decoded once, in parallel, into uint8 tensors that are cached on disk:
every later cell (and every seed and fraction) then starts from one tensor file
instead of decoding thousands of images again.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import pathlib
import pickle
import warnings
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from qcore_bench.claims import file_lock
from qcore_bench.data.catalog import describe
from qcore_bench.files import atomic_write
from qcore_bench.data.bundle import DatasetError, ImageData, channel_stats, limit

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"})
LAYOUT = "<root>/train/<class>/<image> and <root>/test/<class>/<image> (or val/ instead of test/)"
# Part of the cache key: bump it when decoding changes, so old caches are not reused.
_CACHE_FORMAT = 1
_POOL_THRESHOLD = 1000  # below this many files a process pool costs more than it saves
_CHUNK = 64


def _list_images(folder: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def _class_folders(split: pathlib.Path) -> list[str]:
    return sorted(p.name for p in split.iterdir() if p.is_dir() and not p.name.startswith("."))


def _split_files(split: pathlib.Path, classes: list[str], every_class: bool) -> list[tuple[pathlib.Path, int]]:
    """(file, label) pairs of one split; every_class: each class needs at least one image."""
    files: list[tuple[pathlib.Path, int]] = []
    for label, name in enumerate(classes):
        images = _list_images(split / name)
        if every_class and not images:
            raise DatasetError(f"imagefolder: class folder {split / name} holds no images")
        files.extend((path, label) for path in images)
    if not files:
        raise DatasetError(f"imagefolder: {split} holds no images")
    return files


def _scan(root: pathlib.Path) -> tuple[list[str], list[tuple[pathlib.Path, int]], int]:
    """Class names, (file, label) for every image (all train files first), and the train count."""
    if not root.is_dir():
        raise DatasetError(f"imagefolder: root {root} does not exist; expected the layout {LAYOUT}")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DatasetError(f"imagefolder: {root} has no train/ folder; expected the layout {LAYOUT}")
    test_dir = next((root / name for name in ("test", "val") if (root / name).is_dir()), None)
    if test_dir is None:
        raise DatasetError(f"imagefolder: {root} has neither test/ nor val/; expected the layout {LAYOUT}")
    classes = _class_folders(train_dir)
    if not classes:
        raise DatasetError(f"imagefolder: {train_dir} has no class folders; expected the layout {LAYOUT}")
    test_classes = _class_folders(test_dir)
    if test_classes != classes:
        only_train = sorted(set(classes) - set(test_classes))
        only_test = sorted(set(test_classes) - set(classes))
        raise DatasetError(
            f"imagefolder: {train_dir} and {test_dir} must hold the same class folders "
            f"(only in train: {only_train}; only in {test_dir.name}: {only_test})"
        )
    train = _split_files(train_dir, classes, every_class=True)
    test = _split_files(test_dir, classes, every_class=False)
    return classes, train + test, len(train)


def _cache_key(root: pathlib.Path, image_size: int | None, files: list[tuple[pathlib.Path, int]]) -> str:
    """Hash of what determines the decoded tensors: root, size, and every file's path and size."""
    listing = sorted((path.relative_to(root).as_posix(), path.stat().st_size) for path, _ in files)
    blob = json.dumps([_CACHE_FORMAT, str(root), image_size, listing], separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _decode_file(path: pathlib.Path, image_size: int | None) -> np.ndarray:
    """One image as uint8 HWC RGB, resized to image_size x image_size when given."""
    try:
        with Image.open(path) as img:
            if image_size is not None:
                # Let the JPEG decoder scale down by a power of two first: much faster for
                # large photos (ImageNet), and the final resize still sets the exact size.
                img.draft(None, (image_size, image_size))
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise DatasetError(f"imagefolder: cannot decode {path}: {err}") from err
    if image_size is not None and rgb.size != (image_size, image_size):
        rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def _stack(decoded: Iterable[np.ndarray], paths: list[pathlib.Path]) -> np.ndarray:
    """Decoded HWC images (in the order of paths) in one NCHW array; all must share one size."""
    out: np.ndarray | None = None
    for i, array in enumerate(decoded):
        if out is None:
            height, width, channels = array.shape
            out = np.empty((len(paths), channels, height, width), dtype=np.uint8)
        elif array.shape != (height, width, channels):
            raise DatasetError(
                f"imagefolder: {paths[i]} is {array.shape[1]}x{array.shape[0]} but {paths[0]} is "
                f"{width}x{height}; pass image_size to resize all images to one size"
            )
        out[i] = array.transpose(2, 0, 1)
    if out is None:
        raise DatasetError("imagefolder: no images to decode")
    return out


def _decode_all(paths: list[pathlib.Path], image_size: int | None) -> torch.Tensor:
    """All images as one uint8 NCHW tensor, decoded in a process pool when there are many."""
    decode = functools.partial(_decode_file, image_size=image_size)
    if len(paths) > _POOL_THRESHOLD:
        # spawn, not fork: a fork taken while another thread (a claim heartbeat, a logger)
        # holds a lock can leave a worker deadlocked
        with multiprocessing.get_context("spawn").Pool(min(os.cpu_count() or 1, 8)) as pool:
            images = _stack(pool.imap(decode, paths, chunksize=_CHUNK), paths)
    else:
        images = _stack(map(decode, paths), paths)
    return torch.from_numpy(images)


def _load_cache(path: pathlib.Path) -> dict | None:
    """The cached tensors, or None when there is no usable cache file."""
    if not path.is_file():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as err:
        warnings.warn(f"imagefolder: ignoring unreadable cache {path} ({err}); decoding again", stacklevel=3)
        return None


def check_imagefolder(root: str | None, **params: Any) -> None:
    """The layout is there and every class holds images (nothing is decoded)."""
    if root is None:
        raise DatasetError(f"imagefolder needs data.root: a folder with the layout {LAYOUT}")
    _scan(pathlib.Path(root).expanduser().resolve())


@describe(None, check_imagefolder)
def load_imagefolder(
    root: str | None,
    cache_dir: pathlib.Path,
    image_size: int | None = None,
    crop_padding: int = 4,
    flip: bool = True,
    max_train: int | None = None,
    max_test: int | None = None,
) -> ImageData:
    """Load train/ and test/ (or val/) class folders under root, decoding only on the first call.

    ``max_train`` / ``max_test`` keep a fixed class-stratified subset of the decoded set
    (the cache always holds the whole tree).
    """
    if root is None:
        raise DatasetError(f"imagefolder needs data.root: a folder with the layout {LAYOUT}")
    if image_size is not None and image_size < 1:
        raise DatasetError(f"imagefolder: image_size must be >= 1, got {image_size}")
    root_path = pathlib.Path(root).expanduser().resolve()
    classes, files, n_train = _scan(root_path)
    cache_path = pathlib.Path(cache_dir) / "data" / f"imagefolder-{_cache_key(root_path, image_size, files)}.pt"
    payload = _load_cache(cache_path)
    if payload is None:  # decode once: other processes needing it now wait for the lock, then load
        with file_lock(cache_path):
            payload = _load_cache(cache_path) or _decode_payload(files, n_train, classes, image_size, cache_path)
    data = ImageData(
        train_x=payload["train_x"],
        train_y=payload["train_y"],
        test_x=payload["test_x"],
        test_y=payload["test_y"],
        classes=tuple(payload["classes"]),
        mean=tuple(payload["mean"]),
        std=tuple(payload["std"]),
        crop_padding=crop_padding,
        flip=flip,
    )
    return limit(data, max_train, max_test)


def _decode_payload(files: list[tuple[pathlib.Path, int]], n_train: int, classes: list[str],
                    image_size: int | None, cache_path: pathlib.Path) -> dict:
    """Decode every image and write the cache file."""
    # _scan lists all train files before the test files, so both splits are views
    # of the one decoded tensor (no second copy of a large data set).
    images = _decode_all([path for path, _ in files], image_size)
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    mean, std = channel_stats(images[:n_train])
    payload = {
        "train_x": images[:n_train],
        "train_y": labels[:n_train],
        "test_x": images[n_train:],
        "test_y": labels[n_train:],
        "classes": classes,
        "mean": list(mean),
        "std": list(std),
    }
    atomic_write(cache_path, lambda f: torch.save(payload, f), mode="wb")
    return payload
