"""Shared fixtures: a private cache folder, and a tiny suite that trains in seconds on a CPU."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest
import torch
import yaml
from click.testing import CliRunner

from qcore_bench.cli import main

TINY = {
    "name": "tiny",
    "train": {"epochs": 4, "batch_size": 32, "lr": 0.05},
    "teacher": {"epochs": 3, "batch_size": 32},
    "grid": {
        "dataset": {"name": "synthetic", "params": {"n_train": 256, "n_test": 128, "num_classes": 4}},
        "model": "resnet8",
        "bits": ["2/32"],
        "fraction": [0.25],
        "noise": [0.2],
        "method": ["full", "random", {"name": "acs", "params": {"every": 2}}],
        "seed": [0],
    },
}


@pytest.fixture(autouse=True, scope="session")
def one_thread() -> None:
    """Tests train tiny models: one thread is faster than two fighting over small ops, and
    the subprocesses (``run`` under SIGKILL, the local pool) inherit the setting."""
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(autouse=True, scope="session")
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Session-wide, so module-scoped fixtures that run suites cache under pytest's temp folder too,
    never in the user's ~/.cache/qcore-bench."""
    cache = tmp_path_factory.getbasetemp() / "qcore-cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QCORE_CACHE", str(cache))
        yield cache


def write_suite(path: Path, data: dict | None = None, **grid: object) -> Path:
    suite = {**TINY, **(data or {})}
    suite["grid"] = {**suite["grid"], **grid}
    path.write_text(yaml.safe_dump(suite))
    return path


@pytest.fixture(scope="session")
def tiny_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny suite with full data and random, run to the end once per session: tests that damage or
    extend a results folder work on a copy of it."""
    tmp = tmp_path_factory.mktemp("tiny-results")
    suite, results = write_suite(tmp / "s.yaml", method=["full", "random"]), tmp / "r"
    out = CliRunner().invoke(main, ["run", str(suite), "--results", str(results)])
    assert out.exit_code == 0, out.output
    return results
