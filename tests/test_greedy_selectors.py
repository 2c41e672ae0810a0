"""Glister, Moderate-DS, k-Center Greedy and Contextual Diversity against plain, independent computations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from qcore_bench.selection import ProxyRun
from qcore_bench.selection import Outputs, SelectionContext
from qcore_bench.selectors.glister import GlisterSelector
from qcore_bench.selectors.kcenter import ContextualDiversitySelector, KCenterSelector, symmetric_kl
from qcore_bench.selectors.moderate import ModerateSelector, median


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def context(logits: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor, *, fraction: float,
            balanced: bool = False, seed: int = 0, teacher: Outputs | None = None,
            recipes: list | None = None) -> SelectionContext:
    """A context whose student, teacher and proxy all answer with hand-made outputs."""
    student = Outputs(logits, feats)
    teacher = teacher or student

    def proxy_fn(recipe: object, repeat: int) -> ProxyRun:
        if recipes is not None:
            recipes.append(recipe)
        n = len(labels)
        return ProxyRun(torch.zeros(1, n, dtype=torch.bool), torch.zeros(1, n), student, n, 0.0, cached=True)
    return SelectionContext(epoch=0, total_epochs=1, fraction=fraction, labels=labels,
                            num_classes=int(logits.shape[1]), balanced=balanced, student=nn.Identity(),
                            teacher=nn.Identity(), output_fns={"student": lambda: student, "teacher": lambda: teacher},
                            generator=gen(seed), device=torch.device("cpu"), seed=seed, proxy_fn=proxy_fn)


def random_data(n: int, classes: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = gen(seed)
    return (torch.randn(n, classes, generator=g, dtype=torch.float64) * 2,
            torch.randn(n, d, generator=g, dtype=torch.float64).relu(),
            torch.randint(0, classes, (n,), generator=g))


# ---------------------------------------------------------------- Glister, brute force with explicit gradients

def explicit_gradients(logits: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample dCE/d[W | b] as explicit C x (d + 1) matrices, one sample at a time."""
    out = []
    for i in range(len(labels)):
        p = logits[i].softmax(0)
        y = torch.zeros_like(p)
        y[labels[i]] = 1.0
        out.append(torch.outer(p - y, torch.cat([feats[i], torch.ones(1, dtype=feats.dtype)])))
    return torch.stack(out)


def brute_force_glister(logits: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor, k: int,
                        eta: float) -> list[int]:
    """Exact greedy over every candidate, the validation set being the training set.

    theta_S moves by -eta * g_e after each pick; validation logits are recomputed as
    z + delta_theta @ [h; 1] and the validation gradient from them, all with explicit matrices.
    """
    grads = explicit_gradients(logits, feats, labels)
    x1 = torch.cat([feats, torch.ones(len(feats), 1, dtype=feats.dtype)], 1)
    delta = torch.zeros_like(grads[0])
    picks: list[int] = []
    for _ in range(k):
        val_grad = explicit_gradients(logits + x1 @ delta.T, feats, labels).mean(0)
        gains = [eta * float((grads[e] * val_grad).sum()) if e not in picks else -math.inf for e in range(len(labels))]
        e = int(np.argmax(gains))
        picks.append(e)
        delta -= eta * grads[e]
    return picks


@pytest.mark.parametrize("greedy", ["lazy", "stochastic"])
def test_glister_first_pick_maximises_the_gain(greedy: str) -> None:
    logits, feats, labels = random_data(40, 3, 5, seed=1)  # budget 4: a stochastic sample of 40/4*log(100) > 40
    sel = GlisterSelector(source="student", greedy=greedy, validation="train", eta=0.1).select(
        context(logits, feats, labels, fraction=0.1))
    grads = explicit_gradients(logits, feats, labels)
    gains = 0.1 * (grads * grads.mean(0)).sum((1, 2))
    assert torch.allclose(sel.scores.double(), gains, atol=1e-6)
    assert int(sel.indices[0]) == int(gains.argmax())


