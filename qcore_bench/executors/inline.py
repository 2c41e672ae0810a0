"""The inline executor: one cell after another in this process, each leaving a log.txt as under the pool."""

from __future__ import annotations

import os
import time

from ..cells import Cell
from ..loggers import CellLog, ConsoleProgress
from .base import Executor, Job, Summary, outcome_line, record, run_one, total_epochs


class InlineExecutor(Executor):
    """One cell after another in this process."""

    def run(self, cells: list[Cell], job: Job) -> Summary:
        summary, rt = Summary(), job.runtime()
        with ConsoleProgress(total_epochs(cells), len(cells)) as progress:
            for i, cell in enumerate(cells, 1):
                progress.start_cell(i, cell)
                start = time.perf_counter()
                try:
                    with CellLog(job.store.dir(cell.id), cell.id, f"inline executor, pid {os.getpid()}") as log:
                        def on_epoch(epoch: int, total: int, acc: float) -> None:
                            progress.epoch(epoch, total, acc)
                            log.epoch(epoch, total, acc)

                        out = run_one(cell, job.store, rt, on_epoch=on_epoch)
                        if out.ran and out.state != "elsewhere":
                            log.write(outcome_line(cell, out, job.store))
                except KeyboardInterrupt:
                    summary.interrupted = True
                    break
                record(summary, progress, i, cell, out, time.perf_counter() - start)
        return summary
