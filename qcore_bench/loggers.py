"""Console progress: cell i/n, epoch, accuracy and time left, on stderr."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .cells import Cell


def cell_label(cell: Cell) -> str:
    """A readable, glob-able name: dataset/model/bits/fraction/noise/method/seed."""
    return (f"{cell.dataset.label}/{cell.model_label}/w{cell.w_bits}a{cell.a_bits}/f{cell.fraction:g}/"
            f"{cell.noise.label}/{cell.method.name}/s{cell.seed}")


class ConsoleProgress:
    """One bar over all epochs still to train, plus a line per finished or failed cell."""

    def __init__(self, total_epochs: int, n_cells: int, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.n_cells = n_cells
        self.progress = Progress(
            TextColumn("[bold]cell {task.fields[i]}/{task.fields[n]}"), TextColumn("{task.description}"),
            BarColumn(), TextColumn("epoch {task.fields[epoch]}"), TextColumn("acc {task.fields[acc]}"),
            TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(),
            console=self.console, transient=True)
        self.task: TaskID = self.progress.add_task("", total=total_epochs, i=0, n=n_cells, epoch="-", acc="-")

    def __enter__(self) -> "ConsoleProgress":
        self.progress.start()
        return self

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.progress.stop()

    def start_cell(self, i: int, cell: Cell) -> None:
        self.progress.update(self.task, i=i, description=f"{cell.id} {cell_label(cell)}", epoch="-", acc="-")

    def epoch(self, epoch: int, total: int, acc: float) -> None:
        self.progress.update(self.task, advance=1, epoch=f"{epoch + 1}/{total}", acc=f"{acc:.2f}")

    def done_cell(self, i: int, cell: Cell, final_acc: float, seconds: float) -> None:
        self.console.print(f"[green]done[/] {i}/{self.n_cells} {cell.id} {cell_label(cell)}: "
                           f"final acc {final_acc:.2f}% ({seconds:.1f}s)", highlight=False)

    def failed_cell(self, i: int, cell: Cell, reason: str) -> None:
        self.console.print(f"[red]failed[/] {i}/{self.n_cells} {cell.id} {cell_label(cell)}: {reason}",
                           highlight=False)
