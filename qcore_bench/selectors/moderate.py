"""Moderate-DS (Xia et al., ICLR 2023): keep the samples of moderate difficulty.

Difficulty is the distance of a sample's penultimate features to its class centre;
the samples whose distance is closest to the median distance are kept, dropping both
the easiest (nearest) and the hardest (farthest). The ACS repository ships a different
"moderate" (teacher logits, keep the farthest, per class); ``variant="acs_repo"``
reproduces it so a table can say which one it shows.
"""

from __future__ import annotations

import torch

from ..selection import Selection, SelectionContext, class_budgets, top_k
from .scoring import ProxyScoreSelector, check_choice, outputs_from


def median(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """numpy's median: the mean of the two middle values for an even count (torch's picks the lower)."""
    s = x.sort(dim=dim).values
    m = s.shape[dim]
    return (s.narrow(dim, (m - 1) // 2, 1) + s.narrow(dim, m // 2, 1)).squeeze(dim) / 2


def centre_distances(x: torch.Tensor, labels: torch.Tensor, num_classes: int, centre: str) -> torch.Tensor:
    """Euclidean distance of each row to its class centre (coordinate-wise median or mean)."""
    dist = torch.zeros(len(x), dtype=x.dtype, device=x.device)
    for c in range(num_classes):
        members = (labels == c).nonzero().squeeze(1)
        if len(members):
            xc = x[members]
            ctr = median(xc) if centre == "median" else xc.mean(dim=0)
            dist[members] = (xc - ctr).norm(dim=1)
    return dist


class ModerateSelector(ProxyScoreSelector):
    """Moderate-DS, or the ACS repository's variant.

    ``variant="moderate_ds"``: features of ``source`` ("teacher", or "proxy": a
    ``proxy_*`` recipe), distance to the class ``centre`` ("median": coordinate-wise, as
    the released code; "mean": as the paper), score -|d - median(d)| with the median over
    all samples (``window="global"``, the paper) or within each class ("per_class").
    ``variant="acs_repo"``: logits of ``source``, keep the farthest from the class centre,
    always per class (the repository supports nothing else). Budgets and ties via
    ``ctx.top_k`` (per class when balanced).
    """

    def __init__(self, variant: str = "moderate_ds", source: str = "teacher", centre: str = "median",
                 window: str = "global", proxy_epochs: int = 5, proxy_lr: float = 0.05,
                 proxy_optimizer: str = "sgd", proxy_init: str = "scratch", proxy_quantized: bool = False,
                 proxy_schedule: str = "prefix", proxy_horizon: int | None = None) -> None:
        super().__init__(proxy_epochs, proxy_lr, proxy_optimizer, proxy_init, proxy_quantized, 1,
                         proxy_schedule, proxy_horizon)
        check_choice("variant", variant, ("moderate_ds", "acs_repo"))
        check_choice("source", source, ("teacher", "proxy"))
        check_choice("centre", centre, ("median", "mean"))
        check_choice("window", window, ("global", "per_class"))
        self.variant, self.source, self.centre, self.window = variant, source, centre, window

    def select(self, ctx: SelectionContext) -> Selection:
        out = outputs_from(ctx, self.source, self)
        x = (out.logits if self.variant == "acs_repo" else out.features).float()
        labels = ctx.labels.to(x.device)
        dist = centre_distances(x, labels, ctx.num_classes, self.centre).cpu()
        labels = labels.cpu()
        ctx.log(moderate_distance_median=float(median(dist)))
        if self.variant == "acs_repo":
            budgets = ctx.class_budgets if ctx.balanced else class_budgets(labels, ctx.num_classes, ctx.budget,
                                                                           ctx.generator)
            return Selection(top_k(dist, budgets, ctx.generator, labels=labels), scores=dist)
        if self.window == "global":
            mid = median(dist)
        else:
            mid = torch.zeros(ctx.num_classes, dtype=dist.dtype)
            for c in labels.unique().tolist():
                mid[c] = median(dist[labels == c])
            mid = mid[labels]
        scores = -(dist - mid).abs()
        return Selection(ctx.top_k(scores), scores=scores)
