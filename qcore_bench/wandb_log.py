"""Weights & Biases: one W&B run per cell, offline sync, and tables from a W&B project.

The local results folder stays the source of truth: any W&B failure is reported once
and the run goes on without it. wandb is imported only when logging is enabled.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

from pydantic import BaseModel, ConfigDict

log = logging.getLogger(__name__)
ID_FILE = "wandb_id"


class WandbCfg(BaseModel):
    """The suite's ``wandb:`` section (runtime: not part of cell ids)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    project: str = "qcore-bench"
    entity: str | None = None
    mode: Literal["online", "offline", "disabled"] | None = None  # None: WANDB_MODE, else online
    tags: list[str] = []


class WandbRun:
    """Logs one cell; every call is a no-op after the first W&B failure."""

    def __init__(self, cfg: WandbCfg, cell: Any, cell_dir: Path, warn: Callable[[str], None]) -> None:
        self.cfg, self.cell, self.dir, self.warn = cfg, cell, cell_dir, warn
        self.run: Any = None
        self.broken = False

    def _guard(self, what: str, fn: Callable[[], Any]) -> None:
        if self.broken:
            return
        try:
            fn()
        except Exception as exc:  # W&B must never fail a run
            self.broken = True
            self.warn(f"W&B {what} failed for cell {self.cell.id}: {type(exc).__name__}: {exc}; "
                      "continuing without W&B (local results are unaffected)")

    def run_id(self) -> str:
        """The id stored with the cell: a resumed cell continues its W&B run, a cleared one gets a new id."""
        path = self.dir / ID_FILE
        if not path.is_file():
            path.write_text(f"{self.cell.id}-{secrets.token_hex(3)}")
        return path.read_text().strip()

    def start(self) -> None:
        def init() -> None:
            import wandb

            c = self.cell
            self.run = wandb.init(
                project=self.cfg.project, entity=self.cfg.entity, id=self.run_id(), resume="allow",
                group=c.suite, job_type=c.method.name, name=f"{c.method.name}-{c.id}", dir=str(self.dir),
                mode=self.cfg.mode or os.environ.get("WANDB_MODE", "online"),
                tags=[*self.cfg.tags, f"dataset:{c.dataset.name}", f"bits:{c.bits}", f"fraction:{c.fraction:g}",
                      f"noise:{c.noise.label}", f"seed:{c.seed}"],
                config={"cell_id": c.id, **c.model_dump(mode="json")},
                settings=wandb.Settings(silent=True, console="off"))
        self._guard("init", init)

    def epoch(self, line: dict[str, Any]) -> None:
        self._guard("log", lambda: self.run.log(line, step=line["epoch"]))

    def finish(self, result: dict[str, Any] | None) -> None:
        def end() -> None:
            if result is not None:
                self.run.summary.update(result)
            self.run.finish(exit_code=0 if result is not None else 1)
        self._guard("finish", end)


def offline_runs(results: Path) -> list[Path]:
    """Every offline W&B run folder under a results folder."""
    return sorted(results.glob("runs/*/wandb/offline-run-*"))


def sync(results: Path, run: Callable[..., Any] = subprocess.run) -> list[Path]:
    """Upload the offline runs with ``wandb sync``; returns the folders synced."""
    dirs = offline_runs(results)
    if dirs:
        run([sys.executable, "-m", "wandb", "sync", *map(str, dirs)], check=True)
    return dirs


def _is_rate_limit(exc: Exception) -> bool:
    text = f"{type(exc).__name__} {exc}".lower()
    return "429" in text or "rate limit" in text or "too many requests" in text


def records_from_wandb(path: str, group: str | None = None, api: Any = None, retries: int = 5,
                       sleep: Callable[[float], None] = time.sleep) -> Iterator[dict[str, Any]]:
    """Finished cells of a W&B project in the store's record shape (id, config, result).

    Pages through ``wandb.Api().runs``; a run seen twice (pagination shifts while runs
    finish) is kept once; rate limits are retried with exponential backoff.
    """
    if api is None:
        import wandb

        api = wandb.Api()
    filters = {"group": group} if group else {}
    for attempt in range(retries + 1):
        try:
            seen: dict[str, dict[str, Any]] = {}
            for run in api.runs(path, filters=filters, per_page=200):
                summary = dict(run.summary)
                config = dict(run.config)
                if "final_acc" not in summary or "cell_id" not in config:
                    continue  # unfinished, or not a qcore-bench run
                cell_id = config.pop("cell_id")
                seen[cell_id] = {"id": cell_id, "config": config, "result": summary}
            yield from seen.values()
            return
        except Exception as exc:
            if not _is_rate_limit(exc) or attempt == retries:
                raise
            wait = 2.0 ** attempt
            log.warning("W&B rate limit, retrying in %.0fs", wait)
            sleep(wait)
