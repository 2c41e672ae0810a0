"""Classification: the QAT epoch loop with the selection schedule, checkpointed every epoch.

Data and label noise -> teacher (FP, cached) -> student (LSQ QAT, from the teacher's
weights, step sizes initialised before the first selection) -> every epoch: select if
due, train on the subset, evaluate top-1 on the full test set, checkpoint.

Under torchrun (see ``qcore_bench.distributed``) every rank runs this loop: the student
trains under DistributedDataParallel on its part of every batch, the student's scoring
pass of a selection and the test pass are split over ranks and put together, every rank
runs the selector on the same outputs with the same generator (checked), and only rank 0
writes to the store and to W&B. Frozen models and proxies are built once, by whichever
rank takes their file lock first; the others wait on the lock (no collective is pending
meanwhile) and load them.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import distributed
from ..budget import TRAIN_UNITS, plan_epochs, train_units
from ..data import apply_label_noise
from ..data.device import DeviceData, device_data
from ..distributed import Shard
from ..proxy import ProxyTrainer
from ..quant import calibrate, quantize_model
from ..registry import registry
from ..runtime import EpochCallback, Runtime, load_data, load_state
from ..seeding import make_generator
from ..selection import Outputs, SelectionContext, compute_outputs, validate_selection
from ..store import Store
from ..cells import Cell
from ..teacher import OutputCache, get_teacher
from ..training import autocast, evaluate, kd_loss, make_optimizer, make_scheduler, to_device, train_epoch
from . import Task, close_epoch, loop_totals

PerSampleLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class Classification(Task):
    """Image classification: cross-entropy (or distillation) loss, test top-1, softmax outputs."""

    name = "classification"
    metric = "top-1 (%)"
    result_key = "final_acc"
    best_key = "best_acc_over_epochs"

    def loss(self, kd_teacher: nn.Module, temperature: float, hard_weight: float,
             dev: torch.device) -> PerSampleLoss:
        """The distillation loss per sample (plus ``hard_weight`` x cross-entropy); without
        distillation the trainer's default, cross-entropy, is the loss."""
        def loss_fn(logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad(), autocast(dev, True):
                t_logits = kd_teacher(x)
            loss = kd_loss(logits, t_logits.float(), temperature)
            return loss + hard_weight * F.cross_entropy(logits, y, reduction="none") if hard_weight else loss
        return loss_fn

    def evaluate(self, model: nn.Module, data: DeviceData, batch_size: int, *,  # type: ignore[override]
                 shard: Shard = Shard()) -> dict[str, float]:
        acc, loss = evaluate(model, data, batch_size, shard=shard)
        return {"test_acc": acc, "test_loss": loss}

    def outputs(self, model: nn.Module, data: DeviceData, batch_size: int, *,  # type: ignore[override]
                indices: torch.Tensor | None = None) -> Outputs:
        return compute_outputs(model, lambda: data.train_eval_batches(batch_size, indices))

    def run(self, cell: Cell, store: Store, rt: Runtime, on_epoch: EpochCallback | None,
            log_line: Callable[[dict[str, Any]], None] | None, env: dict[str, Any]) -> dict[str, Any]:
        dev, shard = rt.device, distributed.shard()
        main = shard.rank == 0
        data = load_data(cell.dataset, rt.cache_dir)
        labels, noise_mask = apply_label_noise(data.train_y, data.num_classes, cell.noise.kind, cell.noise.rate,
                                               make_generator(cell.seed, "label-noise"))
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels
        ddata = device_data(data, dev, rt.workers)
        labels_dev, n = labels.to(dev), len(labels)

        teacher, tinfo = get_teacher(cell, ddata, labels_dev, data.num_classes, data.in_channels,
                                     rt.cache_dir, rt.eval_batch_size)
        kd = cell.train.kd
        kd_teacher, kd_info = teacher, tinfo  # the distillation teacher: the DS reference unless kd.teacher names one
        if kd.enabled and kd.teacher is not None:
            kd_teacher, kd_info = get_teacher(cell, ddata, labels_dev, data.num_classes, data.in_channels,
                                              rt.cache_dir, rt.eval_batch_size, spec=kd.teacher, weights=kd.weights)
        student = quantize_model(teacher, cell.w_bits, cell.a_bits, **cell.quant.model_dump())
        student = to_device(student, dev)  # the quantized layers are rebuilt contiguous: channels_last again
        for p in student.parameters():
            p.requires_grad_(True)
        first = torch.randperm(n, generator=make_generator(cell.seed, "calibrate"))[: cell.train.batch_size]
        calibrate(student, torch.cat(list(ddata.train_eval_batches(len(first), first))))
        train_model = student  # the training step's view of the student: shares its parameters
        if shard.world > 1:
            train_model = distributed.data_parallel(student, dev)
        train_model = torch.compile(train_model) if cell.train.compile else train_model

        opt = make_optimizer(student, cell.train)
        selector = registry("selectors").get(cell.method.selector)(**cell.method.params)
        teacher_outputs: dict[str, Any] = {}
        frozen_outputs = OutputCache(rt.cache_dir, rt.eval_batch_size)
        proxies = ProxyTrainer(cell, ddata, labels_dev, data.num_classes, data.in_channels, teacher,
                               rt.cache_dir, rt.eval_batch_size)

        def outputs_of(model: torch.nn.Module) -> Callable[[], Any]:
            def run() -> Any:  # each rank scores its block of the training set; every rank gets all of it, in order
                state["units"]["selection"] += n  # one scoring pass over the training set
                mine = torch.arange(n)[shard.span(n)] if shard.world > 1 else None
                out = self.outputs(model, ddata, rt.eval_batch_size, indices=mine)
                return Outputs(distributed.gather_rows(out.logits, n), distributed.gather_rows(out.features, n))
            return run

        def frozen_out(which: str, model: torch.nn.Module, key: str) -> Callable[[], Any]:
            def run() -> Any:  # frozen: computed once (on disk, shared by cells), charged to each run that reads it
                if which not in teacher_outputs:
                    state["units"]["selection"] += n
                    teacher_outputs[which] = frozen_outputs(model, key, cell, ddata)
                return teacher_outputs[which]
            return run

        def train_images() -> torch.Tensor:  # ctx.train_images(): normalised, un-augmented, on the CPU
            return torch.cat([x.float().cpu() for x in ddata.train_eval_batches(rt.eval_batch_size)]).contiguous()

        output_fns = {"teacher": frozen_out("teacher", teacher, tinfo.key)}
        if kd_teacher is not teacher:
            output_fns["kd_teacher"] = frozen_out("kd_teacher", kd_teacher, kd_info.key)

        loss_fn = self.loss(kd_teacher, kd.temperature, kd.hard_weight, dev) if kd.enabled else None

        state = load_state(store, cell.id)
        resumed = state is not None
        if state is None:
            state = {"epoch": 0, "epochs": cell.train.epochs, "history": [], "subset": None, "weights": None,
                     "seen": torch.zeros(n, dtype=torch.bool), "selection_seconds": 0.0, "train_seconds": 0.0,
                     "selections": 0, "samples": 0, "noisy_selected": [], "selection_metrics": [], "proxy": proxies.cost,
                     "units": {"train": 0, "selection": 0, "proxy": 0,
                               "teacher": train_units(tinfo.samples, False) if cell.budget.include_teacher else 0}}
        # the schedule reads the run's length at every step: total_compute may re-plan it
        sched = make_scheduler(opt, cell.train, lambda: state["epochs"])
        if resumed:  # the optimizer's state after the scheduler's creation, which resets lr
            student.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            proxies.cost = state["proxy"]

        while state["epoch"] < state["epochs"]:
            epoch, total = state["epoch"], state["epochs"]
            line: dict[str, Any] = {"epoch": epoch}
            if selector.due(epoch):
                start, units_before = time.perf_counter(), sum(state["units"].values())
                proxy_here = proxies.seconds_here
                ctx = SelectionContext(epoch=epoch, total_epochs=total, fraction=cell.fraction, labels=labels,
                                       num_classes=data.num_classes, balanced=cell.selection.balanced,
                                       student=student, teacher=teacher,
                                       output_fns={"student": outputs_of(student), **output_fns},
                                       generator=make_generator(cell.seed, "select", epoch), device=dev, seed=cell.seed,
                                       proxy_fn=proxies, images_fn=train_images)
                sel = validate_selection(selector.select(ctx), n=n, budget=ctx.budget, name=cell.method.name,
                                         variable_budget=selector.variable_budget)
                distributed.assert_same(f"selector '{cell.method.name}': the subset of epoch {epoch}",
                                        sel.indices, sel.weights)
                # a proxy trained during this call is charged as proxy cost, not as this selection's time
                proxy_trained = proxies.seconds_here - proxy_here
                seconds = time.perf_counter() - start - proxy_trained
                noisy = float(noise_mask[sel.indices].float().mean())
                state.update(subset=sel.indices, weights=sel.weights, selections=state["selections"] + 1,
                             selection_seconds=state["selection_seconds"] + seconds)
                state["seen"][sel.indices] = True
                state["noisy_selected"].append(noisy)
                state["units"]["proxy"] = TRAIN_UNITS * proxies.cost["samples"] + n * proxies.cost["runs"]
                if cell.budget.mode == "total_compute":  # re-plan the run's length now that this selection's cost is known
                    spent = sum(state["units"].values())
                    state["epochs"] = plan_epochs(
                        epochs=cell.train.epochs, per_epoch=len(sel.indices), kd=kd.enabled, spent=spent,
                        per_selection=spent - units_before, due=selector.due, start=epoch)
                state["selection_metrics"].append({"epoch": epoch, **ctx.metrics})
                line.update(selected=len(sel.indices), selected_noisy_frac=noisy, selection_seconds=seconds,
                            forward_seconds=ctx.forward_seconds, proxy_trained_seconds=proxy_trained, **ctx.metrics)
            start = time.perf_counter()
            line["lr"] = opt.param_groups[0]["lr"]
            line["train_loss"] = train_epoch(
                train_model, opt, ddata, labels_dev, state["subset"], batch_size=cell.train.batch_size,
                augmented=cell.train.augment, generator=make_generator(cell.seed, "train", epoch),
                weights=state["weights"], per_sample_loss=loss_fn, shard=shard)
            sched.step()
            distributed.sync_buffers(student)  # every rank holds the model rank 0 checkpoints
            state["train_seconds"] += time.perf_counter() - start
            state["samples"] += len(state["subset"])
            state["units"]["train"] += train_units(len(state["subset"]), kd.enabled)
            line.update(self.evaluate(student, ddata, rt.eval_batch_size, shard=shard))
            close_epoch(state, line, student, opt, sched, store, cell.id, metric="test_acc", log_line=log_line,
                        on_epoch=on_epoch, save=main)

        hist = state["history"]
        result = {
            "final_acc": hist[-1]["test_acc"],
            "best_acc_over_epochs": max(h["test_acc"] for h in hist),
            **loop_totals(state, cell, n),
            "noisy_in_train": int(noise_mask.sum()),
            "noisy_selected_frac_mean": float(np.mean(state["noisy_selected"])),
            "proxy": proxies.cost,
            "selection_metrics": state["selection_metrics"],
            "teacher": {"key": tinfo.key, "test_acc": tinfo.test_acc, "seconds": tinfo.seconds,
                        "samples": tinfo.samples, "cached": tinfo.cached},
            **({"kd_teacher": {"key": kd_info.key, "test_acc": kd_info.test_acc, "seconds": kd_info.seconds,
                               "samples": kd_info.samples, "cached": kd_info.cached}} if kd_teacher is not teacher else {}),
            "quant_policy": student.quant_policy,
            "device": str(dev),
            "world_size": shard.world,
            "provenance": env,
        }
        if main:
            store.finish(cell.id, result)
        return result
