"""Method presets: the top-level methods/ folder, users' own folders, clashes, and the wheel."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from conftest import write_suite

from qcore_bench.cli import main
from qcore_bench.presets import presets
from qcore_bench.suite import expand, load_suite

ROOT = Path(__file__).resolve().parents[1]


def _preset(folder: Path, name: str, selector: str = "acs", **params: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"description": f"user {name}", "selector": selector, "params": params}))
    return path


def test_builtin_presets_are_the_top_level_folder_and_ls_names_their_source() -> None:
    shipped = {p.stem for p in (ROOT / "methods").glob("*.yaml")}
    assert {"acs", "random_adaptive", "el2n", "moderate_acs_repo"} <= shipped
    assert set(presets()) == shipped and all(p.source == "built-in" for p in presets().values())
    out = CliRunner().invoke(main, ["ls", "methods", "random*"])
    assert out.exit_code == 0
    rows = [line.split() for line in out.output.splitlines()]
    assert [r[:3] for r in rows] == [["random", "random", "built-in"], ["random_adaptive", "random", "built-in"]]


def test_a_methods_folder_beside_the_suite_adds_presets(tmp_path: Path) -> None:
    path = _preset(tmp_path / "methods", "acs_r3", every=3, schedule="linear")
    suite = write_suite(tmp_path / "s.yaml", method=["acs_r3"])
    (cell,) = expand(load_suite(suite))
    assert cell.method.selector == "acs" and cell.method.params == {"every": 3, "schedule": "linear"}
    out = CliRunner().invoke(main, ["ls", "methods", "acs_r3", "--suite", str(suite)])
    assert out.exit_code == 0 and out.output.split()[:3] == ["acs_r3", "acs", str(path)]


def test_qcore_methods_folders_and_clashes_are_one_line_errors(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    mine = tmp_path / "mine"
    _preset(mine, "el2n_long", selector="el2n", proxy_epochs=20)
    monkeypatch.setenv("QCORE_METHODS", str(mine))
    suite = write_suite(tmp_path / "s.yaml", method=["el2n_long"])
    (cell,) = expand(load_suite(suite))
    assert cell.method.selector == "el2n" and cell.method.params == {"proxy_epochs": 20}

    clash = _preset(mine, "acs", every=2)  # the same name as a built-in preset
    results = tmp_path / "r"
    out = CliRunner().invoke(main, ["run", str(suite), "--results", str(results)])
    assert out.exit_code == 2 and not results.exists()
    assert out.output.strip() == (f"error: method preset 'acs' is defined twice: the built-in acs.yaml and {clash}; "
                                  "rename one")
    clash.unlink()

    monkeypatch.setenv("QCORE_METHODS", str(tmp_path / "nowhere"))
    out = CliRunner().invoke(main, ["validate", str(suite)])
    assert out.exit_code == 2 and out.output.strip() == f"error: $QCORE_METHODS: {tmp_path / 'nowhere'}: not a folder"


def test_a_malformed_preset_names_its_file_and_key(tmp_path: Path) -> None:
    (tmp_path / "methods").mkdir()
    (tmp_path / "methods" / "bad.yaml").write_text("selector: acs\nparams: [1, 2]\n")
    suite = write_suite(tmp_path / "s.yaml", method=["random"])
    out = CliRunner().invoke(main, ["validate", str(suite)])
    assert out.exit_code == 2
    assert out.output.strip() == f"error: {tmp_path / 'methods' / 'bad.yaml'}: params: expected a mapping of selector parameters"


def test_the_wheel_ships_every_module_and_the_presets(tmp_path: Path) -> None:
    """A non-editable install must find the presets: build the wheel and read it."""
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("qcore_bench-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"qcore_bench/methods/{p.name}" for p in (ROOT / "methods").glob("*.yaml")} <= names
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "qcore_bench").rglob("*.py")}
    assert modules <= names
