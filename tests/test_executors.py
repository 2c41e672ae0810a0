"""Executors and crash safety: SIGKILL, two runs at once, the local slot pool, SLURM through submitit."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest
import torch
from click.testing import CliRunner
from conftest import write_suite

from qcore_bench.cli import main
from qcore_bench.registry import Entry, registry
from qcore_bench.selection import Selection, SelectionContext, Selector
from qcore_bench.store import Store

SCALE = {"name": "scale", "train": {"epochs": 6, "batch_size": 32, "lr": 0.05},
         "teacher": {"epochs": 1, "batch_size": 32}}
GRID = {"dataset": {"name": "synthetic", "params": {"n_train": 256, "n_test": 64, "num_classes": 4}},
        "method": ["random", {"name": "acs", "params": {"every": 2}}]}
COMPARED = ("final_acc", "best_acc_over_epochs", "samples_trained", "selections", "distinct_samples_seen",
            "noisy_selected_frac_mean")
PLUGIN = '''
import os, signal
from qcore_bench.selection import Selector

class Sigkill(Selector):
    """Dies the way the out-of-memory killer kills."""
    def select(self, ctx):
        os.kill(os.getpid(), signal.SIGKILL)

class Raising(Selector):
    def select(self, ctx):
        raise RuntimeError("boom")
'''


@pytest.fixture(autouse=True)
def one_thread(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """CPU numbers depend on the thread count: every run of this module, here or in a subprocess, uses one."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def scale_suite(path: Path, **grid: object) -> Path:
    return write_suite(path, SCALE, **{**GRID, **grid})


