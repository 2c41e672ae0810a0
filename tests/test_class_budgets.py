"""Every selector keeps exactly its per-class budgets, also when many budgets are zero.

With 100 equal classes at 1% of 5,000 samples, half the classes get a budget of 0: no
selector may pick from them (Glister's stochastic greedy once did, 17-23 classes over 5
seeds, while the total still matched). Imbalanced classes give zero budgets to rare ones.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from qcore_bench.registry import registry
from qcore_bench.selection import Outputs, ProxyRun, SelectionContext, validate_selection

# every built-in selector that chooses a subset of the fraction (full keeps everything; the
# DeepCore adapter needs a DeepCore checkout and trains its own models)
SELECTORS = ["random", "acs", "el2n", "grand", "forgetting", "uncertainty", "glister", "moderate", "kcenter",
             "contextual_diversity"]
PARAMS = {"glister": [{}, {"greedy": "lazy"}, {"validation": "train"}, {"deepcore_compat": True}],
          "moderate": [{}, {"window": "per_class"}, {"variant": "acs_repo"}]}


def _context(labels: torch.Tensor, num_classes: int, fraction: float, seed: int) -> SelectionContext:
    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    outputs = Outputs(torch.randn(n, num_classes, generator=g) * 2, torch.randn(n, 16, generator=g).relu())
    teacher = Outputs(torch.randn(n, num_classes, generator=g) * 2, torch.randn(n, 16, generator=g).relu())
    correct = torch.rand(3, n, generator=g) > 0.5

    def proxy(recipe: object, repeat: int) -> ProxyRun:
        return ProxyRun(correct, torch.zeros(3, n), outputs, 3 * n, 0.0, cached=True)
    return SelectionContext(epoch=0, total_epochs=10, fraction=fraction, labels=labels, num_classes=num_classes,
                            balanced=True, student=nn.Identity(), teacher=nn.Identity(),
                            output_fns={"student": lambda: outputs, "teacher": lambda: teacher},
                            generator=torch.Generator().manual_seed(seed + 1), device=torch.device("cpu"),
                            seed=seed, proxy_fn=proxy)


def _cases() -> list[tuple[str, dict]]:
    return [(name, params) for name in SELECTORS for params in PARAMS.get(name, [{}])]


@pytest.mark.parametrize(("name", "params"), _cases(), ids=lambda v: str(v))
@pytest.mark.parametrize("seed", [0, 1])
def test_100_equal_classes_at_1_percent(name: str, params: dict, seed: int) -> None:
    labels = torch.arange(100).repeat_interleave(50)[torch.randperm(5000, generator=torch.Generator().manual_seed(9))]
    ctx = _context(labels, 100, 0.01, seed)
    assert int((ctx.class_budgets == 0).sum()) == 50  # half the classes may not be picked from
    sel = registry("selectors").get(name)(**params).select(ctx)
    sel = validate_selection(sel, n=len(labels), budget=ctx.budget, name=name, variable_budget=False)
    assert torch.equal(torch.bincount(labels[sel.indices], minlength=100), ctx.class_budgets)


@pytest.mark.parametrize(("name", "params"), _cases(), ids=lambda v: str(v))
def test_imbalanced_classes_at_10_percent(name: str, params: dict) -> None:
    sizes = [600, 300, 60, 20, 8, 4, 3, 2, 2, 1]  # the rare classes round to a budget of 0
    labels = torch.cat([torch.full((s,), c) for c, s in enumerate(sizes)])
    labels = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(3))]
    ctx = _context(labels, len(sizes), 0.1, 0)
    assert (ctx.class_budgets == 0).any()
    sel = registry("selectors").get(name)(**params).select(ctx)
    sel = validate_selection(sel, n=len(labels), budget=ctx.budget, name=name, variable_budget=False)
    assert torch.equal(torch.bincount(labels[sel.indices], minlength=len(sizes)), ctx.class_budgets)
