"""Proxy-score selectors: EL2N, GraNd, Forgetting, Uncertainty.

Scores are checked against plain per-sample computations on hand-made proxy runs, the
keep direction on inputs whose answer is known, and proxy sharing through the real
pipeline.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from conftest import write_suite
from torch import nn

from qcore_bench.cli import main
from qcore_bench.proxy import ProxyTrainer
from qcore_bench.selection import ProxyRecipe, ProxyRun
from qcore_bench.selection import Outputs, SelectionContext, class_budgets
from qcore_bench.selectors.el2n import EL2NSelector
from qcore_bench.selectors.forgetting import ForgettingSelector, forgetting_events
from qcore_bench.selectors.grand import GraNdSelector
from qcore_bench.selectors.uncertainty import UncertaintySelector
from qcore_bench.store import Store

ALL = [EL2NSelector, GraNdSelector, ForgettingSelector, UncertaintySelector]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def run_of(logits: torch.Tensor, features: torch.Tensor | None = None,
           correct: torch.Tensor | None = None) -> ProxyRun:
    n = len(logits)
    correct = torch.zeros(1, n, dtype=torch.bool) if correct is None else correct
    feats = torch.zeros(n, 2) if features is None else features
    return ProxyRun(correct, torch.zeros(correct.shape), Outputs(logits, feats), samples=correct.numel(),
                    seconds=0.0, cached=False)


def context(runs: list[ProxyRun], labels: torch.Tensor, *, fraction: float = 0.25, balanced: bool = False,
            seed: int = 0, calls: list | None = None) -> SelectionContext:
    """A context whose proxy trainer hands out ``runs`` by repeat index and records what it was asked."""
    def proxy_fn(recipe: ProxyRecipe, repeat: int) -> ProxyRun:
        if calls is not None:
            calls.append((recipe, repeat))
        return runs[repeat]
    num_classes = runs[0].outputs.logits.shape[1]
    return SelectionContext(epoch=0, total_epochs=1, fraction=fraction, labels=labels, num_classes=num_classes,
                            balanced=balanced, student=nn.Identity(), teacher=nn.Identity(), output_fns={},
                            generator=gen(seed), device=torch.device("cpu"), seed=0, proxy_fn=proxy_fn)


def softmax_row(row: list[float]) -> list[float]:
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def plain_el2n(logits: torch.Tensor, labels: torch.Tensor) -> list[float]:
    out = []
    for row, y in zip(logits.tolist(), labels.tolist()):
        p = softmax_row(row)
        out.append(math.sqrt(sum((p[c] - (1.0 if c == y else 0.0)) ** 2 for c in range(len(p)))))
    return out


def test_el2n_is_the_softmax_error_norm_averaged_over_repeats_and_keeps_the_highest() -> None:
    g = gen(1)
    n, labels = 40, torch.randint(0, 3, (40,), generator=g)
    runs = [run_of(3 * torch.randn(n, 3, generator=g)) for _ in range(2)]
    calls: list = []
    sel = EL2NSelector(repeats=2).select(context(runs, labels, calls=calls))
    expected = torch.tensor([(a + b) / 2 for a, b in zip(plain_el2n(runs[0].outputs.logits, labels),
                                                         plain_el2n(runs[1].outputs.logits, labels))])
    assert torch.allclose(sel.scores, expected, atol=1e-6)
    assert not torch.allclose(expected, torch.tensor(plain_el2n(runs[0].outputs.logits, labels)))  # both count
    assert set(sel.indices.tolist()) == set(expected.topk(10).indices.tolist())
    assert [r for _, r in calls] == [0, 1]
    recipe = calls[0][0]
    assert (recipe.epochs, recipe.lr, recipe.optimizer, recipe.init, recipe.quantized) == (10, 0.05, "sgd",
                                                                                            "scratch", False)


def test_el2n_balanced_keeps_the_exact_class_budgets_and_the_highest_within_each_class() -> None:
    g = gen(2)
    labels = torch.tensor([0] * 30 + [1] * 20 + [2] * 10)
    logits = 3 * torch.randn(60, 3, generator=g)
    ctx = context([run_of(logits)], labels, fraction=0.3, balanced=True)
    sel = EL2NSelector().select(ctx)
    budgets = class_budgets(labels, 3, round(0.3 * 60), gen(0))
    assert torch.bincount(labels[sel.indices], minlength=3).tolist() == budgets.tolist() == [9, 6, 3]
    scores = torch.tensor(plain_el2n(logits, labels))
    for c in range(3):
        members = (labels == c).nonzero().flatten()
        best = members[scores[members].topk(int(budgets[c])).indices]
        assert set(best.tolist()) == {i for i in sel.indices.tolist() if labels[i] == c}
    assert ctx.metrics["el2n_mean"] == pytest.approx(float(scores.mean()), abs=1e-6)


def linear_proxy(x: torch.Tensor, labels: torch.Tensor, num_classes: int, steps: int = 100) -> ProxyRun:
    """A real (tiny) proxy: softmax regression trained by full-batch gradient descent."""
    w = torch.zeros(x.shape[1], num_classes)
    onehot = F.one_hot(labels, num_classes).float()
    for _ in range(steps):
        w -= 0.5 * x.T @ ((x @ w).softmax(1) - onehot) / len(x)
    return run_of(x @ w, x)


def test_el2n_scores_mislabeled_samples_higher_than_clean_ones() -> None:
    g = gen(3)
    n, k = 300, 3
    clean = torch.arange(n) % k
    centres = torch.tensor([[4.0, 0.0], [-2.0, 3.5], [-2.0, -3.5]])
    x = centres[clean] + torch.randn(n, 2, generator=g)
    flipped = torch.rand(n, generator=g) < 0.15
    noisy = torch.where(flipped, (clean + 1 + torch.randint(0, k - 1, (n,), generator=g)) % k, clean)
    sel = EL2NSelector().select(context([linear_proxy(x, noisy, k)], noisy, fraction=float(flipped.float().mean())))
    assert sel.scores[flipped].mean() > sel.scores[~flipped].mean() + 0.8
    assert flipped[sel.indices].float().mean() > 0.9  # the kept "hardest" samples are the mislabeled ones


def reference_grad_norms(head: nn.Linear, h: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """One sample at a time: autograd of its own cross-entropy w.r.t. the head's weight and bias."""
    norms = []
    for i in range(len(h)):
        head.zero_grad()
        F.cross_entropy(head(h[i:i + 1]), labels[i:i + 1]).backward()
        norms.append(math.sqrt(float(head.weight.grad.pow(2).sum() + head.bias.grad.pow(2).sum())))
    return torch.tensor(norms)


