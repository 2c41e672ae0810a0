"""The commands a researcher reaches for: plan's counts, a bare ls, table's default folder, show, compare,
and the log.txt every executor leaves."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import TINY, write_suite

from qcore_bench.cli import main
from qcore_bench.cells import expand
from qcore_bench.suite import load_suite

DISPLAY = {**TINY["grid"]["dataset"], "display": "Blobs"}


def cli(*args: str) -> object:
    return CliRunner().invoke(main, [*args])


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The tiny suite with one cell run inline (the acs one), the others pending."""
    tmp = tmp_path_factory.mktemp("ran")
    suite, results = write_suite(tmp / "s.yaml", dataset=DISPLAY), tmp / "r"
    with pytest.MonkeyPatch.context() as mp:  # a cache of its own: the teacher is trained here
        mp.setenv("QCORE_CACHE", str(tmp / "cache"))
        out = cli("run", str(suite), "--results", str(results), "--only", "*/acs/*")
    assert out.exit_code == 0, out.output
    return suite, results


def test_display_names_a_data_set_without_changing_cell_ids(ran: tuple[Path, Path], tmp_path: Path) -> None:
    suite, results = ran
    plain = write_suite(tmp_path / "plain.yaml")
    assert [c.id for c in expand(load_suite(suite))] == [c.id for c in expand(load_suite(plain))]
    out = cli("table", "--results", str(results), "--no-plots")
    assert out.exit_code == 0, out.output
    assert "### dataset Blobs (n_test=128, n_train=256, num_classes=4), model resnet8" in out.output
    assert (results / "tables-tiny" / "tables.md").is_file()  # --out defaults to RESULTS/tables-SUITE


def test_plan_counts_states_and_aligns_long_names(ran: tuple[Path, Path]) -> None:
    suite, results = ran
    out = cli("plan", str(suite), "--results", str(results))
    lines = out.output.splitlines()
    assert lines[-1] == "3 cells: 1 done, 2 pending, 0 failed"
    table = lines[:4]
    assert table[0].split() == ["id", "dataset", "model", "bits", "fraction", "noise", "method", "seed", "status"]
    starts = {re.search(r"\S+$", line).start() for line in table}  # the status column starts at one offset
    assert len(starts) == 1 and all("synthetic(n_test=128,n_train=256,num_classes=4)" in t for t in table[1:])


def test_bare_ls_lists_every_kind() -> None:
    out = cli("ls")
    assert out.exit_code == 0, out.output
    kinds = [line.split()[0] for line in out.output.splitlines()[:-1]]
    assert kinds == ["selectors", "datasets", "models", "executors", "methods"]
    assert re.search(r"^datasets\s+\d+\s+cifar10, cifar100, (\w+, )*digits, imagefolder", out.output, flags=re.M)


def test_inline_cells_leave_a_log_and_show_prints_everything(ran: tuple[Path, Path]) -> None:
    suite, results = ran
    (cell,) = [c for c in expand(load_suite(suite)) if c.method.name == "acs"]
    log = (results / "runs" / cell.id / "log.txt").read_text().splitlines()
    assert log[0].startswith("--- ") and "inline executor" in log[0]
    assert f"{cell.id} teacher resnet8: training, 3 epochs" in log
    assert [line for line in log if " epoch " in line and "test acc" in line][-1].startswith(f"{cell.id} epoch 4/4 ")
    assert re.fullmatch(rf"{cell.id} done: final acc \d+\.\d\d", log[-1])
    out = cli("show", "*/acs/*", "--results", str(results))
    assert out.exit_code == 0, out.output
    assert out.output.startswith(f"# cell {cell.id}  ") and "## history (4 epochs)" in out.output
    assert "## log.txt" in out.output and log[-1] in out.output and "display: Blobs" in out.output
    missing = cli("show", "*/nothing/*", "--results", str(results))
    assert missing.exit_code == 2 and missing.output.count("\n") == 1 and "no stored cell" in missing.output


def test_compare_exits_1_when_a_cell_differs_beyond_the_tolerance(ran: tuple[Path, Path], tmp_path: Path) -> None:
    _, results = ran
    other = tmp_path / "other"
    shutil.copytree(results, other)
    same = cli("compare", str(results), str(other))
    assert same.exit_code == 0 and same.output.startswith("1 cells in both: 1 identical"), same.output
    (result,) = (other / "runs").glob("*/result.json")
    data = json.loads(result.read_text())
    data["final_acc"] += 0.25
    result.write_text(json.dumps(data))
    assert cli("compare", str(results), str(other), "--tolerance", "0.5").exit_code == 0
    differs = cli("compare", str(results), str(other), "--tolerance", "0.1")
    assert differs.exit_code == 1 and "| +0.25 |" in differs.output and "DIFFERS" in differs.output
    bad = cli("compare", str(results), str(tmp_path / "nope"))
    assert bad.exit_code == 2 and "no runs/ folder" in bad.output
