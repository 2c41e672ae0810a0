"""The results store: one folder per cell, every file written atomically.

    <results>/runs/<cell_id>/cell.json      resolved config + provenance
                             status.json    running | done | failed (+ reason, heartbeat)
                             history.jsonl  one line per finished epoch
                             ckpt.pt        state after the last finished epoch
                             result.json    written last: its presence means done
                             error.txt      traceback of the last failure
                             claim.json     who runs the cell now (host, pid, heartbeat): see claims.py
                             claims.log     one line per claim taken: who ran the cell, when
                             log.txt        output of the cell's own process (local executor)

A killed run loses at most the epoch in flight; a finished result is never rewritten.
A cell is run only by the process holding its claim.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from .claims import Claim, claim_timeout, describe, read_claim, remove_stale, stale_reason
from .files import atomic_write, write_json
from .cells import Cell

log = logging.getLogger(__name__)


class StoreError(RuntimeError):
    """A results file that cannot be used as it is; the message names the file and what to do."""


def read_json(path: Path) -> Any:
    """A JSON file's content; StoreError naming the file when it is truncated or not JSON."""
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path}: unreadable (truncated or damaged: {exc})") from None


class Store:
    """A results folder. Cells are addressed by id; everything else is derived from files."""

    def __init__(self, root: str | Path, claim_timeout_s: float | None = None) -> None:
        self.root = Path(root)
        self.runs = self.root / "runs"
        self._claim_timeout_s = claim_timeout_s
        self._claims: dict[str, Claim] = {}
        self.problems: list[str] = []  # unreadable files met by records(), for the caller to report

    @property
    def claim_timeout(self) -> float:
        """Seconds without a heartbeat after which a claim is stale (read only where claims matter)."""
        return claim_timeout(self._claim_timeout_s)

    def dir(self, cell_id: str) -> Path:
        return self.runs / cell_id

    def result(self, cell_id: str) -> dict[str, Any] | None:
        """The finished result, None while not done; StoreError when result.json is unreadable."""
        path = self.dir(cell_id) / "result.json"
        return read_json(path) if path.is_file() else None

    def is_done(self, cell_id: str) -> bool:
        """result.json exists and reads: a damaged one (a bad copy) means the cell is finished again."""
        try:
            return self.result(cell_id) is not None
        except StoreError:
            return False

    def read_status(self, cell_id: str) -> dict[str, Any]:
        """status.json, or {} when absent or damaged (the other files say where the cell stands)."""
        path = self.dir(cell_id) / "status.json"
        try:
            st = read_json(path) if path.is_file() else {}
        except StoreError:
            return {}
        return st if isinstance(st, dict) else {}

    def holder(self, cell_id: str) -> dict[str, Any] | None:
        """The live holder of the cell's claim; None when unclaimed or the claim is stale."""
        info = read_claim(self.dir(cell_id) / "claim.json")
        return None if info is None or stale_reason(info, self.claim_timeout) else info

    def status(self, cell_id: str) -> str:
        """pending | running | interrupted | failed | done | unreadable (a damaged result.json)."""
        d = self.dir(cell_id)
        if (d / "result.json").is_file():
            return "done" if self.is_done(cell_id) else "unreadable"
        if self.holder(cell_id) is not None:
            return "running"
        state = self.read_status(cell_id).get("state")
        if state == "failed":
            return "failed"
        if state in ("running", "interrupted") or (d / "claim.json").exists():
            return "interrupted"
        return "pending"

    # ------------------------------------------------------------ claims

    def claim(self, cell_id: str, owner: str | None = None) -> Claim | None:
        """Claim the cell for this process (None when a live process holds it); heartbeats start."""
        d = self.dir(cell_id)
        claim = Claim.acquire(d / "claim.json", self.claim_timeout, owner)
        if claim is None:
            return None
        self._claims[cell_id] = claim
        with open(d / "claims.log", "a") as f:
            f.write(json.dumps({k: claim.info[k] for k in ("host", "pid", "owner", "started")}) + "\n")
        claim.start_heartbeat()
        return claim

    def release(self, cell_id: str) -> None:
        claim = self._claims.pop(cell_id, None)
        if claim is not None:
            claim.release()

    def break_claim(self, cell_id: str, pid: int) -> None:
        """Remove the claim left by a process of this host known to be dead (a crashed child)."""
        path = self.dir(cell_id) / "claim.json"
        info = read_claim(path)
        if info is not None and info.get("pid") == pid and info.get("host") == socket.gethostname():
            remove_stale(path, info)

    def _check_claim(self, cell_id: str) -> None:
        """Raise ClaimLost before writing if another process took the cell over."""
        claim = self._claims.get(cell_id)
        if claim is not None:
            claim.check()

    # ------------------------------------------------------------ writing a cell

    def begin(self, cell: Cell, provenance: dict[str, Any]) -> None:
        d = self.dir(cell.id)
        d.mkdir(parents=True, exist_ok=True)
        for tmp in d.glob(".*.tmp"):  # half-written files of a killed run (claim files have their own)
            if not tmp.name.startswith(".claim.json."):
                tmp.unlink(missing_ok=True)
        write_json(d / "cell.json", {"id": cell.id, "config": cell.model_dump(mode="json"), "provenance": provenance})
        write_json(d / "status.json", {})  # a new attempt: the last failure's reason stays in error.txt
        self.heartbeat(cell.id, started=time.time())

    def heartbeat(self, cell_id: str, **extra: Any) -> None:
        claim = self._claims.get(cell_id)
        if claim is not None:
            claim.beat()  # raises ClaimLost: this process must stop writing the cell
        prev = self.read_status(cell_id)
        write_json(self.dir(cell_id) / "status.json",
                   {**prev, **extra, "state": "running", "host": socket.gethostname(), "pid": os.getpid(),
                    "heartbeat": time.time()})

    def save_checkpoint(self, cell_id: str, state: dict[str, Any], history_line: dict[str, Any]) -> None:
        """The checkpoint first, then the history line it covers (history is rebuilt on resume)."""
        self._check_claim(cell_id)
        d = self.dir(cell_id)
        state = {**state, "cell": cell_id}  # a checkpoint copied into another cell's folder is refused
        atomic_write(d / "ckpt.pt", lambda f: torch.save(state, f), mode="wb")
        with open(d / "history.jsonl", "a") as f:
            f.write(json.dumps(history_line, sort_keys=True) + "\n")

    def load_checkpoint(self, cell_id: str) -> dict[str, Any] | None:
        """The last epoch's state; None (start over) when there is none or it is unreadable."""
        path = self.dir(cell_id) / "ckpt.pt"
        history = self.dir(cell_id) / "history.jsonl"
        if not path.is_file():
            history.unlink(missing_ok=True)  # lines without a checkpoint cannot be resumed from
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # truncated or damaged: nothing in it can be trusted
            os.replace(path, path.with_name("ckpt.pt.unreadable"))
            history.unlink(missing_ok=True)
            log.warning("%s is unreadable (%s: %s); kept as ckpt.pt.unreadable, the cell starts over",
                        path, type(exc).__name__, exc)
            return None
        if not isinstance(state, dict) or "history" not in state:
            raise StoreError(f"{path}: not a qcore-bench checkpoint; remove it or run --clear {cell_id}")
        if state.get("cell", cell_id) != cell_id:
            raise StoreError(f"{path} belongs to cell {state['cell']}, not {cell_id} (a copied or renamed "
                             f"folder?); remove it, or discard the cell with `qcore-bench run --clear {cell_id}`")
        # history.jsonl may hold a line past the checkpoint (killed between the two writes)
        atomic_write(history,
                     lambda f: f.writelines(json.dumps(h, sort_keys=True) + "\n" for h in state["history"]))
        return state

    def read_checkpoint(self, cell_id: str) -> dict[str, Any]:
        """The checkpoint as it is on disk: what the other ranks of a multi-process run read
        after rank 0 checked (and, if need be, repaired) it with ``load_checkpoint``."""
        return torch.load(self.dir(cell_id) / "ckpt.pt", map_location="cpu", weights_only=False)

    def finish(self, cell_id: str, result: dict[str, Any]) -> None:
        self._check_claim(cell_id)
        d = self.dir(cell_id)
        write_json(d / "result.json", result)
        write_json(d / "status.json", {**self.read_status(cell_id), "state": "done", "finished": time.time()})

    def interrupt(self, cell_id: str) -> None:
        write_json(self.dir(cell_id) / "status.json", {**self.read_status(cell_id), "state": "interrupted"})

    def fail(self, cell_id: str, reason: str, traceback_text: str) -> None:
        d = self.dir(cell_id)
        d.mkdir(parents=True, exist_ok=True)
        atomic_write(d / "error.txt", lambda f: f.write(traceback_text))
        write_json(d / "status.json", {**self.read_status(cell_id), "state": "failed", "reason": reason,
                                       "failed": time.time()})

    # ------------------------------------------------------------ reading

    def history(self, cell_id: str) -> list[dict[str, Any]]:
        path = self.dir(cell_id) / "history.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []

    def records(self) -> Iterator[dict[str, Any]]:
        """Every finished cell as {"id", "config", "result"}; unreadable ones go to ``problems``."""
        if not self.runs.is_dir():
            return
        for d in sorted(self.runs.iterdir()):
            res, cfg = d / "result.json", d / "cell.json"
            if res.is_file() and cfg.is_file():
                try:
                    cell, result = read_json(cfg), read_json(res)
                    record = {"id": cell["id"], "config": cell["config"], "result": result}
                except (StoreError, KeyError, TypeError) as exc:
                    self.problems.append(f"{d}: skipped, {exc}")
                    continue
                yield record

    def stored(self) -> dict[str, dict[str, Any]]:
        """Config of every cell that has a folder with a readable cell.json, by id."""
        out: dict[str, dict[str, Any]] = {}
        for cfg in sorted(self.runs.glob("*/cell.json")):
            try:
                out[cfg.parent.name] = read_json(cfg)["config"]
            except (StoreError, KeyError, TypeError):
                self.problems.append(f"{cfg}: unreadable")
        return out

    def clear(self, cell_id: str) -> None:
        """Discard a cell's folder so that it runs from scratch; refused while a live process runs it."""
        d = self.dir(cell_id)
        if not d.exists():
            return
        claim = Claim.acquire(d / "claim.json", self.claim_timeout)
        if claim is None:
            raise StoreError(f"cell {cell_id} is running ({describe(read_claim(d / 'claim.json') or {})}); "
                             "not cleared")
        shutil.rmtree(d)
        claim.release()
