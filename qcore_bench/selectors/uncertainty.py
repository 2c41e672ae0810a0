"""Uncertainty sampling (Coleman et al., "Selection via Proxy", ICLR 2020).

Scores the proxy's final probabilities p and keeps the MOST uncertain samples:
"least_confidence" 1 - max p, "entropy" -sum p log p, "margin" 1 - (p_top1 - p_top2)
(a small margin is uncertain). Every score grows with uncertainty and the highest are
kept, balanced or not; DeepCore's unbalanced path keeps the most confident instead.
Scores are averaged over ``repeats`` proxies.

For detection the score of an image is the proxy's classification entropy (the summed binary
entropy of the sigmoid class probabilities) reduced over its candidate anchors by ``reduction``
(default: the mean); ``method`` applies to classification only.
"""

from __future__ import annotations

import torch

from ..selection import Selection, SelectionContext
from .scoring import ProxyScoreSelector, check_detection_terms


def _least_confidence(p: torch.Tensor) -> torch.Tensor:
    return 1 - p.max(dim=1).values


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return torch.special.entr(p).sum(dim=1)  # 0 log 0 = 0


def _margin(p: torch.Tensor) -> torch.Tensor:
    top = p.topk(2, dim=1).values
    return 1 - (top[:, 0] - top[:, 1])


METHODS = {"least_confidence": _least_confidence, "entropy": _entropy, "margin": _margin}


def uncertainty_score(probs: torch.Tensor, method: str) -> torch.Tensor:
    """Per-sample uncertainty of ``probs`` [n, classes]; higher means less sure."""
    return METHODS[method](probs)


class UncertaintySelector(ProxyScoreSelector):
    """Keeps the samples the proxy is least sure about."""

    tasks = ("classification", "detection")

    def __init__(self, method: str = "least_confidence", proxy_epochs: int = 10, proxy_lr: float = 0.05,
                 proxy_optimizer: str = "sgd", proxy_init: str = "scratch", proxy_quantized: bool = False,
                 repeats: int = 1, proxy_schedule: str = "prefix", proxy_horizon: int | None = None,
                 reduction: str = "mean", topk: int = 10) -> None:
        super().__init__(proxy_epochs, proxy_lr, proxy_optimizer, proxy_init, proxy_quantized, repeats,
                         proxy_schedule, proxy_horizon)
        check_detection_terms(0.0, reduction, topk)
        self.terms = {"reduction": reduction, "k": topk}
        if method not in METHODS:
            raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
        self.method = method

    def select(self, ctx: SelectionContext) -> Selection:
        runs = self.proxies(ctx)
        if ctx.task == "detection":
            scores = torch.stack([r.outputs.uncertainty(**self.terms) for r in runs]).mean(0)
        else:
            scores = torch.stack([uncertainty_score(r.outputs.probs, self.method) for r in runs]).mean(0)
        ctx.log(uncertainty_mean=float(scores.mean()))
        return Selection(ctx.top_k(scores), scores=scores)
