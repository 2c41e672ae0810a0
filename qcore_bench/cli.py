"""qcore-bench command line: run, run-cell, validate, plan, ls, table.

Bad input is one line on stderr naming the file and key, exit code 2, nothing written.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from .allocator import keep_freed_memory
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
    # warnings of the library (a claim taken over, a damaged checkpoint set aside) as one stderr line each
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    keep_freed_memory()  # large CPU tensors reuse freed memory instead of page-faulting it in again


# run's executor options: (executor parameter, flag); an option the chosen executor does not take is an error
EXECUTOR_FLAGS = {"gpus": "--gpus", "per_gpu": "--per-gpu", "slots": "--slots", "partition": "--partition",
                  "time": "--time", "gpus_per_task": "--gpus-per-task", "cpus_per_task": "--cpus-per-task",
                  "mem": "--mem", "array_parallelism": "--array-parallelism", "sbatch": "--sbatch",
                  "cluster": "--slurm-cluster", "wait": "--wait"}


def _claim_timeout(value: float | None) -> float:
    from .claims import claim_timeout

    try:
        return claim_timeout(value)
    except ValueError as exc:
        _fail(f"--claim-timeout: {exc}")


def _executor(name: str, options: dict[str, Any]) -> Any:
    """The executor plugin ``name`` built from the options given on the command line."""
    import inspect

    from .executors import Executor
    from .registry import UnknownNameError

    try:
        cls = registry("executors").get(name)
    except UnknownNameError as exc:
        _fail(f"--executor: {exc}")
    if not (isinstance(cls, type) and issubclass(cls, Executor)):
        entry = registry("executors").entries[name]
        _fail(f"--executor: '{name}' (from package {entry.package}, {entry.target}) is not a "
              "qcore_bench.executors.Executor subclass")
    given = {k: v for k, v in options.items() if v is not None and v != () and v is not False}
    accepted = inspect.signature(cls).parameters
    for key in given:
        if key not in accepted:
            _fail(f"{EXECUTOR_FLAGS[key]} does not apply to --executor {name}")
    try:
        return cls(**given)
    except (TypeError, ValueError) as exc:
        _fail(f"--executor {name}: {exc}")


def _label(config: dict[str, Any]) -> str:
    """The glob-able label of a stored cell config ('' when it no longer parses)."""
    from .loggers import cell_label

    try:
        return cell_label(Cell.model_validate(config))
    except ValueError:
        return ""


def _clear(store: Any, patterns: tuple[str, ...], cells: list[Cell]) -> None:
    """Discard stored cells (of this suite or left from an earlier version of it) matching a pattern."""
    from .loggers import cell_label
    from .store import StoreError

    labels = {cid: _label(cfg) for cid, cfg in store.stored().items()}
    labels.update({c.id: cell_label(c) for c in cells if store.dir(c.id).exists()})
    for pattern in patterns:
        hits = [cid for cid, label in labels.items()
                if fnmatch.fnmatch(cid, pattern) or fnmatch.fnmatch(label, pattern)]
        if not hits:
            _fail(f"--clear {pattern}: matches no stored cell in {store.root}")
        for cid in hits:
            try:
                store.clear(cid)
            except StoreError as exc:
                _fail(f"--clear {pattern}: {exc}")
        click.echo(f"cleared {len(hits)} cells matching {pattern}", err=True)


@main.command()
@click.argument("suite", type=click.Path())
@RESULTS
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a suite key, e.g. train.epochs=3.")
@click.option("--only", metavar="GLOB", help="Run only cells whose id or label matches, e.g. '*/acs/*'.")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 or auto (default: the suite's).")
@click.option("--cpu-threads", type=click.IntRange(min=1), default=None, metavar="N",
              help="torch threads of each CPU cell [suite cpu_threads: 1]; fixed so that results reproduce.")
@click.option("--executor", "executor_name", default="inline", show_default=True,
              help="inline (this process), local (a subprocess per cell on GPU/CPU slots), slurm (a job array).")
@click.option("--retry-failed", is_flag=True, help="Run failed cells again (else they are skipped and reported).")
@click.option("--clear", "clear", multiple=True, metavar="GLOB",
              help="First discard stored cells whose id or label matches, so they run from scratch.")
@click.option("--claim-timeout", type=float, default=None, metavar="SECONDS",
              help="Take over a cell whose runner sent no heartbeat for this long [$QCORE_CLAIM_TIMEOUT or 600].")
@click.option("--gpus", default=None, help="local: GPU ids, one slot group each, e.g. 0,1,2,3 ('' = CPU slots).")
@click.option("--per-gpu", type=int, default=None, help="local: cells at once on each GPU [1].")
@click.option("--slots", type=int, default=None, help="local: CPU-only slots when there is no GPU [1].")
@click.option("--partition", default=None, help="slurm: partition [suite slurm.partition].")
@click.option("--time", "time_min", type=int, default=None, help="slurm: minutes per task [240].")
@click.option("--gpus-per-task", type=int, default=None, help="slurm: GPUs per task [1].")
@click.option("--cpus-per-task", type=int, default=None, help="slurm: CPUs per task.")
@click.option("--mem", type=float, default=None, help="slurm: memory per task, GB.")
@click.option("--array-parallelism", type=int, default=None, help="slurm: tasks running at once [64].")
@click.option("--sbatch", multiple=True, metavar="KEY=VALUE", help="slurm: extra sbatch option, e.g. account=proj.")
@click.option("--slurm-cluster", "slurm_cluster", type=click.Choice(["slurm", "local", "debug"]), default=None,
              help="slurm: 'local' or 'debug' runs the job array through submitit without a cluster.")
@click.option("--wait", is_flag=True, default=None, help="slurm: wait for the array and report its cells.")
@click.option("--wandb", "use_wandb", is_flag=True, help="Log every cell to W&B (= --set wandb.enabled=true).")
def run(suite: str, results: str, overrides: tuple[str, ...], only: str | None, device: str | None,
        cpu_threads: int | None, executor_name: str, retry_failed: bool, clear: tuple[str, ...],
        claim_timeout: float | None,
        gpus: str | None, per_gpu: int | None, slots: int | None, partition: str | None, time_min: int | None,
        gpus_per_task: int | None, cpus_per_task: int | None, mem: float | None, array_parallelism: int | None,
        sbatch: tuple[str, ...], slurm_cluster: str | None, wait: bool | None, use_wandb: bool) -> None:
    """Run every cell of SUITE that is not done yet (interrupted cells resume, failed ones are skipped).

    Several `run` processes (or machines sharing the results folder) may work on one suite
    at once: each cell is claimed by exactly one of them. Exit status: 0 all done (or
    handed to SLURM), 1 some cells failed, 2 bad input, 130 interrupted (rerun to resume).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        _fail("under torchrun, run one cell: torchrun --nproc_per_node=G -m qcore_bench run-cell CELL_ID "
              "--suite SUITE (`qcore-bench plan SUITE` lists the ids)")
    spec, cells = _cells(suite, overrides + (("wandb.enabled=true",) if use_wandb else ()), only)
    executor = _executor(executor_name, {
        "gpus": gpus, "per_gpu": per_gpu, "slots": slots, "partition": partition, "time": time_min,
        "gpus_per_task": gpus_per_task, "cpus_per_task": cpus_per_task, "mem": mem,
        "array_parallelism": array_parallelism, "sbatch": sbatch, "cluster": slurm_cluster, "wait": wait})
    from .executors import ExecutorError, Job  # heavy imports only once the input is known to be valid
    from .store import Store

    store = Store(results, _claim_timeout(claim_timeout))
    if clear:
        _clear(store, clear, cells)
    status = {c.id: store.status(c.id) for c in cells}
    skipped_failed = [c.id for c in cells if status[c.id] == "failed" and not retry_failed]
    running = [c.id for c in cells if status[c.id] == "running"]
    pending = [c for c in cells if status[c.id] in ("pending", "interrupted", "unreadable")
               or (status[c.id] == "failed" and retry_failed)]
    n_done = sum(s == "done" for s in status.values())
    extra = (f", {len(skipped_failed)} failed (skipped: --retry-failed runs them)" if skipped_failed else "") + \
            (f", {len(running)} running elsewhere" if running else "")
    click.echo(f"{spec.name}: {len(cells)} cells, {n_done} done, {len(pending)} to run{extra}", err=True)
    for cid in (c for c in status if status[c] == "unreadable"):
        click.echo(f"warning: {store.dir(cid) / 'result.json'} is unreadable; the cell is finished again", err=True)
    summary = None
    if pending:
        job = Job(store, device or spec.device, cache_dir(), spec.eval_batch_size, spec,
                  cpu_threads=cpu_threads or spec.cpu_threads)
        try:
            summary = executor.run(pending, job)
        except ExecutorError as exc:
            _fail(f"--executor {executor_name}: {exc}")
    _report_run(store, pending, summary, skipped_failed)


