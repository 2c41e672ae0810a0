"""``show`` (one stored cell in full), ``picture`` (a detection cell's boxes) and ``compare`` (two results
folders cell by cell)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .common import RESULTS, fail, folder


def _stored_cell(results: str, cell: str) -> tuple[Any, str]:
    """The store of ``results`` and the id of the one stored cell CELL names; else one line, exit 2."""
    from ..show import CellNotFound, find_cell
    from ..store import Store

    store = Store(results)
    if not store.runs.is_dir():
        fail(f"{results}: no runs/ folder; expected a results folder (--results)")
    try:
        return store, find_cell(store, cell)
    except CellNotFound as exc:
        fail(str(exc))


@click.command()
@click.argument("cell")
@RESULTS
@click.option("--log-lines", type=click.IntRange(min=0), default=40, show_default=True,
              help="How many of the last lines of log.txt and error.txt to show.")
def show(cell: str, results: str, log_lines: int) -> None:
    """One cell: config, provenance, result, per-epoch history and log, whichever executor ran it.

    CELL is an id, the start of one, or a label glob matching one cell, e.g.
    'digits/resnet8/w2a32/f0.1/clean/acs/s0'.
    """
    from ..show import render_cell

    store, cid = _stored_cell(results, cell)
    click.echo(render_cell(store, cid, log_lines), nl=False)


@click.command()
@click.argument("cell")
@click.argument("out", type=click.Path(dir_okay=False))
@RESULTS
@click.option("--images", type=click.IntRange(min=1), default=6, show_default=True, help="Test images in the strip.")
@click.option("--min-score", type=click.FloatRange(0, 1), default=0.3, show_default=True,
              help="Draw the detections scoring at least this.")
def picture(cell: str, out: str, results: str, images: int, min_score: float) -> None:
    """A detection cell's final student on its first test images: predicted boxes (class, score) in
    colour, the ground truth in white, as one PNG strip. CELL as for `show`.
    """
    from ..files import atomic_write
    from ..tasks.detection.picture import PictureError, picture as draw_cell

    store, cid = _stored_cell(results, cell)
    try:
        strip = draw_cell(store.dir(cid), images, min_score)
    except PictureError as exc:
        fail(str(exc))
    atomic_write(Path(out), lambda f: strip.save(f, format="PNG"), mode="wb")  # type: ignore[attr-defined]
    click.echo(out)


@click.command()
@click.argument("folder_a", callback=folder)
@click.argument("folder_b", callback=folder)
@click.option("--tolerance", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Accuracy points two runs of a cell may differ by (final, best, any epoch) and still agree.")
@click.option("--all", "every", is_flag=True, help="A row for every shared cell, identical ones included.")
def compare(folder_a: str, folder_b: str, tolerance: float, every: bool) -> None:
    """Compare the finished cells of two results folders (two code versions, two machines) cell by cell.

    Cells are matched by id. Exit status 0 when every shared cell agrees within the tolerance,
    1 when some differ by more (so CI can run it), 2 on bad input.
    """
    from ..compare import compare as compare_stores
    from ..compare import render
    from ..store import Store

    for folder in (folder_a, folder_b):
        if not (Path(folder) / "runs").is_dir():
            fail(f"{folder}: no runs/ folder; expected a results folder")
    result = compare_stores(Store(folder_a), Store(folder_b))
    if not result.cells:
        fail(f"{folder_a} and {folder_b} share no finished cell")
    click.echo(render(result, (folder_a, folder_b), tolerance, every), nl=False)
    if result.differing(tolerance):
        raise SystemExit(1)
