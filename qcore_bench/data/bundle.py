"""The two forms a data set loader returns, and the error it raises.

Small images (digits, CIFAR, down-scaled ImageNet) fit in memory as uint8 tensors
(``ImageData``), so the trainer can index, augment and normalize whole batches on the
device without a DataLoader. ImageNet at full resolution does not: ``FileData`` lists its
files, which DataLoader workers decode and augment batch by batch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


class DatasetError(ValueError):
    """A data set cannot be loaded; the message says what to do."""


@dataclass(frozen=True)
class ImageData:
    """A whole data set in memory as uint8 NCHW tensors: the fast path for small images."""

    train_x: torch.Tensor  # uint8 [N, C, H, W]
    train_y: torch.Tensor  # int64 [N], clean labels
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]  # per channel, for pixels scaled to [0, 1]
    std: tuple[float, ...]
    crop_padding: int  # training augmentation: random crop with this zero padding (0: none)
    flip: bool  # training augmentation: random horizontal flip

    def __post_init__(self) -> None:
        # Checked once here so that a faulty loader (built-in or plugin) fails at load
        # time with a clear message instead of deep inside the training loop.
        for name in ("train", "test"):
            x, y = getattr(self, f"{name}_x"), getattr(self, f"{name}_y")
            if x.dtype != torch.uint8 or x.dim() != 4:
                raise DatasetError(f"{name}_x must be uint8 [N, C, H, W], got {x.dtype} {tuple(x.shape)}")
            if y.dtype != torch.int64 or y.shape != (x.shape[0],):
                raise DatasetError(f"{name}_y must be int64 [{x.shape[0]}], got {y.dtype} {tuple(y.shape)}")
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= len(self.classes)):
                raise DatasetError(f"{name}_y has labels outside [0, {len(self.classes)})")
        if self.train_x.shape[1:] != self.test_x.shape[1:]:
            raise DatasetError(
                f"train images {tuple(self.train_x.shape[1:])} and test images "
                f"{tuple(self.test_x.shape[1:])} differ in shape"
            )
        if not len(self.mean) == len(self.std) == self.in_channels:
            raise DatasetError(f"mean/std need one value per channel ({self.in_channels})")
        if self.crop_padding < 0:
            raise DatasetError(f"crop_padding must be >= 0, got {self.crop_padding}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[2])


@dataclass(frozen=True)
class FileData:
    """A data set too large for memory (ImageNet): image files read batch by batch by DataLoader workers.

    Training images get RandomResizedCrop(``image_size``, ``scale``) and a horizontal flip;
    evaluation images are resized (shorter side ``resize``) and center-cropped to ``image_size``.
    """

    train_files: tuple[str, ...]
    train_y: torch.Tensor  # int64 [N], clean labels
    test_files: tuple[str, ...]
    test_y: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int
    resize: int
    scale: tuple[float, float] = (0.08, 1.0)
    flip: bool = True

    def __post_init__(self) -> None:
        for name in ("train", "test"):
            files, y = getattr(self, f"{name}_files"), getattr(self, f"{name}_y")
            if y.dtype != torch.int64 or y.shape != (len(files),):
                raise DatasetError(f"{name}_y must be int64 [{len(files)}], got {y.dtype} {tuple(y.shape)}")
        if not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise DatasetError(f"scale must satisfy 0 < min <= max <= 1, got {self.scale}")
        if self.image_size < 1 or self.resize < self.image_size:
            raise DatasetError(f"need 1 <= image_size <= resize, got {self.image_size} and {self.resize}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return len(self.mean)


SUBSET_SEED = 0  # a subset is part of the data set's definition: never drawn with a cell's seed


def stratified_subset(labels: torch.Tensor, k: int | None, what: str) -> torch.Tensor | None:
    """Sorted indices of ``k`` samples spread over the classes in proportion to their sizes.

    Drawn with the constant SUBSET_SEED, so every cell and machine sees the same subset;
    None when ``k`` is None or not smaller than the set (keep everything).
    """
    n = labels.numel()
    if k is None or k >= n:
        return None
    num_classes = int(labels.max()) + 1
    if k < num_classes:
        raise DatasetError(f"{what} must be at least the number of classes ({num_classes}), got {k}")
    counts = torch.bincount(labels, minlength=num_classes)
    quota = counts.double() * k / n
    take = quota.floor().long()
    # largest remainders get the leftover samples; equal remainders go to the lower class index
    extra = torch.sort(quota - take, descending=True, stable=True).indices[: k - int(take.sum())]
    take[extra] += 1
    gen = torch.Generator().manual_seed(SUBSET_SEED)
    chosen = []
    for cls in range(num_classes):
        members = torch.nonzero(labels == cls).flatten()
        chosen.append(members[torch.randperm(len(members), generator=gen)[: int(take[cls])]])
    return torch.sort(torch.cat(chosen)).values


def limit(data: ImageData, max_train: int | None, max_test: int | None) -> ImageData:
    """``data`` with at most max_train training and max_test test images (stratified, fixed seed).

    The normalisation statistics stay those of the whole training set: a subset is a
    smaller sample of the same data set, not another data set.
    """
    train = stratified_subset(data.train_y, max_train, "max_train")
    test = stratified_subset(data.test_y, max_test, "max_test")
    changes = {}
    if train is not None:
        changes.update(train_x=data.train_x[train], train_y=data.train_y[train])
    if test is not None:
        changes.update(test_x=data.test_x[test], test_y=data.test_y[test])
    return replace(data, **changes) if changes else data


def channel_stats(x: torch.Tensor, chunk: int = 8192) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 NCHW images scaled to [0, 1].

    Accumulated in float64 over chunks of images, so a large set (ImageNet at 64 px)
    needs no float copy of the whole tensor and the result does not drift.
    """
    channels = x.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, x.shape[0], chunk):
        part = x[start : start + chunk].to(torch.float64).div_(255.0)
        total += part.sum(dim=(0, 2, 3))
        total_sq += part.square().sum(dim=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    if count == 0:
        raise DatasetError("cannot compute mean/std of an empty training set")
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0.0).sqrt().clamp_min(1e-6)
    return tuple(mean.tolist()), tuple(std.tolist())
