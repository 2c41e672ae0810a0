"""The training and evaluation steps shared by the teacher, the proxies and the QAT student.

Batches come from a ``DeviceData`` (the in-memory tensor fast path or the DataLoader
path, see ``qcore_bench.data.device``). The loss is accumulated on the device: the host
waits for the device only every ``SYNC_EVERY`` batches (to stop a diverged run) and at the
end of a pass.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from . import distributed
from .data.device import DeviceData
from .distributed import Shard
from .quant import param_groups
from .recipes import Recipe

__all__ = ["DeviceData", "TrainingError", "autocast", "evaluate", "kd_loss", "make_optimizer", "make_scheduler",
           "precision", "to_device", "train_epoch"]

SYNC_EVERY = 100  # batches between checks for a non-finite loss (each check waits for the device)


class TrainingError(RuntimeError):
    """Training diverged (a non-finite loss); the cell is marked failed."""


def to_device(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` moved to ``device``; channels_last on CUDA (as DeviceData's batches are)."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if device.type == "cuda" else model


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA where ``enabled``; a no-op on other devices.

    Enabled only for full-precision models (the teacher's training, teacher and proxy
    forward passes): the quantized student keeps float32, so LSQ's rounding grid, clamping
    and step-size gradients are exactly those of the CPU path.
    """
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def precision(device: torch.device, full_precision: bool) -> str:
    """The arithmetic ``autocast`` gives a model: bf16 for full-precision models on CUDA, else float32.

    Part of every cache key of a model's training or outputs: a bf16 GPU result is not a
    float32 CPU one, and must not be reused as if it were.
    """
    return "bf16" if full_precision and device.type == "cuda" else "fp32"


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    groups = param_groups(model, recipe.weight_decay)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum,
                               nesterov=recipe.nesterov and recipe.momentum > 0)
    return torch.optim.Adam(groups, lr=recipe.lr)


def make_scheduler(opt: torch.optim.Optimizer, recipe: Recipe,
                   epochs: Callable[[], int] | None = None) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch learning-rate factor: cosine or linear decay to 0 over the run, or constant.

    ``epochs`` is read at every step (default: the recipe's), so a run whose length is
    re-planned (equal-compute budgets) keeps a schedule that ends at its last epoch.
    """
    e = epochs or (lambda: recipe.epochs)
    factor: Callable[[int], float] = {
        "cosine": lambda t: 0.5 * (1 + math.cos(math.pi * t / e())),
        "linear": lambda t: 1 - t / e(),
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
                amp: bool = False, shard: Shard = Shard()) -> float:
    """One pass over ``indices`` in a seeded random order; returns the mean training loss.

    ``per_sample_loss(logits, labels, x)`` defaults to cross-entropy; the student's
    distillation loss plugs in here. Optional per-sample ``weights`` (aligned with
    ``indices``) scale the loss. ``on_batch(indices, logits, losses)`` sees every batch
    before its update: the hook through which proxy runs record per-sample training
    dynamics. ``amp``: bf16 autocast on CUDA (full-precision models only).

    With a ``shard`` of several ranks, ``model`` is wrapped in DistributedDataParallel and
    this rank trains on its part of every global batch of ``batch_size``. Its loss is the
    sum over its part times world / (global batch size): DDP averages the gradients over
    ranks, so every step follows the mean gradient of the whole global batch, also when the
    parts differ in size (uneven batches; a last batch smaller than the world is dropped,
    see ``Shard.batches``). The returned loss is the mean over every rank's samples.
    """
    model.train()
    dev = data.device
    by_index = None
    if weights is not None:  # weight of every training index, so batches can gather theirs
        by_index = torch.zeros(data.n_train, dtype=weights.dtype)
        by_index[indices] = weights
        by_index = by_index.to(dev)
    total = torch.zeros((), dtype=torch.float64, device=dev)
    first_bad = torch.full((), -1, dtype=torch.int64, device=dev)  # first batch with a non-finite loss
    count, batch = 0, -1
    for batch, (xb, idx) in enumerate(data.train_batches(indices, batch_size, generator, augmented, shard)):
        dev_idx = idx.to(dev, non_blocking=True)
        yb = labels[dev_idx]
        with autocast(dev, amp):
            logits = model(xb)
            losses = (per_sample_loss(logits, yb, xb) if per_sample_loss
                      else F.cross_entropy(logits, yb, reduction="none"))
        losses = losses.float()
        if by_index is not None:
            losses = losses * by_index[dev_idx]
        if shard.world == 1:
            loss = losses.mean()
        else:  # this rank's share of the global batch's mean; DDP's average over ranks completes it
            loss = losses.sum() * (shard.world / min(batch_size, len(indices) - batch * batch_size))
        if on_batch is not None:
            on_batch(idx, logits.detach(), losses.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if shard.world == 1:
            total += loss.detach().double() * len(idx)
        else:
            total += losses.detach().sum().double()
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), batch, first_bad)
        count += len(idx)
        if batch % SYNC_EVERY == SYNC_EVERY - 1:
            _check_finite(first_bad, batch, shard)
    _check_finite(first_bad, batch, shard)
    if shard.world > 1:  # the mean over every rank's samples
        sums = distributed.all_reduce_sum(torch.stack([total, torch.full_like(total, count)]))
        total, count = sums.tolist()
    return float(total) / max(count, 1)


def _check_finite(first_bad: torch.Tensor, batches: int, shard: Shard) -> None:
    if shard.world > 1:  # the first bad batch of any rank: all stop together, none is left waiting in a collective
        none = torch.iinfo(torch.int64).max
        first_bad = distributed.all_reduce_min(torch.where(first_bad < 0, none, first_bad))
        first_bad = torch.where(first_bad == none, -1, first_bad)
    bad = int(first_bad)  # waits for the device
    if bad >= 0:
        raise TrainingError(f"non-finite training loss at batch {bad} (detected by batch {batches})")


@torch.no_grad()
def evaluate(model: nn.Module, data: DeviceData, batch_size: int, amp: bool = False,
             shard: Shard = Shard()) -> tuple[float, float]:
    """Top-1 accuracy (%) and mean loss on the whole test set, eval mode.

    With a ``shard`` of several ranks, each rank evaluates its block of the test set and
    the sums are all-reduced: every rank returns the numbers of the whole set.
    """
    model.eval()
    correct = torch.zeros((), dtype=torch.int64, device=data.device)
    loss = torch.zeros((), dtype=torch.float64, device=data.device)
    for xb, yb in data.test_batches(batch_size, shard):
        with autocast(data.device, amp):
            logits = model(xb).float()
        loss += F.cross_entropy(logits, yb, reduction="sum").double()
        correct += (logits.argmax(1) == yb).sum()
    if shard.world > 1:
        correct, loss = distributed.all_reduce_sum(correct), distributed.all_reduce_sum(loss)
    n = data.n_test
    return 100.0 * int(correct) / n, float(loss) / n
