"""EL2N (Paul et al., "Deep Learning on a Data Diet", NeurIPS 2021).

Score = ||softmax(f(x)) - onehot(y)||_2 from a proxy trained on the full data for a few
epochs, averaged over ``repeats`` independently seeded proxies; the highest are kept.
The probabilities are a softmax (the ACS repository's EL2N uses raw logits) and the
label is the noisy training label the selector can see.
"""

from __future__ import annotations

import torch

from ..selection import Selection, SelectionContext
from .scoring import ProxyScoreSelector, error_vector_score


class EL2NSelector(ProxyScoreSelector):
    """Keeps the samples with the highest mean error-vector norm over the proxy runs."""

    def select(self, ctx: SelectionContext) -> Selection:
        labels = ctx.labels
        runs = self.proxies(ctx)
        scores = torch.stack([error_vector_score(r.outputs.probs, labels) for r in runs]).mean(0)
        ctx.log(el2n_mean=float(scores.mean()))
        return Selection(ctx.top_k(scores), scores=scores)
