"""Every kind of bad input the README's table lists, and what the user sees.

Rows already covered elsewhere (malformed YAML, unknown keys, wrong types, out-of-range
values, unknown names, unsupported bits: tests/test_suite.py; a selector that raises or
returns a bad selection: tests/test_e2e.py; executor options and a missing submitit:
tests/test_executors.py) are not repeated here.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterator

import pytest
import torch
from click.testing import CliRunner
from conftest import TINY, write_suite
from PIL import Image

from qcore_bench.cli import main
from qcore_bench.registry import Entry, registry
from qcore_bench.store import Store

ONE = {"method": ["random"]}  # one cheap cell


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """One CPU thread: as fast on an idle machine, far faster on a busy one; the same numbers every run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run(*args: str) -> object:
    return CliRunner().invoke(main, [*args])


def one_line_exit_2(out: object, needle: str) -> None:
    assert out.exit_code == 2, out.output
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.output
    assert needle in lines[0], lines[0]


def failed_cells(out: object) -> str:
    """The failure block of a run's summary."""
    assert out.exit_code == 1, out.output
    return out.output.split("cells failed:")[1]


# ------------------------------------------------------------------ suites


@pytest.mark.parametrize("data, grid, needle", [
    ({}, {"fraction": [0.5, 1.0], "method": [{"name": "acs", "params": {"every": 2}}]},
     "grid.fraction[1]: fraction 1 with adaptive method 'acs' keeps every sample at every selection"),
    ({"quant": {"policy": "weight_only_blocks"}}, {"bits": ["2/4"]},
     "grid.bits[0]: policy 'weight_only_blocks' keeps activations full precision: write W/32, got '2/4'"),
    ({}, {"method": ["random", {"name": "random", "params": {"every": 2}}]},
     "method name 'random' appears twice; give each variant its own name"),
])
def test_contradictory_settings_are_refused_before_anything_runs(tmp_path: Path, data: dict, grid: dict,
                                                                  needle: str) -> None:
    suite, results = write_suite(tmp_path / "s.yaml", data, **grid), tmp_path / "r"
    one_line_exit_2(run("run", str(suite), "--results", str(results)), needle)
    assert not results.exists()


def test_include_cycle_names_the_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("include: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("include: a.yaml\n")
    one_line_exit_2(run("validate", str(tmp_path / "a.yaml")), "include: includes itself through")


class NotASelector:
    """A plugin class that forgot to subclass Selector."""


def test_plugin_that_cannot_be_imported_or_is_not_a_selector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    entries = registry("selectors").entries
    # names of their own: the registry caches what it loaded by name
    monkeypatch.setitem(entries, "broken_bi", Entry("broken_bi", "no_such_module_xyz:Sel", "brokenpkg"))
    monkeypatch.setitem(entries, "plain_bi", Entry("plain_bi", "test_bad_input:NotASelector", "plainpkg"))
    suite = write_suite(tmp_path / "s.yaml", method=["random", "broken_bi"])
    one_line_exit_2(run("validate", str(suite)),
                    "grid.method[1]: selector 'broken_bi' (from package brokenpkg) failed to import: "
                    "No module named 'no_such_module_xyz'")
    suite = write_suite(tmp_path / "s.yaml", method=["plain_bi"])
    one_line_exit_2(run("validate", str(suite)),
                    "grid.method[0]: selector 'plain_bi' (from package plainpkg, test_bad_input:NotASelector) "
                    "is not a subclass of qcore_bench.Selector")
    assert run("validate", str(write_suite(tmp_path / "s.yaml", method=["random"]))).exit_code == 0


def test_executor_plugin_that_is_not_an_executor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry("executors").entries, "plain_bi",
                        Entry("plain_bi", "test_bad_input:NotASelector", "plainpkg"))
    out = run("run", str(write_suite(tmp_path / "s.yaml")), "--results", str(tmp_path / "r"), "--executor", "plain_bi")
    one_line_exit_2(out, "--executor: 'plain_bi' (from package plainpkg, test_bad_input:NotASelector) is not a "
                         "qcore_bench.executors.Executor subclass")


# ------------------------------------------------------------------ data


def image_tree(root: Path) -> Path:
    """A 2-class image folder, 8 training and 2 test images per class."""
    for split, n in (("train", 8), ("test", 2)):
        for c, shade in (("a", 40), ("b", 200)):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (shade, i * 10, 0)).save(root / split / c / f"{i}.png")
    return root


def test_a_missing_data_root_is_one_line_before_anything_runs(tmp_path: Path) -> None:
    """Checked once per data set by validate, plan and run: not a failed cell per grid point."""
    nowhere = tmp_path / "nowhere"
    datasets = [TINY["grid"]["dataset"], {"name": "imagefolder", "root": str(nowhere), "params": {"image_size": 8}}]
    suite, results = write_suite(tmp_path / "s.yaml", dataset=datasets, seed=[0, 1, 2]), tmp_path / "r"
    for command in (["validate"], ["plan", "--results", str(results)], ["run", "--results", str(results)]):
        out = run(command[0], str(suite), *command[1:])
        assert out.exit_code == 2, out.output
        assert out.output == (f"error: {suite}: grid.dataset: imagefolder: root {nowhere} does not exist; "
                              "expected the layout <root>/train/<class>/<image> and <root>/test/<class>/<image> "
                              "(or val/ instead of test/)\n")
        assert not results.exists()


