"""Frozen full-precision models: trained once per (data, noise, seed, arch, recipe) or loaded
from published weights, cached on disk, and their training-set outputs cached too.

The FP model of the student's architecture is the disagreement-score reference and the
student's starting point, so every method of a seed starts from the same weights. The
distillation teacher is the same model, or another architecture (``train.kd.teacher``,
e.g. ResNet-101 for a ResNet-18 student on ImageNet). Both are frozen, so their eval-mode
outputs on the un-augmented training set are computed once and shared by every cell and
every selection (on disk under ``<cache>/outputs`` and in memory).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import events
from .claims import file_lock
from .models import build
from .models.imagenet import load_weights, weights_path
from .registry import registry
from .seeding import make_generator
from .selection import Outputs, compute_outputs
from .files import atomic_write
from .cells import Cell
from .schema import ModelSpec
from .training import (DeviceData, autocast, evaluate, make_optimizer, make_scheduler, precision, to_device,
                       train_epoch)


@dataclass
class TeacherInfo:
    key: str
    test_acc: float
    seconds: float
    samples: int
    cached: bool


def _hash(what: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def teacher_key(cell: Cell, device: torch.device, spec: ModelSpec | None = None, weights: str | None = None) -> str:
    """What determines an FP model: published weights (arch + weight file), or else the training
    (data, noise, seed, arch, recipe, and the device type and precision it trains in: bf16 on
    CUDA). ``spec`` None: the student's architecture."""
    ident = cell.identity()
    if cell.teacher.pretrained:
        name, params = (spec.name, spec.params) if spec else (cell.model, cell.model_params)
        where = weights_path(registry("models").get(name), name, weights)
        size = where.stat().st_size if where.is_file() else None
        return _hash({"model": name, "model_params": params, "weights": where.name, "size": size})
    what = {k: ident[k] for k in ("dataset", "noise", "seed", "model", "teacher", "model_params") if k in ident}
    what.update(device=device.type, precision=precision(device, True))
    if spec is not None:  # the distillation teacher: its own architecture and seed streams
        what.update(model=spec.name, model_params=spec.params, distill=True)
    return _hash(what)


def get_teacher(cell: Cell, data: DeviceData, labels: torch.Tensor, num_classes: int, in_channels: int,
                cache_dir: Path, eval_batch_size: int, spec: ModelSpec | None = None,
                weights: str | None = None) -> tuple[nn.Module, TeacherInfo]:
    """The FP model of the student's architecture (``spec`` None) or of ``spec``: loaded from its
    published weights (``teacher.pretrained``; ``weights`` a path, else the torch hub cache),
    from the cache, or trained on the full (noisy) training set. Returned frozen, in eval mode."""
    name, params = (spec.name, spec.params) if spec else (cell.model, cell.model_params)
    weights = weights if spec else cell.teacher.weights
    key = teacher_key(cell, data.device, spec, weights)
    arch_fn = registry("models").get(name)
    stream = () if spec is None else (name,)  # the student's own FP model keeps its original seeds
    model = to_device(build(arch_fn, num_classes, in_channels, make_generator(cell.seed, "teacher-init", *stream),
                            params), data.device)
    if cell.teacher.pretrained:
        load_weights(model, arch_fn, name, weights)
        on_data = _hash({"model": key, "dataset": cell.identity()["dataset"]})
        info = _published_info(model, cache_dir / "teachers" / f"{name}-{on_data}.json", key, data, eval_batch_size)
    else:
        path = cache_dir / "teachers" / f"{name}-{key}.pt"
        with contextlib.ExitStack() as lock:
            if not path.is_file():  # one process trains it; others needing it now wait here, then load it
                lock.enter_context(file_lock(path))
            info = _train_or_load(cell, model, path, key, data, labels, eval_batch_size, stream)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, info


