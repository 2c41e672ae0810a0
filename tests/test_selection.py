"""The selector contract: budgets, seeded tie-breaking, validation, ACS scores and schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from qcore_bench.selection import (Outputs, Selection, SelectionContext, SelectionError, class_budgets,
                                   compute_outputs, top_k, validate_selection)
from qcore_bench.selectors.acs import ACSSelector
from qcore_bench.selectors.random import RandomSelector


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_class_budgets_sum_exactly_and_follow_class_sizes() -> None:
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    b = class_budgets(labels, 3, 10, gen())
    assert b.tolist() == [5, 3, 2]
    b = class_budgets(labels, 3, 7, gen())  # quotas 3.5, 2.1, 1.4
    assert int(b.sum()) == 7 and b[0] == 4


def test_top_k_per_class_keeps_the_highest_in_each_class() -> None:
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    scores = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.2, 0.8])
    picked = top_k(scores, torch.tensor([2, 1]), gen(), labels=labels)
    assert sorted(picked.tolist()) == [1, 2, 5]
    assert sorted(top_k(scores, 2, gen(), largest=False).tolist()) == [0, 4]


def test_ties_are_broken_by_the_generator_not_by_position() -> None:
    scores = torch.zeros(100)
    firsts = {tuple(sorted(top_k(scores, 10, gen(s)).tolist())) for s in range(5)}
    assert len(firsts) == 5  # not always the first ten indices
    assert top_k(scores, 10, gen(3)).tolist() == top_k(scores, 10, gen(3)).tolist()


def test_validate_selection_names_the_selector() -> None:
    ok = validate_selection(Selection(torch.tensor([3, 1])), n=5, budget=2, name="mine", variable_budget=False)
    assert ok.indices.tolist() == [3, 1]
    for bad, match in [(Selection(torch.tensor([1, 1])), "not unique"), (Selection(torch.tensor([1, 9])), "out of range"),
                       (Selection(torch.tensor([1])), "selected 1 samples, budget is 2"), ([1, 2], "expected a Selection")]:
        with pytest.raises(SelectionError, match=f"selector 'mine'.*{match}|selector 'mine' {match}"):
            validate_selection(bad, n=5, budget=2, name="mine", variable_budget=False)


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Linear(4, 3)
        self.fc = nn.Linear(3, 3)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def context(epoch: int, total: int, x: torch.Tensor, labels: torch.Tensor, student: nn.Module,
            teacher: nn.Module, balanced: bool = False, fraction: float = 0.25) -> SelectionContext:
    def fn(m: nn.Module):
        return lambda: compute_outputs(m, lambda: iter(x.split(7)))
    return SelectionContext(epoch=epoch, total_epochs=total, fraction=fraction, labels=labels, num_classes=3,
                            balanced=balanced, student=student, teacher=teacher,
                            output_fns={"student": fn(student), "teacher": fn(teacher)},
                            generator=gen(epoch), device=torch.device("cpu"), seed=0)


def test_acs_scores_match_an_independent_computation() -> None:
    g = gen(1)
    x, labels = torch.randn(40, 4, generator=g), torch.randint(0, 3, (40,), generator=g)
    student, teacher = Tiny(), Tiny()
    for p in [*student.parameters(), *teacher.parameters()]:
        p.data = torch.randn(p.shape, generator=g)
    for epoch, total, schedule in [(0, 10, "cosine"), (4, 10, "cosine"), (4, 10, "cosine_sq"), (7, 10, "linear"),
                                   (3, 10, "evs"), (3, 10, "ds")]:
        sel = ACSSelector(every=2, schedule=schedule).select(context(epoch, total, x, labels, student, teacher))
        with torch.no_grad():  # independent: plain Python per sample
            ps, pt = student(x).softmax(1), teacher(x).softmax(1)
        beta = {"cosine": math.cos(math.pi * epoch / (2 * total)),
                "cosine_sq": 0.5 * (1 + math.cos(math.pi * epoch / total)),
                "linear": 1 - epoch / total, "evs": 1.0, "ds": 0.0}[schedule]
        expected = []
        for i in range(40):
            evs = math.sqrt(sum((ps[i, c].item() - (1.0 if c == labels[i] else 0.0)) ** 2 for c in range(3)))
            ds = math.sqrt(sum((ps[i, c].item() - pt[i, c].item()) ** 2 for c in range(3)))
            expected.append(beta * evs + (1 - beta) * ds)
        assert torch.allclose(sel.scores, torch.tensor(expected), atol=1e-5), schedule
        assert set(sel.indices.tolist()) == set(torch.tensor(expected).topk(10).indices.tolist())


class ImageTerms:
    """Per-image EVS and DS as a detection task's student outputs give them to ACS."""

    def __init__(self, evs: torch.Tensor, ds: torch.Tensor) -> None:
        self._evs, self._ds = evs, ds

    def evs(self, **terms: object) -> torch.Tensor:
        return self._evs

    def ds(self, **terms: object) -> torch.Tensor:
        return self._ds


