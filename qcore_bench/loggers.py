"""Console progress on stderr: a live line in a terminal, plain whole lines when redirected.

The live line holds cell i/n, the cell's id and label, a bar, the epoch, the accuracy and the
time; when the terminal is too narrow it drops whole fields, least useful first, instead of
cutting every field short. Finished and failed cells, and the teachers and proxies that a
cell trains first, get lines of their own that are never wrapped, so a log file has one
line per event.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from rich.console import Console
from rich.progress import Progress, ProgressColumn, Task, TaskID
from rich.text import Text

from .cells import Cell
from .events import Phase, PhaseHandler

BAR = 20
# a teacher's or proxy's start or end, as ``run-cell`` prints it: "<cell id> teacher resnet8: training, 30 epochs"
PHASE_LINE = re.compile(r"^(?P<id>[0-9a-f]+) (?P<text>(?:teacher|proxy) .*: (?:training, |trained in ).*)$")


def cell_label(cell: Cell) -> str:
    """A readable, glob-able name: dataset/model/bits/fraction/noise/method/seed."""
    return (f"{cell.dataset.label}/{cell.model_label}/w{cell.w_bits}a{cell.a_bits}/f{cell.fraction:g}/"
            f"{cell.noise.label}/{cell.method.name}/s{cell.seed}")


def config_label(config: dict[str, Any]) -> str:
    """The glob-able label of a stored cell config; '' for a config an older version wrote."""
    try:
        return cell_label(Cell.model_validate(config))
    except ValueError:
        return ""


def clock(seconds: float | None) -> str:
    """0:42, 12:05 or 1:02:03; '?' before there is an estimate."""
    if seconds is None:
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def fit(fields: list[tuple[int, str]], width: int) -> list[int]:
    """Indices of the fields that fit in ``width`` columns, joined by single spaces.

    ``fields`` are (priority, text) in display order, priority 0 the most important; a field
    is shown whole or not at all, the most important first.
    """
    kept: set[int] = set()
    used = -1
    for priority, i in sorted((p, i) for i, (p, text) in enumerate(fields) if text):
        if used + 1 + len(fields[i][1]) <= width:
            kept.add(i)
            used += 1 + len(fields[i][1])
    return sorted(kept)


class _Line(ProgressColumn):
    """The whole live line as one column, fitted to the console's width."""

    def __init__(self, console: Console) -> None:
        super().__init__()
        self.console = console

    def render(self, task: Task) -> Text:
        f = task.fields
        done = int(BAR * task.completed / task.total) if task.total else 0
        fields = [(0, f"cell {f['i']}/{f['n']}"), (7, f["id"]), (4, f["label"]), (5, "━" * done + "─" * (BAR - done)),
                  (1, f["epoch"]), (2, f["acc"]), (6, f"elapsed {clock(task.elapsed)}"),
                  (3, f"left {clock(task.time_remaining)}")]
        line = Text()
        for i in fit(fields, self.console.width - 1):
            line.append(" " if line else "")
            line.append(fields[i][1], style="bold" if i == 0 else "magenta" if i == 3 else "")
        return line


class ConsoleProgress:
    """One live line over all epochs still to train, plus a line per finished or failed cell."""

    def __init__(self, total_epochs: int, n_cells: int, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.n_cells = n_cells
        self.progress = Progress(_Line(self.console), console=self.console, transient=True)
        self.task: TaskID = self.progress.add_task("", total=total_epochs, i=0, n=n_cells, id="", label="",
                                                   epoch="", acc="")
        self.phases = PhaseHandler(self.phase)
        self.current = ""  # the running cell's "i/n id", for teacher and proxy lines

    def __enter__(self) -> "ConsoleProgress":
        self.progress.start()
        self.phases.__enter__()
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.phases.__exit__(exc_type, exc, tb)
        self.progress.stop()

    def line(self, status: str, style: str, text: str) -> None:
        """One event on a line of its own, never wrapped (a log file keeps one line per event)."""
        self.console.print(Text(status, style=style) + Text(f" {text}"), soft_wrap=True, highlight=False)

    def start_cell(self, i: int, cell: Cell) -> None:
        self.current = f"{i}/{self.n_cells} {cell.id}"
        self.progress.update(self.task, i=i, id=cell.id, label=cell_label(cell), epoch="", acc="")

    def epoch(self, epoch: int, total: int, acc: float) -> None:
        self.progress.update(self.task, advance=1, epoch=f"epoch {epoch + 1}/{total}", acc=f"acc {acc:.2f}")

    def phase(self, phase: Phase, cell: str | None = None) -> None:
        """A teacher or proxy of the running cell (or of ``cell``): its start and end as lines, epochs live."""
        if phase.epoch == 0 or phase.finished:
            self.line("train", "cyan", f"{cell or self.current} {phase}")
        else:
            self.progress.update(self.task, epoch=f"{phase.what.split()[0]} {phase.epoch}/{phase.total}")

    def done_cell(self, i: int, cell: Cell, final_acc: float, seconds: float, metric: str = "acc") -> None:
        """A finished cell's line with its headline (``metric`` "acc": top-1, "mAP": detection)."""
        self.line("done", "green", f"{i}/{self.n_cells} {cell.id} {cell_label(cell)}: final {metric} {final_acc:.2f}% "
                                   f"({seconds:.1f}s)")

    def failed_cell(self, i: int, cell: Cell, reason: str) -> None:
        self.line("failed", "red", f"{i}/{self.n_cells} {cell.id} {cell_label(cell)}: {reason}")

    def note(self, text: str) -> None:
        """Any other message (a skipped cell, an interrupt), as a whole line."""
        self.console.print(Text(text), soft_wrap=True, highlight=False)


def epoch_line(cell_id: str, epoch: int, total: int, acc: float) -> str:
    """How a cell's epoch reads in its log.txt, whichever executor ran it."""
    return f"{cell_id} epoch {epoch + 1}/{total} test acc {acc:.2f}"


class CellLog:
    """A cell's log.txt when it runs in this process (inline executor): the lines ``run-cell`` prints
    under the local pool, so that every executor leaves the same log. Opened at the first line, so
    a cell that another process holds gets nothing appended."""

    def __init__(self, folder: Path, cell_id: str, header: str) -> None:
        self.path, self.cell_id, self.header = folder / "log.txt", cell_id, header
        self.file: IO[str] | None = None
        self.unwritable = False
        self.phases = PhaseHandler(lambda phase: self.write(f"{self.cell_id} {phase}"))

    def __enter__(self) -> "CellLog":
        self.phases.__enter__()
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.phases.__exit__(exc_type, exc, tb)
        if self.file is not None:
            self.file.close()

    def write(self, line: str) -> None:
        if self.unwritable:
            return
        try:
            if self.file is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.file = open(self.path, "a")
                self.file.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {self.header}\n")
            self.file.write(line + "\n")
            self.file.flush()
        except OSError:  # a cell folder that cannot be written: the cell's failure says so, the sweep goes on
            self.unwritable = True

    def epoch(self, epoch: int, total: int, acc: float) -> None:
        self.write(epoch_line(self.cell_id, epoch, total, acc))
