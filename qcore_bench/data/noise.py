"""Label noise injected into the training labels, for the robustness experiments.

The mask of flipped samples is returned beside the noisy labels so the runner can
measure how many noisy samples each selector keeps; selectors never see it.
"""

from __future__ import annotations

import torch

NOISE_KINDS = ("none", "symmetric")


def apply_label_noise(
    labels: torch.Tensor, num_classes: int, kind: str, rate: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (noisy_labels, noise_mask); noise_mask is exactly noisy_labels != labels.

    "symmetric": round(rate * n) samples, chosen uniformly without replacement, each get
    a class drawn uniformly from the other num_classes - 1 classes (never their own, so
    the rate is the true fraction of wrong labels). Draws happen on the generator's
    device; the results are on the labels' device.
    """
    if kind not in NOISE_KINDS:
        raise ValueError(f"unknown label noise kind {kind!r} (known: {', '.join(NOISE_KINDS)})")
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"label noise rate must be in [0, 1), got {rate}")
    if kind == "none" and rate != 0.0:
        raise ValueError(f"label noise kind 'none' needs rate 0, got {rate}")
    if labels.dim() != 1 or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise ValueError(f"labels must be a 1-D integer tensor, got {labels.dtype} {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes})")
    noisy = labels.clone()
    mask = torch.zeros_like(labels, dtype=torch.bool)
    n_noisy = round(rate * labels.numel())
    if n_noisy == 0:
        return noisy, mask
    if num_classes < 2:
        raise ValueError("symmetric label noise needs at least 2 classes")
    device = generator.device
    chosen = torch.randperm(labels.numel(), generator=generator, device=device)[:n_noisy]
    # A shift of 1..K-1 classes (mod K) reaches every other class with equal probability.
    shift = torch.randint(1, num_classes, (n_noisy,), generator=generator, device=device)
    chosen, shift = chosen.to(labels.device), shift.to(labels.device, labels.dtype)
    noisy[chosen] = (labels[chosen] + shift) % num_classes
    mask[chosen] = True
    return noisy, mask
