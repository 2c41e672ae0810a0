"""One cell on several processes (torchrun + DistributedDataParallel), on the CPU with gloo.

In-process: how a pass is split over ranks (every global batch, both data paths, the same
augmentation as one process). Under torchrun with 2 ranks (``ddp_worker.py``): the
collectives and the sharded training step against one process, and a whole digits cell
with ACS (two selections) against the same cell run by one process.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch
import yaml
from click.testing import CliRunner
from test_data_paths import make_tree

from qcore_bench.cli import main
from qcore_bench.data.device import TensorData, device_data
from qcore_bench.data.imagenet import load_imagenet
from qcore_bench.data.synthetic import load_synthetic
from qcore_bench.distributed import Shard
from qcore_bench.runner import Runtime, run_cell
from qcore_bench.store import Store
from qcore_bench.suite import Cell, expand, load_suite

CPU = torch.device("cpu")
WORKER = pathlib.Path(__file__).with_name("ddp_worker.py")
DIGITS_ACS = {
    "name": "ddp",
    "train": {"epochs": 4, "batch_size": 64, "lr": 0.05},
    "teacher": {"epochs": 3, "batch_size": 64, "lr": 0.1},
    "grid": {"dataset": "digits", "model": "resnet8", "bits": ["4/4"], "fraction": [0.3],
             "method": [{"name": "acs", "params": {"every": 2}}], "seed": [0]},
}


def digits_cell(tmp_path: pathlib.Path) -> tuple[pathlib.Path, Cell]:
    suite = tmp_path / "ddp.yaml"
    suite.write_text(yaml.safe_dump(DIGITS_ACS))
    (cell,) = expand(load_suite(suite))
    return suite, cell


def run_cell_on_two_ranks(suite: pathlib.Path, cell: Cell, results: pathlib.Path,
                          records: pathlib.Path) -> tuple[dict, dict]:
    """``torchrun ... run-cell`` with 2 ranks; what each rank selected and wrote."""
    records.mkdir()
    proc = torchrun(str(WORKER), "cell", str(records), "run-cell", cell.id, "--suite", str(suite),
                    "--results", str(results), "--device", "cpu")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr.count("done: final acc") == 1  # one voice, not one per rank
    rank0, rank1 = (json.loads((records / f"rank{r}.json").read_text()) for r in range(2))
    assert rank0["selections"] == rank1["selections"]
    assert rank1["finish"] == rank1["save_checkpoint"] == 0  # only rank 0 writes
    return rank0, rank1


def torchrun(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """2 CPU processes with gloo; --standalone picks a free port (no clash with another job)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("n, batch, world", [(22, 5, 2), (10, 4, 3), (64, 64, 8), (9, 4, 2), (3, 8, 4)])
def test_ranks_split_every_global_batch_into_contiguous_parts(n: int, batch: int, world: int) -> None:
    passes = [list(Shard(r, world).batches(n, batch)) for r in range(world)]
    whole = [b for b in range(0, n, batch) if min(batch, n - b) >= world]  # smaller last batches are dropped
    assert [[b.start for b, _ in p] for p in passes] == [whole] * world
    for k, start in enumerate(whole):
        items = list(range(start, min(start + batch, n)))
        parts = [items[p[k][1]] for p in passes]
        assert sum(parts, []) == items and max(map(len, parts)) - min(map(len, parts)) <= 1
    blocks = [list(range(n))[Shard(r, world).span(n)] for r in range(world)]
    assert sum(blocks, []) == list(range(n)) and max(map(len, blocks)) - min(map(len, blocks)) <= 1