def env_for(cache: Path, site: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "QCORE_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    if site is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(site), env.get("PYTHONPATH", "")])
    return env


def run_cmd(suite: Path, results: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "qcore_bench", "run", str(suite), "--results", str(results), *extra]


def results_of(results: Path) -> dict[str, dict]:
    return {r["id"]: r for r in Store(results).records()}


def assert_same_results(a: dict[str, dict], b: dict[str, dict], results_b: Path) -> None:
    assert a.keys() == b.keys()
    for cid in a:
        for key in COMPARED:
            assert a[cid]["result"][key] == b[cid]["result"][key], (cid, key)
        hist = [json.loads(h) for h in (results_b / "runs" / cid / "history.jsonl").read_text().splitlines()]
        assert [h["epoch"] for h in hist] == list(range(len(hist)))  # each epoch once, in order


def assert_cell_folders_sound(results: Path) -> None:
    """Every file of every cell folder reads; the history never runs behind its checkpoint."""
    for d in (results / "runs").iterdir():
        json.loads((d / "cell.json").read_text())
        json.loads((d / "status.json").read_text())
        if (d / "result.json").exists():
            json.loads((d / "result.json").read_text())
        if (d / "ckpt.pt").exists():
            epochs = torch.load(d / "ckpt.pt", weights_only=False)["epoch"]
            lines = (d / "history.jsonl").read_text().splitlines()
            assert len(lines) in (epochs, epochs + 1)
            [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """The reference: the suite run once, uninterrupted, in one process."""
    tmp = tmp_path_factory.mktemp("straight")
    suite, results = scale_suite(tmp / "s.yaml"), tmp / "results"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = CliRunner().invoke(main, ["run", str(suite), "--results", str(results)],
                                 env={"QCORE_CACHE": str(tmp / "cache")})
    finally:
        torch.set_num_threads(threads)
    assert out.exit_code == 0, out.output
    return results_of(results)


def kill_when(proc: subprocess.Popen, condition: Callable[[], bool], what: str, limit: float = 300) -> None:
    deadline = time.time() + limit
    while proc.poll() is None and time.time() < deadline:
        if condition():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return
        time.sleep(0.005)
    proc.kill()
    pytest.fail(f"the run ended before {what} (exit {proc.returncode})")


def epochs_done(results: Path) -> dict[str, int]:
    """Finished epochs of every cell that has no result yet."""
    return {p.parent.name: p.read_text().count("\n") for p in results.glob("runs/*/history.jsonl")
            if not (p.parent / "result.json").exists()}


def test_sigkill_twice_then_rerun_matches_an_uninterrupted_run(tmp_path: Path, straight: dict) -> None:
    suite, results, cache = scale_suite(tmp_path / "s.yaml"), tmp_path / "r", tmp_path / "cache"
    env = env_for(cache)

    # 1: while the teacher is trained (its build lock held), or at the latest in the first cell's first epochs
    proc = subprocess.Popen(run_cmd(suite, results), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, lambda: any(cache.glob("teachers/*.lock")) or any(epochs_done(results).values()),
              "the teacher or a first epoch")
    assert not results_of(results)
    if (results / "runs").exists():
        assert_cell_folders_sound(results)

    # 2: a later point: once a cell is finished, mid-way through the next one
    proc = subprocess.Popen(run_cmd(suite, results), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_when(proc, lambda: bool(results_of(results)) and any(n >= 2 for n in epochs_done(results).values()),
              "a finished cell and two epochs of the next")
    finished = {cid: (results / "runs" / cid / "result.json").stat().st_mtime_ns for cid in results_of(results)}
    assert len(finished) == 1
    assert_cell_folders_sound(results)

    out = subprocess.run(run_cmd(suite, results), env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "2 cells, 1 done, 1 to run" in out.stderr
    for cid, mtime in finished.items():  # a finished result is never rewritten
        assert (results / "runs" / cid / "result.json").stat().st_mtime_ns == mtime
    assert_same_results(straight, results_of(results), results)
    assert_cell_folders_sound(results)
    assert not list(results.glob("runs/*/.*.tmp")) and not list(results.glob("runs/*/claim.json"))


def test_two_runs_at_once_run_every_cell_exactly_once(tmp_path: Path, straight: dict) -> None:
    suite, results = scale_suite(tmp_path / "s.yaml"), tmp_path / "r"
    env = env_for(tmp_path / "cache")
    procs = [subprocess.Popen(run_cmd(suite, results), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):  # 75: it left cells to the other process, which it did not wait for
        assert p.returncode == 0 or (p.returncode == 75 and "cells are being run by other processes" in err), err
    ran = [set(re.findall(r"done \d+/\d+ (\w{12}) ", err)) for _, err in outs]
    assert not ran[0] & ran[1] and ran[0] | ran[1] == set(straight.keys())
    for cid in straight:
        claims = (results / "runs" / cid / "claims.log").read_text().splitlines()
        assert len(claims) == 1, claims  # claimed, hence trained, by exactly one process
    got = results_of(results)
    assert sum(not r["result"]["teacher"]["cached"] for r in got.values()) == 1  # one teacher, built once
    assert_same_results(straight, got, results)


def plugin_site(tmp_path: Path) -> Path:
    """A package with selector entry points, installed for subprocesses through PYTHONPATH."""
    site = tmp_path / "site"
    (site / "qb_testplugins-0.1.dist-info").mkdir(parents=True)
    (site / "qb_testplugins.py").write_text(PLUGIN)
    (site / "qb_testplugins-0.1.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: qb-testplugins\nVersion: 0.1\n")
    (site / "qb_testplugins-0.1.dist-info" / "entry_points.txt").write_text(
        "[qcore_bench.selectors]\nsigkill = qb_testplugins:Sigkill\nraising = qb_testplugins:Raising\n")
    return site


def test_local_pool_with_two_cpu_slots_reports_crashed_cells_and_finishes_the_others(
        tmp_path: Path, straight: dict) -> None:
    site = plugin_site(tmp_path)
    suite, results = scale_suite(tmp_path / "s.yaml", method=[*GRID["method"], "sigkill", "raising"]), tmp_path / "r"
    env = env_for(tmp_path / "cache", site)
    out = subprocess.run(run_cmd(suite, results, "--executor", "local", "--slots", "2"), env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 1, out.stderr
    assert "2 of 4 cells failed:" in out.stderr
    assert "process killed by SIGKILL" in out.stderr and "RuntimeError: boom" in out.stderr
    # the teacher trained in a slot's process gets its lines in the pool's output, and in that cell's log.txt
    (teacher,) = re.findall(r"^train \d/4 (\w+) teacher resnet8: training, \d+ epochs$", out.stderr, flags=re.M)
    assert f"{teacher} teacher resnet8: training" in (results / "runs" / teacher / "log.txt").read_text()
    assert re.search(rf"^train \d/4 {teacher} teacher resnet8: trained in \d+\.\ds, test acc", out.stderr, flags=re.M)
    got = results_of(results)
    assert_same_results(straight, got, results)  # the three good cells, as if run alone
    starts = sorted(json.loads(line)["started"] for d in (results / "runs").iterdir()
                    for line in (d / "claims.log").read_text().splitlines())
    assert len(starts) == 4
    pids = {json.loads((d / "claims.log").read_text())["pid"] for d in (results / "runs").iterdir()}
    assert len(pids) == 4  # one process per cell
    store = Store(results)
    killed = [d for d in (results / "runs").iterdir() if "SIGKILL" in store.read_status(d.name).get("reason", "")]
    assert len(killed) == 1 and not (killed[0] / "claim.json").exists()
    assert "last lines of" in (killed[0] / "error.txt").read_text()

    plan = subprocess.run([sys.executable, "-m", "qcore_bench", "plan", str(suite), "--results", str(results)],
                          env=env, capture_output=True, text=True)
    lines = plan.stdout.splitlines()
    assert sum(" failed  (process killed by SIGKILL" in line for line in lines) == 1
    assert sum(" failed  (RuntimeError: boom)" in line for line in lines) == 1
    assert sum(line.endswith(" done") for line in lines) == 2


class Crash(Selector):
    calls = 0

    def select(self, ctx: SelectionContext) -> Selection:
        Crash.calls += 1
        raise RuntimeError("boom")


def test_failed_cells_are_skipped_until_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entries = registry("selectors").entries  # a name of its own: the registry caches loaded classes by name
    monkeypatch.setitem(entries, "crash_counted", Entry("crash_counted", "test_executors:Crash", "tests"))
    suite, results = write_suite(tmp_path / "s.yaml", method=["crash_counted", "random"]), tmp_path / "r"
    args = ["run", str(suite), "--results", str(results)]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 1 and Crash.calls == 1
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and Crash.calls == 1  # not run again
    assert "2 cells, 1 done, 0 to run, 1 failed (skipped: --retry-failed runs them)" in again.output
    assert "RuntimeError: boom" in again.output and "error.txt" in again.output
    retry = CliRunner().invoke(main, [*args, "--retry-failed"])
    assert retry.exit_code == 1 and Crash.calls == 2
    assert "1 of 1 cells failed" in retry.output


def test_clear_discards_a_cell_and_plan_lists_cells_the_suite_dropped(tmp_path: Path) -> None:
    suite, results = write_suite(tmp_path / "s.yaml", method=["full", "random"]), tmp_path / "r"
    assert CliRunner().invoke(main, ["run", str(suite), "--results", str(results)]).exit_code == 0
    ids = {r["config"]["method"]["name"]: r["id"] for r in Store(results).records()}
    fewer = write_suite(tmp_path / "s.yaml", method=["full"])
    plan = CliRunner().invoke(main, ["plan", str(fewer), "--results", str(results)])
    assert "1 stored cells of suite 'tiny' are not in it any more" in plan.output
    assert ids["random"] in plan.output.split("not in it any more")[1]
    out = CliRunner().invoke(main, ["run", str(fewer), "--results", str(results), "--clear", "*/random/*"])
    assert out.exit_code == 0, out.output
    assert "cleared 1 cells matching */random/*" in out.output
    assert not (results / "runs" / ids["random"]).exists() and (results / "runs" / ids["full"]).exists()
    out = CliRunner().invoke(main, ["run", str(fewer), "--results", str(results), "--clear", ids["full"]])
    assert "1 cells, 0 done, 1 to run" in out.output and out.exit_code == 0


# ---------------------------------------------------------------------------- slurm


def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """sbatch and srun stand-ins: sbatch keeps the script it was given and answers with a job id."""
    bin_dir, record = tmp_path / "bin", tmp_path / "sbatch-scripts"
    bin_dir.mkdir()
    record.mkdir()
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" {record}/\necho "Submitted batch job 4242"\n')
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return record


def test_slurm_builds_one_job_array_whose_tasks_run_the_cells(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               straight: dict) -> None:
    from submitit.core.utils import DelayedSubmission

    record = fake_slurm(tmp_path, monkeypatch)
    suite = scale_suite(tmp_path / "s.yaml")
    data = json.loads(json.dumps(__import__("yaml").safe_load(suite.read_text())))
    data["slurm"] = {"cpus_per_task": 4, "setup": ["source /opt/venv/bin/activate"], "sbatch": {"qos": "low"}}
    suite.write_text(__import__("yaml").safe_dump(data))
    results = tmp_path / "r"
    out = CliRunner().invoke(main, ["run", str(suite), "--results", str(results), "--executor", "slurm",
                                    "--partition", "gpu", "--time", "30", "--gpus-per-task", "1", "--mem", "16",
                                    "--array-parallelism", "1", "--sbatch", "account=proj", "--sbatch", "qos=high"])
    assert out.exit_code == 0, out.output
    assert "submitted job array 4242 with 2 tasks" in out.output
    script = next(record.iterdir()).read_text()
    for line in ("#SBATCH --array=0-1%1", "#SBATCH --partition=gpu", "#SBATCH --time=30", "#SBATCH --gpus-per-node=1",
                 "#SBATCH --mem=16GB", "#SBATCH --cpus-per-task=4", "#SBATCH --account=proj", "#SBATCH --qos=high",
                 "#SBATCH --signal=USR2@90", "source /opt/venv/bin/activate", "-m submitit.core._submit"):
        assert line in script, line
    submitted = [json.loads(line) for line in (results / "slurm" / "submitted.jsonl").read_text().splitlines()]
    assert [s["job"] for s in submitted] == ["4242_0", "4242_1"]

    # what a node would run: the pickled task of the array, here in this process
    first = DelayedSubmission.load(results / "slurm" / "4242_0" / "4242_0_submitted.pkl")
    assert first.result()["state"] == "done"
    assert Store(results).is_done(submitted[0]["cell"])

    # the rest through submitit's in-process executor, waiting for the results
    out = CliRunner().invoke(main, ["run", str(suite), "--results", str(results), "--executor", "slurm",
                                    "--slurm-cluster", "debug"])
    assert out.exit_code == 0, out.output
    assert "2 cells, 1 done, 1 to run" in out.output
    assert_same_results(straight, results_of(results), results)


def test_preempted_slurm_task_is_requeued_and_resumes_from_its_checkpoint(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, straight: dict) -> None:
    from qcore_bench.executors import base, slurm
    from qcore_bench.suite import expand, load_suite

    cell = next(c for c in expand(load_suite(scale_suite(tmp_path / "s.yaml"))) if c.method.name == "acs")
    results = tmp_path / "r"
    payload = json.dumps({"cell": cell.model_dump(mode="json"), "wandb": None})
    args = (payload, str(results), str(tmp_path / "cache"), "cpu", 1024, 60.0)
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "77")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "1")
    real = base.run_cell

    def preempted(*a: object, on_epoch: object = None) -> dict:
        def signal_at_epoch_2(epoch: int, total: int, acc: float) -> None:
            if epoch == 1:
                raise SystemExit(-1)  # what submitit does after requeueing on USR2
        return real(*a, on_epoch=signal_at_epoch_2)

    task = slurm.SlurmTask()
    monkeypatch.setattr(base, "run_cell", preempted)
    with pytest.raises(SystemExit, match="-1"):
        task(*args)
    store = Store(results)
    assert store.status(cell.id) == "interrupted"
    # the node vanished without cleaning up: its claim still looks alive to anyone but the requeued task
    (store.dir(cell.id) / "claim.json").write_text(json.dumps(
        {"host": "node3", "pid": 999, "owner": "slurm:77_1", "token": "x", "heartbeat": time.time()}))
    monkeypatch.setattr(base, "run_cell", real)
    requeued = task.checkpoint(*args)  # submitit pickles this and requeues it
    assert requeued.function is task and requeued.args == args
    epochs = []
    monkeypatch.setattr(base, "run_cell", lambda *a, on_epoch=None: real(
        *a, on_epoch=lambda e, t, acc: epochs.append(e)))
    assert requeued.result()["state"] == "done"
    assert epochs == [2, 3, 4, 5]  # resumed after the two checkpointed epochs
    assert_same_results({cell.id: straight[cell.id]}, results_of(results), results)


def test_slurm_without_submitit_says_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "submitit", None)
    suite = write_suite(tmp_path / "s.yaml")
    out = CliRunner().invoke(main, ["run", str(suite), "--results", str(tmp_path / "r"), "--executor", "slurm"])
    assert out.exit_code == 2
    assert "the slurm executor needs submitit: pip install 'qcore-bench[slurm]'" in out.output


@pytest.mark.parametrize("args, needle", [
    (["--executor", "slurmm"], "--executor: unknown executor 'slurmm'; did you mean 'slurm'?"),
    (["--gpus", "0,1"], "--gpus does not apply to --executor inline"),
    (["--executor", "local", "--gpus", "a,b"], "--gpus expects GPU ids such as 0,1,2"),
    (["--executor", "local", "--per-gpu", "0"], "--per-gpu must be >= 1"),
    (["--executor", "local", "--gpus", "0", "--slots", "2"], "with --gpus give --per-gpu instead"),
    (["--executor", "slurm", "--sbatch", "account"], "--sbatch account: expected KEY=VALUE"),
    (["--executor", "local", "--partition", "gpu"], "--partition does not apply to --executor local"),
    (["--claim-timeout", "0"], "--claim-timeout: claim timeout must be a finite number of seconds > 0"),
])
def test_bad_executor_options_are_one_line_exit_2(tmp_path: Path, args: list[str], needle: str) -> None:
    suite, results = write_suite(tmp_path / "s.yaml"), tmp_path / "r"
    out = CliRunner().invoke(main, ["run", str(suite), "--results", str(results), *args])
    assert out.exit_code == 2, out.output
    assert out.output.strip().splitlines() == [out.output.strip()] and needle in out.output
    assert not results.exists()


def test_local_slots_get_their_own_gpu_or_none(monkeypatch: pytest.MonkeyPatch) -> None:
    from qcore_bench.executors import LocalExecutor

    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    envs = LocalExecutor(gpus="0,3", per_gpu=2).slot_envs("auto")
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "0", "3", "3"]
    assert {e["QCORE_SLOT_DEVICE"] for e in envs} == {"cuda"} and {e["OMP_NUM_THREADS"] for e in envs} == {"4"}
    envs = LocalExecutor(gpus="", slots=3).slot_envs("auto", cpu_threads=2)
    assert [(e["CUDA_VISIBLE_DEVICES"], e["QCORE_SLOT_DEVICE"], e["OMP_NUM_THREADS"]) for e in envs] == [
        ("", "cpu", "2")] * 3  # a CPU slot runs its cells with their pinned thread count
    with pytest.raises(ValueError, match="--device cpu with --gpus"):
        LocalExecutor(gpus="0").slot_envs("cpu")


HOOKS = '''
"""Test hooks for the local pool's children: a sitecustomize module, loaded by every Python that sees it.

QB_SLOW_IMPORT=<cell id>: that cell's process blocks inside ``import torch`` until a signal
comes, as a process started on a busy core is still importing when Ctrl-C comes.
QB_PAUSE=<cell id>: that cell's process touches <results>/paused after its first epoch's
checkpoint and waits there until a signal comes: a cell mid-way, whatever the load.
"""
import importlib.util, os, sys, time
from importlib.abc import MetaPathFinder


def mine(var):
    return "run-cell" in sys.argv and os.environ.get(var, "-") in sys.argv


class Hook(MetaPathFinder):
    def __init__(self, name, before=None, after=None):
        self.name, self.before, self.after = name, before, after

    def find_spec(self, name, path=None, target=None):
        if name != self.name:
            return None
        sys.meta_path.remove(self)
        if self.before:
            self.before()
        spec = importlib.util.find_spec(name)
        if self.after:
            real = spec.loader.exec_module
            def exec_module(module):
                real(module)
                self.after(module)
            spec.loader.exec_module = exec_module
        return spec


def pause_after_first_epoch(store):
    real = store.Store.save_checkpoint
    def save_checkpoint(self, cell_id, state, line):
        real(self, cell_id, state, line)
        if state["epoch"] == 1:
            (self.root / "paused").touch()
            time.sleep(600)
    store.Store.save_checkpoint = save_checkpoint


if mine("QB_SLOW_IMPORT"):
    sys.meta_path.insert(0, Hook("torch", before=lambda: time.sleep(600)))
if mine("QB_PAUSE"):
    sys.meta_path.insert(0, Hook("qcore_bench.store", after=pause_after_first_epoch))
'''


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])  # SIGTERM: what timeout, SLURM, containers send
def test_ctrl_c_or_sigterm_stops_the_pool_cleanly_and_every_cell_resumes(tmp_path: Path, straight: dict,
                                                                         sig: signal.Signals) -> None:
    """Ctrl-C (or SIGTERM) while one cell is mid-way and the other's process is still starting up (a busy core)."""
    from qcore_bench.suite import expand, load_suite

    suite, results = scale_suite(tmp_path / "s.yaml"), tmp_path / "r"
    mid_way, starting = (c.id for c in expand(load_suite(suite)))
    (tmp_path / "hooks").mkdir()
    (tmp_path / "hooks" / "sitecustomize.py").write_text(HOOKS)
    env = {**env_for(tmp_path / "cache", tmp_path / "hooks"), "QB_PAUSE": mid_way, "QB_SLOW_IMPORT": starting}
    proc = subprocess.Popen(run_cmd(suite, results, "--executor", "local", "--slots", "2"), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as in a terminal
    deadline = time.time() + 300
    while not (results / "paused").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert (results / "paused").exists(), proc.communicate(timeout=60)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "run the same command again to resume" in err and "failed" not in err
    store = Store(results)
    assert {cid: store.status(cid) for cid in straight} == {mid_way: "interrupted", starting: "pending"}
    for log in results.glob("runs/*/claims.log"):
        assert not (log.parent / "claim.json").exists()
        with pytest.raises(ProcessLookupError, match="No such process"):
            os.kill(json.loads(log.read_text().splitlines()[-1])["pid"], 0)  # no orphaned cell process
    out = subprocess.run(run_cmd(suite, results), env=env_for(tmp_path / "cache"), capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0 and "2 cells, 0 done, 2 to run" in out.stderr, out.stderr
    assert_same_results(straight, results_of(results), results)


def test_sigterm_stops_the_inline_executor_like_ctrl_c(tmp_path: Path, straight: dict) -> None:
    """Before, SIGTERM killed `run` with 143 and left the cell 'running' under a live claim."""
    suite, results = scale_suite(tmp_path / "s.yaml"), tmp_path / "r"
    proc = subprocess.Popen(run_cmd(suite, results), env=env_for(tmp_path / "cache"), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not any(n >= 1 for n in epochs_done(results).values()):
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "run the same command again to resume" in err, err
    store = Store(results)
    assert "interrupted" in {store.status(cid) for cid in straight}
    assert not list(results.glob("runs/*/claim.json"))  # every claim released
    out = subprocess.run(run_cmd(suite, results), env=env_for(tmp_path / "cache"), capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr
    assert_same_results(straight, results_of(results), results)


def test_the_pool_starts_cells_that_share_no_teacher_with_running_ones(tmp_path: Path) -> None:
    from qcore_bench.executors import next_cell
    from qcore_bench.suite import expand, load_suite

    suite = write_suite(tmp_path / "s.yaml", noise=[0.0, 0.2], seed=[0, 1])
    cells = expand(load_suite(suite))
    group = {c.id: (c.noise.rate, c.seed) for c in cells}
    running = [cells[0]]
    queue = cells[1:]
    chosen = queue[next_cell(queue, running)]
    assert group[chosen.id] != group[cells[0].id]
    assert chosen is next(c for c in queue if group[c.id] != group[cells[0].id])  # the first such, in order
    same = [c for c in cells if group[c.id] == group[cells[0].id]]
    assert next_cell(same[1:], running) == 0  # nothing else to do: wait for the lock rather than idle
