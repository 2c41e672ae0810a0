"""What the commands share: the results option, one-line failures, suites to cells and their data checked."""

from __future__ import annotations

import fnmatch
import sys
from pathlib import Path
from typing import NoReturn

import click

from ..suite import Cell, SuiteError, expand, load_suite


def fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def folder(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """A folder option or argument: an existing file there is one line, exit 2 (not click's usage text)."""
    if value is not None and Path(value).exists() and not Path(value).is_dir():
        fail(f"{param.opts[0] if param.param_type_name == 'option' else param.name.upper()} {value}: "
             f"expected a folder, got a file")
    return value


RESULTS = click.option("--results", "results", default="results", show_default=True, callback=folder,
                       help="Results folder (the source of truth).")


def suite_cells(suite_path: str, overrides: tuple[str, ...], only: str | None = None,
                check_data: bool = False) -> tuple[object, list[Cell]]:
    """The suite's cells (those matching ``only``); ``check_data``: each of their data sets checked once."""
    from ..loggers import cell_label

    try:
        suite = load_suite(suite_path, list(overrides))
        cells = expand(suite)
    except SuiteError as exc:
        fail(str(exc))
    if only:
        cells = [c for c in cells if fnmatch.fnmatch(c.id, only) or fnmatch.fnmatch(cell_label(c), only)]
        if not cells:
            fail(f"--only {only}: matches no cell of {suite_path}")
    if check_data:
        check_datasets(suite_path, cells)
    return suite, cells


def check_datasets(suite_path: str, cells: list[Cell]) -> None:
    """Each data set of ``cells`` checked once, before any cell is claimed: a missing or malformed
    root is one line and exit status 2, instead of a failed cell per grid point."""
    from ..data import DatasetError
    from ..data.catalog import check_dataset

    seen: set[str] = set()
    for cell in cells:
        spec = cell.dataset
        key = spec.model_dump_json()
        if key in seen:
            continue
        seen.add(key)
        try:
            check_dataset(spec.name, spec.root, spec.params)
        except DatasetError as exc:
            fail(f"{suite_path}: grid.dataset: {exc}")


def claim_timeout_arg(value: float | None) -> float:
    from ..claims import claim_timeout

    try:
        return claim_timeout(value)
    except ValueError as exc:
        fail(f"--claim-timeout: {exc}")
