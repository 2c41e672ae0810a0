"""Proxy recipes: the prefix-of-a-long-schedule default, sharing, cache keys, and honest cost."""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import write_suite

from qcore_bench.cli import main
from qcore_bench.data.device import device_data
from qcore_bench.data.noise import apply_label_noise
from qcore_bench.proxy import ProxyTrainer
from qcore_bench.report import frame
from qcore_bench.runner import load_data
from qcore_bench.seeding import make_generator
from qcore_bench.selection import ProxyRecipe
from qcore_bench.selectors.el2n import EL2NSelector
from qcore_bench.selectors.forgetting import ForgettingSelector
from qcore_bench.selectors.glister import GlisterSelector
from qcore_bench.selectors.grand import GraNdSelector
from qcore_bench.store import Store
from qcore_bench.suite import expand, load_suite
from qcore_bench.teacher import OutputCache, teacher_key


def test_prefix_is_the_default_and_complete_is_the_named_old_behaviour() -> None:
    assert EL2NSelector().proxy_horizon == 100  # 10 epochs of a 100-epoch schedule: EL2N's epoch 20 of 200
    assert ForgettingSelector().proxy_horizon == 100
    assert GraNdSelector().proxy_horizon == 10
    assert EL2NSelector(proxy_epochs=20, proxy_horizon=200).proxy_horizon == 200
    assert EL2NSelector(proxy_schedule="complete").proxy_horizon is None
    with pytest.raises(ValueError, match="proxy_schedule must be one of"):
        EL2NSelector(proxy_schedule="half")
    with pytest.raises(ValueError, match=r"proxy_horizon \(5\) must be >= proxy_epochs \(10\)"):
        EL2NSelector(proxy_horizon=5)
    with pytest.raises(ValueError, match="proxy_horizon applies to proxy_schedule 'prefix' only"):
        EL2NSelector(proxy_schedule="complete", proxy_horizon=50)


def _trainer(tmp_path: Path) -> ProxyTrainer:
    suite = write_suite(tmp_path / "s.yaml", method=["el2n"])
    cell = expand(load_suite(suite))[0]
    data = load_data(cell.dataset, tmp_path / "cache")
    labels, _ = apply_label_noise(data.train_y, data.num_classes, cell.noise.kind, cell.noise.rate,
                                  make_generator(cell.seed, "label-noise"))
    ddata = device_data(data, torch.device("cpu"), 0)
    return ProxyTrainer(cell, ddata, labels, data.num_classes, data.in_channels, torch.nn.Identity(),
                        tmp_path / "cache", 256)


def test_a_prefix_proxy_follows_the_long_schedule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ProxyTrainer, "_memory", OrderedDict())
    trainer = _trainer(tmp_path)
    prefix = trainer(ProxyRecipe(epochs=2, horizon=4, batch_size=32), 0)
    long = trainer(ProxyRecipe(epochs=4, batch_size=32), 0)
    short = trainer(ProxyRecipe(epochs=2, batch_size=32), 0)
    # the prefix's two epochs are the long run's first two, step for step
    assert torch.equal(prefix.losses, long.losses[:2]) and torch.equal(prefix.correct, long.correct[:2])
    # a complete 2-epoch schedule halves the learning rate in its second epoch: another run
    assert torch.equal(prefix.losses[0], short.losses[0]) and not torch.equal(prefix.losses[1], short.losses[1])
    assert len({prefix.key, long.key, short.key}) == 3


def test_cache_keys_hold_the_device_and_the_precision(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path)
    recipe = ProxyRecipe()
    cpu_key = trainer.key(recipe, 0)
    trainer.data = type("OnGPU", (), {"device": torch.device("cuda")})()  # only the key is computed
    assert trainer.key(recipe, 0) != cpu_key
    cell = trainer.cell
    assert teacher_key(cell, torch.device("cpu")) != teacher_key(cell, torch.device("cuda"))
    assert OutputCache.key("t", cell, torch.device("cpu")) != OutputCache.key("t", cell, torch.device("cuda"))
    assert OutputCache.key("t", cell, torch.device("cpu")) == OutputCache.key("t", cell, torch.device("cpu"))


def test_glister_steps_at_the_proxy_learning_rate_by_default() -> None:
    assert GlisterSelector().eta == 0.05
    assert GlisterSelector(proxy_lr=0.2).eta == 0.2
    assert GlisterSelector(eta=0.01).eta == 0.01


def test_proxy_cost_is_recorded_apart_and_amortised_in_the_report(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QCORE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(ProxyTrainer, "_memory", OrderedDict())
    methods = [{"name": "el2n", "params": {"proxy_epochs": 2}}, {"name": "forgetting", "params": {"proxy_epochs": 2}},
               {"name": "glister", "params": {"proxy_epochs": 1}}]
    suite = write_suite(tmp_path / "s.yaml", method=methods, fraction=[0.25, 0.5])
    results = tmp_path / "results"
    out = CliRunner().invoke(main, ["run", str(suite), "--results", str(results)])
    assert out.exit_code == 0, out.output
    records = list(Store(results).records())
    keys = {}
    for r in records:
        proxy = r["result"]["proxy"]
        (key, seconds), = proxy["keys"].items()
        keys.setdefault(key, set()).add(seconds)
        first = json.loads((results / "runs" / r["id"] / "history.jsonl").read_text().splitlines()[0])
        trained = first["proxy_trained_seconds"]
        assert trained == (seconds if proxy["trained_here"] else 0.0)
        assert r["result"]["selection_seconds"] == pytest.approx(first["selection_seconds"])
    assert len(keys) == 2 and all(len(s) == 1 for s in keys.values())  # el2n+forgetting share one, glister has its own
    df = frame(records).set_index("id")
    for r in records:
        (key, seconds), = r["result"]["proxy"]["keys"].items()
        sharing = sum(key in other["result"]["proxy"]["keys"] for other in records)
        assert sharing == (4 if r["config"]["method"]["name"] != "glister" else 2)
        assert df.at[r["id"], "proxy_seconds"] == pytest.approx(seconds / sharing)
