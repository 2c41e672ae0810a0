"""What a researcher asks of stored runs: one cell in full, and two results folders cell by cell."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from qcore_bench.compare import compare, render
from qcore_bench.show import CellNotFound, find_cell, render_cell
from qcore_bench.store import Store

QUICKSTART = Path(__file__).resolve().parents[1] / "results" / "quickstart"
ACS = "digits/resnet8/w2a32/f0.1/clean/acs/s0"


def copy_cells(dest: Path, n: int = 4) -> Store:
    for d in sorted((QUICKSTART / "runs").iterdir())[:n]:
        shutil.copytree(d, dest / "runs" / d.name)
    return Store(dest)


def edit(store: Store, cid: str, final_shift: float = 0.0, epoch: int | None = None, acc_shift: float = 0.0) -> None:
    d = store.dir(cid)
    result = json.loads((d / "result.json").read_text())
    result["final_acc"] += final_shift
    result["provenance"]["torch"] = "9.9.9"
    (d / "result.json").write_text(json.dumps(result))
    if epoch is not None:
        rows = [json.loads(line) for line in (d / "history.jsonl").read_text().splitlines()]
        rows[epoch]["test_acc"] += acc_shift
        (d / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_compare_lines_up_cells_and_grades_differences_by_tolerance(tmp_path: Path) -> None:
    a, b = copy_cells(tmp_path / "a"), copy_cells(tmp_path / "b", 5)
    ids = sorted(p.name for p in a.runs.iterdir())
    edit(b, ids[0], final_shift=0.3, epoch=19, acc_shift=0.3)
    edit(b, ids[1], epoch=3, acc_shift=-2.0)
    cmp = compare(a, b)
    verdicts = {c.id: c.verdict(0.5) for c in cmp.cells}
    assert verdicts == {ids[0]: "within", ids[1]: "DIFFERS", ids[2]: "identical", ids[3]: "identical"}
    (second,) = [c for c in cmp.cells if c.id == ids[1]]
    assert second.first_epoch == 3 and second.epoch_delta == pytest.approx(2.0) and second.delta == 0
    assert len(cmp.only[1]) == 1 and not cmp.only[0]
    assert cmp.provenance["torch"] == (["2.14.1+cu130"], ["2.14.1+cu130", "9.9.9"])
    text = render(cmp, ("a", "b"), 0.5)
    assert text.startswith("4 cells in both: 2 identical, 1 within 0.5 points, 1 differ by more; 0 only in a, 1 only in b")
    assert f"| {ids[0]} |" in text and f"| {ids[2]} |" not in text  # identical cells only with every=True
    assert [c.id for c in cmp.differing(0.1)] == ids[:2]


def test_show_finds_a_cell_by_id_prefix_or_label_and_shows_everything(tmp_path: Path) -> None:
    store = Store(QUICKSTART)
    cid = find_cell(store, ACS)
    assert find_cell(store, cid[:5]) == cid
    text = render_cell(store, cid)
    assert text.startswith(f"# cell {cid}  {ACS}\n") and "status: done" in text
    assert "final acc 98.05%" in text and "method:\n  name: acs" in text and "cpu_threads: 1" in text
    assert "## history (20 epochs)" in text and text.count("\n| ") >= 21
    with pytest.raises(CellNotFound, match=r"'\*/acs/\*' matches 8 cells"):
        find_cell(store, "*/acs/*")
    with pytest.raises(CellNotFound, match=r"no stored cell has an id starting with 'zzz'"):
        find_cell(store, "zzz")


def test_compare_reads_a_detection_cells_map(tmp_path: Path) -> None:
    """Detection results hold mAP, not top-1: compare grades them on it (it used to raise KeyError)."""
    detection = QUICKSTART.parent / "detection_cpu"
    cid = sorted(p.name for p in (detection / "runs").iterdir())[0]
    shutil.copytree(detection / "runs" / cid, tmp_path / "runs" / cid)
    store = Store(tmp_path)
    d = store.dir(cid)
    rows = [json.loads(line) for line in (d / "history.jsonl").read_text().splitlines()]
    result = json.loads((d / "result.json").read_text())
    assert result["metric"] == "mAP" and "test_map" in rows[-1]
    result["final_map"] += 0.5
    (d / "result.json").write_text(json.dumps(result))
    rows[1]["test_map"] += 0.25
    (d / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cmp = compare(Store(detection), store)
    (cell,) = cmp.cells
    assert cell.delta == pytest.approx(0.5) and cell.first_epoch == 1 and cell.epoch_delta == pytest.approx(0.25)
    assert "1 cells in both: 0 identical, 0 within 0 points, 1 differ by more" in render(cmp, ("a", "b"), 0.0)
