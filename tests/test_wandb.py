"""W&B: one run per cell, resumed cells continue their run, failures never fail a run, tables from W&B."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import write_suite

from qcore_bench.report import frame, summarize
from qcore_bench.runner import Runtime, run_cell
from qcore_bench.store import Store
from qcore_bench.suite import expand, load_suite
from qcore_bench.wandb_log import WandbCfg, records_from_wandb, sync

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
