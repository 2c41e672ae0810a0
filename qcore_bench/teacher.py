"""The full-precision teacher: trained once per (data, noise, seed, arch, recipe), cached on disk.

It is the disagreement-score reference, the optional distillation teacher and the
student's starting point, so every method of a seed starts from the same weights.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .models import build
from .registry import registry
from .seeding import make_generator
from .store import atomic_write
from .suite import Cell
from .training import DeviceData, evaluate, make_optimizer, make_scheduler, train_epoch


@dataclass
class TeacherInfo:
    key: str
    test_acc: float
    seconds: float
    samples: int
    cached: bool


def teacher_key(cell: Cell) -> str:
    ident = cell.identity()
    blob = json.dumps({k: ident[k] for k in ("dataset", "noise", "seed", "model", "teacher")}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def get_teacher(cell: Cell, data: DeviceData, labels: torch.Tensor, num_classes: int, in_channels: int,
                cache_dir: Path, eval_batch_size: int) -> tuple[nn.Module, TeacherInfo]:
    """Load the cached teacher or train it on the full (noisy) training set; returned frozen, in eval mode."""
    key = teacher_key(cell)
    path = cache_dir / "teachers" / f"{cell.model}-{key}.pt"
    model = build(registry("models").get(cell.model), num_classes, in_channels,
                  make_generator(cell.seed, "teacher-init")).to(data.train_x.device)
    if path.is_file():
        saved = torch.load(path, map_location=data.train_x.device, weights_only=True)
        model.load_state_dict(saved["state_dict"])
        info = TeacherInfo(key, saved["test_acc"], saved["seconds"], saved["samples"], cached=True)
    else:
        start = time.perf_counter()
        recipe = cell.teacher
        opt, everything = make_optimizer(model, recipe), torch.arange(len(labels))
        sched = make_scheduler(opt, recipe)
        for epoch in range(recipe.epochs):
            train_epoch(model, opt, data, labels, everything, batch_size=recipe.batch_size,
                        augmented=recipe.augment, generator=make_generator(cell.seed, "teacher-train", epoch))
            sched.step()
        acc, _ = evaluate(model, data, eval_batch_size)
        info = TeacherInfo(key, acc, time.perf_counter() - start, recipe.epochs * len(labels), cached=False)
        state = {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                 "test_acc": acc, "seconds": info.seconds, "samples": info.samples}
        atomic_write(path, lambda f: torch.save(state, f), mode="wb")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, info
