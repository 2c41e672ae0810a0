"""What every executor shares: the job, the summary, and ``run_one``, the idempotent unit of work."""

from __future__ import annotations

import json
import logging
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import distributed
from ..claims import ClaimLost, describe
from ..loggers import ConsoleProgress
from ..runner import EpochCallback, Runtime, resolve_device, run_cell
from ..store import Store
from ..tasks import headline
from ..cells import Cell

log = logging.getLogger(__name__)
EXIT_DONE, EXIT_FAILED, EXIT_ELSEWHERE, EXIT_INTERRUPTED = 0, 1, 75, 130


class ExecutorError(RuntimeError):
    """An executor that cannot start (bad option, missing extra, submission refused)."""


@dataclass(frozen=True)
class Job:
    """What every executor needs besides the cells."""

    store: Store
    device: str  # as the user wrote it: "auto" is resolved where each cell runs (a GPU node, a slot)
    cache_dir: Path
    eval_batch_size: int = 1024
    suite: Any = None  # the Suite, for suite-level executor settings (its ``slurm:`` section)
    cpu_threads: int = 1  # torch threads of each CPU cell (pinned by run_cell, recorded in provenance)

    @property
    def wandb(self) -> Any:
        return getattr(self.suite, "wandb", None)

    def runtime(self) -> Runtime:
        return Runtime(resolve_device(self.device), self.cache_dir, self.eval_batch_size, wandb=self.wandb,
                       cpu_threads=self.cpu_threads)

    def payload(self, cell: Cell) -> str:
        """What a cell process needs besides its command line: the cell and the suite's runtime settings."""
        wandb = self.wandb.model_dump(mode="json") if self.wandb is not None else None
        return json.dumps({"cell": cell.model_dump(mode="json"), "wandb": wandb, "cpu_threads": self.cpu_threads})


def runtime_from_payload(payload: dict[str, Any], device: str, cache_dir: Path, eval_batch_size: int) -> Runtime:
    wandb = None
    if payload.get("wandb") is not None:
        from ..wandb_log import WandbCfg

        wandb = WandbCfg.model_validate(payload["wandb"])
    return Runtime(resolve_device(device), cache_dir, eval_batch_size, wandb=wandb,
                   cpu_threads=int(payload.get("cpu_threads") or 1))


@dataclass
class Summary:
    done: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # cell id -> reason
    elsewhere: dict[str, str] = field(default_factory=dict)  # cell id -> who runs it
    submitted: list[str] = field(default_factory=list)  # handed to a scheduler, not waited for
    interrupted: bool = False
    note: str = ""


@dataclass
class Outcome:
    state: str  # done | failed | elsewhere
    reason: str = ""
    result: dict[str, Any] | None = None
    ran: bool = True  # False: found done (finished earlier or by another process)


def outcome_line(cell: Cell, out: Outcome, store: Store) -> str:
    """How a cell's end reads on run-cell's stderr and in its log.txt, whichever executor ran it."""
    if out.state == "done":
        value, metric = headline(out.result or {})
        return f"{cell.id} {'done' if out.ran else 'was already done'}: final {metric} {value:.2f}"
    if out.state == "elsewhere":
        return f"{cell.id} is being run by {out.reason}; not started"
    return f"{cell.id} failed: {out.reason} (see {store.dir(cell.id) / 'error.txt'})"


def _claim(cell: Cell, store: Store, owner: str | None) -> Outcome | None:
    """Claim the cell for this process: None, or why it is not to be run here."""
    if store.is_done(cell.id):
        return Outcome("done", result=store.result(cell.id), ran=False)
    if store.claim(cell.id, owner) is None:
        holder = store.holder(cell.id)
        return Outcome("elsewhere", describe(holder) if holder else "another process")
    if store.is_done(cell.id):  # finished by another process between the check and the claim
        store.release(cell.id)
        return Outcome("done", result=store.result(cell.id), ran=False)
    return None


def run_one(cell: Cell, store: Store, rt: Runtime, on_epoch: EpochCallback | None = None,
            owner: str | None = None) -> Outcome:
    """The idempotent unit of work: done cells are skipped, claimed ones left to their holder.

    Under torchrun, rank 0 alone claims and records the cell; the other ranks follow its
    decision. A rank > 0 that fails prints its traceback and exits, and torchrun stops the
    others (rank 0 then records the cell as interrupted, resumable).
    """
    main = distributed.is_main()
    early = distributed.broadcast_object(_claim_or_fail(cell, store, owner) if main else None)
    if early is not None:
        return early
    try:
        return Outcome("done", result=run_cell(cell, store, rt, on_epoch=on_epoch))
    except ClaimLost as exc:
        return Outcome("elsewhere", str(exc))
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, SIGTERM, submitit's exit after a requeue
        if main:
            store.interrupt(cell.id)  # resumable from its last checkpoint
        raise
    except Exception as exc:  # one broken cell must not lose the others
        reason = f"{type(exc).__name__}: {exc}".strip().splitlines()[0]
        if main:
            record_failure(store, cell.id, reason, traceback.format_exc())
        else:
            traceback.print_exc()
        return Outcome("failed", reason)
    finally:
        store.release(cell.id)


def _claim_or_fail(cell: Cell, store: Store, owner: str | None) -> Outcome | None:
    """``_claim``; a cell folder that cannot be written fails this cell, not the command."""
    try:
        return _claim(cell, store, owner)
    except OSError as exc:
        reason = f"cell folder {store.dir(cell.id)} cannot be written ({type(exc).__name__}: {exc.strerror or exc})"
        record_failure(store, cell.id, reason, traceback.format_exc())
        return Outcome("failed", reason)


def record_failure(store: Store, cell_id: str, reason: str, traceback_text: str) -> None:
    """Mark the cell failed; when its folder cannot take even that, the summary still names it."""
    try:
        store.fail(cell_id, reason, traceback_text)
    except OSError as exc:
        log.warning("cell %s failed (%s), and that could not be recorded in %s: %s", cell_id, reason,
                    store.dir(cell_id), exc)


class Executor:
    """Base class of executors; subclasses take their options as explicit keyword arguments."""

    def run(self, cells: list[Cell], job: Job) -> Summary:
        raise NotImplementedError



def total_epochs(cells: list[Cell]) -> int:
    return sum(c.train.epochs for c in cells)


def record(summary: Summary, progress: ConsoleProgress, i: int, cell: Cell, out: Outcome, seconds: float) -> None:
    if out.state == "done":
        summary.done.append(cell.id)
        if out.ran:
            value, metric = headline(out.result or {})
            progress.done_cell(i, cell, value, seconds, metric)
        else:
            progress.note(f"skip {i}/{progress.n_cells} {cell.id}: finished by another process")
    elif out.state == "failed":
        summary.failed[cell.id] = out.reason
        progress.failed_cell(i, cell, out.reason)
    else:
        summary.elsewhere[cell.id] = out.reason

