"""Files the harness writes are readable by whoever the umask allows, not private to one user."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from qcore_bench.files import atomic_write, write_json


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("umask")
def test_atomic_writes_honour_the_umask(tmp_path: Path) -> None:
    write_json(tmp_path / "result.json", {"final_acc": 1.0})
    atomic_write(tmp_path / "plot.png", lambda f: f.write(b"png"), mode="wb")
    assert mode(tmp_path / "result.json") == 0o644 and mode(tmp_path / "plot.png") == 0o644
    os.umask(0o002)
    write_json(tmp_path / "result.json", {"final_acc": 2.0})
    assert mode(tmp_path / "result.json") == 0o664
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp file left


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    write_json(tmp_path / "cell.json", {"id": "a"})

    def boom(f: object) -> None:
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(tmp_path / "cell.json", boom)
    assert (tmp_path / "cell.json").read_text().startswith("{") and len(list(tmp_path.iterdir())) == 1


@pytest.mark.usefixtures("umask")
def test_tables_and_plots_of_a_results_folder_are_readable_by_others(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from qcore_bench.cli import main

    results = Path(__file__).resolve().parents[1] / "results" / "quickstart"
    out = CliRunner().invoke(main, ["table", "--results", str(results), "--out", str(tmp_path / "t")])
    assert out.exit_code == 0, out.output
    written = list((tmp_path / "t").iterdir())
    assert {p.suffix for p in written} >= {".md", ".tex", ".csv", ".png", ".pdf"}
    assert {p.name: mode(p) for p in written} == {p.name: 0o644 for p in written}
