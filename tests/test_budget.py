"""Fair comparisons: coverage of static vs adaptive selectors, equal-compute budgets."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner
from conftest import write_suite

from qcore_bench.budget import plan_epochs
from qcore_bench.cli import main
from qcore_bench.store import Store


def results_by_method(results: Path, mode: str | None = None) -> dict[str, dict]:
    return {r["config"]["method"]["name"]: r["result"] for r in Store(results).records()
            if mode is None or r["config"]["budget"]["mode"] == mode}


def test_adaptive_random_sees_more_distinct_samples_than_static(tmp_path: Path) -> None:
    suite = write_suite(tmp_path / "s.yaml", method=["random", {"name": "random_adaptive", "params": {"every": 1}}])
    out = CliRunner().invoke(main, ["run", str(suite), "--results", str(tmp_path / "r")])
    assert out.exit_code == 0, out.output
    res = results_by_method(tmp_path / "r")
    budget = 64  # 25% of 256
    assert res["random"]["distinct_samples_seen"] == budget and res["random"]["selections"] == 1
    assert res["random_adaptive"]["selections"] == 4
    assert budget < res["random_adaptive"]["distinct_samples_seen"] <= 4 * budget


def test_plan_epochs_follows_the_cost_model() -> None:
    # 10 epochs of 128 samples: 3840 units. A 1,024-unit proxy leaves room for 7 epochs (7 * 384 = 2688).
    assert plan_epochs(epochs=10, per_epoch=128, kd=False, spent=1024, per_selection=0, due=lambda e: e == 0) == 7
    # nothing spent: the full 10
    assert plan_epochs(epochs=10, per_epoch=128, kd=False, spent=0, per_selection=0, due=lambda e: e == 0) == 10
    # never below one epoch, even when selection alone exceeds the budget
    assert plan_epochs(epochs=2, per_epoch=10, kd=False, spent=10**6, per_selection=0, due=lambda e: e == 0) == 1


def test_total_compute_gives_a_proxy_method_fewer_epochs(tmp_path: Path) -> None:
    data = {"train": {"epochs": 10, "batch_size": 32, "lr": 0.05}}
    methods = ["random", {"name": "el2n", "params": {"proxy_epochs": 1}},
               {"name": "acs", "params": {"every": 2}}]
    for mode in ("per_epoch_fraction", "total_compute"):
        suite = write_suite(tmp_path / f"{mode}.yaml", {**data, "budget": {"mode": mode}},
                            method=methods, fraction=[0.5])
        out = CliRunner().invoke(main, ["run", str(suite), "--results", str(tmp_path / "r")])
        assert out.exit_code == 0, out.output
    fixed, equal = results_by_method(tmp_path / "r", "per_epoch_fraction"), results_by_method(tmp_path / "r",
                                                                                          "total_compute")
    n, k = 256, 128
    assert {m: r["epochs"] for m, r in fixed.items()} == {"random": 10, "el2n": 10, "acs": 10}
    allowed = 3 * 10 * k
    # random spends nothing on selection: all 10 epochs
    assert equal["random"]["epochs"] == 10
    # el2n: a 1-epoch proxy on all n samples (3n) plus its final scoring pass (n) = 1024 units
    proxy = 3 * n + n
    assert equal["el2n"]["cost_units"]["proxy"] == proxy
    assert equal["el2n"]["epochs"] == (allowed - proxy) // (3 * k) == 7
    # acs, re-planned at each selection (every 2 epochs). Epoch 0: beta = 1, student pass only (n = 256):
    # 7 epochs fit (2688 + 256 + 3 * 256 = 3712). Epoch 2: the teacher's pass too (512 units, 768 spent +
    # 768 trained): 7 no longer fits (1920 + 1536 + 2 * 512 = 4480), 6 does (1536 + 1536 + 512 = 3584).
    # Epoch 4: 256 units (1280 spent + 1536 trained); 7: 1152 + 2816 + 2 * 256 > 3840; 6: 768 + 2816 = 3584.
    assert equal["acs"]["epochs"] == 6
    for r in equal.values():
        assert r["cost_units"]["total"] <= allowed
        assert r["samples_trained"] == r["epochs"] * k
