"""A fresh machine with the same torch reproduces the committed quickstart exactly.

Two cells of ``suites/quickstart.yaml`` are run again from scratch (their teacher included)
and compared with the store committed under ``results/quickstart/runs``: the final and best
accuracies, every epoch's test accuracy, losses and learning rate, and the selections' noisy
shares, bit for bit. CPU cells pin their thread count, so this holds whatever the machine's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from qcore_bench.cli import main
from qcore_bench.suite import expand, load_suite

ROOT = Path(__file__).resolve().parents[1]
SUITE = ROOT / "suites" / "quickstart.yaml"
COMMITTED = ROOT / "results" / "quickstart" / "runs"
# an adaptive ACS cell (selections at epochs 0, 5, 10, 15) and a static random one, one per bit width
LABELS = ["digits/resnet8/w2a32/f0.1/clean/acs/s0", "digits/resnet8/w4a4/f0.3/clean/random/s1"]


def _comparable(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if not k.endswith("seconds")} for h in history]


@pytest.mark.parametrize("label", LABELS)
def test_a_quickstart_cell_reproduces_the_committed_result(label: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from qcore_bench.loggers import cell_label

    monkeypatch.setenv("QCORE_CACHE", str(tmp_path / "cache"))  # the teacher is trained again too
    (cell,) = [c for c in expand(load_suite(SUITE)) if cell_label(c) == label]
    committed = COMMITTED / cell.id
    assert (committed / "result.json").is_file(), f"{committed} is not committed"
    out = CliRunner().invoke(main, ["run", str(SUITE), "--results", str(tmp_path / "r"), "--only", cell.id])
    assert out.exit_code == 0, out.output
    mine = tmp_path / "r" / "runs" / cell.id
    new, old = (json.loads((d / "result.json").read_text()) for d in (mine, committed))
    for key in ("final_acc", "best_acc_over_epochs", "samples_trained", "distinct_samples_seen",
                "noisy_selected_frac_mean", "cost_units", "quant_policy"):
        assert new[key] == old[key], key
    assert new["teacher"]["test_acc"] == old["teacher"]["test_acc"]
    assert new["provenance"]["cpu_threads"] == old["provenance"]["cpu_threads"] == 1
    read = [[json.loads(line) for line in (d / "history.jsonl").read_text().splitlines()] for d in (mine, committed)]
    assert _comparable(read[0]) == _comparable(read[1])
