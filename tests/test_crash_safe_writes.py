"""A process killed in the middle of writing a file leaves the previous version readable.

Not left to the luck of a signal's timing: the run is killed from inside the write
itself (``torch.save`` of the third checkpoint, or ``json.dump`` of ``result.json``,
write half of the bytes, flush them to disk, then SIGKILL), so every run of the test
checks a kill that lands mid-write. The next run resumes and cleans up the half file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import write_suite

from qcore_bench.cli import main
from qcore_bench.store import Store

KILLER = '''
import io, json, os, signal, sys
import torch

target, args = sys.argv[1], sys.argv[2:]
real_save, real_dump = torch.save, json.dump


def die_half_way(f, data):
    """Write half of what the real call would have written, make it durable, and die as -9 does."""
    f.write(data[: len(data) // 2])
    f.flush()
    os.fsync(f.fileno())
    os.kill(os.getpid(), signal.SIGKILL)


def save(obj, f, *a, **k):
    if target == "ckpt" and isinstance(obj, dict) and "history" in obj and obj.get("epoch") == 3:
        buf = io.BytesIO()
        real_save(obj, buf, *a, **k)
        die_half_way(f, buf.getvalue())
    return real_save(obj, f, *a, **k)


def dump(obj, f, *a, **k):
    if target == "result" and isinstance(obj, dict) and "final_acc" in obj:
        die_half_way(f, json.dumps(obj, *a, **k))
    return real_dump(obj, f, *a, **k)


torch.save, json.dump = save, dump
from qcore_bench.cli import main
main(args)
'''


def killed_inside(tmp_path: Path, target: str) -> tuple[Path, Path, Store]:
    """Run a one-cell suite in a process that kills itself inside the write of ``target``."""
    suite, results = write_suite(tmp_path / "s.yaml", method=["random"]), tmp_path / "r"
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "QCORE_CACHE": str(tmp_path / "cache")}  # a teacher of its own
    proc = subprocess.run([sys.executable, str(script), target, "run", str(suite), "--results", str(results)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    (cell,) = (results / "runs").iterdir()
    return suite, cell, Store(results)


def resume(suite: Path, store: Store) -> None:
    out = CliRunner().invoke(main, ["run", str(suite), "--results", str(store.root)],
                             env={"QCORE_CACHE": str(store.root.parent / "cache")})
    assert out.exit_code == 0, out.output
    assert "1 cells, 0 done, 1 to run" in out.output


def test_a_kill_inside_a_checkpoint_write_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    suite, cell, store = killed_inside(tmp_path, "ckpt")
    (half,) = cell.glob(".ckpt.pt.*.tmp")  # the kill landed mid-write, in the temp file
    assert half.stat().st_size > 0
    state = torch.load(cell / "ckpt.pt", weights_only=False)  # the target still holds a whole checkpoint
    assert state["epoch"] == 2 and len(state["history"]) == 2
    assert len(store.history(cell.name)) == 2 and store.status(cell.name) == "interrupted"
    resume(suite, store)
    assert [h["epoch"] for h in store.history(cell.name)] == [0, 1, 2, 3]
    assert not list(cell.glob(".*.tmp"))


def test_a_kill_inside_the_result_write_leaves_the_cell_unfinished_not_damaged(tmp_path: Path) -> None:
    suite, cell, store = killed_inside(tmp_path, "result")
    (half,) = cell.glob(".result.json.*.tmp")
    with pytest.raises(json.JSONDecodeError, match="Unterminated|Expecting"):
        json.loads(half.read_text())  # truly half a file
    assert not (cell / "result.json").exists() and store.status(cell.name) == "interrupted"
    resume(suite, store)
    assert store.result(cell.name)["epochs"] == 4 and not list(cell.glob(".*.tmp"))