def test_glister_with_every_candidate_in_reach_is_the_exact_taylor_greedy() -> None:
    logits, feats, labels = random_data(30, 3, 4, seed=2)
    # budget 6 of 30: a stochastic sample of 30 / 6 * log(1 / 1e-4) = 46 >= 30 candidates is every candidate
    sel = GlisterSelector(source="teacher", validation="train", eta=0.5, epsilon=1e-4).select(
        context(logits, feats, labels, fraction=0.2))
    assert sel.indices.tolist() == brute_force_glister(logits, feats, labels, 6, eta=0.5)


def test_glister_taylor_update_changes_the_second_pick() -> None:
    # class 0 near (1, 0), class 1 near (0, 1), all logits 0; class 0 aligns best at first
    feats = torch.tensor([[1.0, 0], [0.98, 0], [0.96, 0], [0.94, 0], [0, 0.9], [0, 0.88], [0, 0.86], [0, 0.84]],
                         dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    logits = torch.zeros(8, 2, dtype=torch.float64)
    grads = explicit_gradients(logits, feats, labels)
    static = (grads * grads.mean(0)).sum((1, 2)).argsort(descending=True).tolist()
    assert static[:2] == [0, 1]  # a static ranking keeps two of class 0
    for greedy in ("lazy", "stochastic"):
        sel = GlisterSelector(source="student", greedy=greedy, validation="train", eta=2.0).select(
            context(logits, feats, labels, fraction=0.25))
        # after the first pick class 0 is learnt, so the update makes class 1 the better second
        assert sel.indices.tolist() == brute_force_glister(logits, feats, labels, 2, eta=2.0) == [0, 4], greedy


@pytest.mark.parametrize("balanced", [True, False])
def test_glister_deepcore_compat_is_a_static_top_k_of_class_mean_alignment(balanced: bool) -> None:
    logits, feats, labels = random_data(60, 3, 4, seed=3)
    ctx = context(logits, feats, labels, fraction=0.3, balanced=balanced)
    sel = GlisterSelector(source="student", deepcore_compat=True).select(ctx)
    grads = explicit_gradients(logits, feats, labels)
    expected: list[int] = []
    if balanced:
        for c in range(3):
            members = [i for i in range(60) if labels[i] == c]
            mean_c = grads[members].mean(0)
            align = {i: float((grads[i] * mean_c).sum()) for i in members}
            expected += sorted(members, key=lambda i: -align[i])[: int(ctx.class_budgets[c])]
    else:
        align = {i: float((grads[i] * grads.mean(0)).sum()) for i in range(60)}
        expected = sorted(range(60), key=lambda i: -align[i])[:18]
    assert sorted(sel.indices.tolist()) == sorted(expected)


@pytest.mark.parametrize("greedy", ["lazy", "stochastic"])
@pytest.mark.parametrize("balanced", [True, False])
@pytest.mark.parametrize("fraction", [0.1, 0.95])  # 0.95 needs some of the 10% held-out samples
def test_glister_budgets_are_exact(greedy: str, balanced: bool, fraction: float) -> None:
    logits, feats, labels = random_data(120, 4, 6, seed=4)
    ctx = context(logits, feats, labels, fraction=fraction, balanced=balanced)
    sel = GlisterSelector(source="student", greedy=greedy).select(ctx)
    assert len(sel.indices) == ctx.budget == len(set(sel.indices.tolist()))
    if balanced:
        assert torch.bincount(labels[sel.indices], minlength=4).tolist() == ctx.class_budgets.tolist()


def test_glister_holdout_is_not_selected_and_the_proxy_recipe_is_the_documented_one() -> None:
    logits, feats, labels = random_data(300, 3, 4, seed=5)
    recipes: list = []
    sel = GlisterSelector().select(context(logits, feats, labels, fraction=0.3, seed=7, recipes=recipes))
    held = set(torch.randperm(300, generator=gen(7))[:30].tolist())  # the first draw of the cell's generator
    assert not held & set(sel.indices.tolist())
    assert [(r.epochs, r.init, r.quantized) for r in recipes] == [(5, "scratch", False)]


def test_glister_is_deterministic_for_a_seed() -> None:
    logits, feats, labels = random_data(500, 5, 8, seed=6)
    runs = {s: [GlisterSelector(source="student").select(context(logits, feats, labels, fraction=0.02, seed=s))
                .indices.tolist() for _ in range(2)] for s in (0, 1)}
    assert runs[0][0] == runs[0][1] and runs[1][0] == runs[1][1]
    assert runs[0][0] != runs[1][0]  # the stochastic sample follows the seed


def test_glister_rejects_bad_parameters() -> None:
    for bad in [{"source": "oracle"}, {"greedy": "exact"}, {"eta": 0}, {"epsilon": 1.0}, {"validation": "test"},
                {"val_fraction": 1.5}, {"proxy_epochs": 0}]:
        with pytest.raises(ValueError, match=f"^{next(iter(bad))} must be"):
            GlisterSelector(**bad)


# ---------------------------------------------------------------- Moderate-DS

def ring(radii: list[float], offset: float) -> torch.Tensor:
    """Points at +-r on the x axis around (offset, offset): coordinate-wise median and mean are the offset."""
    pts = [[offset + s * r, offset] for r in radii for s in (1, -1)]
    return torch.tensor(pts)


def test_median_is_numpys() -> None:
    for n in (5, 6):
        x = torch.randn(n, 3, generator=gen(n))
        assert torch.allclose(median(x), torch.from_numpy(np.median(x.numpy(), axis=0)))


@pytest.mark.parametrize("balanced", [True, False])
def test_moderate_keeps_the_middle_of_the_distances(balanced: bool) -> None:
    radii = [float(r) for r in range(1, 11)]
    feats = torch.cat([ring(radii, 0.0), ring(radii, 100.0)])  # 2 classes x 20 points, radii 1..10 twice
    labels = torch.tensor([0] * 20 + [1] * 20)
    ctx = context(torch.zeros(40, 2), feats, labels, fraction=0.2, balanced=balanced)
    sel = ModerateSelector().select(ctx)
    kept = sorted(float(sel.scores[i]) for i in sel.indices)  # scores = -|d - 5.5|
    assert len(sel.indices) == 8
    dist = torch.cat([torch.tensor(radii).repeat_interleave(2)] * 2)
    assert sorted(dist[sel.indices].tolist()) == [5.0] * 4 + [6.0] * 4  # nearest (1) and farthest (10) dropped
    assert kept == [-0.5] * 8


def test_moderate_per_class_window_uses_each_class_median() -> None:
    feats = torch.cat([ring([float(r) for r in range(1, 11)], 0.0), ring([2.0 * r for r in range(1, 11)], 100.0)])
    labels = torch.tensor([0] * 20 + [1] * 20)
    dist = torch.cat([torch.arange(1, 11).repeat_interleave(2), 2 * torch.arange(1, 11).repeat_interleave(2)]).double()
    per_class = ModerateSelector(window="per_class").select(context(torch.zeros(40, 2), feats, labels, fraction=0.2,
                                                                    balanced=True))
    assert sorted(dist[per_class.indices].tolist()) == [5, 5, 6, 6, 10, 10, 12, 12]
    glob = ModerateSelector().select(context(torch.zeros(40, 2), feats, labels, fraction=0.2, balanced=True))
    assert sorted(dist[glob.indices].tolist()) != sorted(dist[per_class.indices].tolist())


def test_moderate_mean_and_median_centres_differ_on_skewed_data() -> None:
    g = gen(8)
    feats = torch.distributions.Exponential(torch.tensor(1.0)).sample((60, 2)) ** 3  # heavy right tail
    feats = feats + torch.rand(60, 2, generator=g) * 1e-3
    labels = torch.zeros(60, dtype=torch.long)
    chosen = {}
    for centre in ("median", "mean"):
        sel = ModerateSelector(centre=centre).select(context(torch.zeros(60, 1), feats, labels, fraction=0.25))
        x = feats.numpy().astype(np.float64)
        ctr = np.median(x, axis=0) if centre == "median" else x.mean(axis=0)
        d = np.linalg.norm(x - ctr, axis=1)
        expected = np.argsort(np.abs(d - np.median(d)))[:15]
        chosen[centre] = sorted(sel.indices.tolist())
        assert chosen[centre] == sorted(expected.tolist()), centre
    assert chosen["median"] != chosen["mean"]


@pytest.mark.parametrize("balanced", [True, False])
def test_moderate_acs_repo_keeps_the_farthest_logits_per_class(balanced: bool) -> None:
    g = gen(9)
    labels = torch.tensor([0] * 30 + [1] * 20)
    logits = torch.randn(50, 3, generator=g) * torch.tensor([1.0, 3.0, 0.5])
    feats = torch.randn(50, 4, generator=g)  # must be ignored by this variant
    ctx = context(logits, feats, labels, fraction=0.2, balanced=balanced)
    sel = ModerateSelector(variant="acs_repo").select(ctx)
    expected: list[int] = []
    for c, k in ((0, 6), (1, 4)):
        idx = np.flatnonzero(labels.numpy() == c)
        x = logits.numpy()[idx]
        d = np.linalg.norm(x - np.median(x, axis=0), axis=1)
        expected += idx[np.argsort(-d)[:k]].tolist()
    assert sorted(sel.indices.tolist()) == sorted(expected)


def test_moderate_balanced_budgets_and_bad_parameters() -> None:
    logits, feats, labels = random_data(200, 4, 6, seed=10)
    ctx = context(logits, feats, labels, fraction=0.3, balanced=True)
    sel = ModerateSelector(source="proxy").select(ctx)
    assert torch.bincount(labels[sel.indices], minlength=4).tolist() == ctx.class_budgets.tolist()
    for bad in [{"variant": "paper"}, {"centre": "mode"}, {"window": "local"}, {"source": "student"}]:
        with pytest.raises(ValueError, match=f"^{next(iter(bad))} must be one of"):
            ModerateSelector(**bad)


# ---------------------------------------------------------------- k-Center Greedy and Contextual Diversity

def brute_force_k_center(points: list[list[float]], first: int, k: int, dist) -> list[int]:
    """Textbook greedy: the next centre is the point farthest from its nearest chosen centre."""
    picks = [first]
    while len(picks) < k:
        far = [min(dist(points[i], points[c]) for c in picks) if i not in picks else -1.0
               for i in range(len(points))]
        picks.append(int(np.argmax(far)))
    return picks


def euclid(a: list[float], b: list[float]) -> float:
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))


