"""What the commands share: the results option, one-line failures, suites to cells, the cache folder."""

from __future__ import annotations

import fnmatch
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from ..suite import Cell, SuiteError, expand, load_suite

RESULTS = click.option("--results", "results", default="results", show_default=True,
                       type=click.Path(file_okay=False), help="Results folder (the source of truth).")


def fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def suite_cells(suite_path: str, overrides: tuple[str, ...], only: str | None = None) -> tuple[object, list[Cell]]:
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
    return suite, cells


def cache_dir() -> Path:
    return Path(os.environ.get("QCORE_CACHE", Path.home() / ".cache" / "qcore-bench"))


def claim_timeout_arg(value: float | None) -> float:
    from ..claims import claim_timeout

    try:
        return claim_timeout(value)
    except ValueError as exc:
        fail(f"--claim-timeout: {exc}")


def stored_label(config: dict[str, Any]) -> str:
    """The glob-able label of a stored cell config ('' when it no longer parses)."""
    from ..loggers import cell_label

    try:
        return cell_label(Cell.model_validate(config))
    except ValueError:
        return ""
