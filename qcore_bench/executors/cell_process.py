"""The body of ``qcore-bench run-cell``: one cell in its own process (a local slot, torchrun, a shell)."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from .. import distributed
from ..events import PhaseHandler
from ..loggers import epoch_line
from ..runner import Runtime
from ..store import Store
from ..cells import Cell
from .base import EXIT_DONE, EXIT_ELSEWHERE, EXIT_FAILED, EXIT_INTERRUPTED, outcome_line, run_one


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the pool process dies, even by SIGKILL (no orphaned GPU jobs)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    parent = os.getppid()
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _sigterm_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_cell_process(cell: Cell, store: Store, rt: Runtime, die_with_parent: bool = False) -> int:
    """The body of ``qcore-bench run-cell``: run one cell, print epochs, return the exit status."""
    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)  # a stopped pool or a scheduler
    if die_with_parent:
        _die_with_parent()

    def say(message: str) -> None:  # once, not once per torchrun rank
        if distributed.is_main():
            print(message, file=sys.stderr, flush=True)

    def on_epoch(epoch: int, total: int, acc: float) -> None:
        print(epoch_line(cell.id, epoch, total, acc), file=sys.stderr, flush=True)

    try:
        with PhaseHandler(lambda phase: say(f"{cell.id} {phase}")):  # the teacher's and proxies' training
            out = run_one(cell, store, rt, on_epoch=on_epoch)
    except KeyboardInterrupt:
        say(f"{cell.id} interrupted; it resumes from its last checkpoint")
        return EXIT_INTERRUPTED
    finally:  # called in-process too (tests, slurm tasks): leave the caller's handler as it was
        signal.signal(signal.SIGTERM, previous)
    say(outcome_line(cell, out, store))
    return {"done": EXIT_DONE, "elsewhere": EXIT_ELSEWHERE}.get(out.state, EXIT_FAILED)