def _report_run(store: Any, pending: list[Cell], summary: Any, skipped_failed: list[str]) -> None:
    """The end-of-run summary on stderr, and the exit status."""
    def where(cid: str) -> str:
        return f"(see {store.dir(cid) / 'error.txt'})"

    if summary is not None and summary.note:
        click.echo(summary.note, err=True)
    if summary is not None and summary.elsewhere:
        click.echo(f"{len(summary.elsewhere)} cells are being run by other processes (not waited for):", err=True)
        for cid, who in summary.elsewhere.items():
            click.echo(f"  {cid}: {who}", err=True)
    if summary is not None and summary.failed:
        click.echo(f"{len(summary.failed)} of {len(pending)} cells failed:", err=True)
        for cid, reason in summary.failed.items():
            click.echo(f"  {cid}: {reason} {where(cid)}", err=True)
    if skipped_failed:
        click.echo(f"{len(skipped_failed)} cells failed in an earlier run and were skipped "
                   "(run with --retry-failed to run them again):", err=True)
        for cid in skipped_failed:
            click.echo(f"  {cid}: {store.read_status(cid).get('reason', '?')} {where(cid)}", err=True)
    if summary is not None and summary.interrupted:
        click.echo(f"interrupted after {len(summary.done)} finished cells; run the same command again to resume",
                   err=True)
        sys.exit(130)
    if skipped_failed or (summary is not None and summary.failed):
        sys.exit(1)