def test_acs_on_detection_keeps_the_images_with_the_highest_weighted_scores() -> None:
    g = gen(2)
    evs, ds = torch.rand(30, generator=g), torch.rand(30, generator=g)
    ctx = SelectionContext(epoch=4, total_epochs=10, fraction=0.2, labels=torch.zeros(30, dtype=torch.long),
                           num_classes=1, balanced=False, student=nn.Identity(), teacher=nn.Identity(),
                           output_fns={"student": lambda: ImageTerms(evs, ds)}, generator=gen(0),
                           device=torch.device("cpu"), seed=0, task="detection")
    sel = ACSSelector(every=2).select(ctx)
    beta = math.cos(math.pi * 4 / 20)
    expected = beta * evs + (1 - beta) * ds
    assert torch.allclose(sel.scores, expected)
    assert set(sel.indices.tolist()) == set(expected.topk(6).indices.tolist())


def test_paper_cosine_differs_from_released_code() -> None:
    acs, code = ACSSelector(schedule="cosine"), ACSSelector(schedule="cosine_sq")
    assert acs.beta(50, 100) == pytest.approx(math.sqrt(0.5))
    assert code.beta(50, 100) == pytest.approx(0.5)
    assert acs.beta(0, 100) == code.beta(0, 100) == 1.0


def test_selection_schedule() -> None:
    acs = ACSSelector(every=3)
    assert [e for e in range(10) if acs.due(e)] == [0, 3, 6, 9]
    assert [e for e in range(10) if RandomSelector().due(e)] == [0]


def test_balanced_selection_has_class_budgets_and_is_deterministic() -> None:
    g = gen(2)
    x, labels = torch.randn(60, 4, generator=g), torch.tensor([0] * 30 + [1] * 20 + [2] * 10)
    m = Tiny()
    a = RandomSelector().select(context(0, 5, x, labels, m, m, balanced=True, fraction=0.5))
    b = RandomSelector().select(context(0, 5, x, labels, m, m, balanced=True, fraction=0.5))
    assert a.indices.tolist() == b.indices.tolist()
    assert torch.bincount(labels[a.indices], minlength=3).tolist() == [15, 10, 5]


def test_outputs_are_computed_once_per_context() -> None:
    calls = []
    x, labels = torch.randn(8, 4), torch.zeros(8, dtype=torch.long)
    m = Tiny()

    def once() -> Outputs:
        calls.append(1)
        return compute_outputs(m, lambda: iter([x]))
    ctx = SelectionContext(epoch=0, total_epochs=1, fraction=0.5, labels=labels, num_classes=3, balanced=False,
                           student=m, teacher=m, output_fns={"student": once}, generator=gen(),
                           device=torch.device("cpu"), seed=0)
    ctx.outputs("student"), ctx.outputs("student")
    assert len(calls) == 1
    with pytest.raises(KeyError, match="expected one of"):
        ctx.outputs("proxy")
