"""W&B: one run per cell, resumed cells continue their run, failures never fail a run, tables from W&B."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import write_suite

from qcore_bench.report import frame, summarize
from qcore_bench.runner import Runtime, run_cell
from qcore_bench.store import Store
from qcore_bench.suite import expand, load_suite
from qcore_bench.wandb_log import SESSION_ENV, WandbCfg, offline_runs, records_from_wandb, summary_line, sync

wandb = pytest.importorskip("wandb")
OFFLINE = WandbCfg(enabled=True, project="qcore-test", mode="offline")


def run_dirs(cell_dir: Path) -> list[Path]:
    return sorted((cell_dir / "wandb").glob("offline-run-*"))


def test_each_cell_gets_one_wandb_run_and_a_resumed_cell_reuses_it(tmp_path: Path) -> None:
    cells = expand(load_suite(write_suite(tmp_path / "s.yaml", method=["random", "acs"])))
    rt = Runtime(torch.device("cpu"), Path(os.environ["QCORE_CACHE"]), wandb=OFFLINE)
    store = Store(tmp_path / "r")
    run_cell(cells[0], store, rt)

    def stop(epoch: int, total: int, acc: float) -> None:
        if epoch == 1:
            raise KeyboardInterrupt("stopped after epoch 1")
    with pytest.raises(KeyboardInterrupt, match="stopped after epoch 1"):
        run_cell(cells[1], store, rt, on_epoch=stop)
    first = (store.dir(cells[1].id) / "wandb_id").read_text()
    run_cell(cells[1], store, rt)
    ids = [(store.dir(c.id) / "wandb_id").read_text() for c in cells]
    assert ids[1] == first and ids[0] != ids[1]  # the resumed cell kept its W&B run id
    for c, run_id in zip(cells, ids):
        dirs = run_dirs(store.dir(c.id))
        # one W&B run per cell: every offline folder of a cell belongs to its one id
        assert dirs and all(run_id in d.name for d in dirs), dirs
    assert len(run_dirs(store.dir(cells[1].id))) == 2  # the resumed cell wrote to its run twice


def test_wandb_failure_does_not_fail_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ConnectionError("api.wandb.ai unreachable")
    monkeypatch.setattr(wandb, "init", broken)
    cell = expand(load_suite(write_suite(tmp_path / "s.yaml", method=["random"])))[0]
    rt = Runtime(torch.device("cpu"), Path(os.environ["QCORE_CACHE"]), wandb=OFFLINE)
    result = run_cell(cell, Store(tmp_path / "r"), rt)
    assert Store(tmp_path / "r").is_done(cell.id) and result["final_acc"] > 0
    warnings = [r for r in caplog.records if "W&B init failed" in r.getMessage()]
    assert len(warnings) == 1 and "continuing without W&B" in warnings[0].getMessage()


def test_after_the_first_unreachable_init_the_sweep_logs_offline_without_trying_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv(SESSION_ENV, raising=False)  # a new sweep
    real_init, modes = wandb.init, []

    def init(*args: object, mode: str, settings: object, **kwargs: object) -> object:
        modes.append((mode, settings.init_timeout))
        if mode == "online":
            raise ConnectionError("api.wandb.ai unreachable")
        return real_init(*args, mode=mode, settings=settings, **kwargs)
    monkeypatch.setattr(wandb, "init", init)
    cells = expand(load_suite(write_suite(tmp_path / "s.yaml", method=["full", "random"])))
    rt = Runtime(torch.device("cpu"), Path(os.environ["QCORE_CACHE"]),
                 wandb=WandbCfg(enabled=True, project="qcore-test", mode="online", init_timeout=3))
    store = Store(tmp_path / "r")
    for cell in cells:
        run_cell(cell, store, rt)
    assert modes == [("online", 3), ("offline", 3), ("offline", 3)]  # one try online, in the whole sweep
    assert all(store.is_done(c.id) and run_dirs(store.dir(c.id)) for c in cells)  # `sync` uploads them later
    assert caplog.text.count("W&B unreachable") == 1
    assert "W&B was unreachable (ConnectionError: api.wandb.ai unreachable)" in summary_line(tmp_path / "r")
    monkeypatch.setenv(SESSION_ENV, "the-next-sweep")  # tries online again
    assert summary_line(tmp_path / "r") is None


def test_sync_uploads_every_offline_run(tmp_path: Path) -> None:
    for cid in ("a", "b"):
        (tmp_path / "runs" / cid / "wandb" / f"offline-run-2026-{cid}").mkdir(parents=True)
    calls = []
    synced = sync(tmp_path, run=lambda cmd, check: calls.append(cmd))
    assert len(synced) == 2 and calls[0][1:4] == ["-m", "wandb", "sync"] and len(calls[0]) == 6


class FakeRun:
    def __init__(self, raw: dict) -> None:
        self.id, self.config, self.summary = raw["id"], raw["config"], raw["summary"]


class FakeApi:
    """Replays recorded `Api().runs` pages; the first call hits a rate limit."""

    def __init__(self, pages: list[list[dict]]) -> None:
        self.pages, self.calls = pages, []

    def runs(self, path: str, filters: dict, per_page: int):
        self.calls.append((path, filters))
        if len(self.calls) == 1:
            raise RuntimeError("HTTP 429: Too Many Requests")
        for page in self.pages:
            yield from (FakeRun(r) for r in page)


def test_tables_from_recorded_wandb_responses() -> None:
    pages = json.loads((Path(__file__).parent / "data" / "wandb_runs.json").read_text())
    api, sleeps = FakeApi(pages), []
    records = list(records_from_wandb("me/qcore", group="t", api=api, sleep=sleeps.append))
    assert api.calls == [("me/qcore", {"group": "t"})] * 2 and sleeps == [1.0]
    assert sorted(r["id"] for r in records) == ["c-acs-0", "c-acs-1", "c-rand-0", "c-rand-1"]  # dupes, unfinished out
    long = summarize(frame(records))
    acs = long[long.method == "acs"].iloc[0]
    assert acs["mean"] == pytest.approx(81.0) and acs["n"] == 2


def _closed_port() -> int:
    """A local port nothing listens on: connections are refused at once, as with no network."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_an_unreachable_wandb_costs_one_init_timeout_per_sweep_not_per_cell(tmp_path: Path) -> None:
    """Three cells in cell processes (local executor) with W&B online and unreachable: the sweep
    takes one init timeout longer than the same sweep logging W&B offline, not three (or 3 x 90 s
    before the fix). Offline logging itself costs each cell process about a second (wandb's import
    and service), which an unreachable W&B cannot avoid if `sync` is to upload the runs later."""
    suite = write_suite(tmp_path / "s.yaml", method=["random"], fraction=[0.25, 0.5, 0.75])
    env = {**os.environ, "WANDB_BASE_URL": f"http://127.0.0.1:{_closed_port()}", "WANDB_MODE": "online",
           "WANDB_API_KEY": "f" * 40, "OMP_NUM_THREADS": "1"}
    env.pop(SESSION_ENV, None)

    def sweep(results: str, *extra: str) -> tuple[float, subprocess.CompletedProcess]:
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "qcore_bench", "run", str(suite), "--results",
                              str(tmp_path / results), "--executor", "local", "--slots", "1", *extra],
                             env=env, capture_output=True, text=True, timeout=600)
        return time.perf_counter() - start, out

    assert sweep("warm")[1].returncode == 0  # the teacher, trained once for the timed sweeps
    plain, _ = sweep("plain")
    offline, _ = sweep("offline", "--wandb", "--set", "wandb.mode=offline")
    timed, out = sweep("wandb", "--wandb")
    assert out.returncode == 0, out.stderr
    print(f"no W&B {plain:.1f}s, W&B offline {offline:.1f}s, W&B online and unreachable {timed:.1f}s")
    assert timed - offline < 10 + 8, (plain, offline, timed)  # one 10 s init timeout per sweep, and its teardown
    tried = [d for d in (tmp_path / "wandb" / "runs").iterdir() if "W&B unreachable" in (d / "log.txt").read_text()]
    assert len(tried) == 1  # the other cell processes never tried
    assert out.stderr.count("W&B was unreachable (CommError") == 1 and "qcore-bench sync --results" in out.stderr
    assert len(offline_runs(tmp_path / "wandb")) == 3  # the local store is complete: `sync` uploads them later
