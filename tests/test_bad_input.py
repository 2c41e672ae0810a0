"""Every kind of bad input the README's table lists, and what the user sees.

Rows already covered elsewhere (malformed YAML, unknown keys, wrong types, out-of-range
values, unknown names, unsupported bits: tests/test_suite.py; a selector that raises or
returns a bad selection: tests/test_e2e.py; executor options and a missing submitit:
tests/test_executors.py) are not repeated here.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Iterator

import pytest
import torch
import yaml
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


@pytest.fixture
def finished(tmp_path: Path, tiny_results: Path) -> tuple[Path, Path, dict[str, dict]]:
    """A private copy of the finished results folder, and its suite."""
    suite, results = write_suite(tmp_path / "s.yaml", method=["full", "random"]), tmp_path / "r"
    shutil.copytree(tiny_results, results)
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
    assert "2 cells, 1 done, 1 to run" in out.output and "result.json: unreadable" in out.output
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



# ------------------------------------------------------------------ issue 14: every case a probe found


def suite_text(tmp_path: Path, text: str | bytes, name: str = "s.yaml") -> Path:
    """A suite written as text: what duplicate keys and odd bytes need (yaml.safe_dump cannot)."""
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


TINY_YAML = yaml.safe_dump({k: v for k, v in TINY.items() if k != "grid"})
GRID = ("grid:\n  dataset: {name: synthetic, params: {n_train: 256, n_test: 128, num_classes: 4}}\n"
        "  model: resnet8\n  bits: ['2/32']\n  method: [random]\n  seed: [0]\n")


@pytest.mark.parametrize("text, needle", [
    (TINY_YAML + GRID + "  fraction: [0.1]\n  fraction: [0.3]\n", "line 16: key 'fraction' appears twice (first on line 15); keep one"),
    (TINY_YAML + GRID + "  fraction: [true]\n", "grid.fraction[0]: expected a number, got true"),
    (TINY_YAML.replace("epochs: 4", "epochs: true") + GRID + "  fraction: [0.1]\n",
     "train.epochs: expected a whole number, got true"),
    (TINY_YAML.replace("epochs: 4", "epochs: 1.0e+9") + GRID + "  fraction: [0.1]\n",
     "train.epochs: input should be less than or equal to 100000"),
    (TINY_YAML + GRID.replace("'2/32'", "'２/32'") + "  fraction: [0.1]\n",
     "grid.bits[0]: expected W/A with ASCII digits, e.g. 2/32, got '２/32'"),
    (TINY_YAML + "device: tpu\n" + GRID + "  fraction: [0.1]\n",
     "device: expected cpu, cuda, cuda:N or auto, got 'tpu'"),
    (TINY_YAML + GRID.replace("[random]", "[{name: random, selector: acs}]") + "  fraction: [0.1]\n",
     "grid.method[0].name: 'random' is the name of the built-in method random (selector 'random'); "
     "give this variant of selector 'acs' its own name"),
    (TINY_YAML + GRID.replace("[random]", "[{name: acs, params: {every: x}}]") + "  fraction: [0.1]\n",
     "grid.method[0].params: every must be a whole number of epochs >= 1, got 'x'"),
    (TINY_YAML + GRID.replace("[random]", "[ACS]") + "  fraction: [0.1]\n",
     "grid.method[0]: unknown method 'ACS'; did you mean 'acs'?"),
    ((TINY_YAML + GRID + "  fraction: [0.1]\n").encode() + b"# caf\xe9 (Latin-1)\n",
     "s.yaml: not UTF-8 text (byte 0xe9 at position"),
])
def test_suite_mistakes_a_probe_found_are_one_line_exit_2(tmp_path: Path, text: str | bytes, needle: str) -> None:
    path, results = suite_text(tmp_path, text), tmp_path / "r"
    one_line_exit_2(run("validate", str(path)), needle)
    one_line_exit_2(run("run", str(path), "--results", str(results)), needle)
    assert not results.exists()


def test_unreadable_includes_and_folders_for_files(tmp_path: Path) -> None:
    (tmp_path / "latin1.yaml").write_bytes(b"name: caf\xe9\n")
    (tmp_path / "folder.yaml").mkdir()
    for inc, needle in (("latin1.yaml", "latin1.yaml: include: not UTF-8 text"),
                        ("folder.yaml", "folder.yaml: include: a folder, not a suite file")):
        one_line_exit_2(run("validate", str(suite_text(tmp_path, f"include: {inc}\n", "top.yaml"))), needle)
    one_line_exit_2(run("validate", str(tmp_path / "folder.yaml")), "folder.yaml: a folder, not a suite file")


def test_a_file_where_a_results_or_output_folder_is_meant(tmp_path: Path) -> None:
    suite, afile = write_suite(tmp_path / "s.yaml"), tmp_path / "notes.txt"
    afile.write_text("mine\n")
    for args, needle in ((("run", str(suite), "--results", str(afile)), f"--results {afile}: expected a folder"),
                         (("table", "--results", str(afile)), f"--results {afile}: expected a folder"),
                         (("plot", "--results", str(tmp_path), "--out", str(afile)), f"--out {afile}: expected a folder"),
                         (("compare", str(afile), str(tmp_path)), f"FOLDER_A {afile}: expected a folder")):
        one_line_exit_2(run(*args), needle)
    assert afile.read_text() == "mine\n"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_cuda_device_this_machine_lacks_is_one_line_before_any_cell(tmp_path: Path) -> None:
    suite, results = write_suite(tmp_path / "s.yaml"), tmp_path / "r"
    one_line_exit_2(run("run", str(suite), "--results", str(results), "--device", "cuda"),
                    "--device: 'cuda' asked for, but this machine has no CUDA device; use cpu or auto")
    (tmp_path / "gpu.yaml").write_text(suite.read_text() + "device: cuda:1\n")
    one_line_exit_2(run("run", str(tmp_path / "gpu.yaml"), "--results", str(results)),
                    "gpu.yaml: device: 'cuda:1' asked for, but this machine has no CUDA device")
    assert not results.exists()
    assert run("validate", str(tmp_path / "gpu.yaml")).exit_code == 0  # a suite for a GPU validates anywhere


def test_options_a_probe_found(tmp_path: Path, finished: tuple) -> None:
    suite, results, _ = finished
    one_line_exit_2(run("run", str(suite), "--results", str(results), "--device", "tpu"),
                    "--device: expected cpu, cuda, cuda:N or auto, got 'tpu'")
    for bad in ("nan", "inf"):
        one_line_exit_2(run("run", str(suite), "--results", str(results), "--claim-timeout", bad),
                        f"--claim-timeout: claim timeout must be a finite number of seconds > 0, got {bad}")
    one_line_exit_2(run("table", "--results", str(results), "--out", str(results.parent / "t"), "--vs", "randon"),
                    "--vs randon: no method 'randon' in these runs; did you mean 'random'?")
    assert not (results.parent / "t").exists()
    out = run("validate", str(suite), "--set", "grid.method[0]=acs")  # list items can be set
    assert out.exit_code == 0 and "has 2 cells" in out.output, out.output
    one_line_exit_2(run("validate", str(suite), "--set", "grid.method[5]=acs"),
                    "--set grid.method[5]=acs: grid.method has 2 entries (indexes 0..1)")


def test_a_huge_grid_is_refused_before_it_is_built_unless_allowed(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    suite = write_suite(tmp_path / "s.yaml", fraction=[round(0.001 * i, 3) for i in range(1, 1000)],
                        seed=list(range(800)))  # 3 methods x 999 fractions x 800 seeds
    start = time.perf_counter()
    one_line_exit_2(run("validate", str(suite)), "grid: 2,397,600 combinations, more than the limit of 100,000 "
                                                 "(split the suite, or raise the limit: QCORE_MAX_CELLS=2397600)")
    assert time.perf_counter() - start < 5
    monkeypatch.setenv("QCORE_MAX_CELLS", "2")
    one_line_exit_2(run("validate", str(write_suite(tmp_path / "s.yaml"))), "grid: 3 combinations, more than the "
                                                                            "limit of 2")
    monkeypatch.setenv("QCORE_MAX_CELLS", "3")
    assert run("validate", str(write_suite(tmp_path / "s.yaml"))).exit_code == 0


def test_an_unknown_method_lists_every_known_name_once(tmp_path: Path) -> None:
    out = run("validate", str(write_suite(tmp_path / "s.yaml", method=["qqqq"])))
    one_line_exit_2(out, "grid.method[0]: unknown method 'qqqq' (known: ")
    known = out.output.split("(known: ")[1].rstrip(")\n").split(", ")
    assert "acs" in known and len(known) == len(set(known))  # acs is a selector and a preset: listed once
