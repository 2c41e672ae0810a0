"""Tables and plots from stored numbers: values, bold marks, confidence intervals, files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import write_suite
from scipy import stats

from qcore_bench.cli import main
from qcore_bench.report import fair_report, frame, render, summarize
from qcore_bench.suite import Cell, expand, load_suite

ACC = {  # method -> fraction -> per-seed final accuracy
    "full": {1.0: [90.0, 91.0, 92.0]},
    "random": {0.1: [80.0, 82.0, 81.0], 0.3: [85.0, 86.0, 87.5]},
    "acs": {0.1: [83.0, 84.5, 82.0], 0.3: [85.5, 86.0, 86.0]},
    "el2n": {0.1: [70.0, 71.0, 72.0], 0.3: [88.0, 88.0, 88.1]},
}


def record(method: str, fraction: float, seed: int, acc: float, budget: str = "per_epoch_fraction",
           epochs: int = 10) -> dict:
    config = {"suite": "t", "dataset": {"name": "digits", "root": None, "params": {}}, "model": "resnet8",
              "w_bits": 2, "a_bits": 32, "noise": {"kind": "symmetric", "rate": 0.1}, "fraction": fraction,
              "seed": seed, "method": {"name": method, "selector": "full" if method == "full" else method,
                                       "params": {}}, "budget": {"mode": budget, "include_teacher": False}}
    result = {"final_acc": acc, "best_acc_over_epochs": acc + 1, "epochs": epochs, "selection_seconds": 0.5,
              "train_seconds": 2.0, "samples_trained": 100, "distinct_samples_seen": 50, "train_size": 100,
              "noisy_selected_frac_mean": 0.05, "cost_units": {"total": 400, "selection": 40, "proxy": 60}}
    return {"id": f"{method}-{fraction}-{seed}-{budget}", "config": config, "result": result}


def records(budget: str = "per_epoch_fraction") -> list[dict]:
    return [record(m, f, s, a, budget) for m, by_f in ACC.items() for f, accs in by_f.items()
            for s, a in enumerate(accs)]


def test_numbers_bold_and_paired_interval_match_scipy() -> None:
    long = summarize(frame(records()))
    row = long[(long.method == "acs") & (long.fraction == 0.1)].iloc[0]
    assert row["mean"] == pytest.approx(np.mean(ACC["acs"][0.1]))
    assert row["std"] == pytest.approx(np.std(ACC["acs"][0.1], ddof=1))
    d = np.subtract(ACC["acs"][0.1], ACC["random"][0.1])
    low, high = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    assert (row["delta"], row["ci_low"], row["ci_high"]) == pytest.approx((d.mean(), low, high))
    assert row["p_value"] == pytest.approx(stats.ttest_rel(ACC["acs"][0.1], ACC["random"][0.1]).pvalue)
    assert row["paired"]
    bold = {(r.method, r.fraction) for r in long.itertuples() if r.bold}
    # 10%: acs best (83.17 ± 1.26); random (81.0) is more than one std below -> not bold
    # 30%: el2n best (88.03 ± 0.06); nobody else within 0.06
    assert bold == {("acs", 0.1), ("el2n", 0.3)}
    full = long[long.method == "full"]
    assert set(full.fraction) == {0.1, 0.3} and (full["mean"] == 91.0).all() and not full.bold.any()


def test_model_and_dataset_variants_get_tables_of_their_own() -> None:
    """Two MobileNetV2 widths (or two subsets of a data set) must not be averaged into one row."""
    recs = []
    for width, accs in ((0.5, [60.0, 61.0]), (1.0, [70.0, 71.0])):
        for seed, acc in enumerate(accs):
            r = record("random", 0.1, seed, acc)
            r["config"]["model"], r["config"]["model_params"] = "mobilenetv2", {"width": width}
            r["id"] = f"w{width}-{seed}"
            recs.append(r)
    long = summarize(frame(recs))
    assert sorted(zip(long.model, long["mean"])) == [("mobilenetv2(width=0.5)", 60.5), ("mobilenetv2(width=1.0)", 70.5)]
    sub = record("random", 0.1, 0, 50.0)
    sub["config"]["dataset"]["params"] = {"max_train": 5000}
    assert set(frame([sub, record("random", 0.1, 0, 80.0)]).dataset) == {"digits", "digits(max_train=5000)"}


def test_ties_within_one_std_are_both_bold() -> None:
    recs = [r for r in records() if r["config"]["method"]["name"] != "el2n"]
    long = summarize(frame(recs))
    # 30%: random 86.17 ± 1.26 is best; acs 85.83 is within one std -> both bold
    assert set(long[(long.fraction == 0.3) & long.bold].method) == {"random", "acs"}


def test_unpaired_seeds_fall_back_to_welch() -> None:
    recs = records()
    for r in recs:
        if r["config"]["method"]["name"] == "acs":
            r["config"]["seed"] += 10
    row = summarize(frame(recs)).query("method == 'acs' and fraction == 0.1").iloc[0]
    res = stats.ttest_ind(ACC["acs"][0.1], ACC["random"][0.1], equal_var=False)
    assert not row["paired"]
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(tuple(res.confidence_interval(0.95)))


def test_missing_seeds_are_marked_and_metric_best_is_labelled() -> None:
    recs = [r for r in records() if not (r["config"]["method"]["name"] == "acs" and r["config"]["seed"] == 2)]
    out = render(summarize(frame(recs)))
    assert "(n=2)" in out["md"]
    best = render(summarize(frame(recs), metric="best"), metric="best")["md"]
    assert "BEST-over-epochs" in best and "84.75 ± 1.06 (n=2)" in best  # acs 10%: (84 + 85.5) / 2


def test_table_command_writes_md_tex_csv_png(tmp_path: Path) -> None:
    (template,) = expand(load_suite(write_suite(tmp_path / "s.yaml", method=["random"])))
    runs = tmp_path / "results" / "runs"
    for r in records() + records("total_compute"):  # each in a folder named by its config's hash, as a run writes
        config = {**template.model_dump(mode="json"), **{k: r["config"][k] for k in
                                                         ("method", "fraction", "seed", "noise", "budget")}}
        d = runs / Cell.model_validate(config).id
        d.mkdir(parents=True)
        (d / "cell.json").write_text(json.dumps({"id": d.name, "config": config}))
        (d / "result.json").write_text(json.dumps(r["result"]))
        (d / "history.jsonl").write_text("".join(json.dumps({"epoch": e, "test_acc": 50.0, "selected_noisy_frac": 0.05})
                                                 + "\n" for e in range(r["result"]["epochs"])))
    out = tmp_path / "tables"
    res = CliRunner().invoke(main, ["table", "--results", str(tmp_path / "results"), "--out", str(out), "--fair"])
    assert res.exit_code == 0, res.output
    names = {p.name for p in out.iterdir()}
    assert {"tables.md", "tables.tex", "tables.csv", "fair.md"} <= names
    assert any(n.startswith("fraction_") and n.endswith(".png") for n in names)
    assert any(n.startswith("noisy_") and n.endswith(".pdf") for n in names)
    tex = (out / "tables.tex").read_text()
    assert r"\toprule" in tex and r"\textbf{83.17 $\pm$ 1.26}" in tex
    assert "acc @ equal compute" in (out / "fair.md").read_text()
    csv = (out / "tables.csv").read_text().splitlines()
    assert csv[0].startswith("dataset,model,bits,noise,budget,recipe,method,fraction")
    assert len(csv) == 1 + 2 * 8  # two budget modes x (full, random, acs, el2n) x 2 fractions


def varied_records() -> list[dict]:
    """Both budget modes, with cost, coverage and noise numbers that differ by method, seed and mode."""
    recs = []
    for budget, shift, more in (("per_epoch_fraction", 0.0, 0), ("total_compute", 1.5, 4)):
        for k, (method, by_f) in enumerate(ACC.items()):
            for f, accs in by_f.items():
                for seed, acc in enumerate(accs):
                    r = record(method, f, seed, acc + shift * (k - seed), budget, epochs=10 + k * seed + more)
                    r["result"].update(
                        distinct_samples_seen=20 + 7 * k + 11 * seed, noisy_selected_frac_mean=0.01 * (k + 1) + 0.03 * seed,
                        selection_seconds=0.2 * k + seed, train_seconds=2.0 + k + 0.5 * seed,
                        cost_units={"total": 400 + 10 * seed, "selection": 5 * k + seed, "proxy": 3 * seed},
                        proxy={"keys": {r["id"]: 1.0 + k + 2 * seed}})  # a proxy of its own: not amortised
                    recs.append(r)
    return recs


def expected_delta(a: pd.Series, b: pd.Series) -> str:
    """The paired interval of fair.md's Δ, from scipy on the per-seed differences."""
    d = (a - b).to_numpy()
    low, high = stats.t.interval(0.95, len(d) - 1, loc=d.mean(), scale=stats.sem(d))
    return f"{d.mean():+.2f} [{low:+.2f}, {high:+.2f}]" + ("*" if low > 0 or high < 0 else "")


