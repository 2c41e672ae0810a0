"""``run`` (a suite's pending cells through an executor) and ``run-cell`` (one cell: the unit every executor runs)."""

from __future__ import annotations

import fnmatch
import os
import sys
from typing import Any

import click

from ..claims import describe
from ..paths import cache_dir
from ..registry import registry
from ..suite import Cell
from ..wandb_log import session as wandb_session
from .common import RESULTS, claim_timeout_arg, fail, suite_cells

# run's executor options: (executor parameter, flag); an option the chosen executor does not take is an error
EXECUTOR_FLAGS = {"gpus": "--gpus", "per_gpu": "--per-gpu", "slots": "--slots", "partition": "--partition",
                  "time": "--time", "gpus_per_task": "--gpus-per-task", "cpus_per_task": "--cpus-per-task",
                  "mem": "--mem", "array_parallelism": "--array-parallelism", "sbatch": "--sbatch",
                  "cluster": "--slurm-cluster", "wait": "--wait"}



def _executor(name: str, options: dict[str, Any]) -> Any:
    """The executor plugin ``name`` built from the options given on the command line."""
    import inspect

    from ..executors import Executor
    from ..registry import UnknownNameError

    try:
        cls = registry("executors").get(name)
    except UnknownNameError as exc:
        fail(f"--executor: {exc}")
    if not (isinstance(cls, type) and issubclass(cls, Executor)):
        entry = registry("executors").entries[name]
        fail(f"--executor: '{name}' (from package {entry.package}, {entry.target}) is not a "
              "qcore_bench.executors.Executor subclass")
    given = {k: v for k, v in options.items() if v is not None and v != () and v is not False}
    accepted = inspect.signature(cls).parameters
    for key in given:
        if key not in accepted:
            fail(f"{EXECUTOR_FLAGS[key]} does not apply to --executor {name}")
    try:
        return cls(**given)
    except (TypeError, ValueError) as exc:
        fail(f"--executor {name}: {exc}")



def _clear(store: Any, patterns: tuple[str, ...], cells: list[Cell]) -> None:
    """Discard stored cells (of this suite or left from an earlier version of it) matching a pattern."""
    from ..loggers import cell_label, config_label
    from ..store import StoreError

    labels = {cid: config_label(cfg) for cid, cfg in store.stored().items()}
    labels.update({c.id: cell_label(c) for c in cells if store.dir(c.id).exists()})
    for pattern in patterns:
        hits = [cid for cid, label in labels.items()
                if fnmatch.fnmatch(cid, pattern) or fnmatch.fnmatch(label, pattern)]
        if not hits:
            fail(f"--clear {pattern}: matches no stored cell in {store.root}")
        for cid in hits:
            try:
                store.clear(cid)
            except StoreError as exc:
                fail(f"--clear {pattern}: {exc}")
        click.echo(f"cleared {len(hits)} cells matching {pattern}", err=True)


@click.command()
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
    handed to SLURM), 1 some cells failed, 2 bad input, 75 some cells are being run by
    other processes (not waited for: run again, or `plan`, once they finish), 130
    interrupted (rerun to resume); SIGTERM counts as Ctrl-C.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        fail("under torchrun, run one cell: torchrun --nproc_per_node=G -m qcore_bench run-cell CELL_ID "
              "--suite SUITE (`qcore-bench plan SUITE` lists the ids)")
    spec, cells = suite_cells(suite, overrides + (("wandb.enabled=true",) if use_wandb else ()), only, check_data=True)
    _check_device(device)
    executor = _executor(executor_name, {
        "gpus": gpus, "per_gpu": per_gpu, "slots": slots, "partition": partition, "time": time_min,
        "gpus_per_task": gpus_per_task, "cpus_per_task": cpus_per_task, "mem": mem,
        "array_parallelism": array_parallelism, "sbatch": sbatch, "cluster": slurm_cluster, "wait": wait})
    if executor_name != "slurm":  # the cells run on this machine: the device they ask for must be here
        _check_device_here(device or spec.device, "--device" if device else f"{suite}: device")
    from ..executors import ExecutorError, Job  # heavy imports only once the input is known to be valid
    from ..store import Store

    timeout = claim_timeout_arg(claim_timeout)
    _check_writable(results)
    store = Store(results, timeout)
    if clear:
        _clear(store, clear, cells)
    status = {c.id: store.status(c.id) for c in cells}
    skipped_failed = [c.id for c in cells if status[c.id] == "failed" and not retry_failed]
    running = {c.id: describe(store.holder(c.id) or {}) for c in cells if status[c.id] == "running"}
    pending = [c for c in cells if status[c.id] in ("pending", "interrupted", "damaged")
               or (status[c.id] == "failed" and retry_failed)]
    n_done = sum(s == "done" for s in status.values())
    extra = (f", {len(skipped_failed)} failed (skipped: --retry-failed runs them)" if skipped_failed else "") + \
            (f", {len(running)} running elsewhere" if running else "")
    click.echo(f"{spec.name}: {len(cells)} cells, {n_done} done, {len(pending)} to run{extra}", err=True)
    for cid in (c for c in status if status[c] == "damaged"):
        click.echo(f"warning: {store.dir(cid)}: {store.damage(cid)}; the cell is finished again", err=True)
    summary = None
    if pending:
        job = Job(store, device or spec.device, cache_dir(), spec.eval_batch_size, spec,
                  cpu_threads=cpu_threads or spec.cpu_threads)
        if job.wandb is not None and job.wandb.enabled:
            wandb_session()  # one W&B session for this run and the cell processes it starts
        try:
            summary = executor.run(pending, job)
        except ExecutorError as exc:
            fail(f"--executor {executor_name}: {exc}")
    _report_run(store, pending, summary, skipped_failed, running)


