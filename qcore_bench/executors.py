"""Executors: how the pending cells of a suite get run. ``inline`` runs them in this process."""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field

from .loggers import ConsoleProgress
from .runner import Runtime, run_cell
from .store import Store
from .suite import Cell


@dataclass
class Summary:
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # cell id -> reason


def run_inline(cells: list[Cell], store: Store, rt: Runtime, progress: ConsoleProgress) -> Summary:
    """Run cells one after another; a failing cell is recorded and the others go on."""
    summary = Summary()
    for i, cell in enumerate(cells, 1):
        progress.start_cell(i, cell)
        start = time.perf_counter()
        try:
            result = run_cell(cell, store, rt, on_epoch=progress.epoch)
        except KeyboardInterrupt:
            raise  # the cell keeps its checkpoint and resumes next time
        except Exception as exc:  # one broken cell must not lose the others
            reason = f"{type(exc).__name__}: {exc}"
            store.fail(cell.id, reason, traceback.format_exc())
            summary.failed[cell.id] = reason
            progress.failed_cell(i, cell, reason)
            continue
        summary.done.append(cell.id)
        progress.done_cell(i, cell, result["final_acc"], time.perf_counter() - start)
    return summary
