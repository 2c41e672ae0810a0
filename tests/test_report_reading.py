"""What a reader sees in tables and plots: honest intervals, data set names, legends that explain."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from qcore_bench import plots
from qcore_bench.report import frame, render, summarize


def record(method: str, fraction: float, seed: int, acc: float, noise: float = 0.2) -> dict[str, Any]:
    config = {"suite": "t", "dataset": {"name": "cifar10", "root": None, "params": {"max_train": 10000, "max_test": 2000}},
              "model": "resnet8", "w_bits": 2, "a_bits": 32,
              "noise": {"kind": "symmetric" if noise else "none", "rate": noise}, "fraction": fraction, "seed": seed,
              "method": {"name": method, "selector": method, "params": {}},
              "budget": {"mode": "per_epoch_fraction", "include_teacher": False}}
    result = {"final_acc": acc, "best_acc_over_epochs": acc, "epochs": 10, "selection_seconds": 0.1,
              "train_seconds": 1.0, "samples_trained": 100 * fraction, "distinct_samples_seen": 50, "train_size": 100,
              "noisy_selected_frac_mean": 0.2, "cost_units": {"total": 3000 * fraction + 10, "selection": 10}}
    return {"id": f"{method}-{fraction}-{seed}-{noise}", "config": config, "result": result}


def runs(seeds: int) -> list[dict[str, Any]]:
    """acs beats random by exactly 1.0 point at every seed: a paired interval of width zero."""
    out = [record("full", 1.0, s, 90.0 + s, noise) for s in range(seeds) for noise in (0.0, 0.2)]
    for f in (0.1, 0.3):
        for s in range(seeds):
            for noise in (0.0, 0.2):
                out += [record("random", f, s, 80.0 + 2 * s, noise), record("acs", f, s, 81.0 + 2 * s, noise),
                        record("el2n", f, s, 60.0 + s, noise)]
    return out


def test_two_seeds_give_no_interval_three_seeds_do() -> None:
    two = summarize(frame(runs(2)))
    md = render(two)["md"]
    assert "Δ vs random (paired, no CI under 3 seeds):" in md and "+1.00 (n=2, no CI)" in md
    assert "[+1.00, +1.00]" not in md and "]*" not in md
    assert two.query("method == 'acs'")["ci_low"].isna().all() and not two.significant.any()
    three = summarize(frame(runs(3))).query("method == 'el2n' and fraction == 0.1").iloc[0]
    assert not math.isnan(three["ci_low"]) and three["significant"]


def test_tables_name_the_data_set_for_people() -> None:
    md = render(summarize(frame(runs(2))))["md"]
    assert "### dataset CIFAR-10 (10k/2k), model resnet8, bits 2/32" in md
    assert "imagefolder(" not in md and "max_train" not in md


def test_plots_explain_their_marks_in_one_order_with_readable_log_labels(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    figures: dict[str, Any] = {}

    def keep(fig: Any, out: Path, name: str) -> list[Path]:
        fig.canvas.draw()
        legend = fig.axes[-1].get_legend()
        ticks = [t for t in fig.axes[-1].get_xticklabels() if t.get_visible() and t.get_text()]
        figures[name] = {"title": fig._suptitle.get_text(), "legend": [t.get_text() for t in legend.get_texts()],
                         "ticks": [t.get_text() for t in ticks],
                         "boxes": [t.get_window_extent() for t in ticks]}
        return []

    monkeypatch.setattr(plots, "_save", keep)
    df = frame(runs(3))
    histories = {cid: [{"epoch": 0, "selected_noisy_frac": 0.3}] for cid in df["id"]}
    plots.plot_all(df, histories, tmp_path)
    fraction = [f for name, f in figures.items() if name.startswith("fraction_")]
    assert len(fraction) == 2 and all(f["title"].startswith("dataset CIFAR-10 (10k/2k),") for f in fraction)
    for f in fraction:  # the star and the band are explained, methods in table order
        assert f["legend"] == ["random", "acs", "el2n", "full: all samples every epoch", "full, at its cost",
                               "shaded: ±1 std over seeds"]
        boxes = f["boxes"]  # the cost axis: labels such as 100, 200, 500, 1k that never overlap
        assert len(boxes) >= 2 and all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:])), f["ticks"]
    (noise,) = [f for name, f in figures.items() if name.startswith("noise_")]
    assert noise["legend"][:4] == ["full", "random", "acs", "el2n"] and "shaded: ±1 std over seeds" in noise["legend"]
    (noisy,) = [f for name, f in figures.items() if name.startswith("noisy_")]
    assert noisy["legend"] == ["random", "acs", "el2n", "noise in the training set", "a selection"]


def test_plot_file_names_stay_short_and_distinct_for_long_group_names() -> None:
    """A data set with many params must not make a plot's file name pass the file system's 255 bytes."""
    from qcore_bench.plots import MAX_PART, _slug

    long = ("shapes(" + ",".join(f"p{i}={i}" for i in range(60)) + ")", "retinanet_small", "4/4", "clean")
    other = (long[0].replace("p59=59", "p59=58"), *long[1:])
    assert len(_slug(long)) <= MAX_PART + 30 and _slug(long).startswith("shapes-p0-0-p1-1-")
    assert _slug(long).endswith("-retinanet-small-4-4-clean") and _slug(long) != _slug(other)
    assert _slug(("digits", "resnet8", "2/32", "clean")) == "digits-resnet8-2-32-clean"  # short ones unchanged
