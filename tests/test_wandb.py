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


def run_ids(cell_dir: Path) -> set[str]:
    return {d.name.rsplit("-", 1)[-1] for d in (cell_dir / "wandb").glob("offline-run-*")}


def test_each_cell_gets_one_wandb_run_and_a_resumed_cell_reuses_it(tmp_path: Path) -> None:
    cells = expand(load_suite(write_suite(tmp_path / "s.yaml", method=["random", "acs"])))
    rt = Runtime(torch.device("cpu"), Path(os.environ["QCORE_CACHE"]), wandb=OFFLINE)
    store = Store(tmp_path / "r")
    run_cell(cells[0], store, rt)

    def stop(epoch: int, total: int, acc: float) -> None:
        if epoch == 1:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        run_cell(cells[1], store, rt, on_epoch=stop)
    first = run_ids(store.dir(cells[1].id))
    run_cell(cells[1], store, rt)
    for c in cells:
        ids = run_ids(store.dir(c.id))
        assert len(ids) == 1, ids  # one W&B run per cell, even across a resume
        assert (store.dir(c.id) / "wandb_id").read_text().endswith(ids.pop())
    assert len(list((store.dir(cells[1].id) / "wandb").glob("offline-run-*"))) == 2
    assert run_ids(store.dir(cells[1].id)) == first
    assert run_ids(store.dir(cells[0].id)) != first


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
