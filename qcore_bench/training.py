"""The training and evaluation steps shared by the teacher and the QAT student.

Data stays a uint8 tensor on the training device; batches are gathered by index,
augmented and normalised as tensor operations (no DataLoader, no per-image Python).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .data import ImageData, augment, normalize
from .quant import param_groups
from .suite import Recipe


class TrainingError(RuntimeError):
    """Training diverged (a non-finite loss); the cell is marked failed."""


@dataclass(frozen=True)
class DeviceData:
    """A data set's tensors on the training device, with how to augment and normalise them."""

    train_x: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    crop_padding: int
    flip: bool

    @classmethod
    def from_data(cls, data: ImageData, device: torch.device) -> "DeviceData":
        return cls(data.train_x.to(device), data.test_x.to(device), data.test_y.to(device),
                   data.mean, data.std, data.crop_padding, data.flip)

    def batches(self, x: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
        """Un-augmented, normalised batches of ``x`` in order."""
        for i in range(0, len(x), batch_size):
            yield normalize(x[i:i + batch_size], self.mean, self.std)


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    groups = param_groups(model, recipe.weight_decay)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum,
                               nesterov=recipe.nesterov and recipe.momentum > 0)
    return torch.optim.Adam(groups, lr=recipe.lr)


def make_scheduler(opt: torch.optim.Optimizer, recipe: Recipe,
                   epochs: int | None = None) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch learning-rate factor: cosine or linear decay to 0 over ``epochs``
    (default: the recipe's), or constant."""
    e = epochs or recipe.epochs
    factor: Callable[[int], float] = {
        "cosine": lambda t: 0.5 * (1 + math.cos(math.pi * t / e)),
        "linear": lambda t: 1 - t / e,
        "constant": lambda t: 1.0,
    }[recipe.schedule]
    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def kd_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-sample soft cross-entropy to the teacher's softmax at ``temperature`` (scaled by T^2)."""
    t = temperature
    soft = F.softmax(teacher_logits / t, dim=1)
    return -(soft * F.log_softmax(logits / t, dim=1)).sum(dim=1) * (t * t)


def train_epoch(model: nn.Module, opt: torch.optim.Optimizer, data: DeviceData, labels: torch.Tensor,
                indices: torch.Tensor, *, batch_size: int, augmented: bool, generator: torch.Generator,
                weights: torch.Tensor | None = None,
                per_sample_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                on_batch: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None] | None = None,
                ) -> float:
    """One pass over ``indices`` in a seeded random order; returns the mean training loss.

    ``per_sample_loss(logits, labels, x)`` defaults to cross-entropy; the student's
    distillation loss plugs in here. Optional per-sample ``weights`` scale the loss.
    ``on_batch(indices, logits, losses)`` sees every batch before its update: the hook
    through which proxy runs record per-sample training dynamics.
    """
    model.train()
    perm = torch.randperm(len(indices), generator=generator)
    order = indices[perm]
    weights = None if weights is None else weights[perm]
    total, count = 0.0, 0
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        dev_idx = idx.to(data.train_x.device)
        xb = data.train_x[dev_idx]
        if augmented:
            xb = augment(xb, data.crop_padding, data.flip, generator)
        xb = normalize(xb, data.mean, data.std)
        yb = labels[dev_idx]
        logits = model(xb)
        losses = per_sample_loss(logits, yb, xb) if per_sample_loss else F.cross_entropy(logits, yb, reduction="none")
        if weights is not None:
            losses = losses * weights[i:i + batch_size].to(losses.device)
        loss = losses.mean()
        if on_batch is not None:
            on_batch(idx, logits.detach(), losses.detach())
        if not torch.isfinite(loss):
            raise TrainingError(f"non-finite training loss ({loss.item()}) at batch {i // batch_size}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item() * len(idx)
        count += len(idx)
    return total / max(count, 1)


@torch.no_grad()
def evaluate(model: nn.Module, data: DeviceData, batch_size: int) -> tuple[float, float]:
    """Top-1 accuracy (%) and mean loss on the whole test set, eval mode."""
    model.eval()
    correct, loss, n = 0, 0.0, len(data.test_y)
    for i, xb in enumerate(data.batches(data.test_x, batch_size)):
        yb = data.test_y[i * batch_size:(i + 1) * batch_size]
        logits = model(xb)
        loss += F.cross_entropy(logits, yb, reduction="sum").item()
        correct += int((logits.argmax(1) == yb).sum())
    return 100.0 * correct / n, loss / n
