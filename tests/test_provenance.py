"""A CPU cell pins its torch threads and records where it ran (commit, threads, device)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import write_suite

from qcore_bench.cli import main
from qcore_bench.provenance import code_version, pinned_threads
from qcore_bench.store import Store


def _run(tmp_path: Path, name: str, *args: str) -> dict[str, dict]:
    suite = write_suite(tmp_path / "s.yaml", method=["random"])
    out = CliRunner().invoke(main, ["run", str(suite), "--results", str(tmp_path / name), *args])
    assert out.exit_code == 0, out.output
    return {r["id"]: r for r in Store(tmp_path / name).records()}


def test_a_cell_runs_with_its_pinned_threads_whatever_the_process_had(tmp_path: Path) -> None:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = _run(tmp_path, "a")
        assert torch.get_num_threads() == 2  # restored after the cell
        torch.set_num_threads(1)
        one = _run(tmp_path, "b")
    finally:
        torch.set_num_threads(before)
    assert one.keys() == two.keys()
    for cid in one:
        assert one[cid]["result"]["provenance"]["cpu_threads"] == 1 == two[cid]["result"]["provenance"]["cpu_threads"]
        hist_a = (tmp_path / "a" / "runs" / cid / "history.jsonl").read_text().splitlines()
        hist_b = (tmp_path / "b" / "runs" / cid / "history.jsonl").read_text().splitlines()
        strip = [{k: v for k, v in json.loads(h).items() if not k.endswith("seconds")} for h in hist_a]
        assert strip == [{k: v for k, v in json.loads(h).items() if not k.endswith("seconds")} for h in hist_b]


def test_cpu_threads_option_and_provenance_fields(tmp_path: Path) -> None:
    runs = _run(tmp_path, "r", "--cpu-threads", "2")
    (rec,) = runs.values()
    env = rec["result"]["provenance"]
    stored = json.loads((tmp_path / "r" / "runs" / rec["id"] / "cell.json").read_text())["provenance"]
    assert env["cpu_threads"] == 2 == stored["cpu_threads"]
    assert env["device"] == "cpu" and env["torch"] == torch.__version__ and env["device_name"]
    assert env["qcore_bench"]["version"]


def test_code_version_names_the_commit_of_a_checkout() -> None:
    src = Path(__file__).resolve().parents[1]
    head = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("not a git checkout")
    version = code_version()
    assert version["commit"] == head.stdout.strip() and re.fullmatch(r"[0-9a-f]{40}", version["commit"])
    assert isinstance(version["dirty"], bool)


def test_pinned_threads_restores_the_count_after_an_error() -> None:
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"), pinned_threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
