"""The detector's frozen models: the FP teacher (trained once per data, noise, seed, architecture
and recipe, cached like a classifier's), its confident-anchor outputs (computed once, cached), and
the short full-data proxies of el2n and uncertainty.

Detection runs in float32 on every device (no bf16 autocast), so a key names the device type.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ...cache import load_or_build
from ...data.coco import DetectionData
from ...files import atomic_write
from ...models.retinanet import build_detector, load_checkpoint
from ...quant import calibrate, quantize_model
from ...registry import registry
from ...seeding import make_generator
from ...selection import ProxyRecipe, ProxyRun
from ...cells import Cell
from ...teacher import TeacherInfo
from ...training import make_optimizer, make_scheduler, to_device
from .steps import anchor_terms, evaluate_map, images, teacher_anchors, train_pass


def _hash(what: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def teacher_key(cell: Cell, device: torch.device) -> str:
    """What determines the FP detector: data, noise, seed, architecture, recipe, device type, and the
    checkpoint it starts from (file name and size; where it lies is not part of it)."""
    ident = cell.identity()
    what = {k: ident[k] for k in ("dataset", "noise", "seed", "model", "teacher", "model_params") if k in ident}
    if cell.teacher.weights:
        where = Path(cell.teacher.weights).expanduser()
        what["checkpoint"] = [where.name, where.stat().st_size if where.is_file() else None]
    return _hash({**what, "device": device.type, "task": "detection"})


def _fit(model: nn.Module, recipe: Any, epochs: int, horizon: int, data: DetectionData, labels: list[torch.Tensor],
         device: torch.device, stream: Callable[[int], torch.Generator]) -> int:
    """Train ``model`` for ``epochs`` of a ``horizon``-epoch schedule on every training image; the samples."""
    opt = make_optimizer(model, recipe)
    sched = make_scheduler(opt, recipe, lambda: horizon)
    everything = torch.arange(data.n_train)
    for epoch in range(epochs):
        train_pass(model, opt, data, labels, everything, recipe.batch_size, stream(epoch), recipe.augment, device)
        sched.step()
    return epochs * data.n_train


def get_teacher(cell: Cell, data: DetectionData, labels: list[torch.Tensor], cache_dir: Path,
                batch_size: int, device: torch.device) -> tuple[nn.Module, TeacherInfo]:
    """The FP detector of the cell's architecture: from the cache, a whole-detector checkpoint
    (``teacher.pretrained`` with ``teacher.weights``), or trained on the full (noisy) training set
    (from ``teacher.weights`` when it holds a backbone). Returned frozen, in eval mode."""
    key = teacher_key(cell, device)
    arch = registry("models").get(cell.model)
    model = build_detector(arch, data.num_classes, make_generator(cell.seed, "teacher-init"), cell.model_params)
    kind = load_checkpoint(model, cell.teacher.weights) if cell.teacher.weights else None
    if cell.teacher.pretrained and kind != "detector":
        raise ValueError(f"teacher.pretrained needs a whole detector's checkpoint in teacher.weights, got "
                         f"{'a backbone' if kind else 'none'}; drop teacher.pretrained to train from it")
    model = to_device(model, device)
    path = cache_dir / "teachers" / f"{cell.model}-{key}.pt"
    init = {k: v.clone() for k, v in model.state_dict().items()}  # a damaged file must not leave weights behind

    def load(p: Path) -> TeacherInfo:
        saved = torch.load(p, map_location=device, weights_only=True)
        info = TeacherInfo(key, float(saved["test_map"]), saved["seconds"], saved["samples"], cached=True)
        model.load_state_dict(saved["state_dict"])
        return info

    def train() -> TeacherInfo:
        model.load_state_dict(init)
        start, samples = time.perf_counter(), 0
        if not cell.teacher.pretrained:
            samples = _fit(model, cell.teacher, cell.teacher.epochs, cell.teacher.epochs, data, labels, device,
                           lambda e: make_generator(cell.seed, "teacher-train", e))
        test_map = evaluate_map(model, data, batch_size, device)["test_map"]
        info = TeacherInfo(key, test_map, time.perf_counter() - start, samples, cached=False)
        state = {"state_dict": {k: v.cpu() for k, v in model.state_dict().items()}, "test_map": test_map,
                 "seconds": info.seconds, "samples": samples}
        atomic_write(path, lambda f: torch.save(state, f), mode="wb")
        return info

    info = load_or_build(path, load, train, "detection teacher")[0]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, info


def cached_teacher_anchors(teacher: nn.Module, key: str, data: DetectionData, cache_dir: Path, batch_size: int,
                           device: torch.device) -> list[dict[str, torch.Tensor]]:
    """The teacher's confident anchors per training image, computed once (on disk, shared by cells)."""
    path = cache_dir / "outputs" / f"det-{key}.pt"

    def compute() -> list[dict[str, torch.Tensor]]:
        out = teacher_anchors(teacher, data, batch_size, device)
        atomic_write(path, lambda f: torch.save(out, f), mode="wb")
        return out

    return load_or_build(path, lambda p: torch.load(p, map_location="cpu", weights_only=True), compute,
                         "teacher anchors")[0]


def train_proxy(cell: Cell, recipe: ProxyRecipe, repeat: int, data: DetectionData, labels: list[torch.Tensor],
                teacher: nn.Module, teacher_key_: str, cache_dir: Path, batch_size: int,
                device: torch.device) -> ProxyRun:
    """A short full-data detector training (``recipe``), scored by one eval pass (``AnchorTerms``);
    cached by everything that determines it. Per-visit dynamics are not recorded for detection."""
    horizon = recipe.horizon or recipe.epochs
    key = _hash({"teacher": teacher_key_, "recipe": recipe.model_dump(mode="json"), "repeat": repeat,
                 "bits": [cell.w_bits, cell.a_bits] if recipe.quantized else None, "what": "det-proxy"})
    path = cache_dir / "proxies" / f"det-{key}.pt"
    empty = torch.zeros(0, data.n_train)

    def load(p: Path) -> ProxyRun:
        saved = torch.load(p, map_location="cpu", weights_only=False)
        return ProxyRun(empty.bool(), empty, saved["terms"], saved["samples"], saved["seconds"], True, key)

    def train() -> ProxyRun:
        start = time.perf_counter()
        arch = registry("models").get(cell.model)
        model = to_device(build_detector(arch, data.num_classes, make_generator(cell.seed, "proxy-init", repeat),
                                         cell.model_params), device)
        if recipe.init == "teacher":  # a trainable copy: the teacher itself stays frozen
            model.load_state_dict(teacher.state_dict())
        if recipe.quantized:
            model = to_device(quantize_model(model, cell.w_bits, cell.a_bits, **cell.quant.model_dump()), device)
            calibrate(model, images(data, "train", list(range(min(recipe.batch_size, data.n_train))), device))
        for p in model.parameters():
            p.requires_grad_(True)
        samples = _fit(model, recipe, recipe.epochs, horizon, data, labels, device,
                       lambda e: make_generator(cell.seed, "proxy-train", repeat, e))
        terms = anchor_terms(model, data, labels, batch_size, device)
        seconds = time.perf_counter() - start
        atomic_write(path, lambda f: torch.save({"terms": terms, "samples": samples, "seconds": seconds}, f),
                     mode="wb")
        return ProxyRun(empty.bool(), empty, terms, samples, seconds, False, key)

    return load_or_build(path, load, train, "detection proxy run")[0]