def _check_device(device: str | None) -> None:
    from ..schema import check_device

    if device is not None:
        try:
            check_device(device)
        except ValueError as exc:
            fail(f"--device: {exc}")


def _check_device_here(name: str, where: str) -> None:
    """A CUDA device that this machine lacks is one line before any cell is claimed, not a failed
    cell (torch's "no NVIDIA driver") per grid point."""
    if not name.startswith("cuda"):
        return
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(name.partition(":")[2] or 0)
    if index >= count:
        have = f"{count} CUDA device{'s' if count > 1 else ''}" if count else "no CUDA device"
        fail(f"{where}: '{name}' asked for, but this machine has {have}; use cpu or auto")


def _check_writable(results: str) -> None:
    """A results folder this process cannot write is one line before anything runs (not a traceback);
    probed with a temp file in it, or in the folder it will be created in, removed at once."""
    import tempfile
    from pathlib import Path

    path = Path(results).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(0, "Not a directory")
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".write-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        fail(f"--results {results}: cannot write there ({exc.strerror or exc})")


def _report_run(store: Any, pending: list[Cell], summary: Any, skipped_failed: list[str],
                running: dict[str, str]) -> None:
    """The end-of-run summary on stderr, and the exit status."""
    from ..executors import EXIT_ELSEWHERE
    from ..wandb_log import summary_line

    def where(cid: str) -> str:
        return f"(see {store.dir(cid) / 'error.txt'})"

    if summary is not None and summary.note:
        click.echo(summary.note, err=True)
    wandb_note = summary_line(store.root) if summary is not None else None
    if wandb_note:
        click.echo(wandb_note, err=True)
    elsewhere = {**running, **(summary.elsewhere if summary is not None else {})}
    if elsewhere:
        click.echo(f"{len(elsewhere)} cells are being run by other processes (not waited for; exit status "
                   f"{EXIT_ELSEWHERE}: run again, or `qcore-bench plan`, once they finish):", err=True)
        for cid, who in elsewhere.items():
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
    if elsewhere:
        sys.exit(EXIT_ELSEWHERE)


@click.command("run-cell")
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

    from ..store import Store, StoreError, read_json

    _check_device(device)
    store, spec, payload = Store(results, claim_timeout_arg(claim_timeout)), None, {}
    if config is not None:
        source = "--config"
        try:
            payload = json.loads(config.read())
            cell = Cell.model_validate(payload["cell"])
        except (ValueError, KeyError, TypeError) as exc:
            fail(f"--config: not a cell payload ({str(exc).splitlines()[0]})")
    elif suite_path is not None:
        source = suite_path
        spec, cells = suite_cells(suite_path, overrides)
        found = [c for c in cells if c.id.startswith(cell_id)]
        if len(found) != 1:
            fail(f"{suite_path}: {'no' if not found else 'more than one'} cell with id {cell_id}")
        cell = found[0]
        wandb = getattr(spec, "wandb", None)
        payload = {"wandb": wandb.model_dump(mode="json") if wandb is not None else None,
                   "cpu_threads": spec.cpu_threads}
    else:
        path = store.dir(cell_id) / "cell.json"
        source = str(path)
        if not path.is_file():
            fail(f"{path}: not found; give --suite to take the cell from a suite")
        try:
            cell = Cell.model_validate(read_json(path)["config"])
        except (StoreError, KeyError, TypeError, ValidationError) as exc:
            fail(f"{path}: not a usable cell config ({str(exc).splitlines()[0]})")
    if cell.id != cell_id and not (spec is not None and cell.id.startswith(cell_id)):
        fail(f"{source}: holds cell {cell.id}, not {cell_id}")
    import dataclasses

    from ..distributed import process_group
    from ..executors import run_cell_process, runtime_from_payload

    dev = device or (spec.device if spec is not None else "auto")
    _check_device_here(dev, "--device" if device else f"{suite_path}: device")
    ebs = eval_batch_size or (spec.eval_batch_size if spec is not None else 1024)
    if cpu_threads is not None:
        payload = {**payload, "cpu_threads": cpu_threads}
    rt = runtime_from_payload(payload, dev, cache_dir(), ebs)
    with process_group(rt.device) as rank_device:  # under torchrun: this rank's GPU (or the CPU, with gloo)
        code = run_cell_process(cell, store, dataclasses.replace(rt, device=rank_device), die_with_parent)
    sys.exit(code)