def sym_kl(a: list[float], b: list[float]) -> float:
    """From logits: KL(p||q) + KL(q||p) written out."""
    p = [math.exp(v) / sum(math.exp(u) for u in a) for v in a]
    q = [math.exp(v) / sum(math.exp(u) for u in b) for v in b]
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q)) + sum(qi * math.log(qi / pi) for pi, qi in zip(p, q))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kcenter_covers_every_cluster(seed: int) -> None:
    g = gen(seed)
    centres = torch.eye(5, 8) * 100
    cluster = torch.arange(100) % 5
    feats = centres[cluster] + torch.randn(100, 8, generator=g)
    labels = torch.randint(0, 3, (100,), generator=g)  # unrelated to the clusters: global selection
    sel = KCenterSelector().select(context(torch.zeros(100, 3), feats, labels, fraction=0.05, seed=seed))
    assert sorted(cluster[sel.indices].tolist()) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("balanced", [False, True])
def test_kcenter_matches_a_brute_force_greedy(balanced: bool) -> None:
    logits, feats, labels = random_data(24, 2, 3, seed=11)
    ctx = context(logits, feats, labels, fraction=0.25, balanced=balanced)
    sel = KCenterSelector(source="student").select(ctx)
    pts = feats.tolist()
    if not balanced:
        assert sel.indices.tolist() == brute_force_k_center(pts, int(sel.indices[0]), 6, euclid)
        near = [min(euclid(pts[i], pts[c]) for c in sel.indices.tolist()) for i in range(24)]
        assert torch.allclose(sel.scores.double(), torch.tensor(near, dtype=torch.float64), atol=1e-5)
        return
    picked = sel.indices.tolist()
    for c in range(2):
        members = [i for i in range(24) if labels[i] == c]
        mine = [i for i in picked if labels[i] == c]
        assert len(mine) == int(ctx.class_budgets[c])
        ref = brute_force_k_center([pts[i] for i in members], members.index(mine[0]), len(mine), euclid)
        assert mine == [members[j] for j in ref]