@main.command("run-cell")
@click.argument("cell_id")
@RESULTS
@click.option("--suite", "suite_path", type=click.Path(), default=None,
              help="Take the cell from this suite (default: its cell.json in the results folder).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 or auto (default: the suite's, else auto).")
@click.option("--cpu-threads", type=click.IntRange(min=1), default=None, metavar="N",
              help="torch threads of a CPU cell [the suite's cpu_threads, else 1].")
@click.option("--claim-timeout", type=float, default=None, metavar="SECONDS")
@click.option("--config", "config", type=click.File("r"), default=None, hidden=True,
              help="The cell's config as JSON ('-': stdin); how the local executor hands a cell over.")
@click.option("--eval-batch-size", type=int, default=None, hidden=True)
@click.option("--die-with-parent", is_flag=True, hidden=True)
def run_cell_cmd(cell_id: str, results: str, suite_path: str | None, overrides: tuple[str, ...],
                 device: str | None, cpu_threads: int | None, claim_timeout: float | None, config: Any,
                 eval_batch_size: int | None,
                 die_with_parent: bool) -> None:
    """Run (or resume) one cell by id, unless it is done or another process runs it.

    The unit every executor runs. Exit status: 0 done, 1 failed, 2 bad input,
    75 another process runs it, 130 interrupted (rerun to resume). Several GPUs of one
    node on one cell: `torchrun --nproc_per_node=G -m qcore_bench run-cell ID --suite FILE`.
    """
    import json

    from pydantic import ValidationError

    from .store import Store, StoreError, read_json

    store, spec, payload = Store(results, _claim_timeout(claim_timeout)), None, {}
    if config is not None:
        source = "--config"
        try:
            payload = json.loads(config.read())
            cell = Cell.model_validate(payload["cell"])
        except (ValueError, KeyError, TypeError) as exc:
            _fail(f"--config: not a cell payload ({str(exc).splitlines()[0]})")
    elif suite_path is not None:
        source = suite_path
        spec, cells = _cells(suite_path, overrides)
        found = [c for c in cells if c.id.startswith(cell_id)]
        if len(found) != 1:
            _fail(f"{suite_path}: {'no' if not found else 'more than one'} cell with id {cell_id}")
        cell = found[0]
        wandb = getattr(spec, "wandb", None)
        payload = {"wandb": wandb.model_dump(mode="json") if wandb is not None else None,
                   "cpu_threads": spec.cpu_threads}
    else:
        path = store.dir(cell_id) / "cell.json"
        source = str(path)
        if not path.is_file():
            _fail(f"{path}: not found; give --suite to take the cell from a suite")
        try:
            cell = Cell.model_validate(read_json(path)["config"])
        except (StoreError, KeyError, TypeError, ValidationError) as exc:
            _fail(f"{path}: not a usable cell config ({str(exc).splitlines()[0]})")
    if cell.id != cell_id and not (spec is not None and cell.id.startswith(cell_id)):
        _fail(f"{source}: holds cell {cell.id}, not {cell_id}")
    import dataclasses

    from .distributed import process_group
    from .executors import run_cell_process, runtime_from_payload

    dev = device or (spec.device if spec is not None else "auto")
    ebs = eval_batch_size or (spec.eval_batch_size if spec is not None else 1024)
    if cpu_threads is not None:
        payload = {**payload, "cpu_threads": cpu_threads}
    rt = runtime_from_payload(payload, dev, cache_dir(), ebs)
    with process_group(rt.device) as rank_device:  # under torchrun: this rank's GPU (or the CPU, with gloo)
        code = run_cell_process(cell, store, dataclasses.replace(rt, device=rank_device), die_with_parent)
    sys.exit(code)


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
    """One line per cell of SUITE with its status in the results folder.

    pending, running (with its holder), interrupted (resumes), failed (with the reason),
    done; then the stored cells of this suite that it no longer contains.
    """
    from .claims import describe
    from .store import Store

    spec, cells = _cells(suite, overrides)
    store = Store(results, _claim_timeout(None))
    click.echo("id            dataset   model     bits  fraction noise          method        seed status")
    for c in cells:
        status = store.status(c.id)
        note = ""
        if status == "failed":
            note = f"  ({store.read_status(c.id).get('reason', '?')})"
        elif status == "running":
            note = f"  ({describe(store.holder(c.id) or {})})"
        click.echo(f"{c.id}  {c.dataset.label:9} {c.model_label:9} {c.bits:5} {c.fraction:<8g} {c.noise.label:14} "
                   f"{c.method.name:13} {c.seed:<4} {status}{note}")
    ids = {c.id for c in cells}
    gone = {cid: cfg for cid, cfg in store.stored().items() if cid not in ids and cfg.get("suite") == spec.name}
    if gone:
        click.echo(f"\n{len(gone)} stored cells of suite '{spec.name}' are not in it any more "
                   "(edited since they ran; `run --clear ID` discards one):")
        for cid, cfg in sorted(gone.items()):
            click.echo(f"{cid}  {_label(cfg) or '(config of an older version)'}  {store.status(cid)}")


