"""Class-conditional synthetic images: any size, any number of classes, no files.

For tests and for timing runs at a chosen scale. Each class has a random smooth
prototype; a sample is its class prototype plus smooth and pixel noise of about the
same strength as the differences between prototypes, so a small CNN learns the task
but cannot solve it perfectly (nearest-class-mean accuracy is about 85 % with the
defaults), which leaves room for selectors to differ.
"""

from __future__ import annotations

import pathlib

import torch
import torch.nn.functional as F

from qcore_bench.data.catalog import describe
from qcore_bench.data.bundle import DatasetError, ImageData, channel_stats

# Prototypes and the smooth noise live on a coarse grid that is upsampled, so the
# number of informative dimensions does not grow with image_size.
_GRID = 4
_PROTOTYPE_SCALE = 0.10  # per-pixel std of a prototype, in [0, 1] pixel units
_SMOOTH_NOISE = 0.20  # std of the per-sample smooth noise on the coarse grid
_PIXEL_NOISE = 0.08  # per-pixel std of the per-sample white noise


def _smooth(shape: tuple[int, ...], image_size: int, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise on a coarse grid, upsampled bilinearly: smooth random images."""
    grid = min(_GRID, image_size)
    coarse = torch.randn(*shape, grid, grid, generator=generator)
    return F.interpolate(coarse, size=(image_size, image_size), mode="bilinear", align_corners=False)


def _draw(
    n: int, prototypes: torch.Tensor, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """n uint8 images with balanced, shuffled labels."""
    num_classes, channels, size, _ = prototypes.shape
    labels = (torch.arange(n) % num_classes)[torch.randperm(n, generator=generator)]
    images = (
        0.5
        + prototypes[labels]
        + _SMOOTH_NOISE * _smooth((n, channels), size, generator)
        + _PIXEL_NOISE * torch.randn(n, channels, size, size, generator=generator)
    )
    return images.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8), labels


@describe("Synthetic")
def load_synthetic(
    root: str | None,
    cache_dir: pathlib.Path,
    n_train: int = 512,
    n_test: int = 256,
    num_classes: int = 4,
    image_size: int = 8,
    channels: int = 1,
    seed: int = 0,
) -> ImageData:
    """Generate the data set; the same parameters always give identical tensors."""
    if num_classes < 2:
        raise DatasetError(f"synthetic: num_classes must be >= 2, got {num_classes}")
    if n_train < num_classes or n_test < 1:
        raise DatasetError(f"synthetic: need n_train >= num_classes and n_test >= 1 (got {n_train}, {n_test})")
    if image_size < 1 or channels < 1:
        raise DatasetError(f"synthetic: image_size and channels must be >= 1 (got {image_size}, {channels})")
    generator = torch.Generator().manual_seed(seed)
    prototypes = _smooth((num_classes, channels), image_size, generator)
    prototypes = _PROTOTYPE_SCALE * prototypes / prototypes.std(dim=(1, 2, 3), correction=0, keepdim=True).clamp_min(1e-6)
    train_x, train_y = _draw(n_train, prototypes, generator)
    test_x, test_y = _draw(n_test, prototypes, generator)
    mean, std = channel_stats(train_x)
    return ImageData(
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        classes=tuple(f"class{i}" for i in range(num_classes)),
        mean=mean,
        std=std,
        crop_padding=0,
        flip=False,
    )
