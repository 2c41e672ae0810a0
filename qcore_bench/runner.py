"""run_cell: the QAT epoch loop with the selection schedule, checkpointed every epoch.

Data and label noise -> teacher (FP, cached) -> student (LSQ QAT, from the teacher's
weights, step sizes initialised before the first selection) -> every epoch: select if
due, train on the subset, evaluate on the full test set, checkpoint.

Under torchrun (see ``qcore_bench.distributed``) every rank runs this loop: the student
trains under DistributedDataParallel on its part of every batch, the student's scoring
pass of a selection and the test pass are split over ranks and put together, every rank
runs the selector on the same outputs with the same generator (checked), and only rank 0
writes to the store and to W&B. Frozen models and proxies are built once, by whichever
rank takes their file lock first; the others wait on the lock (no collective is pending
meanwhile) and load them.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from . import distributed
from .data import ImageData, apply_label_noise
from .data.bundle import FileData
from .data.device import device_data
from .quant import calibrate, quantize_model
from .registry import registry
from .seeding import make_generator
from .budget import TRAIN_UNITS, plan_epochs, train_units
from .paths import resolve_root
from .provenance import pinned_threads, provenance
from .proxy import ProxyTrainer
from .selection import Outputs, SelectionContext, compute_outputs, validate_selection
from .store import Store
from .cells import Cell
from .schema import DatasetSpec
from .teacher import OutputCache, get_teacher
from .wandb_log import WandbCfg, WandbRun
from .training import autocast, evaluate, kd_loss, make_optimizer, make_scheduler, to_device, train_epoch

log = logging.getLogger(__name__)
EpochCallback = Callable[[int, int, float], None]  # (epoch, total_epochs, test_acc)


@dataclass(frozen=True)
class Runtime:
    """Settings that change where and how fast a cell runs, never its numbers."""

    device: torch.device
    cache_dir: Path
    eval_batch_size: int = 1024
    wandb: WandbCfg | None = None
    num_workers: int | None = None  # DataLoader workers for file data sets (ImageNet)
    cpu_threads: int = 1  # torch's intra-op threads for a CPU cell: fixed, so results reproduce elsewhere

    @property
    def workers(self) -> int:
        """``num_workers``, else $QCORE_NUM_WORKERS, else one per CPU core this process may use, up to 8
        (the cores are shared by the torchrun ranks of the node)."""
        if self.num_workers is not None:
            return self.num_workers
        if os.environ.get("QCORE_NUM_WORKERS"):
            return int(os.environ["QCORE_NUM_WORKERS"])
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return min(8, max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@functools.lru_cache(maxsize=4)
def _load_data(spec_json: str, root: str | None, cache_dir: Path) -> ImageData | FileData:
    spec = DatasetSpec.model_validate_json(spec_json)
    return registry("datasets").get(spec.name)(resolve_root(root), cache_dir, **spec.params)


def load_data(spec: DatasetSpec, cache_dir: Path) -> ImageData | FileData:
    """The data set of a spec, loaded once per process."""
    return _load_data(json.dumps({"name": spec.name, "params": spec.params}, sort_keys=True), spec.root, cache_dir)


def run_cell(cell: Cell, store: Store, rt: Runtime, on_epoch: EpochCallback | None = None) -> dict[str, Any]:
    """Run (or resume) one cell to completion and store its result; returns the result.

    Under torchrun every rank calls it; only rank 0 writes (and calls ``on_epoch``). A CPU cell
    runs with ``rt.cpu_threads`` intra-op threads whatever the process had, and records them.
    """
    pin = pinned_threads(rt.cpu_threads) if rt.device.type == "cpu" else contextlib.nullcontext()
    with pin:
        return _run_cell(cell, store, rt, on_epoch)


def _run_cell(cell: Cell, store: Store, rt: Runtime, on_epoch: EpochCallback | None) -> dict[str, Any]:
    main = distributed.is_main()
    env = provenance(rt.device)
    if main:
        store.begin(cell, env)
    wb = (WandbRun(rt.wandb, cell, store.dir(cell.id), log.warning)
          if main and rt.wandb and rt.wandb.enabled else None)
    if wb:
        wb.start()
    try:
        result = _run(cell, store, rt, on_epoch if main else None, wb.epoch if wb else None, env)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt) and main:
            store.interrupt(cell.id)  # resumable from its last checkpoint
        if wb:
            wb.finish(None)
        raise
    if wb:
        wb.finish(result)
    return result


def _load_state(store: Store, cell_id: str) -> dict[str, Any] | None:
    """The checkpoint to resume from: rank 0 loads (and repairs) it, then the other ranks read the same file."""
    state = store.load_checkpoint(cell_id) if distributed.is_main() else None
    if distributed.broadcast_object(state is not None) and state is None:
        state = store.read_checkpoint(cell_id)
    return state


def _run(cell: Cell, store: Store, rt: Runtime, on_epoch: EpochCallback | None,
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
            out = compute_outputs(model, lambda: ddata.train_eval_batches(rt.eval_batch_size, mine))
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

    def loss_fn(logits: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), autocast(dev, True):
            t_logits = kd_teacher(x)
        loss = kd_loss(logits, t_logits.float(), kd.temperature)
        return loss + kd.hard_weight * F.cross_entropy(logits, y, reduction="none") if kd.hard_weight else loss

    state = _load_state(store, cell.id)
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
                state["epochs"] = total = plan_epochs(
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
            weights=state["weights"], per_sample_loss=loss_fn if kd.enabled else None, shard=shard)
        sched.step()
        distributed.sync_buffers(student)  # every rank holds the model rank 0 checkpoints
        state["train_seconds"] += time.perf_counter() - start
        state["samples"] += len(state["subset"])
        state["units"]["train"] += train_units(len(state["subset"]), kd.enabled)
        line["test_acc"], line["test_loss"] = evaluate(student, ddata, rt.eval_batch_size, shard=shard)
        state["history"].append(line)
        state.update(epoch=epoch + 1, model=student.state_dict(), optimizer=opt.state_dict(),
                     scheduler=sched.state_dict())
        if main:
            store.save_checkpoint(cell.id, state, line)
            store.heartbeat(cell.id)
        if log_line:
            log_line(line)
        if on_epoch:
            on_epoch(epoch, total, line["test_acc"])

    hist = state["history"]
    result = {
        "final_acc": hist[-1]["test_acc"],
        "best_acc_over_epochs": max(h["test_acc"] for h in hist),
        "epochs": state["epochs"],
        "budget_mode": cell.budget.mode,
        "cost_units": {**state["units"], "total": sum(state["units"].values())},
        "selections": state["selections"],
        "selection_seconds": state["selection_seconds"],
        "train_seconds": state["train_seconds"],
        "samples_trained": state["samples"],
        "distinct_samples_seen": int(state["seen"].sum()),
        "train_size": n,
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