def test_both_data_paths_give_each_rank_its_part_of_the_single_process_pass(tmp_path: pathlib.Path) -> None:
    images = load_synthetic(None, pathlib.Path("."), n_train=40, n_test=13, image_size=8, channels=3)
    fast = TensorData(dataclasses.replace(images, crop_padding=2, flip=True), CPU)
    files = device_data(load_imagenet(str(make_tree(tmp_path, [(20, 20)], n_train=4, n_val=2)), tmp_path,
                                      image_size=8), CPU, 0)
    for data, indices in ((fast, torch.arange(3, 40, 2)), (files, torch.arange(12))):  # 19 and 12 samples
        one = list(data.train_batches(indices, 7, torch.Generator().manual_seed(5), augmented=True))
        ranks = [list(data.train_batches(indices, 7, torch.Generator().manual_seed(5), augmented=True,
                                         shard=Shard(r, 2))) for r in range(2)]
        assert len(ranks[0]) == len(ranks[1]) == len(one)
        for (x, idx), (x0, i0), (x1, i1) in zip(one, *ranks):  # the same samples, the same crops and flips
            assert torch.equal(idx, torch.cat([i0, i1])) and torch.equal(x, torch.cat([x0, x1]))
            assert len(i0) - len(i1) in (0, 1)
        test = torch.cat([y for _, y in data.test_batches(4)])
        assert torch.equal(test, torch.cat([y for r in range(2) for _, y in data.test_batches(4, Shard(r, 2))]))


def test_run_refuses_torchrun_and_names_run_cell(tmp_path: pathlib.Path) -> None:
    suite, _ = digits_cell(tmp_path)
    out = CliRunner().invoke(main, ["run", str(suite), "--results", str(tmp_path / "r")], env={"WORLD_SIZE": "2"})
    assert out.exit_code == 2 and "under torchrun, run one cell" in out.output and "run-cell" in out.output
    assert not (tmp_path / "r").exists()


def test_collectives_and_the_sharded_training_step_match_one_process(tmp_path: pathlib.Path) -> None:
    proc = torchrun(str(WORKER), "mechanics", str(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert all(json.loads((tmp_path / f"rank{r}.json").read_text())["ok"] for r in range(2))


def test_a_cell_on_two_ranks_selects_alike_writes_once_and_matches_one_process(
        tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"  # cold: one rank trains the teacher, the other waits on its lock and loads it
    monkeypatch.setenv("QCORE_CACHE", str(cache))
    suite, cell = digits_cell(tmp_path)
    results = tmp_path / "two"
    rank0, _ = run_cell_on_two_ranks(suite, cell, results, tmp_path / "records")
    assert len(rank0["selections"]) == 2 and (rank0["finish"], rank0["save_checkpoint"]) == (1, 4)  # selected at 0, 2

    store = Store(results)
    two = store.result(cell.id)
    assert two["world_size"] == 2 and two["selections"] == 2 and len(store.history(cell.id)) == 4
    assert len((store.dir(cell.id) / "claims.log").read_text().splitlines()) == 1
    assert len(list((cache / "teachers").glob("*.pt"))) == 1 and not list(cache.rglob("*.lock"))

    one = run_cell(cell, Store(tmp_path / "one"), Runtime(CPU, cache))  # the same cell in one process
    assert one["world_size"] == 1 and one["teacher"]["cached"] and one["teacher"]["key"] == two["teacher"]["key"]
    assert one["samples_trained"] == two["samples_trained"]
    # not bit-identical: each rank's BatchNorm normalises its half of a batch with that half's statistics
    assert abs(two["final_acc"] - one["final_acc"]) < 3.0, (two["final_acc"], one["final_acc"])


def test_two_ranks_resume_a_cell_that_one_process_began(tmp_path: pathlib.Path) -> None:
    suite, cell = digits_cell(tmp_path)
    store = Store(tmp_path / "results")

    def stop_after_epoch_1(epoch: int, total: int, acc: float) -> None:
        if epoch == 1:
            raise KeyboardInterrupt("stopped after epoch 1")
    with pytest.raises(KeyboardInterrupt, match="stopped after epoch 1"):
        run_cell(cell, store, Runtime(CPU, pathlib.Path(os.environ["QCORE_CACHE"])), on_epoch=stop_after_epoch_1)
    assert store.status(cell.id) == "interrupted"

    rank0, _ = run_cell_on_two_ranks(suite, cell, store.root, tmp_path / "records")
    assert len(rank0["selections"]) == 1 and (rank0["finish"], rank0["save_checkpoint"]) == (1, 2)  # epochs 2, 3
    assert [h["epoch"] for h in store.history(cell.id)] == [0, 1, 2, 3]
    assert store.result(cell.id)["world_size"] == 2 and store.result(cell.id)["selections"] == 2
