"""GraNd (Paul et al., "Deep Learning on a Data Diet", NeurIPS 2021), last-layer form.

Score = norm of the gradient of one sample's cross-entropy loss with respect to the
proxy's last linear layer (weight and bias). With p the softmax, y the one-hot label
and h the penultimate features, dL/dW = (p - y) h^T and dL/db = p - y, so the norm is
||p - y||_2 * sqrt(1 + ||h||_2^2), computed per sample in closed form. DeepCore takes
it through a batch-mean loss, which scales it by 1/B and inflates the samples of the
last, smaller batch; here no batch is involved. The paper scores early in training
(default: a 1-epoch proxy) and averages 10 proxies; ``repeats`` defaults to 1.
"""

from __future__ import annotations

import torch

from ..selection import Selection, SelectionContext
from .scoring import ProxyScoreSelector, error_vector_score


def last_layer_grad_norm(probs: torch.Tensor, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-sample ||d CE / d(W, b)||_2 of a linear head, from its inputs and softmax outputs."""
    return error_vector_score(probs, labels) * (1 + features.pow(2).sum(dim=1)).sqrt()


class GraNdSelector(ProxyScoreSelector):
    """Keeps the samples with the highest mean last-layer gradient norm over the proxy runs."""

    def __init__(self, proxy_epochs: int = 1, proxy_lr: float = 0.05, proxy_optimizer: str = "sgd",
                 proxy_init: str = "scratch", proxy_quantized: bool = False, repeats: int = 1,
                 proxy_schedule: str = "prefix", proxy_horizon: int | None = None) -> None:
        super().__init__(proxy_epochs, proxy_lr, proxy_optimizer, proxy_init, proxy_quantized, repeats,
                         proxy_schedule, proxy_horizon)

    def select(self, ctx: SelectionContext) -> Selection:
        labels = ctx.labels
        runs = self.proxies(ctx)
        scores = torch.stack([last_layer_grad_norm(r.outputs.probs, r.outputs.features, labels)
                              for r in runs]).mean(0)
        ctx.log(grand_mean=float(scores.mean()))
        return Selection(ctx.top_k(scores), scores=scores)