def test_grand_equals_per_sample_autograd_of_the_last_layer_in_any_batch_grouping() -> None:
    g = gen(4)
    n, d, k = 29, 5, 4
    head = nn.Linear(d, k)
    with torch.no_grad():
        for p in head.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    h, labels = torch.relu(2 * torch.randn(n, d, generator=g)), torch.randint(0, k, (n,), generator=g)
    with torch.no_grad():
        logits = head(h)
    reference = reference_grad_norms(head, h, labels)
    calls: list = []
    whole = GraNdSelector().select(context([run_of(logits, h)], labels, calls=calls))
    assert torch.allclose(whole.scores, reference, rtol=1e-5)
    assert set(whole.indices.tolist()) == set(reference.topk(whole.indices.numel()).indices.tolist())
    assert calls[0][0].epochs == 1  # scored early in training by default
    perm = torch.randperm(n, generator=g)
    for batch in (4, 7):  # 29 = 7 * 4 + 1 and 4 * 7 + 1: the last batch holds one sample
        parts = []
        for idx in perm.split(batch):
            ctx = context([run_of(logits[idx], h[idx])], labels[idx], fraction=1.0)
            parts.append(GraNdSelector().select(ctx).scores)
        assert len(parts[-1]) == 1
        grouped = torch.empty(n)
        grouped[perm] = torch.cat(parts)
        assert torch.allclose(grouped, reference, rtol=1e-5)
        assert torch.allclose(parts[-1], reference[perm[-1:]], rtol=1e-5)  # not inflated by a small batch


