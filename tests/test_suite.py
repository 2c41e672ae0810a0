"""Suite validation: one-line errors naming file and key, exit code 2, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from qcore_bench.cli import main
from qcore_bench.suite import SuiteError, expand, load_suite

BASE = {
    "name": "t",
    "train": {"epochs": 2},
    "grid": {"dataset": "synthetic", "model": "resnet8", "bits": ["2/32"], "fraction": [0.1, 0.5],
             "method": ["full", "random", "acs"], "seed": [0, 1]},
}


def write(tmp_path: Path, data: dict, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def with_(path: str, value: object) -> dict:
    import copy

    data = copy.deepcopy(BASE)
    node = data
    keys = path.split(".")
    for k in keys[:-1]:
        node = node[k]
    node[keys[-1]] = value
    return data


def test_expand_counts_full_once_per_setting(tmp_path: Path) -> None:
    cells = expand(load_suite(write(tmp_path, BASE)))
    # random and acs: 2 fractions x 2 seeds each; full ignores the fraction axis
    assert len(cells) == 2 * 2 * 2 + 2
    assert {c.fraction for c in cells if c.method.name == "full"} == {1.0}
    assert len({c.id for c in cells}) == len(cells)


def test_cell_id_is_stable_and_ignores_runtime_keys(tmp_path: Path) -> None:
    a = expand(load_suite(write(tmp_path, BASE)))
    b = expand(load_suite(write(tmp_path, {**BASE, "name": "other", "device": "cpu", "eval_batch_size": 7}, "b.yaml")))
    assert [c.id for c in a] == [c.id for c in b]
    c = expand(load_suite(write(tmp_path, with_("train.epochs", 3), "c.yaml")))
    assert not {x.id for x in a} & {x.id for x in c}


def test_include_and_set_override(tmp_path: Path) -> None:
    write(tmp_path, BASE, "base.yaml")
    child = write(tmp_path, {"include": "base.yaml", "name": "child", "train": {"lr": 0.5}}, "child.yaml")
    suite = load_suite(child, ["train.epochs=7", "grid.seed=[3]"])
    assert (suite.name, suite.train.lr, suite.train.epochs, suite.grid.seed) == ("child", 0.5, 7, [3])
    assert suite.grid.method[2].name == "acs"


@pytest.mark.parametrize("data, needle", [
    (with_("train.epoch", 3), "train.epoch: unknown key 'epoch'; did you mean 'epochs'?"),
    (with_("train.epochs", "many"), "train.epochs: input should be a valid integer"),
    (with_("grid.fraction", [0]), "grid.fraction[0]: input should be greater than 0"),
    (with_("grid.fraction", [1.5]), "grid.fraction[0]: input should be less than or equal to 1"),
    (with_("grid.method", ["acss"]), "grid.method[0]: unknown method 'acss'; did you mean 'acs'?"),
    (with_("grid.dataset", ["digitz"]), "grid.dataset[0].name: unknown dataset 'digitz'; did you mean 'digits'?"),
    (with_("grid.model", ["resnet21"]), "grid.model[0]: unknown model 'resnet21'"),
    (with_("grid.bits", ["1/32"]), "grid.bits[0]: weight bits 1 in '1/32' not supported: expected 2..8 or 32"),
    (with_("grid.bits", ["9/4"]), "grid.bits[0]: weight bits 9 in '9/4' not supported"),
    (with_("grid.bits", ["4"]), "expected bits written W/A"),
    (with_("grid.method", [{"name": "acs", "params": {"schedul": "linear"}}]),
     "grid.method[0].params: unknown parameter 'schedul'; did you mean 'schedule'?"),
    (with_("grid.method", [{"name": "acs", "params": {"schedule": "cubic"}}]), "schedule must be one of"),
])
def test_bad_suite_is_one_line_exit_2_nothing_written(tmp_path: Path, data: dict, needle: str) -> None:
    path = write(tmp_path, data)
    results = tmp_path / "results"
    out = CliRunner().invoke(main, ["run", str(path), "--results", str(results)])
    assert out.exit_code == 2, out.output
    lines = out.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: "), out.output
    assert needle in lines[0]
    assert not results.exists()


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="nope.yaml: file not found"):
        load_suite(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid: [1,\n")
    with pytest.raises(SuiteError, match=r"bad.yaml: line \d+: invalid YAML"):
        load_suite(bad)
    with pytest.raises(SuiteError, match="missing.yaml: include: file not found"):
        load_suite(write(tmp_path, {"include": "missing.yaml"}, "inc.yaml"))


def test_set_errors_name_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    with pytest.raises(SuiteError, match="train.epochs: input should be greater than 0"):
        load_suite(path, ["train.epochs=0"])
    with pytest.raises(SuiteError, match="expected KEY=VALUE"):
        load_suite(path, ["train.epochs"])


def test_validate_and_plan_commands(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    out = CliRunner().invoke(main, ["validate", str(path)])
    assert out.exit_code == 0 and "has 10 cells" in out.output
    out = CliRunner().invoke(main, ["plan", str(path), "--results", str(tmp_path / "r")])
    assert out.exit_code == 0
    assert out.output.count(" pending\n") == 10 and out.output.endswith("\n10 cells: 0 done, 10 pending, 0 failed\n")
    assert not (tmp_path / "r").exists()


def test_ls_lists_builtins_with_package_and_wildcard() -> None:
    out = CliRunner().invoke(main, ["ls", "selectors"])
    assert out.exit_code == 0
    names = [line.split()[0] for line in out.output.splitlines()]
    assert {"acs", "full", "random"} <= set(names)
    assert all("qcore-bench" in line for line in out.output.splitlines())
    out = CliRunner().invoke(main, ["ls", "models", "resnet*"])
    assert [line.split()[0] for line in out.output.splitlines()] == [
        "resnet8", "resnet18", "resnet18_imagenet", "resnet20", "resnet101_imagenet"]
