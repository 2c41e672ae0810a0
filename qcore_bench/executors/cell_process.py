"""The body of ``qcore-bench run-cell``: one cell in its own process (a local slot, torchrun, a shell)."""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from .. import distributed
from ..runner import Runtime
from ..store import Store
from ..cells import Cell
from .base import EXIT_DONE, EXIT_ELSEWHERE, EXIT_FAILED, EXIT_INTERRUPTED, run_one


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

    def on_epoch(epoch: int, total: int, acc: float) -> None:
        print(f"{cell.id} epoch {epoch + 1}/{total} test acc {acc:.2f}", file=sys.stderr, flush=True)

    def say(message: str) -> None:  # once, not once per torchrun rank
        if distributed.is_main():
            print(message, file=sys.stderr)

    try:
        out = run_one(cell, store, rt, on_epoch=on_epoch)
    except KeyboardInterrupt:
        say(f"{cell.id} interrupted; it resumes from its last checkpoint")
        return EXIT_INTERRUPTED
    finally:  # called in-process too (tests, slurm tasks): leave the caller's handler as it was
        signal.signal(signal.SIGTERM, previous)
    if out.state == "done":
        acc = (out.result or {}).get("final_acc", float("nan"))
        say(f"{cell.id} {'done' if out.ran else 'was already done'}: final acc {acc:.2f}")
        return EXIT_DONE
    if out.state == "elsewhere":
        say(f"{cell.id} is being run by {out.reason}; not started")
        return EXIT_ELSEWHERE
    say(f"{cell.id} failed: {out.reason} (see {store.dir(cell.id) / 'error.txt'})")
    return EXIT_FAILED
