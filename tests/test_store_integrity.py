"""The store is the source of truth: a table never counts a folder that does not verify.

Each test reproduces a way a results folder goes wrong by hand (a backup copy, a copied or
deleted cell.json, two suites' runs pooled, a damaged result or history) and checks what a
researcher sees: `table` leaves the cell out with one line naming the folder and file,
`plan` says `damaged` instead of `done`, and `run` finishes the cell again.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import write_suite

from qcore_bench.cli import main
from qcore_bench.store import Store

METHODS = ["full", "random"]


def run(*args: str) -> object:
    return CliRunner().invoke(main, [*args])


@pytest.fixture
def store(tmp_path: Path, tiny_results: Path) -> tuple[Path, Path, dict[str, Path]]:
    """A private copy of the results, its suite, and each method's cell folder."""
    suite, results = write_suite(tmp_path / "s.yaml", method=METHODS), tmp_path / "r"
    shutil.copytree(tiny_results, results)
    folders = {json.loads((d / "cell.json").read_text())["config"]["method"]["name"]: d
               for d in (results / "runs").iterdir()}
    return suite, results, folders


def table(results: Path) -> tuple[object, list[dict[str, str]]]:
    """`table`'s result and the rows of its csv."""
    out = run("table", "--results", str(results), "--out", str(results.parent / "t"), "--no-plots")
    assert out.exit_code == 0, out.output
    with open(results.parent / "t" / "tables.csv") as f:
        return out, list(csv.DictReader(f))


def row(rows: list[dict[str, str]], method: str) -> dict[str, str]:
    (line,) = [r for r in rows if r["method"] == method]
    return line


def plan_status(suite: Path, results: Path, folder: Path) -> str:
    out = run("plan", str(suite), "--results", str(results))
    (line,) = [x for x in out.output.splitlines() if x.startswith(folder.name)]
    return " ".join(line.split())  # columns are padded to their widest entry


def warnings(out: object) -> list[str]:
    return [x for x in out.output.splitlines() if x.startswith("warning: ")]


def test_a_backup_copy_of_a_run_folder_is_not_a_second_seed(store: tuple) -> None:
    _, results, folders = store
    shutil.copytree(folders["random"], results / "runs" / f"{folders['random'].name}.bak")
    out, rows = table(results)
    assert row(rows, "random")["n"] == "1"  # one run, not two seeds
    (warning,) = warnings(out)
    assert f"{folders['random'].name}.bak: skipped, cell.json: its config is cell {folders['random'].name}" in warning


def test_another_cells_cell_json_is_never_averaged_into_a_row(store: tuple) -> None:
    suite, results, folders = store
    before = json.loads((folders["random"] / "result.json").read_text())["final_acc"]
    shutil.copy(folders["full"] / "cell.json", folders["random"] / "cell.json")
    out, rows = table(results)
    assert row(rows, "full")["n"] == "1" and [r["method"] for r in rows] == ["full"]  # not counted twice
    (warning,) = warnings(out)
    assert f"{folders['random']}: skipped, cell.json: its config is cell {folders['full'].name}" in warning
    assert "damaged (cell.json: its config is cell" in plan_status(suite, results, folders["random"])
    again = run("run", str(suite), "--results", str(results))
    assert again.exit_code == 0 and "1 done, 1 to run" in again.output, again.output
    assert Store(results).result(folders["random"].name)["final_acc"] == before
    assert plan_status(suite, results, folders["random"]).endswith("done")


def test_a_deleted_cell_json_is_not_done(store: tuple) -> None:
    suite, results, folders = store
    (folders["random"] / "cell.json").unlink()
    assert plan_status(suite, results, folders["random"]).endswith("damaged (cell.json: missing)")
    out, _ = table(results)
    assert warnings(out) == [f"warning: {folders['random']}: skipped, cell.json: missing"]
    assert run("run", str(suite), "--results", str(results)).exit_code == 0
    assert plan_status(suite, results, folders["random"]).endswith("done")


@pytest.mark.parametrize("content, problem", [
    ("{}", "result.json: missing 'final_acc'"),
    ("null", "result.json: expected a JSON object, got null"),
    ("[1, 2]", "result.json: expected a JSON object, got [1, 2]"),
    ("string", 'result.json: final_acc: expected a finite number, got "high"'),
])
def test_a_bad_result_is_damaged_skipped_by_name_and_run_again(store: tuple, content: str, problem: str) -> None:
    suite, results, folders = store
    path = folders["random"] / "result.json"
    good = json.loads(path.read_text())
    path.write_text(json.dumps({**good, "final_acc": "high"}) if content == "string" else content)
    out, rows = table(results)
    assert warnings(out) == [f"warning: {folders['random']}: skipped, {problem}"]
    assert [(r["method"], r["n"]) for r in rows] == [("full", "1")]  # the rest of the table goes on
    assert plan_status(suite, results, folders["random"]).endswith(f"damaged ({problem})")
    again = run("run", str(suite), "--results", str(results))
    assert again.exit_code == 0 and "1 done, 1 to run" in again.output, again.output
    assert json.loads(path.read_text())["final_acc"] == good["final_acc"]  # from the final checkpoint


def test_a_truncated_history_is_damaged_and_the_plots_still_come(store: tuple) -> None:
    suite, results, folders = store
    history = folders["random"] / "history.jsonl"
    history.write_text(history.read_text()[:-30])
    out = run("table", "--results", str(results), "--out", str(results.parent / "t"))
    assert out.exit_code == 0, out.output
    assert warnings(out) == [f"warning: {folders['random']}: skipped, history.jsonl: line 4 is not JSON (truncated?)"]
    assert list((results.parent / "t").glob("fraction_*.png"))
    assert "damaged (history.jsonl: line 4" in plan_status(suite, results, folders["random"])
    assert run("run", str(suite), "--results", str(results)).exit_code == 0
    assert len(history.read_text().splitlines()) == 4


def test_runs_of_different_recipes_get_tables_of_their_own(store: tuple, tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """Two suites' runs copied into one folder: 4-epoch and 2-epoch runs are never two seeds."""
    _, results, _ = store
    short = write_suite(tmp_path / "short.yaml", {"train": {"epochs": 2, "batch_size": 32, "lr": 0.05}},
                        method=["random"])
    assert run("run", str(short), "--results", str(tmp_path / "short")).exit_code == 0
    for d in (tmp_path / "short" / "runs").iterdir():
        shutil.copytree(d, results / "runs" / d.name)
    out, rows = table(results)
    titles = [x for x in out.output.splitlines() if x.startswith("### ")]
    assert sorted(t.rsplit(", ", 1)[1] for t in titles) == ["train.epochs 2", "train.epochs 4"]
    assert [r["n"] for r in rows if r["method"] == "random"] == ["1", "1"]
    assert "the runs differ in train.epochs: one table per recipe" in caplog.text