# columns are samples, rows are successive visits
PATTERNS = {"twice": [1, 0, 1, 0], "once": [0, 1, 1, 0], "never_learned": [0, 0, 0, 0],
            "unforgettable": [1, 1, 1, 1], "late": [0, 0, 0, 1]}


def scripted() -> torch.Tensor:
    return torch.tensor(list(PATTERNS.values()), dtype=torch.bool).T  # [E=4, n=5]


def test_forgetting_counts_events_on_scripted_visits() -> None:
    assert forgetting_events(scripted(), "most").tolist() == [2, 1, 5, 0, 0]  # never learned: E + 1
    assert forgetting_events(scripted(), "zero").tolist() == [2, 1, 0, 0, 0]
    labels = torch.zeros(5, dtype=torch.long)
    two = [run_of(torch.zeros(5, 2), correct=scripted()), run_of(torch.zeros(5, 2), correct=scripted()[[1, 0, 2, 3]])]
    # second run: [0,1,1,0] -> 1, [1,0,1,0] -> 2 (rows swapped), never learned and the rest unchanged
    sel = ForgettingSelector(repeats=2).select(context(two, labels, fraction=0.6))
    assert sel.scores.tolist() == [3.0, 3.0, 10.0, 0.0, 0.0]  # summed; never learned 5 + 5


def test_never_learned_ranks_first_with_most_and_ties_with_unforgettable_with_zero() -> None:
    labels = torch.zeros(5, dtype=torch.long)
    runs = [run_of(torch.zeros(5, 2), correct=scripted())]
    names = list(PATTERNS)
    for seed in range(8):
        sel = ForgettingSelector().select(context(runs, labels, fraction=0.6, seed=seed))
        assert {names[i] for i in sel.indices.tolist()} == {"twice", "once", "never_learned"}
    thirds = set()
    for seed in range(16):
        sel = ForgettingSelector(never_learned="zero").select(context(runs, labels, fraction=0.6, seed=seed))
        kept = {names[i] for i in sel.indices.tolist()}
        assert {"twice", "once"} <= kept
        thirds |= kept - {"twice", "once"}
    assert thirds == {"never_learned", "unforgettable", "late"}  # a three-way tie, split by the generator


def plain_uncertainty(probs: torch.Tensor) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"least_confidence": [], "entropy": [], "margin": []}
    for p in probs.tolist():
        s = sorted(p, reverse=True)
        out["least_confidence"].append(1 - s[0])
        out["entropy"].append(-sum(v * math.log(v) for v in p if v > 0))
        out["margin"].append(1 - (s[0] - s[1]))
    return out


def test_uncertainty_scores_match_plain_formulas() -> None:
    g = gen(6)
    logits = 2 * torch.randn(30, 4, generator=g)
    labels = torch.randint(0, 4, (30,), generator=g)
    expected = plain_uncertainty(logits.softmax(1))
    for method, values in expected.items():
        ctx = context([run_of(logits)], labels)
        sel = UncertaintySelector(method=method).select(ctx)
        assert torch.allclose(sel.scores, torch.tensor(values), atol=1e-6), method
        assert ctx.metrics["uncertainty_mean"] == pytest.approx(sum(values) / 30, abs=1e-6)


def test_uncertainty_keeps_the_most_uncertain_balanced_or_not() -> None:
    probs = torch.tensor([[0.4, 0.3, 0.3],  # least confident and highest entropy
                          [0.5, 0.5, 0.0],  # smallest margin
                          [0.98, 0.01, 0.01],  # confident
                          [0.1, 0.85, 0.05],
                          [0.05, 0.05, 0.9],
                          [0.01, 0.97, 0.02]])
    logits = probs.clamp_min(1e-30).log()
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    want = {"least_confidence": 0, "entropy": 0, "margin": 1}
    for method, best in want.items():
        sel = UncertaintySelector(method=method).select(context([run_of(logits)], labels, fraction=1 / 6))
        assert sel.indices.tolist() == [best], method
        sel = UncertaintySelector(method=method).select(context([run_of(logits)], labels, fraction=1 / 3,
                                                                balanced=True))
        assert sorted(sel.indices.tolist()) == [best, 3], method  # class 1's least sure is sample 3


