"""A cell's task: what its student learns, how it is scored, and what selectors score.

A task decides a cell's loss, its evaluation (the metric's name and value: top-1 for
classification, COCO mAP for detection) and the per-sample outputs that selectors read
(``ctx.outputs``). The task of a cell follows from its data set (a loader's ``task``
attribute, "classification" when absent); a model declares the task it is built for in
the same way, and a selector lists the tasks it supports in ``Selector.tasks``, so that a
suite pairing a selector or a model with a task it does not handle is refused by
``validate`` before anything runs.

Task modules are imported on first use: a classification run never imports torchvision's
detection code or pycocotools.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar

from ..registry import UnknownNameError, registry

TASKS = {"classification": "qcore_bench.tasks.classification:Classification",
         "detection": "qcore_bench.tasks.detection:Detection"}


class Task(ABC):
    """One kind of learning problem: its cell loop, loss, evaluation and per-sample outputs.

    ``metric`` names the headline number (the final epoch's value of it, as stored in
    ``result[result_key]``); tables and plots label it so.
    """

    name: ClassVar[str]
    metric: ClassVar[str]  # e.g. "top-1 (%)", "mAP@[.5:.95] (%)"
    result_key: ClassVar[str]  # the result's key of the final epoch's metric
    best_key: ClassVar[str]  # ... and of its best value over epochs

    @abstractmethod
    def run(self, cell: Any, store: Any, rt: Any, on_epoch: Callable[[int, int, float], None] | None,
            log_line: Callable[[dict[str, Any]], None] | None, env: dict[str, Any]) -> dict[str, Any]:
        """Train (or resume) ``cell`` (a ``Cell``) to its last epoch, checkpointing through ``store`` (a
        ``Store``), where and how ``rt`` (a ``Runtime``) says; returns its result."""

    @abstractmethod
    def evaluate(self, model: Any, data: Any, batch_size: int, **kw: Any) -> dict[str, float]:
        """The metric (and any companions) of ``model`` on the test set of ``data``."""

    @abstractmethod
    def outputs(self, model: Any, data: Any, batch_size: int, **kw: Any) -> Any:
        """The per-sample eval-mode outputs of ``model`` on the training set that selectors score."""


def headline(result: dict[str, Any]) -> tuple[float, str]:
    """A result's headline and its name: ("acc", final top-1) or ("mAP", final mAP) for detection."""
    if "final_map" in result:
        return float(result["final_map"]), "mAP"
    return float(result.get("final_acc", float("nan"))), "acc"


def close_epoch(state: dict[str, Any], line: dict[str, Any], model: Any, opt: Any, sched: Any, store: Any,
                cell_id: str, *, metric: str, log_line: Callable[[dict[str, Any]], None] | None,
                on_epoch: Callable[[int, int, float], None] | None, save: bool = True) -> None:
    """The end of every task's epoch: its line into the history, what a resume needs checkpointed
    (``save``: under DDP only rank 0 writes), then the logger and the progress callback (``line[metric]``)."""
    epoch = state["epoch"]
    state["history"].append(line)
    state.update(epoch=epoch + 1, model=model.state_dict(), optimizer=opt.state_dict(), scheduler=sched.state_dict())
    if save:
        store.save_checkpoint(cell_id, state, line)
        store.heartbeat(cell_id)
    if log_line:
        log_line(line)
    if on_epoch:
        on_epoch(epoch, state["epochs"], line[metric])


def loop_totals(state: dict[str, Any], cell: Any, n: int) -> dict[str, Any]:
    """What every task's result says about its epoch loop (length, budget, cost, selections, training),
    from the loop state it checkpoints; ``n``: training-set size."""
    return {"epochs": state["epochs"], "budget_mode": cell.budget.mode,
            "cost_units": {**state["units"], "total": sum(state["units"].values())},
            "selections": state["selections"], "selection_seconds": state["selection_seconds"],
            "train_seconds": state["train_seconds"], "samples_trained": state["samples"],
            "distinct_samples_seen": int(state["seen"].sum()), "train_size": n}


def task_name(obj: Any) -> str:
    """The task a data-set loader or model builder is for: its ``task`` attribute, else classification."""
    return getattr(obj, "task", "classification")


def dataset_task(name: str) -> str:
    """The task of a registered data set."""
    return task_name(registry("datasets").get(name))


def get_task(name: str) -> Task:
    """The task object of ``name`` (imported on first use)."""
    if name not in TASKS:
        raise KeyError(f"unknown task '{name}' (known: {', '.join(TASKS)})")
    module, attr = TASKS[name].split(":")
    return getattr(importlib.import_module(module), attr)()


def supports(selector_cls: Any, task: str) -> bool:
    """Whether a selector class declares ``task`` among its ``tasks`` (classification only by default)."""
    return task in getattr(selector_cls, "tasks", ("classification",))


def selectors_for(task: str) -> list[str]:
    """The registered selectors that declare ``task`` (those that fail to import are left out)."""
    names = []
    for name in registry("selectors").names():
        try:
            if supports(registry("selectors").get(name), task):
                names.append(name)
        except UnknownNameError:
            continue
    return names


def suite_task_error(suite: Any) -> tuple[str, str] | None:
    """The first (key, message) of a suite that pairs a task with what does not handle it: a model
    built for another task, a selector that does not declare it, a setting detection lacks
    (distillation, equal-compute budgets, the classifiers' layer policies); None when all pair up.
    (Each data set's files are checked by the commands, once, before any cell is claimed.)"""
    g = suite.grid
    for i, ds in enumerate(g.dataset):
        task = dataset_task(ds.name)
        for j, m in enumerate(g.model):
            mtask = task_name(registry("models").get(m.name))
            if mtask != task:
                return (f"grid.model[{j}]", f"model '{m.name}' is built for {mtask}, data set '{ds.name}' "
                                            f"(grid.dataset[{i}]) is for {task}")
        for j, m in enumerate(g.method):
            if not supports(registry("selectors").get(m.selector), task):
                return (f"grid.method[{j}]", f"selector '{m.selector}' does not support {task} (data set "
                                             f"'{ds.name}'); selectors for {task}: {', '.join(selectors_for(task))}")
        if task == "detection":
            if suite.train.kd.enabled:
                return "train.kd.enabled", "distillation is not defined for detection; set it to false"
            if suite.budget.mode != "per_epoch_fraction":
                return "budget.mode", "detection supports per_epoch_fraction only"
            if suite.quant.policy != "all":
                return "quant.policy", (f"detection uses policy 'all' (every conv but the stem and the two "
                                        f"predictors), got '{suite.quant.policy}'")
    return None