def fair_rows(text: str) -> dict[str, dict[str, str]]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    header = [h.strip() for h in lines[0].strip("|").split("|")]
    return {cells[0]: dict(zip(header[1:], cells[1:]))
            for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[1:])}


def test_fair_md_numbers_match_pandas_and_scipy() -> None:
    recs = varied_records()
    rows = fair_rows(fair_report(frame(recs)))
    raw = pd.DataFrame([{**r["config"], **r["result"], "method": r["config"]["method"]["name"],
                         "budget": r["config"]["budget"]["mode"]} for r in recs])
    checked = 0
    for (method, fraction), g in raw.groupby(["method", "fraction"]):
        for f in ([0.1, 0.3] if method == "full" else [fraction]):
            row = rows[f"{f:.0%} {method}"]
            for mode, column in (("per_epoch_fraction", "acc @ equal fraction"), ("total_compute", "acc @ equal compute")):
                m = g[g.budget == mode].set_index("seed")["final_acc"]
                want = f"{m.mean():.2f} ± {m.std(ddof=1):.2f}"
                if method not in ("random", "full"):
                    ref = raw[(raw.method == "random") & (raw.fraction == f) & (raw.budget == mode)]
                    want += f" (Δ {expected_delta(m, ref.set_index('seed')['final_acc'])})"
                assert row[column] == want, (method, f, column)
            assert row["epochs @ equal compute"] == f"{g[g.budget == 'total_compute'].epochs.mean():.1f}"
            assert row["distinct seen"] == f"{(g.distinct_samples_seen / g.train_size).mean():.0%}"
            share = g.cost_units.map(lambda u: (u["selection"] + u["proxy"]) / u["total"]).mean()
            assert row["selection cost share"] == f"{share:.1%}"
            assert row["noisy in subset"] == f"{g.noisy_selected_frac_mean.mean():.1%}"
            checked += 1
    assert checked == 8 and rows["10% el2n"]["acc @ equal fraction"].endswith("*)")  # a significant Δ, marked


