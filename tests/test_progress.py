"""What a user watching a run sees: whole fields in a narrow terminal, whole lines in a log file,
and a line for the teacher and the proxies a cell trains before its own epochs."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import write_suite
from rich.console import Console

from qcore_bench.cli import main
from qcore_bench.events import Phase
from qcore_bench.loggers import ConsoleProgress, cell_label, fit
from qcore_bench.suite import expand, load_suite

LABEL = "imagefolder(max_test=2000,max_train=10000)/mobilenetv2(width=0.5)/w2a32/f0.1/symmetric-0.2/random_adaptive/s2"


def test_fit_drops_whole_fields_by_priority() -> None:
    fields = [(0, "cell 3/28"), (4, LABEL), (1, "epoch 4/20"), (2, "acc 97.50"), (3, "left 2:31")]
    assert fit(fields, 200) == [0, 1, 2, 3, 4]
    kept = fit(fields, 80)
    assert kept == [0, 2, 3, 4]  # the label does not fit: dropped, not cut
    assert len(" ".join(fields[i][1] for i in kept)) <= 80
    assert fit(fields, 20) == [0, 2]


def test_the_live_line_fits_an_80_column_terminal_with_whole_fields(tmp_path: Path) -> None:
    (cell,) = expand(load_suite(write_suite(tmp_path / "s.yaml", method=["acs"])))
    for width, label_shown in ((80, False), (250, True)):
        out = io.StringIO()
        console = Console(file=out, width=width, force_terminal=True, color_system=None)
        with ConsoleProgress(20, 28, console) as progress:
            progress.start_cell(3, cell)
            progress.progress.update(progress.task, label=LABEL)
            progress.epoch(3, 20, 97.5)
            (line,) = progress.progress.columns[0].render(progress.progress.tasks[0]).plain.splitlines()
        assert len(line) < width and line.startswith("cell 3/28 ")
        assert "epoch 4/20" in line and "acc 97.50" in line and re.search(r"left \d+:\d\d|left \?", line)
        assert (LABEL in line) == label_shown and "imagefolder(max_test=2000,max_tr" not in line.replace(LABEL, "")


def test_redirected_output_has_one_unwrapped_line_per_event(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QCORE_CACHE", str(tmp_path / "cache"))  # the teacher and the proxy are trained here
    suite = write_suite(tmp_path / "s.yaml", method=["full", {"name": "el2n", "params": {"proxy_epochs": 2}}])
    res = CliRunner().invoke(main, ["run", str(suite), "--results", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    lines = res.stderr.splitlines()
    cells = expand(load_suite(suite))
    for cell in cells:  # a done line per cell, the label whole although it is longer than 80 columns
        (done,) = [ln for ln in lines if ln.startswith("done ") and cell.id in ln]
        assert cell_label(cell) in done and len(done) > 80 and re.search(r"final acc \d+\.\d\d% \(\d+\.\ds\)$", done)
    teacher = [ln for ln in lines if " teacher resnet8: " in ln]
    assert [t.split(": ", 1)[1].split(" in ")[0] for t in teacher] == ["training, 3 epochs", "trained"]
    assert teacher[0].startswith("train 1/2 ") and "test acc" in teacher[1]
    proxy = [ln for ln in lines if " proxy resnet8 (repeat 0): " in ln]
    assert [p.split(": ", 1)[1][:9] for p in proxy] == ["training,", "trained i"]


def test_phase_lines_read_well() -> None:
    assert str(Phase("teacher resnet8", 0, 15)) == "teacher resnet8: training, 15 epochs"
    assert str(Phase("teacher resnet8", 15, 15, 40.04, "test acc 93.20%")) == \
        "teacher resnet8: trained in 40.0s, test acc 93.20%"
