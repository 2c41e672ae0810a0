"""Object detection: RetinaNet with LSQ QAT on COCO-format data, coreset selection per image.

Data and box-class noise -> FP teacher (cached) -> student (LSQ at the cell's bits, edge layers
full precision, step sizes initialised on a training batch before the first selection) -> every
epoch: select images if due, train on them (focal + L1 loss), COCO mAP on the test set, checkpoint.
The headline is the final epoch's mAP@[.5:.95]. One process per cell (no torchrun), float32.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ... import distributed
from ...budget import TRAIN_UNITS, train_units
from ...data.coco import DetectionData, apply_box_noise
from ...quant import calibrate, quantize_model
from ...registry import registry
from ...runtime import EpochCallback, Runtime, load_data, load_state
from ...seeding import make_generator
from ...selection import AnchorTerms, ProxyRecipe, SelectionContext, SelectionError, validate_selection
from ...store import Store
from ...cells import Cell
from ...training import make_optimizer, make_scheduler, to_device
from .. import Task, close_epoch, loop_totals
from .frozen import cached_teacher_anchors, get_teacher, train_proxy
from .steps import anchor_terms, evaluate_map, images, train_pass


class Detection(Task):
    """Detection: RetinaNet's focal + L1 loss, COCO mAP, per-image anchor terms for selectors."""

    name = "detection"
    metric = "mAP@[.5:.95] (%)"
    result_key = "final_map"
    best_key = "best_map_over_epochs"

    def evaluate(self, model: nn.Module, data: DetectionData, batch_size: int, *,  # type: ignore[override]
                 device: torch.device) -> dict[str, float]:
        return evaluate_map(model, data, batch_size, device)

    def outputs(self, model: nn.Module, data: DetectionData, batch_size: int, *,  # type: ignore[override]
                labels: list[torch.Tensor], device: torch.device,
                teacher: list[dict[str, torch.Tensor]] | None = None) -> AnchorTerms:
        return anchor_terms(model, data, labels, batch_size, device, teacher)

    def run(self, cell: Cell, store: Store, rt: Runtime, on_epoch: EpochCallback | None,
            log_line: Callable[[dict[str, Any]], None] | None, env: dict[str, Any]) -> dict[str, Any]:
        if distributed.shard().world > 1:
            raise RuntimeError("detection cells run in one process; start them without torchrun")
        dev, bs = rt.device, rt.eval_batch_size
        data: DetectionData = load_data(cell.dataset, rt.cache_dir)
        n = data.n_train
        labels, flipped = apply_box_noise(data, cell.noise.rate, make_generator(cell.seed, "label-noise"))
        noisy_image = torch.tensor([bool(m.any()) for m in flipped], dtype=torch.bool)
        boxes_per_image = torch.tensor([len(m) for m in flipped], dtype=torch.float64)
        flipped_per_image = torch.tensor([int(m.sum()) for m in flipped], dtype=torch.float64)

        teacher, tinfo = get_teacher(cell, data, labels, rt.cache_dir, bs, dev)
        student = to_device(quantize_model(teacher, cell.w_bits, cell.a_bits, **cell.quant.model_dump()), dev)
        for p in student.parameters():
            p.requires_grad_(True)
        first = torch.randperm(n, generator=make_generator(cell.seed, "calibrate"))[: cell.train.batch_size]
        calibrate(student, images(data, "train", first.tolist(), dev))
        opt = make_optimizer(student, cell.train)
        selector = registry("selectors").get(cell.method.selector)(**cell.method.params)
        proxy_cost = {"runs": 0, "samples": 0, "seconds": 0.0, "trained_here": 0, "keys": {}}  # as ProxyTrainer's
        frozen: dict[str, Any] = {}

        def student_terms() -> AnchorTerms:  # one eval pass of the student; the teacher's anchors cached once
            state["units"]["selection"] += n
            if "anchors" not in frozen:
                frozen["anchors"] = cached_teacher_anchors(teacher, tinfo.key, data, rt.cache_dir, bs, dev)
            return self.outputs(student, data, bs, labels=labels, device=dev, teacher=frozen["anchors"])

        def teacher_terms() -> AnchorTerms:
            state["units"]["selection"] += n
            return self.outputs(teacher, data, bs, labels=labels, device=dev)

        spent = {"proxy": 0.0}  # wall time of proxies trained by this cell: proxy cost, not selection time

        def proxy(recipe: ProxyRecipe, repeat: int) -> Any:
            start = time.perf_counter()
            run = train_proxy(cell, recipe, repeat, data, labels, teacher, tinfo.key, rt.cache_dir, bs, dev)
            spent["proxy"] += 0.0 if run.cached else time.perf_counter() - start
            if run.key not in proxy_cost["keys"]:  # charged in full to every cell that reads it, cached or not
                proxy_cost["runs"] += 1
                proxy_cost["samples"] += run.samples
                proxy_cost["seconds"] += run.seconds
                proxy_cost["trained_here"] += not run.cached
                proxy_cost["keys"][run.key] = run.seconds
            return run

        state = load_state(store, cell.id)
        resumed = state is not None
        if state is None:
            state = {"epoch": 0, "epochs": cell.train.epochs, "history": [], "subset": None,
                     "seen": torch.zeros(n, dtype=torch.bool), "selection_seconds": 0.0, "train_seconds": 0.0,
                     "selections": 0, "samples": 0, "noisy_selected": [], "noisy_boxes_selected": [],
                     "selection_metrics": [], "proxy": proxy_cost,
                     "units": {"train": 0, "selection": 0, "proxy": 0,
                               "teacher": train_units(tinfo.samples, False) if cell.budget.include_teacher else 0}}
        sched = make_scheduler(opt, cell.train, lambda: state["epochs"])
        if resumed:
            student.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            sched.load_state_dict(state["scheduler"])
            proxy_cost.update(state["proxy"])

        while state["epoch"] < state["epochs"]:
            epoch, total = state["epoch"], state["epochs"]
            line: dict[str, Any] = {"epoch": epoch}
            if selector.due(epoch):
                start = time.perf_counter()
                proxy_before = spent["proxy"]
                ctx = SelectionContext(epoch=epoch, total_epochs=total, fraction=cell.fraction,
                                       labels=torch.zeros(n, dtype=torch.int64), num_classes=1, balanced=False,
                                       student=student, teacher=teacher,
                                       output_fns={"student": student_terms, "teacher": teacher_terms},
                                       generator=make_generator(cell.seed, "select", epoch), device=dev,
                                       seed=cell.seed, proxy_fn=proxy, task="detection")
                sel = validate_selection(selector.select(ctx), n=n, budget=ctx.budget, name=cell.method.name,
                                         variable_budget=selector.variable_budget)
                if sel.weights is not None:
                    raise SelectionError(f"selector '{cell.method.name}': per-image weights are not supported "
                                         f"for detection")
                proxy_trained = spent["proxy"] - proxy_before
                seconds = time.perf_counter() - start - proxy_trained
                noisy = float(noisy_image[sel.indices].float().mean())
                in_subset = boxes_per_image[sel.indices].sum()
                noisy_boxes = float(flipped_per_image[sel.indices].sum() / in_subset) if in_subset > 0 else 0.0
                state.update(subset=sel.indices, selections=state["selections"] + 1,
                             selection_seconds=state["selection_seconds"] + seconds)
                state["seen"][sel.indices] = True
                state["noisy_selected"].append(noisy)
                state["noisy_boxes_selected"].append(noisy_boxes)
                state["units"]["proxy"] = TRAIN_UNITS * proxy_cost["samples"] + n * proxy_cost["runs"]
                state["selection_metrics"].append({"epoch": epoch, **ctx.metrics})
                line.update(selected=len(sel.indices), selected_noisy_frac=noisy,
                            selected_noisy_boxes_frac=noisy_boxes, selection_seconds=seconds,
                            forward_seconds=ctx.forward_seconds, proxy_trained_seconds=proxy_trained,
                            **ctx.metrics)
            start = time.perf_counter()
            line["lr"] = opt.param_groups[0]["lr"]
            line["train_loss"] = train_pass(student, opt, data, labels, state["subset"], cell.train.batch_size,
                                            make_generator(cell.seed, "train", epoch), cell.train.augment, dev)
            sched.step()
            state["train_seconds"] += time.perf_counter() - start
            state["samples"] += len(state["subset"])
            state["units"]["train"] += train_units(len(state["subset"]), False)
            line.update(self.evaluate(student, data, bs, device=dev))
            close_epoch(state, line, student, opt, sched, store, cell.id, metric="test_map", log_line=log_line,
                        on_epoch=on_epoch)

        hist = state["history"]
        result = {
            "task": self.name,
            "metric": "mAP",
            "final_map": hist[-1]["test_map"],
            "final_ap50": hist[-1]["test_ap50"],
            "final_ap75": hist[-1]["test_ap75"],
            "best_map_over_epochs": max(h["test_map"] for h in hist),
            **loop_totals(state, cell, n),
            "train_boxes": int(boxes_per_image.sum()),
            "noisy_in_train": int(flipped_per_image.sum()),
            "noisy_images_in_train": int(noisy_image.sum()),
            "noisy_selected_frac_mean": float(np.mean(state["noisy_selected"])),
            "noisy_boxes_selected_frac_mean": float(np.mean(state["noisy_boxes_selected"])),
            "proxy": proxy_cost,
            "selection_metrics": state["selection_metrics"],
            "teacher": {"key": tinfo.key, "test_map": tinfo.test_acc, "seconds": tinfo.seconds,
                        "samples": tinfo.samples, "cached": tinfo.cached},
            "quant_policy": student.quant_policy,
            "device": str(dev),
            "world_size": 1,
            "provenance": env,
        }
        store.finish(cell.id, result)
        return result