def test_fixed_seed_is_deterministic_and_seeds_only_break_ties() -> None:
    g = gen(7)
    n = 60
    labels = torch.randint(0, 3, (n,), generator=g)
    logits = 3 * torch.randn(n, 3, generator=g)
    el2n = [EL2NSelector().select(context([run_of(logits)], labels, seed=s)).indices for s in range(4)]
    assert all(set(e.tolist()) == set(el2n[0].tolist()) for e in el2n)  # distinct scores: the seed is irrelevant
    correct = torch.rand(6, n, generator=g) < 0.6  # integer event counts: many ties
    runs = [run_of(logits, correct=correct)]
    a = ForgettingSelector().select(context(runs, labels, seed=3))
    b = ForgettingSelector().select(context(runs, labels, seed=3))
    assert a.indices.tolist() == b.indices.tolist()
    scores = a.scores
    kth = scores.sort(descending=True).values[a.indices.numel() - 1]
    picks = set()
    for s in range(6):
        sel = ForgettingSelector().select(context(runs, labels, seed=s))
        assert set((scores > kth).nonzero().flatten().tolist()) <= set(sel.indices.tolist())
        assert sorted(scores[sel.indices].tolist()) == sorted(scores[a.indices].tolist())
        picks.add(tuple(sorted(sel.indices.tolist())))
    assert len(picks) > 1  # the tie at the threshold is split differently by different seeds


def test_defaults_are_static_and_bad_parameters_are_rejected() -> None:
    for cls in ALL:
        sel = cls()
        assert not cls.adaptive and [e for e in range(20) if sel.due(e)] == [0]
        assert (sel.proxy_epochs, sel.proxy_lr, sel.proxy_optimizer, sel.proxy_init, sel.proxy_quantized,
                sel.repeats) == (1 if cls is GraNdSelector else 10, 0.05, "sgd", "scratch", False, 1)
        for bad, match in [({"proxy_epochs": 0}, "proxy_epochs"), ({"proxy_epochs": 2.5}, "proxy_epochs"),
                           ({"proxy_lr": 0}, "proxy_lr"), ({"proxy_optimizer": "rmsprop"}, "proxy_optimizer"),
                           ({"proxy_init": "imagenet"}, "proxy_init"), ({"proxy_quantized": "yes"}, "proxy_quantized"),
                           ({"repeats": 0}, "repeats")]:
            with pytest.raises(ValueError, match=match):
                cls(**bad)
    with pytest.raises(ValueError, match="never_learned must be one of"):
        ForgettingSelector(never_learned="max")
    with pytest.raises(ValueError, match="method must be one of"):
        UncertaintySelector(method="bald")


def test_one_proxy_is_trained_for_every_method_and_fraction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QCORE_CACHE", str(tmp_path / "cache"))  # nothing cached by other tests
    monkeypatch.setattr(ProxyTrainer, "_memory", OrderedDict())
    proxy = {"proxy_epochs": 2}
    methods = [{"name": m, "params": proxy} for m in ("el2n", "forgetting", "grand")]
    data = {"train": {"epochs": 2, "batch_size": 64, "lr": 0.05}, "teacher": {"epochs": 2, "batch_size": 64}}
    dataset = {"name": "synthetic", "params": {"n_train": 128, "n_test": 64, "num_classes": 4}}
    suite = write_suite(tmp_path / "s.yaml", data, dataset=dataset, method=methods, fraction=[0.1, 0.25, 0.5])
    results = tmp_path / "results"
    out = CliRunner().invoke(main, ["run", str(suite), "--results", str(results)])
    assert out.exit_code == 0, out.output
    records = list(Store(results).records())
    assert len(records) == 9
    assert sum(r["result"]["proxy"]["trained_here"] for r in records) == 1
    for r in records:
        assert r["result"]["proxy"]["samples"] == 2 * 128  # every cell is charged the proxy it used
        first = json.loads((results / "runs" / r["id"] / "history.jsonl").read_text().splitlines()[0])
        assert f"{r['config']['method']['name']}_mean" in first