def _published_info(model: nn.Module, info_path: Path, key: str, data: DeviceData,
                    eval_batch_size: int) -> TeacherInfo:
    """Published weights' test accuracy on this data set, measured once and kept beside the teachers."""
    if info_path.is_file():
        return TeacherInfo(key, json.loads(info_path.read_text())["test_acc"], 0.0, 0, cached=True)
    acc, _ = evaluate(model, data, eval_batch_size, amp=True)
    atomic_write(info_path, lambda f: f.write(json.dumps({"test_acc": acc})))
    return TeacherInfo(key, acc, 0.0, 0, cached=False)


def _train_or_load(cell: Cell, model: nn.Module, path: Path, key: str, data: DeviceData, labels: torch.Tensor,
                   eval_batch_size: int, stream: tuple[str, ...] = ()) -> TeacherInfo:
    if path.is_file():
        saved = torch.load(path, map_location=data.device, weights_only=True)
        model.load_state_dict(saved["state_dict"])
        info = TeacherInfo(key, saved["test_acc"], saved["seconds"], saved["samples"], cached=True)
    else:
        start = time.perf_counter()
        recipe = cell.teacher
        opt, everything = make_optimizer(model, recipe), torch.arange(len(labels))
        sched = make_scheduler(opt, recipe)
        what = f"teacher {stream[0] if stream else cell.model_label}"
        events.report(what, 0, recipe.epochs)
        for epoch in range(recipe.epochs):
            gen = make_generator(cell.seed, "teacher-train", epoch, *stream)
            train_epoch(model, opt, data, labels, everything, batch_size=recipe.batch_size,
                        augmented=recipe.augment, generator=gen, amp=True)
            sched.step()
            events.report(what, epoch + 1, recipe.epochs)
        acc, _ = evaluate(model, data, eval_batch_size, amp=True)
        info = TeacherInfo(key, acc, time.perf_counter() - start, recipe.epochs * len(labels), cached=False)
        events.report(what, recipe.epochs, recipe.epochs, info.seconds, f"test acc {acc:.2f}%")
        state = {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()},
                 "test_acc": acc, "seconds": info.seconds, "samples": info.samples}
        atomic_write(path, lambda f: torch.save(state, f), mode="wb")
    return info


class OutputCache:
    """Eval-mode outputs of frozen FP models on the un-augmented training set, on disk and in memory.

    Keyed by the model's key, the data set's identity, and the device type and precision of
    the pass (bf16 autocast on CUDA, float32 on the CPU), so every cell and every selection
    that reads the same teacher on the same data and device shares one pass.
    """

    _memory: OrderedDict[str, Outputs] = OrderedDict()  # process-wide LRU, CPU tensors
    _memory_size = 2

    def __init__(self, cache_dir: Path, eval_batch_size: int) -> None:
        self.cache_dir, self.eval_batch_size = cache_dir, eval_batch_size

    @staticmethod
    def key(model_key: str, cell: Cell, device: torch.device) -> str:
        return _hash({"model": model_key, "dataset": cell.identity()["dataset"], "what": "train-outputs",
                      "device": device.type, "precision": precision(device, True)})

    def __call__(self, model: nn.Module, model_key: str, cell: Cell, data: DeviceData) -> Outputs:
        """The outputs of ``model`` (identified by ``model_key``) on the cell's training set, on its device."""
        key = self.key(model_key, cell, data.device)
        out = self._memory.get(key)
        if out is None:
            path = self.cache_dir / "outputs" / f"{key}.pt"
            with contextlib.ExitStack() as lock:
                if not path.is_file():  # one process computes them; others wait, then load
                    lock.enter_context(file_lock(path))
                if path.is_file():
                    saved = torch.load(path, map_location="cpu", weights_only=True)
                    out = Outputs(saved["logits"], saved["features"])
                else:
                    with autocast(data.device, True):
                        computed = compute_outputs(model, lambda: data.train_eval_batches(self.eval_batch_size))
                    out = Outputs(computed.logits.cpu(), computed.features.cpu())
                    state = {"logits": out.logits, "features": out.features}
                    atomic_write(path, lambda f: torch.save(state, f), mode="wb")
        self._memory[key] = out
        self._memory.move_to_end(key)
        while len(self._memory) > self._memory_size:
            self._memory.popitem(last=False)
        return Outputs(out.logits.to(data.device), out.features.to(data.device))