def test_symmetric_kl_is_the_sum_of_both_kls() -> None:
    a, b = torch.randn(4, 5, generator=gen(12), dtype=torch.float64), torch.randn(5, generator=gen(13),
                                                                                   dtype=torch.float64)
    got = symmetric_kl(a.log_softmax(1), b.log_softmax(0))
    assert torch.allclose(got, torch.tensor([sym_kl(a[i].tolist(), b.tolist()) for i in range(4)], dtype=torch.float64))
    assert torch.allclose(symmetric_kl(b.log_softmax(0), a[0].log_softmax(0)), got[0])  # symmetric


def test_contextual_diversity_is_the_greedy_under_symmetric_kl() -> None:
    logits, feats, labels = random_data(30, 4, 3, seed=14)
    recipes: list = []
    sel = ContextualDiversitySelector().select(context(logits, feats, labels, fraction=0.2, recipes=recipes))
    assert [(r.epochs, r.init) for r in recipes] == [(5, "scratch")]
    assert sel.indices.tolist() == brute_force_k_center(logits.tolist(), int(sel.indices[0]), 6, sym_kl)
    teacher = Outputs(logits.flip(1), feats)
    sel_t = ContextualDiversitySelector(source="teacher").select(
        context(logits, feats, labels, fraction=0.2, teacher=teacher))
    assert sel_t.indices.tolist() == brute_force_k_center(logits.flip(1).tolist(), int(sel_t.indices[0]), 6, sym_kl)


