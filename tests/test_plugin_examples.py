"""The README's dataset and model plugins, installed as a package with entry points, run a cell.

The code is read from the README itself, so the documented examples cannot rot.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import qcore_bench.registry as registry_module
from qcore_bench.cli import main
from qcore_bench.data.digits import load_digits

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_block(first_line: str) -> str:
    """The README's code block that starts with ``first_line``."""
    blocks = re.findall(r"```(?:python|toml)\n(.*?)```", README.read_text(), flags=re.S)
    (block,) = [b for b in blocks if b.startswith(first_line)]
    return block


@pytest.fixture
def example_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """my_pkg from the README, installed (dist-info with its entry points) on sys.path."""
    site = tmp_path / "site"
    (site / "my_pkg").mkdir(parents=True)
    (site / "my_pkg" / "__init__.py").write_text("")
    for name in ("my_data", "my_model"):
        (site / "my_pkg" / f"{name}.py").write_text(readme_block(f"# my_pkg/{name}.py"))
    dist = site / "my_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-pkg\nVersion: 0.1\n")
    entry_points = [readme_block('[project.entry-points."qcore_bench.datasets"]'),
                    readme_block('[project.entry-points."qcore_bench.models"]')]
    (dist / "entry_points.txt").write_text("\n".join(e.replace("project.entry-points.", "").replace('"', "")
                                                     for e in entry_points))
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(registry_module, "_REGISTRIES", {})  # read the entry points again
    return site


def write_arrays(root: Path) -> Path:
    """scikit-learn's digits as the two .npz files the example reads (real data, 8x8x1)."""
    digits = load_digits(None, root)
    root.mkdir(parents=True, exist_ok=True)
    for split in ("train", "test"):
        x = getattr(digits, f"{split}_x").permute(0, 2, 3, 1).numpy()
        np.savez(root / f"{split}.npz", x=x, y=getattr(digits, f"{split}_y").numpy())
    return root


def test_readme_dataset_and_model_plugins_register_and_run_a_cell(example_package: Path, tmp_path: Path) -> None:
    listed = CliRunner().invoke(main, ["ls", "datasets"])
    assert re.search(r"npz\s.*my-pkg", listed.output), listed.output
    assert re.search(r"small_cnn\s.*my-pkg", CliRunner().invoke(main, ["ls", "models"]).output)
    suite = tmp_path / "s.yaml"
    suite.write_text(yaml.safe_dump({
        "name": "plugins", "train": {"epochs": 2, "batch_size": 64}, "teacher": {"epochs": 6, "batch_size": 64},
        "grid": {"dataset": {"name": "npz", "root": str(write_arrays(tmp_path / "arrays")), "params": {"max_train": 1000}},
                 "model": {"name": "small_cnn", "params": {"width": 8}}, "bits": ["4/4"], "fraction": [0.3],
                 "noise": [0.0], "method": ["random"], "seed": [0]}}))
    missing = CliRunner().invoke(main, ["run", str(suite), "--set", f"grid.dataset.root={tmp_path / 'none'}",
                                        "--results", str(tmp_path / "r")])
    assert missing.exit_code == 2 and missing.output == (  # the plugin's check, before any cell
        f"error: {suite}: grid.dataset: npz: {tmp_path / 'none'}/train.npz not found; expected train.npz and "
        "test.npz holding x (uint8 [N, H, W, C]) and y (integer labels)\n")
    assert not (tmp_path / "r").exists()
    run = CliRunner().invoke(main, ["run", str(suite), "--results", str(tmp_path / "r")])
    assert run.exit_code == 0, run.output
    assert re.search(r"^done 1/1 \w+ npz\(max_train=1000\)/small_cnn\(width=8\)/w4a4/f0.3/clean/random/s0: "
                     r"final acc (\d+\.\d\d)%", run.stderr, flags=re.M)
    acc = float(re.search(r"final acc (\d+\.\d\d)%", run.stderr).group(1))
    assert acc > 30  # a teacher of 6 epochs, 2 QAT epochs on 300 real digits a time: well above chance (10%)
    table = CliRunner().invoke(main, ["table", "--results", str(tmp_path / "r"), "--out", str(tmp_path / "t")])
    assert table.exit_code == 0, table.output
    assert "### dataset My arrays (1k train), model small_cnn(width=8), bits 4/4" in table.output