def test_welch_delta_is_method_minus_reference_as_scipy_says() -> None:
    recs = records()
    for r in recs:
        if r["config"]["method"]["name"] == "el2n":
            r["config"]["seed"] += 10
    long = summarize(frame(recs))
    row = long.query("method == 'el2n' and fraction == 0.1").iloc[0]
    res = stats.ttest_ind(ACC["el2n"][0.1], ACC["random"][0.1], equal_var=False)
    assert not row["paired"] and row["delta"] == pytest.approx(np.mean(ACC["el2n"][0.1]) - np.mean(ACC["random"][0.1]))
    assert row["delta"] < 0 and row["p_value"] == pytest.approx(res.pvalue)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(tuple(res.confidence_interval(0.95)))
    md = render(long)["md"]
    assert "Δ vs random (Welch, 95% CI)" in md and f"{row['delta']:+.2f} [{row['ci_low']:+.2f}, {row['ci_high']:+.2f}]*" in md


def test_table_entries_and_extras_are_the_means_a_user_reads() -> None:
    recs = [r for r in varied_records() if r["config"]["budget"]["mode"] == "per_epoch_fraction"]
    md = render(summarize(frame(recs)), extras=True)["md"]
    tables = md.split("### ")[1]
    accuracy, deltas, extras = (fair_rows(part) for part in tables.split("\n\n")[1::2][:3])
    raw = pd.DataFrame([{**r["result"], "method": r["config"]["method"]["name"], "fraction": r["config"]["fraction"],
                         "seed": r["config"]["seed"]} for r in recs])
    g = raw[(raw.method == "acs") & (raw.fraction == 0.3)]
    ref = raw[(raw.method == "random") & (raw.fraction == 0.3)]
    assert accuracy["acs"]["30%"].strip("*") == f"{g.final_acc.mean():.2f} ± {g.final_acc.std(ddof=1):.2f}"
    assert deltas["acs"]["30%"] == expected_delta(g.set_index("seed").final_acc, ref.set_index("seed").final_acc)
    assert extras["acs"]["30%"] == (
        f"sel {g.selection_seconds.mean():.1f}s, proxy {g.proxy.map(lambda p: sum(p['keys'].values())).mean():.1f}s, "
        f"train {g.train_seconds.mean():.1f}s, "
        f"noisy {g.noisy_selected_frac_mean.mean():.1%}, seen {(g.distinct_samples_seen / g.train_size).mean():.0%}")


