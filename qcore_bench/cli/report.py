"""``table``, ``plot`` and ``sync``: finished runs into tables and plots, offline W&B runs uploaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..suite import SuiteError, expand, load_suite
from .common import RESULTS, fail, folder, suite_cells

REPORT_OPTIONS = [
    click.option("--suite", "suite_name", default=None,
                 help="Only the cells of this suite: a suite file (its cells, shared ones included) or a name."),
    click.option("--metric", type=click.Choice(["final", "best"]), default="final", show_default=True,
                 help="final: last-epoch accuracy (the headline); best: best over epochs, labelled as such."),
]


def _report_options(fn: Any) -> Any:
    for option in reversed(REPORT_OPTIONS):
        fn = option(fn)
    return fn


def _frame(results: str, suite_name: str | None, from_wandb: str | None = None, both_modes: bool = False) -> Any:
    from ..report import frame
    from ..store import Store

    if from_wandb:
        from ..wandb_log import records_from_wandb

        df = frame(records_from_wandb(from_wandb, group=suite_name), suite_name)
        source = f"W&B project {from_wandb}"
    else:
        store = Store(results)
        if suite_name and Path(suite_name).is_file():  # a suite file: its cells, whichever suite ran them first
            cells = {c.id: c for c in suite_cells(suite_name, ("budget.mode=per_epoch_fraction",) if both_modes else ())[1]}
            if both_modes:  # --fair: the equal-compute twins too, where the suite can have them (not detection)
                try:
                    cells.update((c.id, c) for c in expand(load_suite(suite_name, ["budget.mode=total_compute"])))
                except SuiteError:
                    pass
            stored = {r["id"]: r for r in store.records() if r["id"] in cells}
            # in the suite's order (methods as the suite lists them), data sets named as it names them
            df = frame(_named(stored[cid], cell.dataset.display) for cid, cell in cells.items() if cid in stored)
        else:
            df = frame(store.records(), suite_name)
        for problem in store.problems:  # damaged files: reported, never fatal for the other runs
            click.echo(f"warning: {problem}", err=True)
        source = results
    if df.empty:
        fail(f"{source}: no finished runs{f' of suite {suite_name}' if suite_name else ''}")
    return df


def _named(record: dict[str, Any], display: str | None) -> dict[str, Any]:
    """The record with the suite file's display name for its data set (not part of the id, so the
    suite decides, also for cells that ran before it named them)."""
    if display:
        record["config"]["dataset"] = {**record["config"]["dataset"], "display": display}
    return record


def _plots(results: str | None, df: Any, out: Path, metric: str) -> list[Path]:
    """All plots; the noisy-share curves need local histories (none from W&B)."""
    from ..plots import plot_all
    from ..store import Store

    store = Store(results) if results else None
    return plot_all(df, {cid: store.history(cid) for cid in df["id"]} if store else {}, out, metric)


def _out(out: str | None, results: str, suite_name: str | None, df: Any) -> Path:
    """``--out``, else ``RESULTS/tables-NAME``, NAME the suite file's stem, the suite's name, or "all"
    when the folder holds several suites."""
    if out is not None:
        return Path(out)
    suites = sorted(df["suite"].unique())
    name = Path(suite_name).stem if suite_name else suites[0] if len(suites) == 1 else "all"
    return Path(results) / f"tables-{name}"


@click.command()
@RESULTS
@click.option("--out", default=None, callback=folder,
              help="Folder for tables and plots [RESULTS/tables-SUITE: beside a committed copy, never over it].")
@_report_options
@click.option("--format", "formats", default="md,tex,csv", show_default=True, help="Comma-separated: md, tex, csv.")
@click.option("--vs", default="random", show_default=True, help="Reference method for the difference column.")
@click.option("--extras", is_flag=True, help="Add selection/training time, noisy share kept and coverage.")
@click.option("--fair", is_flag=True, help="Also write fair.md: equal fraction vs equal compute, coverage, cost.")
@click.option("--plots/--no-plots", default=True, show_default=True, help="Also write the plots (PNG and PDF).")
@click.option("--from-wandb", "from_wandb", metavar="ENTITY/PROJECT", default=None,
              help="Build the tables from a W&B project instead of the results folder (--suite: its group).")
def table(results: str, out: str | None, suite_name: str | None, metric: str, formats: str, vs: str, extras: bool,
          fair: bool, plots: bool, from_wandb: str | None) -> None:
    """Aggregate finished runs into tables (printed as Markdown, written to OUT) and plots."""
    from ..report import fair_report, render, summarize, write_reports

    fmts = [f.strip() for f in formats.split(",") if f.strip()]
    bad = [f for f in fmts if f not in ("md", "tex", "csv")]
    if bad:
        fail(f"--format: unknown format '{bad[0]}'; expected md, tex or csv")
    df = _frame(results, suite_name, from_wandb, both_modes=fair)
    given = click.get_current_context().get_parameter_source("vs") is click.core.ParameterSource.COMMANDLINE
    if given and vs not in set(df["method"]):  # else the Δ tables would silently be left out
        from ..registry import did_you_mean

        fail(f"--vs {vs}: no method '{vs}' in these runs{did_you_mean(vs, list(df['method']))}")
    click.echo(render(summarize(df, metric, vs), metric, vs, extras)["md"])
    if fair:
        click.echo(fair_report(df, vs))
    folder = _out(out, results, suite_name, df)
    paths = write_reports(df, folder, fmts, metric, vs, extras, fair)
    if plots:
        paths += _plots(None if from_wandb else results, df, folder, metric)
    click.echo(f"written: {', '.join(str(p) for p in paths)}", err=True)


@click.command()
@RESULTS
@click.option("--out", default=None, callback=folder, help="Folder for the plots [RESULTS/tables-SUITE].")
@_report_options
def plot(results: str, out: str | None, suite_name: str | None, metric: str) -> None:
    """Plots only: accuracy vs fraction, vs noise, vs cost; noisy share of the subsets over epochs."""
    df = _frame(results, suite_name)
    paths = _plots(results, df, _out(out, results, suite_name, df), metric)
    click.echo(f"written: {', '.join(str(p) for p in paths)}", err=True)


@click.command()
@RESULTS
def sync(results: str) -> None:
    """Upload the offline W&B runs of a results folder (wandb sync)."""
    from ..wandb_log import sync as wandb_sync

    dirs = wandb_sync(Path(results))
    click.echo(f"synced {len(dirs)} offline W&B runs from {results}", err=True)
