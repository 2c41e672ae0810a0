"""EL2N (Paul et al., "Deep Learning on a Data Diet", NeurIPS 2021).

Score = ||softmax(f(x)) - onehot(y)||_2 from a proxy trained on the full data for a few
epochs, averaged over ``repeats`` independently seeded proxies; the highest are kept.
The probabilities are a softmax (the ACS repository's EL2N uses raw logits) and the
label is the noisy training label the selector can see.

This module also holds ``ProxyScoreSelector``, the shared base of the static selectors
that score samples from proxy runs (EL2N, GraNd, Forgetting, Uncertainty).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..selection import Selection, SelectionContext, Selector
from .acs import error_vector_score

if TYPE_CHECKING:
    from ..proxy import ProxyRun

OPTIMIZERS = ("sgd", "adam")
INITS = ("scratch", "teacher")


class ProxyScoreSelector(Selector):
    """A static selector whose scores come from proxy runs; holds and validates the proxy recipe.

    The recipe is explicit so that two selectors asking for the same one share its
    training (``ctx.proxy`` caches by recipe), and so that a suite can vary it.
    """

    def __init__(self, proxy_epochs: int = 10, proxy_lr: float = 0.05, proxy_optimizer: str = "sgd",
                 proxy_init: str = "scratch", proxy_quantized: bool = False, repeats: int = 1) -> None:
        super().__init__()
        if isinstance(proxy_epochs, bool) or not isinstance(proxy_epochs, int) or proxy_epochs < 1:
            raise ValueError(f"proxy_epochs must be an integer >= 1, got {proxy_epochs!r}")
        if isinstance(proxy_lr, bool) or not isinstance(proxy_lr, (int, float)) or not proxy_lr > 0:
            raise ValueError(f"proxy_lr must be a number > 0, got {proxy_lr!r}")
        if proxy_optimizer not in OPTIMIZERS:
            raise ValueError(f"proxy_optimizer must be one of {list(OPTIMIZERS)}, got {proxy_optimizer!r}")
        if proxy_init not in INITS:
            raise ValueError(f"proxy_init must be one of {list(INITS)}, got {proxy_init!r}")
        if not isinstance(proxy_quantized, bool):
            raise ValueError(f"proxy_quantized must be true or false, got {proxy_quantized!r}")
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
        self.proxy_epochs, self.proxy_lr, self.proxy_optimizer = proxy_epochs, float(proxy_lr), proxy_optimizer
        self.proxy_init, self.proxy_quantized, self.repeats = proxy_init, proxy_quantized, repeats

    def proxies(self, ctx: SelectionContext) -> list[ProxyRun]:
        """The ``repeats`` proxy runs of this selector's recipe (trained once, then shared)."""
        return ctx.proxy(repeats=self.repeats, epochs=self.proxy_epochs, lr=self.proxy_lr,
                         optimizer=self.proxy_optimizer, init=self.proxy_init, quantized=self.proxy_quantized)


class EL2NSelector(ProxyScoreSelector):
    """Keeps the samples with the highest mean error-vector norm over the proxy runs."""

    def select(self, ctx: SelectionContext) -> Selection:
        labels = ctx.labels
        runs = self.proxies(ctx)
        scores = torch.stack([error_vector_score(r.outputs.probs, labels) for r in runs]).mean(0)
        ctx.log(el2n_mean=float(scores.mean()))
        return Selection(ctx.top_k(scores), scores=scores)
