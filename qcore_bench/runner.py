"""run_cell: one cell from start (or its last checkpoint) to its stored result.

The cell's task (``qcore_bench.tasks``: classification or detection) runs the epoch loop;
this module wraps it with what every task shares: pinned CPU threads, the store's record
of the cell (provenance, interruption) and the W&B run.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from . import distributed
from .provenance import pinned_threads, provenance
from .runtime import EpochCallback, Runtime, load_data, resolve_device
from .store import Store
from .cells import Cell
from .tasks import dataset_task, get_task
from .wandb_log import WandbRun

__all__ = ["EpochCallback", "Runtime", "load_data", "resolve_device", "run_cell"]
log = logging.getLogger(__name__)


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
        task = get_task(dataset_task(cell.dataset.name))
        result = task.run(cell, store, rt, on_epoch if main else None, wb.epoch if wb else None, env)
    except BaseException as exc:
        if isinstance(exc, KeyboardInterrupt) and main:
            store.interrupt(cell.id)  # resumable from its last checkpoint
        if wb:
            wb.finish(None)
        raise
    if wb:
        wb.finish(result)
    return result
