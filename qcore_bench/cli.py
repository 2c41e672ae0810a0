"""qcore-bench command line: run, validate, plan, ls, table.

Bad input is one line on stderr naming the file and key, exit code 2, nothing written.
"""

from __future__ import annotations

import fnmatch
import os
import sys
from pathlib import Path
from typing import NoReturn

import click

from .registry import GROUPS, registry
from .suite import Cell, SuiteError, expand, load_suite

RESULTS = click.option("--results", "results", default="results", show_default=True,
                       type=click.Path(file_okay=False), help="Results folder (the source of truth).")


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _cells(suite_path: str, overrides: tuple[str, ...], only: str | None = None) -> tuple[object, list[Cell]]:
    from .loggers import cell_label

    try:
        suite = load_suite(suite_path, list(overrides))
        cells = expand(suite)
    except SuiteError as exc:
        _fail(str(exc))
    if only:
        cells = [c for c in cells if fnmatch.fnmatch(c.id, only) or fnmatch.fnmatch(cell_label(c), only)]
        if not cells:
            _fail(f"--only {only}: matches no cell of {suite_path}")
    return suite, cells


def cache_dir() -> Path:
    return Path(os.environ.get("QCORE_CACHE", Path.home() / ".cache" / "qcore-bench"))


@click.group()
@click.version_option(package_name="qcore-bench")
def main() -> None:
    """Coreset selection for quantization-aware training, benchmarked."""


@main.command()
@click.argument("suite", type=click.Path())
@RESULTS
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a suite key, e.g. train.epochs=3.")
@click.option("--only", metavar="GLOB", help="Run only cells whose id or label matches, e.g. '*/acs/*'.")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 or auto (default: the suite's).")
def run(suite: str, results: str, overrides: tuple[str, ...], only: str | None, device: str | None) -> None:
    """Run every cell of SUITE that is not done yet (interrupted cells resume)."""
    spec, cells = _cells(suite, overrides, only)
    from .executors import run_inline  # heavy imports only once the suite is known to be valid
    from .loggers import ConsoleProgress
    from .runner import Runtime, resolve_device
    from .store import Store

    store = Store(results)
    pending = [c for c in cells if not store.is_done(c.id)]
    click.echo(f"{spec.name}: {len(cells)} cells, {len(cells) - len(pending)} done, {len(pending)} to run",
               err=True)
    if not pending:
        return
    rt = Runtime(resolve_device(device or spec.device), cache_dir(), spec.eval_batch_size)
    with ConsoleProgress(sum(c.train.epochs for c in pending), len(pending)) as progress:
        summary = run_inline(pending, store, rt, progress)
    if summary.failed:
        click.echo(f"{len(summary.failed)} of {len(pending)} cells failed:", err=True)
        for cid, reason in summary.failed.items():
            click.echo(f"  {cid}: {reason} (see {store.dir(cid) / 'error.txt'})", err=True)
        sys.exit(1)


@main.command()
@click.argument("suite", type=click.Path())
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
def validate(suite: str, overrides: tuple[str, ...]) -> None:
    """Check SUITE and print its number of cells; nothing runs."""
    spec, cells = _cells(suite, overrides)
    click.echo(f"{suite}: ok, suite '{spec.name}' has {len(cells)} cells")


@main.command()
@click.argument("suite", type=click.Path())
@RESULTS
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
def plan(suite: str, results: str, overrides: tuple[str, ...]) -> None:
    """One line per cell of SUITE with its status in the results folder."""
    from .store import Store

    _, cells = _cells(suite, overrides)
    store = Store(results)
    click.echo("id            dataset   model     bits  fraction noise          method        seed status")
    for c in cells:
        click.echo(f"{c.id}  {c.dataset.name:9} {c.model:9} {c.bits:5} {c.fraction:<8g} {c.noise.label:14} "
                   f"{c.method.name:13} {c.seed:<4} {store.status(c.id)}")


@main.command("ls")
@click.argument("kind", type=click.Choice([*GROUPS, "methods"]))
@click.argument("pattern", default="*")
def ls(kind: str, pattern: str) -> None:
    """What a registry holds (selectors, datasets, models, methods), with each entry's source."""
    if kind == "methods":
        from .presets import presets
        from .registry import natural_key

        names = sorted(fnmatch.filter(presets(), pattern), key=natural_key)
        if not names:
            _fail(f"no methods match '{pattern}'")
        for name in names:
            click.echo(f"{name:24} {presets()[name]['selector']:20} {presets()[name]['description']}")
        return
    reg = registry(kind)
    names = reg.names(pattern)
    if not names:
        _fail(f"no {kind} match '{pattern}'")
    for name in names:
        entry = reg.entries[name]
        click.echo(f"{name:24} {entry.package:16} {entry.target}")


@main.command()
@RESULTS
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the tables.")
@click.option("--suite", "suite_name", default=None, help="Only runs of this suite.")
def table(results: str, out: str, suite_name: str | None) -> None:
    """Aggregate the finished runs into Markdown tables (printed and written to OUT/tables.md)."""
    from .report import frame, markdown, write_tables
    from .store import Store

    df = frame(Store(results).records(), suite_name)
    click.echo(markdown(df))
    path = write_tables(df, Path(out))
    click.echo(f"written: {path}", err=True)

