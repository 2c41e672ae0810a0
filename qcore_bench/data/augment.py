"""Batched training augmentation and normalization on uint8 image tensors.

The data sets live in memory as uint8 tensors (see ImageData), so a whole batch is
augmented at once with tensor indexing on the training device: no per-image Python
loop and no DataLoader workers, which is what makes small-image QAT runs fast.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def augment(x: torch.Tensor, crop_padding: int, flip: bool, generator: torch.Generator,
            part: tuple[int, slice] | None = None) -> torch.Tensor:
    """Random crop (zero padding crop_padding) and random horizontal flip of a uint8 [B, C, H, W] batch.

    Per sample, the crop offsets are uniform in [0, 2 * crop_padding] and the flip has
    probability 1/2. Draws happen on the generator's device, so a CPU generator gives the
    same augmentation whichever device x is on. ``part=(size, rows)``: x holds only
    ``rows`` of a batch of ``size`` (one rank's share); the draws are made for the whole
    batch, so every share is augmented as in the single-process pass.
    """
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f"augment expects a uint8 [B, C, H, W] batch, got {x.dtype} {tuple(x.shape)}")
    if crop_padding < 0:
        raise ValueError(f"crop_padding must be >= 0, got {crop_padding}")
    batch, channels, height, width = x.shape
    size, rows_of = part if part is not None else (batch, slice(None))
    draw_device = generator.device
    out = x
    if crop_padding > 0:
        p = crop_padding
        offsets = torch.randint(0, 2 * p + 1, (2, size), generator=generator, device=draw_device)[:, rows_of]
        offsets = offsets.to(x.device)
        padded = F.pad(x, (p, p, p, p))
        rows = offsets[0, :, None] + torch.arange(height, device=x.device)  # [B, H]
        cols = offsets[1, :, None] + torch.arange(width, device=x.device)  # [B, W]
        out = padded[
            torch.arange(batch, device=x.device)[:, None, None, None],
            torch.arange(channels, device=x.device)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]
    if flip:
        flipped = torch.rand(size, generator=generator, device=draw_device)[rows_of].to(x.device) < 0.5
        out = torch.where(flipped[:, None, None, None], out.flip(-1), out)
    return out


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 images [..., C, H, W] -> float32 (x / 255 - mean) / std per channel, on x's device."""
    if x.dtype != torch.uint8 or x.dim() < 3:
        raise ValueError(f"normalize expects uint8 [..., C, H, W] images, got {x.dtype} {tuple(x.shape)}")
    channels = x.shape[-3]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"need {channels} mean and std values, got {len(mean)} and {len(std)}")
    # Folded into one scale and one shift, applied in place: a single float copy of x.
    mean_t = torch.tensor(mean, dtype=torch.float64)
    std_t = torch.tensor(std, dtype=torch.float64)
    scale = (1.0 / (255.0 * std_t)).to(device=x.device, dtype=torch.float32).view(-1, 1, 1)
    shift = (-mean_t / std_t).to(device=x.device, dtype=torch.float32).view(-1, 1, 1)
    return x.to(torch.float32).mul_(scale).add_(shift)
