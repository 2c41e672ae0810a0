"""qcore-bench command line: run, run-cell, validate, plan, ls, show, compare, table, plot, sync.

Bad input is one line on stderr naming the file and key, exit code 2, nothing written.
One module per command group: ``run`` (run, run-cell), ``plan`` (validate, plan, ls),
``results`` (show, compare), ``report`` (table, plot, sync); ``common`` holds what they share.
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import click

from ..allocator import keep_freed_memory
from .plan import ls, plan, validate
from .report import plot, sync, table
from .results import compare, picture, show
from .run import run, run_cell_cmd


def _sigterm_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


class _Commands(click.Group):
    """Every command: SIGTERM (timeout, SLURM, container runtimes) is handled as Ctrl-C, so cells are
    marked interrupted, claims released and temp files removed; an interrupted command exits 130."""

    def invoke(self, ctx: click.Context) -> Any:
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt) if main_thread else None
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            ctx.exit(130)
        finally:  # in-process callers (tests) get their handler back
            if main_thread:
                signal.signal(signal.SIGTERM, previous)


@click.group(cls=_Commands)
@click.version_option(package_name="qcore-bench")
def main() -> None:
    """Coreset selection for quantization-aware training, benchmarked."""
    # warnings of the library (a claim taken over, a damaged checkpoint set aside) as one stderr line each
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    keep_freed_memory()  # large CPU tensors reuse freed memory instead of page-faulting it in again



for command in (run, run_cell_cmd, validate, plan, ls, show, picture, compare, table, plot, sync):
    main.add_command(command)
