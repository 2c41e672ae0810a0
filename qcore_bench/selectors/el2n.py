"""EL2N (Paul et al., "Deep Learning on a Data Diet", NeurIPS 2021).

Score = ||softmax(f(x)) - onehot(y)||_2 from a proxy trained on the full data for a few
epochs, averaged over ``repeats`` independently seeded proxies; the highest are kept.
The probabilities are a softmax (the ACS repository's EL2N uses raw logits) and the
label is the noisy training label the selector can see.

For detection (the proxy is then a detector trained on every image) the score of an image is
the proxy's d_EVS (see ``acs``), with the same ``box_weight``, ``reduction`` and ``topk``.
"""

from __future__ import annotations

import torch

from ..selection import Selection, SelectionContext
from .scoring import ProxyScoreSelector, check_detection_terms, error_vector_score


class EL2NSelector(ProxyScoreSelector):
    """Keeps the samples with the highest mean error-vector norm over the proxy runs."""

    tasks = ("classification", "detection")

    def __init__(self, proxy_epochs: int = 10, proxy_lr: float = 0.05, proxy_optimizer: str = "sgd",
                 proxy_init: str = "scratch", proxy_quantized: bool = False, repeats: int = 1,
                 proxy_schedule: str = "prefix", proxy_horizon: int | None = None, box_weight: float = 1.0,
                 reduction: str = "mean", topk: int = 10) -> None:
        super().__init__(proxy_epochs, proxy_lr, proxy_optimizer, proxy_init, proxy_quantized, repeats,
                         proxy_schedule, proxy_horizon)
        check_detection_terms(box_weight, reduction, topk)
        self.terms = {"box_weight": float(box_weight), "reduction": reduction, "k": topk}

    def select(self, ctx: SelectionContext) -> Selection:
        labels = ctx.labels
        runs = self.proxies(ctx)
        if ctx.task == "detection":
            scores = torch.stack([r.outputs.evs(**self.terms) for r in runs]).mean(0)
        else:
            scores = torch.stack([error_vector_score(r.outputs.probs, labels) for r in runs]).mean(0)
        ctx.log(el2n_mean=float(scores.mean()))
        return Selection(ctx.top_k(scores), scores=scores)
