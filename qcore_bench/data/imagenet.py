"""ImageNet (ILSVRC-2012) as an ImageFolder tree, read batch by batch by DataLoader workers.

1.28 million full-size JPEGs do not fit in memory as a tensor, so this loader returns a
``FileData`` (file lists and the transform settings) instead of an ``ImageData``. The
standard transforms: RandomResizedCrop(224, scale 0.08-1, ratio 3/4-4/3) + horizontal flip
for training; resize the shorter side to 256 + center crop 224 for evaluation; ImageNet
mean and std. Every random draw of a sample's augmentation comes from a per-sample seed
that the trainer draws from the cell's generator, so a pass does not depend on the number
of workers, and no worker touches torch's global RNG.
"""

from __future__ import annotations

import math
import pathlib
import random
from typing import Any

import torch

from qcore_bench.data.bundle import DatasetError, FileData, stratified_subset
from qcore_bench.data.catalog import describe
from qcore_bench.data.imagefolder import IMAGE_EXTENSIONS
from qcore_bench.paths import data_root

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LAYOUT = ("<root>/train/<class>/<image> and <root>/val/<class>/<image>, e.g. train/n01440764/*.JPEG "
          "(the 50,000 validation images sorted into their class folders, as torchvision's ImageNet "
          "and most training scripts expect)")
RATIO = (3 / 4, 4 / 3)


def random_resized_crop_box(width: int, height: int, rng: random.Random,
                            scale: tuple[float, float]) -> tuple[int, int, int, int]:
    """(top, left, height, width) of an Inception-style random crop, as torchvision's RandomResizedCrop.

    Up to 10 tries of an area fraction in ``scale`` and a log-uniform aspect ratio in
    [3/4, 4/3] that fit the image; otherwise a central crop at the nearest allowed ratio.
    """
    area = width * height
    log_lo, log_hi = math.log(RATIO[0]), math.log(RATIO[1])
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    in_ratio = width / height
    if in_ratio < RATIO[0]:
        w, h = width, int(round(width / RATIO[0]))
    elif in_ratio > RATIO[1]:
        w, h = int(round(height * RATIO[1])), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def load_image(path: str, seed: int, data: FileData) -> torch.Tensor:
    """One image as uint8 [3, S, S]: the training transform drawn from ``seed``, or the eval one (seed < 0)."""
    import torchvision.transforms.functional as TF
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise DatasetError(f"imagenet: cannot decode {path}: {err}") from err
    size = [data.image_size, data.image_size]
    if seed < 0:
        out = TF.center_crop(TF.resize(rgb, data.resize), size)
    else:
        rng = random.Random(seed)
        top, left, h, w = random_resized_crop_box(rgb.width, rgb.height, rng, data.scale)
        out = TF.resized_crop(rgb, top, left, h, w, size)
        if data.flip and rng.random() < 0.5:
            out = TF.hflip(out)
    return TF.pil_to_tensor(out)


class FileDataset(torch.utils.data.Dataset):
    """Items are (index, seed): index < n_train is a training image, the rest test images."""

    def __init__(self, data: FileData) -> None:
        self.data = data
        self.files = data.train_files + data.test_files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = item
        return load_image(self.files[index], seed, self.data), index


def _split(root: pathlib.Path, name: str, classes: list[str] | None) -> tuple[list[str], list[str], list[int]]:
    """Class names, files and labels of one split folder; files sorted within each class."""
    folder = root / name
    if not folder.is_dir():
        raise DatasetError(f"imagenet: {root} has no {name}/ folder; expected the layout {LAYOUT}")
    found = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is None:
        classes = found
    if not found:
        raise DatasetError(f"imagenet: {folder} has no class folders; expected the layout {LAYOUT}")
    if found != classes:
        raise DatasetError(f"imagenet: train/ and {name}/ must hold the same class folders "
                           f"({len(classes)} vs {len(found)}); expected the layout {LAYOUT}")
    files, labels = [], []
    for label, cls in enumerate(classes):
        names = sorted(e.name for e in (folder / cls).iterdir()
                       if e.suffix.lower() in IMAGE_EXTENSIONS and not e.name.startswith("."))
        if not names:
            raise DatasetError(f"imagenet: class folder {folder / cls} holds no images")
        files.extend(str(folder / cls / n) for n in names)
        labels.extend([label] * len(names))
    return classes, files, labels


def _root(root: str | None) -> pathlib.Path:
    path = pathlib.Path(root).expanduser() if root is not None else data_root() / "imagenet"
    if not path.is_dir():
        raise DatasetError(f"imagenet: root {path} does not exist; expected the layout {LAYOUT}; "
                           f"set data.root to the tree, or put it in imagenet/ under the data root ($QCORE_DATA)")
    return path


def check_imagenet(root: str | None, **params: Any) -> None:
    """The root, train/ and val/ exist and hold the same class folders (the files are listed per cell)."""
    path = _root(root)
    for name in ("train", "val"):
        if not (path / name).is_dir():
            raise DatasetError(f"imagenet: {path} has no {name}/ folder; expected the layout {LAYOUT}")
    train, val = ({p.name for p in (path / name).iterdir() if p.is_dir() and not p.name.startswith(".")}
                  for name in ("train", "val"))
    if not train or train != val:
        raise DatasetError(f"imagenet: train/ and val/ must hold the same class folders ({len(train)} vs "
                           f"{len(val)}); expected the layout {LAYOUT}")


@describe("ImageNet", check_imagenet)
def load_imagenet(root: str | None, cache_dir: pathlib.Path, image_size: int = 224, resize: int | None = None,
                  max_train: int | None = None, max_test: int | None = None) -> FileData:
    """The tree under root (default: ``imagenet/`` under the data root).

    ``resize`` defaults to image_size * 8 / 7 (256 for 224); ``max_train`` / ``max_test``
    keep a fixed class-stratified subset. cache_dir is unused: nothing is decoded ahead.
    """
    if image_size < 1:
        raise DatasetError(f"imagenet: image_size must be >= 1, got {image_size}")
    path = _root(root)
    classes, train_files, train_y = _split(path, "train", None)
    _, test_files, test_y = _split(path, "val", classes)
    train_labels, test_labels = torch.tensor(train_y, dtype=torch.int64), torch.tensor(test_y, dtype=torch.int64)
    keep_train = stratified_subset(train_labels, max_train, "max_train")
    keep_test = stratified_subset(test_labels, max_test, "max_test")
    if keep_train is not None:
        train_files, train_labels = [train_files[i] for i in keep_train.tolist()], train_labels[keep_train]
    if keep_test is not None:
        test_files, test_labels = [test_files[i] for i in keep_test.tolist()], test_labels[keep_test]
    return FileData(train_files=tuple(train_files), train_y=train_labels, test_files=tuple(test_files),
                    test_y=test_labels, classes=tuple(classes), mean=IMAGENET_MEAN, std=IMAGENET_STD,
                    image_size=image_size, resize=resize if resize is not None else round(image_size * 8 / 7))
