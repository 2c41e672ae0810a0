"""The in-memory form every data set loader returns, and the error it raises.

Small images (digits, CIFAR, down-scaled ImageNet) fit in memory as uint8 tensors, so the
trainer can index, augment and normalize whole batches on the device without a
DataLoader: one layout for every data set keeps the trainer simple and fast.
"""

from __future__ import annotations

from dataclasses import dataclass

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