def test_kcenter_first_centre_follows_the_seed_and_budgets_hold() -> None:
    logits, feats, labels = random_data(300, 3, 4, seed=15)
    firsts = {int(KCenterSelector().select(context(logits, feats, labels, fraction=0.1, seed=s)).indices[0])
              for s in range(4)}
    assert len(firsts) > 1
    ctx = context(logits, feats, labels, fraction=0.1, balanced=True, seed=3)
    sel = KCenterSelector().select(ctx)
    assert torch.bincount(labels[sel.indices], minlength=3).tolist() == ctx.class_budgets.tolist()
    again = KCenterSelector().select(context(logits, feats, labels, fraction=0.1, balanced=True, seed=3))
    assert sel.indices.tolist() == again.indices.tolist()
    with pytest.raises(ValueError, match="^source must be one of .* got 'oracle'"):
        KCenterSelector(source="oracle")


def test_kcenter_never_repeats_a_point_among_duplicates() -> None:
    feats = torch.zeros(20, 3)  # all distances zero
    sel = KCenterSelector().select(context(torch.zeros(20, 2), feats, torch.zeros(20, dtype=torch.long),
                                           fraction=0.5))
    assert len(set(sel.indices.tolist())) == 10
    assert float(sel.scores.abs().max()) == 0.0
