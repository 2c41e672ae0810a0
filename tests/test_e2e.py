"""The whole path: suite -> cells -> QAT runner -> store (resume, failures) -> table."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import write_suite

from qcore_bench.cli import main
from qcore_bench.registry import Entry, registry
from qcore_bench.runner import Runtime, run_cell
from qcore_bench.selection import Selection, SelectionContext, Selector
from qcore_bench.store import Store
from qcore_bench.suite import expand, load_suite


def results_of(results: Path) -> dict[str, dict]:
    return {r["id"]: r for r in Store(results).records()}


def test_run_then_table_then_rerun_does_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QCORE_CACHE", str(tmp_path / "cache"))  # a cold cache: the teacher is trained here
    suite, results = write_suite(tmp_path / "s.yaml"), tmp_path / "results"
    out = CliRunner().invoke(main, ["run", str(suite), "--results", str(results)])
    assert out.exit_code == 0, out.output
    runs = results_of(results)
    assert len(runs) == 3
    for cid, rec in runs.items():
        d = results / "runs" / cid
        assert {p.name for p in d.iterdir()} >= {"cell.json", "status.json", "history.jsonl", "ckpt.pt", "result.json"}
        history = [json.loads(line) for line in (d / "history.jsonl").read_text().splitlines()]
        assert [h["epoch"] for h in history] == [0, 1, 2, 3]
        res = rec["result"]
        assert res["final_acc"] == history[-1]["test_acc"]  # the headline is the last epoch's
        assert res["best_acc_over_epochs"] == max(h["test_acc"] for h in history)
        method = rec["config"]["method"]["name"]
        budget = 256 if method == "full" else 64
        assert res["samples_trained"] == 4 * budget
        assert res["selections"] == {"full": 1, "random": 1, "acs": 2}[method]  # acs: epochs 0 and 2
        assert 0 <= res["noisy_selected_frac_mean"] <= 1
        assert res["noisy_in_train"] == round(0.2 * 256)
    assert sum(not r["result"]["teacher"]["cached"] for r in runs.values()) == 1  # one teacher, shared

    mtimes = {p: p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file()}
    again = CliRunner().invoke(main, ["run", str(suite), "--results", str(results)])
    assert again.exit_code == 0 and "0 to run" in again.output
    assert mtimes == {p: p.stat().st_mtime_ns for p in results.rglob("*") if p.is_file()}

    out = CliRunner().invoke(main, ["table", "--results", str(results), "--out", str(tmp_path / "tables")])
    assert out.exit_code == 0, out.output
    rows = {line.split("|")[1].strip(): line for line in out.output.splitlines() if line.startswith("| ")}
    assert set(rows) == {"method", "full", "random", "acs"}
    assert "25%" in rows["method"]
    assert (tmp_path / "tables" / "tables.md").read_text().strip() in out.output


def test_interrupted_cell_resumes_to_the_same_numbers(tmp_path: Path) -> None:
    cell = next(c for c in expand(load_suite(write_suite(tmp_path / "s.yaml"))) if c.method.name == "acs")
    rt = Runtime(torch.device("cpu"), Path(os.environ["QCORE_CACHE"]))
    straight = run_cell(cell, Store(tmp_path / "a"), rt)

    def stop_after_two(epoch: int, total: int, acc: float) -> None:
        if epoch == 2:  # epoch 2 is a re-selection epoch of acs: it must resume past it
            raise KeyboardInterrupt("stopped after epoch 2")
    store = Store(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt, match="stopped after epoch 2"):
        run_cell(cell, store, rt, on_epoch=stop_after_two)
    assert store.status(cell.id) == "interrupted" and not store.is_done(cell.id)
    epochs_run = []
    resumed = run_cell(cell, store, rt, on_epoch=lambda e, t, a: epochs_run.append(e))
    assert epochs_run == [3]
    for key in ("final_acc", "best_acc_over_epochs", "samples_trained", "selections", "distinct_samples_seen",
                "noisy_selected_frac_mean"):
        assert resumed[key] == straight[key], key


def test_sigkill_mid_cell_then_rerun_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    data = {"train": {"epochs": 6, "batch_size": 32, "lr": 0.05}}
    grid = {"dataset": {"name": "synthetic", "params": {"n_train": 1024, "n_test": 128, "image_size": 16}},
            "method": ["random", {"name": "acs", "params": {"every": 2}}]}
    suite = write_suite(tmp_path / "s.yaml", data, **grid)
    cmd = [sys.executable, "-m", "qcore_bench", "run", str(suite), "--results"]
    subprocess.run([*cmd, str(tmp_path / "straight")], check=True, capture_output=True)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*cmd, str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline:  # kill once the second cell has finished an epoch
        runs = sorted(killed.glob("runs/*/history.jsonl"))
        done = [p for p in runs if (p.parent / "result.json").exists()]
        if done and any(p.read_text().count("\n") >= 2 for p in runs if p not in done):
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert done, "the run finished no cell before the deadline"
    finished_before = {p.parent: (p.parent / "result.json").stat().st_mtime_ns for p in done}
    assert len(finished_before) < 2, "killed too late: nothing left to resume"

    out = subprocess.run([*cmd, str(killed)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "1 done, 1 to run" in out.stderr
    for d, mtime in finished_before.items():
        assert (d / "result.json").stat().st_mtime_ns == mtime  # a done cell is never trained again
    a, b = results_of(tmp_path / "straight"), results_of(killed)
    assert a.keys() == b.keys()
    for cid in a:
        assert a[cid]["result"]["final_acc"] == b[cid]["result"]["final_acc"]
        hist = (killed / "runs" / cid / "history.jsonl").read_text().splitlines()
        assert [json.loads(h)["epoch"] for h in hist] == list(range(6))


class Crash(Selector):
    def select(self, ctx: SelectionContext) -> Selection:
        raise RuntimeError("boom")


class TooMany(Selector):
    def select(self, ctx: SelectionContext) -> Selection:
        return Selection(torch.arange(ctx.budget + 1))


def test_failed_cells_are_reported_and_the_others_finish(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sel = registry("selectors")
    monkeypatch.setitem(sel.entries, "e2e_crash", Entry("e2e_crash", "test_e2e:Crash", "tests"))
    monkeypatch.setitem(sel.entries, "toomany", Entry("toomany", "test_e2e:TooMany", "tests"))
    suite, results = write_suite(tmp_path / "s.yaml", method=["e2e_crash", "random", "toomany"]), tmp_path / "r"
    out = CliRunner().invoke(main, ["run", str(suite), "--results", str(results)])
    assert out.exit_code == 1
    assert "2 of 3 cells failed" in out.output
    assert "RuntimeError: boom" in out.output
    assert "selector 'toomany' selected 65 samples, budget is 64" in out.output
    assert [r["config"]["method"]["name"] for r in Store(results).records()] == ["random"]
    plan = CliRunner().invoke(main, ["plan", str(suite), "--results", str(results)])
    assert plan.output.count(" failed  (") == 2 and plan.output.count(" done\n") == 1
    assert plan.output.endswith("\n3 cells: 1 done, 0 pending, 2 failed\n")
    failed = [d for d in (results / "runs").iterdir() if (d / "error.txt").exists()]
    assert len(failed) == 2 and all("Traceback" in (d / "error.txt").read_text() for d in failed)


def test_broken_plugin_is_reported_by_name_and_others_load(monkeypatch: pytest.MonkeyPatch) -> None:
    sel = registry("selectors")
    monkeypatch.setitem(sel.entries, "broken", Entry("broken", "no_such_module_xyz:Sel", "somepkg"))
    with pytest.raises(KeyError, match="'broken' \\(from package somepkg\\) failed to import"):
        sel.get("broken")
    assert sel.get("random").__name__ == "RandomSelector"
