"""Proxy runs: short full-data trainings that record per-sample training dynamics.

EL2N, Forgetting, GraNd, Glister and friends score samples with a model trained on
the full data for a few epochs. One proxy run is shared by every selector and every
kept fraction that asks for the same recipe: it is cached in memory and on disk by
what determines it (data, noise, seed, architecture, recipe, bits when quantized,
repeat index), so a 5-fraction sweep trains it once.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import time
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn

from . import events
from .claims import file_lock
from .files import atomic_write
from .models import build
from .quant import calibrate, quantize_model
from .registry import registry
from .seeding import make_generator
from .selection import Outputs, ProxyRecipe, ProxyRun, compute_outputs
from .cells import Cell
from .training import DeviceData, autocast, make_optimizer, make_scheduler, precision, to_device, train_epoch


class ProxyTrainer:
    """Builds (or loads) the proxy runs of one cell; selectors reach it through ``ctx.proxy``.

    ``cost`` is what the cell's selections used: every proxy is charged in full to each cell
    that reads it (``runs``, ``samples``, ``seconds``), and ``keys`` maps each proxy's cache key
    to its training seconds, so a report can amortise a shared proxy over the cells that share
    it. ``seconds_here`` is the training time spent in this process for this cell: the part of
    a selection call's wall time that is proxy training, not selection.
    """

    _memory: OrderedDict[str, ProxyRun] = OrderedDict()  # process-wide LRU: cells of one process share proxies
    _memory_size = 4

    def __init__(self, cell: Cell, data: DeviceData, labels: torch.Tensor, num_classes: int, in_channels: int,
                 teacher: nn.Module, cache_dir: Path, eval_batch_size: int) -> None:
        self.cell, self.data, self.labels = cell, data, labels
        self.num_classes, self.in_channels, self.teacher = num_classes, in_channels, teacher
        self.cache_dir, self.eval_batch_size = cache_dir, eval_batch_size
        self.cost: dict = {"runs": 0, "samples": 0, "seconds": 0.0, "trained_here": 0, "keys": {}}
        self.seconds_here = 0.0

    def key(self, recipe: ProxyRecipe, repeat: int) -> str:
        """What determines a proxy run: data, noise, seed, architecture, recipe, repeat, and where
        and in which precision it trains (a bf16 GPU proxy is not a float32 CPU one)."""
        ident = self.cell.identity()
        what = {k: ident[k] for k in ("dataset", "noise", "seed", "model", "model_params") if k in ident}
        what.update(recipe=recipe.model_dump(mode="json"), repeat=repeat, device=self.data.device.type,
                    precision=precision(self.data.device, not recipe.quantized))
        if recipe.quantized:
            what.update(bits=[self.cell.w_bits, self.cell.a_bits], quant=ident["quant"])
        if recipe.init == "teacher":
            what["teacher"] = ident["teacher"]
        return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]

    def __call__(self, recipe: ProxyRecipe, repeat: int) -> ProxyRun:
        key = self.key(recipe, repeat)
        path = self.cache_dir / "proxies" / f"{key}.pt"
        run = self._memory.get(key)
        with contextlib.ExitStack() as lock:
            if run is None and not path.is_file():  # one process trains it; others wait here, then load it
                lock.enter_context(file_lock(path))
            if run is None and path.is_file():
                saved = torch.load(path, map_location="cpu", weights_only=True)
                run = ProxyRun(saved["correct"], saved["losses"], Outputs(saved["logits"], saved["features"]),
                               saved["samples"], saved["seconds"], cached=True, key=key)
            if run is None:
                run = self._train(recipe, repeat, key)
                self.seconds_here += run.seconds
                state = {"correct": run.correct, "losses": run.losses, "logits": run.outputs.logits,
                         "features": run.outputs.features, "samples": run.samples, "seconds": run.seconds}
                atomic_write(path, lambda f: torch.save(state, f), mode="wb")
        self._memory[key] = ProxyRun(run.correct, run.losses, run.outputs, run.samples, run.seconds,
                                     cached=True, key=key)
        self._memory.move_to_end(key)
        while len(self._memory) > self._memory_size:
            self._memory.popitem(last=False)
        # the proxy's cost is charged to every cell that uses it, cached or not
        self.cost["runs"] += 1
        self.cost["samples"] += run.samples
        self.cost["seconds"] += run.seconds
        self.cost["trained_here"] += not run.cached
        self.cost["keys"][key] = run.seconds
        return run

    def _train(self, recipe: ProxyRecipe, repeat: int, key: str) -> ProxyRun:
        start = time.perf_counter()
        dev, n = self.data.device, len(self.labels)
        if recipe.init == "teacher":
            model = copy.deepcopy(self.teacher)
            for p in model.parameters():
                p.requires_grad_(True)
        else:
            model = to_device(build(registry("models").get(self.cell.model), self.num_classes, self.in_channels,
                                    make_generator(self.cell.seed, "proxy-init", repeat), self.cell.model_params), dev)
        if recipe.quantized:
            model = to_device(quantize_model(model, self.cell.w_bits, self.cell.a_bits,
                                             **self.cell.quant.model_dump()), dev)
            first = torch.randperm(n, generator=make_generator(self.cell.seed, "proxy-calibrate", repeat))
            calibrate(model, torch.cat(list(self.data.train_eval_batches(recipe.batch_size,
                                                                         first[:recipe.batch_size]))))
        opt = make_optimizer(model, recipe)
        horizon = recipe.horizon or recipe.epochs  # a prefix of a longer schedule when horizon > epochs
        sched = make_scheduler(opt, recipe, lambda: horizon)
        correct = torch.zeros(recipe.epochs, n, dtype=torch.bool, device=dev)
        losses = torch.zeros(recipe.epochs, n, device=dev)
        everything = torch.arange(n)
        what = f"proxy {self.cell.model_label} (repeat {repeat})"
        events.report(what, 0, recipe.epochs)
        for epoch in range(recipe.epochs):
            def record(idx: torch.Tensor, logits: torch.Tensor, loss: torch.Tensor, e: int = epoch) -> None:
                idx = idx.to(dev)
                correct[e, idx] = logits.argmax(1) == self.labels[idx]
                losses[e, idx] = loss.float()
            train_epoch(model, opt, self.data, self.labels, everything, batch_size=recipe.batch_size,
                        augmented=recipe.augment, on_batch=record, amp=not recipe.quantized,
                        generator=make_generator(self.cell.seed, "proxy-train", repeat, epoch))
            sched.step()
            events.report(what, epoch + 1, recipe.epochs)
        with autocast(dev, not recipe.quantized):
            outputs = compute_outputs(model, lambda: self.data.train_eval_batches(self.eval_batch_size))
        events.report(what, recipe.epochs, recipe.epochs, time.perf_counter() - start)
        return ProxyRun(correct.cpu(), losses.cpu(), Outputs(outputs.logits.cpu(), outputs.features.cpu()),
                        recipe.epochs * n, time.perf_counter() - start, cached=False, key=key)