@main.command("ls")
@click.argument("kind", type=click.Choice([*GROUPS, "methods"]))
@click.argument("pattern", default="*")
@click.option("--suite", "suite_path", type=click.Path(dir_okay=False), default=None,
              help="methods: also the presets in the methods/ folder beside this suite.")
def ls(kind: str, pattern: str, suite_path: str | None) -> None:
    """What a registry holds (selectors, datasets, models, methods), with each entry's source.

    Method presets come from the built-in methods/ folder, the folders in $QCORE_METHODS and,
    with --suite, the methods/ folder beside that suite.
    """
    if kind == "methods":
        from .presets import PresetError, presets
        from .registry import natural_key

        try:
            found = presets(suite_path)
        except PresetError as exc:
            _fail(str(exc))
        names = sorted(fnmatch.filter(found, pattern), key=natural_key)
        if not names:
            _fail(f"no methods match '{pattern}'")
        for name in names:
            p = found[name]
            click.echo(f"{name:24} {p.selector:20} {p.source:10} {p.description}")
        return
    reg = registry(kind)
    names = reg.names(pattern)
    deepcore: list[str] = []
    if kind == "selectors":  # deepcore:<Method> for each method of a DeepCore checkout on PYTHONPATH
        from .selectors.deepcore import SOURCE, available_methods

        deepcore = fnmatch.filter([f"deepcore:{m}" for m in available_methods()], pattern)
    if not names and not deepcore:
        _fail(f"no {kind} match '{pattern}'")
    for name in names:
        entry = reg.entries[name]
        click.echo(f"{name:24} {entry.package:16} {entry.target}")
    for name in deepcore:
        click.echo(f"{name:24} {SOURCE:16} deepcore.methods.{name.removeprefix('deepcore:')}")


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
    from .report import frame
    from .store import Store

    if from_wandb:
        from .wandb_log import records_from_wandb

        df = frame(records_from_wandb(from_wandb, group=suite_name), suite_name)
        source = f"W&B project {from_wandb}"
    else:
        store = Store(results)
        if suite_name and Path(suite_name).is_file():  # a suite file: its cells, whichever suite ran them first
            modes = ("per_epoch_fraction", "total_compute") if both_modes else (None,)  # --fair: both budgets
            ids = {c.id for mode in modes for c in _cells(suite_name, (f"budget.mode={mode}",) if mode else ())[1]}
            df = frame((r for r in store.records() if r["id"] in ids))
        else:
            df = frame(store.records(), suite_name)
        for problem in store.problems:  # damaged files: reported, never fatal for the other runs
            click.echo(f"warning: {problem}", err=True)
        source = results
    if df.empty:
        _fail(f"{source}: no finished runs{f' of suite {suite_name}' if suite_name else ''}")
    return df


