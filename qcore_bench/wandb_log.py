"""Weights & Biases: one W&B run per cell, offline sync, and tables from a W&B project.

The local results folder stays the source of truth: any W&B failure is reported once
and the run goes on without it. wandb is imported only when logging is enabled.

Without a network W&B must never stall a sweep: ``wandb.init`` gives up after
``init_timeout`` seconds (wandb's own default waits 90 s per cell), and the first failure
to reach W&B switches the rest of the sweep to offline logging, without trying again: in
this process, and in every cell process of the same ``run`` (they share its session id
through the environment and read the marker file it leaves in the results folder).
``qcore-bench sync`` uploads the offline runs later.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field

from .files import write_json

log = logging.getLogger(__name__)
ID_FILE = "wandb_id"
SESSION_ENV = "QCORE_WANDB_SESSION"  # one id per `run` command, inherited by its cell processes
MARKER = "wandb_offline.json"  # in the results folder: W&B was unreachable in this session
_unreachable: dict[str, str] = {}  # session -> why W&B could not be reached (this process)


class WandbCfg(BaseModel):
    """The suite's ``wandb:`` section (runtime: not part of cell ids)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = False
    project: str = "qcore-bench"
    entity: str | None = None
    mode: Literal["online", "offline", "disabled"] | None = None  # None: WANDB_MODE, else online
    tags: list[str] = []
    init_timeout: float = Field(10.0, gt=0, allow_inf_nan=False)  # seconds wandb.init may try to reach W&B


def session() -> str:
    """The id of this sweep, set once in the environment so that the cell processes it starts share it."""
    if not os.environ.get(SESSION_ENV):
        os.environ[SESSION_ENV] = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    return os.environ[SESSION_ENV]


def unreachable(results: Path) -> str | None:
    """Why W&B could not be reached earlier in this sweep (by any of its processes); None if it was not."""
    sid = session()
    if sid in _unreachable:
        return _unreachable[sid]
    try:
        marker = json.loads((results / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if isinstance(marker, dict) and marker.get("session") == sid:
        _unreachable[sid] = str(marker.get("reason", "?"))
        return _unreachable[sid]
    return None


def _mark_unreachable(results: Path, reason: str) -> None:
    _unreachable[session()] = reason
    try:
        write_json(results / MARKER, {"session": session(), "reason": reason, "time": time.time()})
    except OSError:  # a read-only folder: this process still stops trying
        pass


def summary_line(results: Path) -> str | None:
    """The end-of-run line when this sweep found W&B unreachable, saying how to upload later."""
    reason = unreachable(results)
    if reason is None:
        return None
    return (f"W&B was unreachable ({reason}); every cell after that logged W&B offline: "
            f"`qcore-bench sync --results {results}` uploads them")


class WandbRun:
    """Logs one cell; every call is a no-op after the first W&B failure."""

    def __init__(self, cfg: WandbCfg, cell: Any, cell_dir: Path, warn: Callable[[str], None]) -> None:
        self.cfg, self.cell, self.dir, self.warn = cfg, cell, cell_dir, warn
        self.results = cell_dir.parent.parent  # <results>/runs/<cell_id>
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

    def _init(self, mode: str) -> None:
        import wandb

        c = self.cell
        self.run = wandb.init(
            project=self.cfg.project, entity=self.cfg.entity, id=self.run_id(), resume="allow",
            group=c.suite, job_type=c.method.name, name=f"{c.method.name}-{c.id}", dir=str(self.dir), mode=mode,
            tags=[*self.cfg.tags, f"dataset:{c.dataset.name}", f"bits:{c.bits}", f"fraction:{c.fraction:g}",
                  f"noise:{c.noise.label}", f"seed:{c.seed}"],
            config={"cell_id": c.id, **c.model_dump(mode="json")},
            settings=wandb.Settings(silent=True, console="off", init_timeout=self.cfg.init_timeout))

    def start(self) -> None:
        """Online until W&B is first found unreachable in this sweep, offline (for `sync`) from then on."""
        mode = self.cfg.mode or os.environ.get("WANDB_MODE", "online")
        if mode == "online" and unreachable(self.results) is not None:
            mode = "offline"
        if mode != "online":
            self._guard("init", lambda: self._init(mode))
            return
        try:
            self._init("online")
        except Exception as exc:  # no network, a wrong key, W&B down: never retried in this sweep
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            _mark_unreachable(self.results, reason)
            self.warn(f"W&B unreachable for cell {self.cell.id} ({reason}); this run logs W&B offline from "
                      "now on (`qcore-bench sync` uploads it later)")
            self._guard("offline init", lambda: self._init("offline"))

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