def test_regenerated_tables_and_plots_are_the_same_bytes(tmp_path: Path) -> None:
    """Committed results regenerate without a diff: no date or other run-dependent bytes in any file."""
    repo = Path(__file__).resolve().parents[1]
    outs = []
    for i in range(2):
        out = tmp_path / str(i)
        done = CliRunner().invoke(main, ["table", "--suite", str(repo / "suites" / "quickstart.yaml"),
                                         "--results", str(repo / "results" / "quickstart"), "--out", str(out)])
        assert done.exit_code == 0, done.output
        outs.append({p.name: p.read_bytes() for p in out.iterdir()})
    assert {n for n in outs[0] if n.endswith(".pdf")} and outs[0] == outs[1]


def test_fair_md_of_a_detection_suite_runs_and_orders_rows_as_the_tables_do(tmp_path: Path) -> None:
    """--fair with a detection suite used to stop on its equal-compute twin (detection refuses that mode);
    without --suite, each block's rows came in store order, not full, random, then the others."""
    repo = Path(__file__).resolve().parents[1]
    results = str(repo / "results" / "detection_cpu")
    suite = str(repo / "suites" / "detection_cpu_3seeds.yaml")
    for args, methods in ((["--suite", suite], 4), ([], 6)):  # the folder also holds the ablation's two methods
        out = tmp_path / str(len(args))
        done = CliRunner().invoke(main, ["table", *args, "--results", results, "--out", str(out), "--fair"])
        assert done.exit_code == 0, done.output
        blocks = (out / "fair.md").read_text().split("### ")[1:]
        assert len(blocks) == 2
        for block in blocks:
            for f in ("10%", "30%"):
                rows = [line.split("|")[1].split()[1] for line in block.splitlines() if line.startswith(f"| {f} ")]
                assert len(rows) == methods and rows[:2] == ["full", "random"], rows
        assert "| – | – |" in (out / "fair.md").read_text()  # no equal-compute runs for detection


def test_fair_report_names_map_for_detection_groups() -> None:
    """A detection group's numbers are mAP: fair.md must not call them top-1."""
    from qcore_bench.store import Store

    repo = Path(__file__).resolve().parents[1]
    text = fair_report(frame(Store(repo / "results" / "detection_cpu").records()))
    assert "top-1 (mAP@[.5:.95] in groups headed 'metric mAP')" in text
    assert all(line.endswith(", metric mAP") for line in text.splitlines() if line.startswith("### "))
    classification = fair_report(frame(Store(repo / "results" / "quickstart").records()))
    assert "mAP" not in classification
