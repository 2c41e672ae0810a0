"""The inline executor: one cell after another in this process."""

from __future__ import annotations

import time

from ..loggers import ConsoleProgress
from ..cells import Cell
from .base import Executor, Job, Summary, record, run_one, total_epochs


class InlineExecutor(Executor):
    """One cell after another in this process."""

    def run(self, cells: list[Cell], job: Job) -> Summary:
        summary, rt = Summary(), job.runtime()
        with ConsoleProgress(total_epochs(cells), len(cells)) as progress:
            for i, cell in enumerate(cells, 1):
                progress.start_cell(i, cell)
                start = time.perf_counter()
                try:
                    out = run_one(cell, job.store, rt, on_epoch=progress.epoch)
                except KeyboardInterrupt:
                    summary.interrupted = True
                    break
                record(summary, progress, i, cell, out, time.perf_counter() - start)
        return summary