def test_an_unreadable_image_fails_its_cells_only(tmp_path: Path) -> None:
    tree = image_tree(tmp_path / "images")
    (tree / "train" / "b" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    datasets = [TINY["grid"]["dataset"], {"name": "imagefolder", "root": str(tree), "params": {"image_size": 8}}]
    suite, results = write_suite(tmp_path / "s.yaml", dataset=datasets, **ONE), tmp_path / "r"
    out = run("run", str(suite), "--results", str(results))
    block = failed_cells(out)
    assert "1 of 2 cells failed" in out.output
    assert f"imagefolder: cannot decode {tree / 'train' / 'b' / '3.png'}" in block
    assert [r["config"]["dataset"]["name"] for r in Store(results).records()] == ["synthetic"]
    for d in (results / "runs").iterdir():
        if (d / "error.txt").exists():
            assert "Traceback" in (d / "error.txt").read_text() and "DatasetError" in (d / "error.txt").read_text()


def test_diverging_training_fails_the_cell_with_the_reason(tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "s.yaml", {"train": {**TINY["train"], "lr": 1e30, "schedule": "constant"}}, **ONE)
    out = run("run", str(suite), "--results", str(tmp_path / "r"))
    assert "TrainingError: non-finite training loss" in failed_cells(out)


# ------------------------------------------------------------------ results folder


@pytest.fixture(scope="module")
def finished_once(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results folder with two finished cells, trained once for the module."""
    tmp = tmp_path_factory.mktemp("finished")
    suite, results = write_suite(tmp / "s.yaml", method=["full", "random"]), tmp / "r"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # the cache every test of the session uses (conftest's private_cache), so the teacher is reused
        out = CliRunner().invoke(main, ["run", str(suite), "--results", str(results)],
                                 env={"QCORE_CACHE": str(tmp_path_factory.getbasetemp() / "qcore-cache")})
    finally:
        torch.set_num_threads(threads)
    assert out.exit_code == 0, out.output
    return results


@pytest.fixture
def finished(tmp_path: Path, finished_once: Path) -> tuple[Path, Path, dict[str, dict]]:
    """A private copy of the finished results folder, and its suite."""
    suite, results = write_suite(tmp_path / "s.yaml", method=["full", "random"]), tmp_path / "r"
    shutil.copytree(finished_once, results)
    return suite, results, {r["config"]["method"]["name"]: r for r in Store(results).records()}


def test_truncated_result_file_is_reported_and_the_cell_finished_again(finished: tuple) -> None:
    suite, results, recs = finished
    cid = recs["random"]["id"]
    result = results / "runs" / cid / "result.json"
    result.write_text(result.read_text()[:25])  # a copy that stopped half-way
    (results / "runs" / cid / "status.json").write_text("{\"sta")
    plan = run("plan", str(suite), "--results", str(results))
    assert f"{cid}" in plan.output and "unreadable" in plan.output.split(cid)[1].splitlines()[0]
    table = run("table", "--results", str(results), "--out", str(results.parent / "t"), "--no-plots")
    assert table.exit_code == 0 and f"warning: {results / 'runs' / cid}: skipped" in table.output
    out = run("run", str(suite), "--results", str(results))
    assert out.exit_code == 0, out.output
    assert "2 cells, 1 done, 1 to run" in out.output and "result.json is unreadable" in out.output
    again = Store(results).result(cid)
    assert again["final_acc"] == recs["random"]["result"]["final_acc"]  # from the final checkpoint
    lines = (results / "runs" / cid / "history.jsonl").read_text().splitlines()
    assert [json.loads(h)["epoch"] for h in lines] == [0, 1, 2, 3]


def test_truncated_checkpoint_is_set_aside_and_the_cell_starts_over(finished: tuple,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    suite, results, recs = finished
    d = results / "runs" / recs["random"]["id"]
    (d / "result.json").unlink()
    (d / "ckpt.pt").write_bytes((d / "ckpt.pt").read_bytes()[:100])
    out = run("run", str(suite), "--results", str(results))
    assert out.exit_code == 0, out.output
    assert "ckpt.pt is unreadable" in caplog.text and "the cell starts over" in caplog.text
    assert (d / "ckpt.pt.unreadable").exists()
    assert Store(results).result(recs["random"]["id"])["final_acc"] == recs["random"]["result"]["final_acc"]


def test_checkpoint_from_another_cell_is_refused(finished: tuple) -> None:
    suite, results, recs = finished
    full, rand = (results / "runs" / recs[m]["id"] for m in ("full", "random"))
    shutil.copy(full / "ckpt.pt", rand / "ckpt.pt")
    (rand / "result.json").unlink()
    out = run("run", str(suite), "--results", str(results))
    assert f"ckpt.pt belongs to cell {recs['full']['id']}, not {recs['random']['id']}" in failed_cells(out)


def test_run_cell_with_an_unknown_or_mismatched_id(finished: tuple) -> None:
    suite, results, recs = finished
    one_line_exit_2(run("run-cell", "0123456789ab", "--results", str(results)),
                    "cell.json: not found; give --suite to take the cell from a suite")
    one_line_exit_2(run("run-cell", "0123456789ab", "--results", str(results), "--suite", str(suite)),
                    "no cell with id 0123456789ab")
    copied = results / "runs" / "0123456789ab"
    shutil.copytree(results / "runs" / recs["full"]["id"], copied)
    one_line_exit_2(run("run-cell", "0123456789ab", "--results", str(results)),
                    f"holds cell {recs['full']['id']}, not 0123456789ab")
    out = run("run-cell", recs["full"]["id"], "--results", str(results))
    assert out.exit_code == 0 and "was already done" in out.output


def test_clear_pattern_that_matches_nothing(finished: tuple) -> None:
    suite, results, _ = finished
    one_line_exit_2(run("run", str(suite), "--results", str(results), "--clear", "*/nosuch/*"),
                    "--clear */nosuch/*: matches no stored cell")

