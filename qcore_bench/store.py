"""The results store: one folder per cell, every file written atomically.

    <results>/runs/<cell_id>/cell.json      resolved config + provenance
                             status.json    running | done | failed (+ reason, heartbeat)
                             history.jsonl  one line per finished epoch
                             ckpt.pt        state after the last finished epoch
                             result.json    written last: its presence means done
                             error.txt      traceback of the last failure

A killed run loses at most the epoch in flight; a finished result is never rewritten.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from .suite import Cell


def atomic_write(path: Path, write: Any, mode: str = "w") -> None:
    """Write through a temp file in the same folder, then rename: readers see old or new, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: json.dump(obj, f, indent=2, sort_keys=True))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Store:
    """A results folder. Cells are addressed by id; everything else is derived from files."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.runs = self.root / "runs"

    def dir(self, cell_id: str) -> Path:
        return self.runs / cell_id

    def is_done(self, cell_id: str) -> bool:
        return (self.dir(cell_id) / "result.json").is_file()

    def read_status(self, cell_id: str) -> dict[str, Any]:
        path = self.dir(cell_id) / "status.json"
        return json.loads(path.read_text()) if path.is_file() else {}

    def status(self, cell_id: str) -> str:
        """pending | running | interrupted | failed | done."""
        if self.is_done(cell_id):
            return "done"
        st = self.read_status(cell_id)
        state = st.get("state")
        if state == "running":
            same_host = st.get("host") == socket.gethostname()
            return "running" if not same_host or _pid_alive(int(st.get("pid", -1))) else "interrupted"
        return state or "pending"

    # ------------------------------------------------------------ writing a cell

    def begin(self, cell: Cell, provenance: dict[str, Any]) -> None:
        d = self.dir(cell.id)
        d.mkdir(parents=True, exist_ok=True)
        write_json(d / "cell.json", {"id": cell.id, "config": cell.model_dump(mode="json"), "provenance": provenance})
        self.heartbeat(cell.id, started=time.time())

    def heartbeat(self, cell_id: str, **extra: Any) -> None:
        prev = self.read_status(cell_id)
        write_json(self.dir(cell_id) / "status.json",
                   {**prev, **extra, "state": "running", "host": socket.gethostname(), "pid": os.getpid(),
                    "heartbeat": time.time()})

    def save_checkpoint(self, cell_id: str, state: dict[str, Any], history_line: dict[str, Any]) -> None:
        """The checkpoint first, then the history line it covers (history is rebuilt on resume)."""
        d = self.dir(cell_id)
        atomic_write(d / "ckpt.pt", lambda f: torch.save(state, f), mode="wb")
        with open(d / "history.jsonl", "a") as f:
            f.write(json.dumps(history_line, sort_keys=True) + "\n")

    def load_checkpoint(self, cell_id: str) -> dict[str, Any] | None:
        path = self.dir(cell_id) / "ckpt.pt"
        if not path.is_file():
            return None
        state = torch.load(path, map_location="cpu", weights_only=False)
        # history.jsonl may hold a line past the checkpoint (killed between the two writes)
        atomic_write(self.dir(cell_id) / "history.jsonl",
                     lambda f: f.writelines(json.dumps(h, sort_keys=True) + "\n" for h in state["history"]))
        return state

    def finish(self, cell_id: str, result: dict[str, Any]) -> None:
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

    def records(self) -> Iterator[dict[str, Any]]:
        """Every finished cell as {"id", "config", "result"}."""
        if not self.runs.is_dir():
            return
        for d in sorted(self.runs.iterdir()):
            res, cfg = d / "result.json", d / "cell.json"
            if res.is_file() and cfg.is_file():
                cell = json.loads(cfg.read_text())
                yield {"id": cell["id"], "config": cell["config"], "result": json.loads(res.read_text())}