def _plots(results: str | None, df: Any, out: Path, metric: str) -> list[Path]:
    """All plots; the noisy-share curves need local histories (none from W&B)."""
    from .plots import plot_all
    from .store import Store

    store = Store(results) if results else None
    return plot_all(df, {cid: store.history(cid) for cid in df["id"]} if store else {}, out, metric)


@main.command()
@RESULTS
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for tables and plots.")
@_report_options
@click.option("--format", "formats", default="md,tex,csv", show_default=True, help="Comma-separated: md, tex, csv.")
@click.option("--vs", default="random", show_default=True, help="Reference method for the difference column.")
@click.option("--extras", is_flag=True, help="Add selection/training time, noisy share kept and coverage.")
@click.option("--fair", is_flag=True, help="Also write fair.md: equal fraction vs equal compute, coverage, cost.")
@click.option("--plots/--no-plots", default=True, show_default=True, help="Also write the plots (PNG and PDF).")
@click.option("--from-wandb", "from_wandb", metavar="ENTITY/PROJECT", default=None,
              help="Build the tables from a W&B project instead of the results folder (--suite: its group).")
def table(results: str, out: str, suite_name: str | None, metric: str, formats: str, vs: str, extras: bool,
          fair: bool, plots: bool, from_wandb: str | None) -> None:
    """Aggregate finished runs into tables (printed as Markdown, written to OUT) and plots."""
    from .report import fair_report, render, summarize, write_reports

    fmts = [f.strip() for f in formats.split(",") if f.strip()]
    bad = [f for f in fmts if f not in ("md", "tex", "csv")]
    if bad:
        _fail(f"--format: unknown format '{bad[0]}'; expected md, tex or csv")
    df = _frame(results, suite_name, from_wandb, both_modes=fair)
    click.echo(render(summarize(df, metric, vs), metric, vs, extras)["md"])
    if fair:
        click.echo(fair_report(df, vs))
    paths = write_reports(df, Path(out), fmts, metric, vs, extras, fair)
    if plots:
        paths += _plots(None if from_wandb else results, df, Path(out), metric)
    click.echo(f"written: {', '.join(str(p) for p in paths)}", err=True)


@main.command()
@RESULTS
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the plots.")
@_report_options
def plot(results: str, out: str, suite_name: str | None, metric: str) -> None:
    """Plots only: accuracy vs fraction, vs noise, vs cost; noisy share of the subsets over epochs."""
    paths = _plots(results, _frame(results, suite_name), Path(out), metric)
    click.echo(f"written: {', '.join(str(p) for p in paths)}", err=True)



@main.command()
@RESULTS
def sync(results: str) -> None:
    """Upload the offline W&B runs of a results folder (wandb sync)."""
    from .wandb_log import sync as wandb_sync

    dirs = wandb_sync(Path(results))
    click.echo(f"synced {len(dirs)} offline W&B runs from {results}", err=True)
