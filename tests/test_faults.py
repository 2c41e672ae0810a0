"""One bad cell, cache file or lock never breaks a command: what a researcher sees for each fault."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import TINY, write_suite

from qcore_bench.cli import main
from qcore_bench.proxy import ProxyTrainer
from qcore_bench.store import Store
from qcore_bench.suite import expand, load_suite
from qcore_bench.teacher import OutputCache, teacher_key

EL2N = {"name": "el2n", "params": {"proxy_epochs": 1}}  # a proxy-based selector with a cheap proxy


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A cache of each test's own: these tests damage, lock and retrain teachers, and must not leave
    the session's tiny teacher trained for the tests that expect to train it."""
    monkeypatch.setenv("QCORE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def run(*args: str) -> object:
    """A command as a new process would run it: nothing kept in memory from an earlier one."""
    ProxyTrainer._memory.clear()
    OutputCache._memory.clear()
    return CliRunner().invoke(main, [*args])


def failed_cells(out: object) -> str:
    assert out.exit_code == 1, out.output
    return out.output.split("cells failed:")[1]


@pytest.mark.parametrize("which", ["teachers", "proxies"])
def test_a_corrupt_cache_file_is_named_set_aside_and_built_again_once(
        which: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "cache"
    suite, results = write_suite(tmp_path / "s.yaml", method=["random", EL2N]), tmp_path / "r"
    assert run("run", str(suite), "--results", str(results)).exit_code == 0
    before = {r["id"]: r["result"]["final_acc"] for r in Store(results).records()}
    (damaged,) = (cache / which).glob("*.pt")
    damaged.write_bytes(damaged.read_bytes()[:200])  # a copy cut short by a full disk
    out = run("run", str(suite), "--results", str(results), "--clear", "*")
    assert out.exit_code == 0, out.output
    assert caplog.text.count("is unreadable") == 1  # built again once, for both cells
    assert f"{damaged} is unreadable" in caplog.text and f"kept as {damaged.name}.corrupt" in caplog.text
    assert (damaged.parent / f"{damaged.name}.corrupt").is_file()
    assert {r["id"]: r["result"]["final_acc"] for r in Store(results).records()} == before  # the same numbers


def test_a_corrupt_detection_teacher_is_set_aside_and_built_again(tmp_path: Path, own_cache: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    from test_detection_cell import write

    suite, results = write(tmp_path / "s.yaml"), tmp_path / "r"
    assert run("run", str(suite), "--results", str(results)).exit_code == 0
    before = {r["id"]: r["result"]["final_map"] for r in Store(results).records()}
    (damaged,) = (own_cache / "teachers").glob("*.pt")
    damaged.write_bytes(b"")  # an empty file: a copy that never started
    out = run("run", str(suite), "--results", str(results), "--clear", "*")
    assert out.exit_code == 0, out.output
    assert f"detection teacher {damaged} is unreadable" in caplog.text and caplog.text.count("is unreadable") == 1
    assert {r["id"]: r["result"]["final_map"] for r in Store(results).records()} == before


def test_a_diverging_teacher_is_named_and_not_trained_again_for_each_cell(tmp_path: Path) -> None:
    teacher = {**TINY["teacher"], "lr": 1e30, "schedule": "constant"}
    suite = write_suite(tmp_path / "s.yaml", {"teacher": teacher}, method=["full", "random"])
    block = failed_cells(run("run", str(suite), "--results", str(tmp_path / "r")))
    assert block.count("the teacher diverged, not the student: epoch 0 of the teacher recipe (teacher.lr 1e+30)") == 1
    assert block.count("the teacher diverged in an earlier run (epoch 0: non-finite training loss") == 1
    assert "change the teacher recipe, or delete that file to train it again" in block


def test_a_stale_lock_of_another_host_says_what_it_waits_for_and_when_it_is_taken_over(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("QCORE_CLAIM_TIMEOUT", "2")
    suite = write_suite(tmp_path / "s.yaml", method=["random"])
    (cell,) = expand(load_suite(suite))
    lock = cache / "teachers" / f"{cell.model}-{teacher_key(cell, torch.device('cpu'))}.pt.lock"
    lock.parent.mkdir(parents=True)
    now = time.time()  # a builder on another node that died (or lost the file system) just now
    lock.write_text(json.dumps({"host": "node-17", "pid": 4242, "owner": "slurm:99_3", "token": uuid.uuid4().hex,
                                "started": now, "heartbeat": now}))
    assert socket.gethostname() != "node-17"
    out = run("run", str(suite), "--results", str(tmp_path / "r"))
    assert out.exit_code == 0, out.output
    waiting = [r.getMessage() for r in caplog.records if r.getMessage().startswith("waiting for")]
    assert len(waiting) == 1, waiting
    assert waiting[0].startswith(f"waiting for node-17:4242 (slurm:99_3), heartbeat 0s ago to build {lock.parent}")
    assert "; taken over at " in waiting[0] and "(in 2s) if its heartbeat stops" in waiting[0]
    assert f"taking over {lock}: no heartbeat for" in caplog.text


def test_a_cell_folder_that_cannot_be_written_fails_that_cell_only(tmp_path: Path) -> None:
    suite, results = write_suite(tmp_path / "s.yaml", method=["full", "random"]), tmp_path / "r"
    full, rand = expand(load_suite(suite))
    (results / "runs").mkdir(parents=True)
    (results / "runs" / rand.id).write_text("not a folder")  # what a full quota or a bad mount looks like, as root
    out = run("run", str(suite), "--results", str(results))
    block = failed_cells(out)
    assert "1 of 2 cells failed" in out.output
    assert f"{rand.id}: cell folder {results / 'runs' / rand.id} cannot be written (FileExistsError" in block
    assert Store(results).is_done(full.id)


def test_a_results_folder_that_cannot_be_written_is_one_line_exit_2(tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "s.yaml", method=["random"])
    (tmp_path / "blocked").write_text("a file where a folder should be")  # cannot be made writable, even by root
    cases = [(tmp_path / "blocked" / "r", "Not a directory")]
    if os.geteuid() != 0:  # root writes a read-only folder anyway
        (tmp_path / "ro").mkdir(mode=0o555)
        cases.append((tmp_path / "ro", "Permission denied"))
    for results, why in cases:
        out = run("run", str(suite), "--results", str(results))
        assert out.exit_code == 2 and out.output == f"error: --results {results}: cannot write there ({why})\n"


def test_cells_running_elsewhere_exit_75_so_a_script_knows_work_is_left(tmp_path: Path) -> None:
    suite, results = write_suite(tmp_path / "s.yaml", method=["full", "random"]), tmp_path / "r"
    full, rand = expand(load_suite(suite))
    (results / "runs" / rand.id).mkdir(parents=True)
    now = time.time()
    (results / "runs" / rand.id / "claim.json").write_text(json.dumps(
        {"host": "node-17", "pid": 4242, "owner": "node-17:4242", "token": uuid.uuid4().hex, "started": now,
         "heartbeat": now}))
    out = run("run", str(suite), "--results", str(results))
    assert out.exit_code == 75, out.output
    assert "1 running elsewhere" in out.output and "exit status 75" in out.output
    assert Store(results).is_done(full.id)
    assert "75 some cells are being run by other processes" in " ".join(run("run", "--help").output.split())


SAVE_THEN_TERM = """
import os, signal, sys
import matplotlib.figure
real = matplotlib.figure.Figure.savefig
def savefig(self, f, **kw):  # SIGTERM arrives while the first plot is half written
    f.write(b"half a png")
    os.kill(os.getpid(), signal.SIGTERM)
    return real(self, f, **kw)
matplotlib.figure.Figure.savefig = savefig
from qcore_bench.cli import main
main(sys.argv[1:])
"""


def test_sigterm_during_table_leaves_no_hidden_temp_files(tmp_path: Path) -> None:
    suite, results = write_suite(tmp_path / "s.yaml", method=["random"]), tmp_path / "r"
    assert run("run", str(suite), "--results", str(results)).exit_code == 0
    out = subprocess.run([sys.executable, "-c", SAVE_THEN_TERM, "table", "--results", str(results), "--out",
                          str(tmp_path / "t")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 130, out.stderr
    assert sorted(p.name for p in (tmp_path / "t").iterdir() if p.name.startswith(".")) == []
