"""k-Center Greedy (Sener & Savarese, ICLR 2018) and Contextual Diversity (Agarwal et al., ECCV 2020).

Both grow a set of centres greedily: the next centre is the point farthest from its
nearest centre so far, which 2-approximates the minimax covering radius. k-Center uses
the Euclidean distance between penultimate features; Contextual Diversity uses the
symmetric KL divergence between softmax outputs (its classification form, as in
DeepCore). One routine serves both: it keeps each point's distance to its nearest
centre and updates it with one chunked pass per new centre, so memory stays O(n d)
and time O(n k d); no n x n matrix is formed.
"""

from __future__ import annotations

from typing import Callable, ClassVar

import torch

from ..selection import Selection, SelectionContext
from .scoring import CHUNK_ELEMENTS, ProxyScoreSelector, check_choice, outputs_from

Distance = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def euclidean(x: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
    """||x_i - centre||_2 for each row."""
    return (x - centre).norm(dim=1)


def symmetric_kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p || q) + KL(q || p) = sum_c (p_c - q_c)(log p_c - log q_c), from log-probabilities, per row."""
    return ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(dim=-1)


def nearest_centre_update(points: torch.Tensor, centre: torch.Tensor, nearest: torch.Tensor,
                          distance: Distance) -> None:
    """nearest <- min(nearest, distance(points, centre)), one chunk of rows at a time."""
    step = max(1, CHUNK_ELEMENTS // max(1, points.shape[1]))
    for s in range(0, len(points), step):
        torch.minimum(nearest[s:s + step], distance(points[s:s + step], centre), out=nearest[s:s + step])


def k_center_greedy(points: torch.Tensor, k: int, generator: torch.Generator,
                    distance: Distance) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions of ``k`` greedy centres in pick order, and each point's distance to its nearest one.

    The first centre is drawn with ``generator``; the points are visited in a random
    order, so equal distances are broken by the generator, not by position.
    """
    n = len(points)
    order = torch.randperm(n, generator=generator).to(points.device)
    pts = points[order]
    nearest = torch.full((n,), float("inf"), dtype=pts.dtype, device=pts.device)
    taken = torch.zeros(n, dtype=torch.bool, device=pts.device)
    picks = [0]
    for _ in range(min(k, n)):
        c = picks[-1]
        taken[c] = True
        nearest_centre_update(pts, pts[c], nearest, distance)
        if len(picks) < k:
            picks.append(int(nearest.masked_fill(taken, -float("inf")).argmax()))
    back = torch.empty_like(nearest)
    back[order] = nearest
    return order[torch.tensor(picks, device=order.device)], back


class _GreedyCoverSelector(ProxyScoreSelector):
    """Shared select(): one greedy per class when balanced (k = class budget), else one global."""

    sources: ClassVar[tuple[str, ...]] = ("teacher", "proxy", "student")
    name: ClassVar[str] = ""

    def __init__(self, source: str, proxy_epochs: int, proxy_lr: float, proxy_optimizer: str, proxy_init: str,
                 proxy_quantized: bool, proxy_schedule: str, proxy_horizon: int | None) -> None:
        super().__init__(proxy_epochs, proxy_lr, proxy_optimizer, proxy_init, proxy_quantized, 1,
                         proxy_schedule, proxy_horizon)
        check_choice("source", source, self.sources)
        self.source = source

    def points(self, ctx: SelectionContext) -> torch.Tensor:
        raise NotImplementedError

    def distance(self, x: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def select(self, ctx: SelectionContext) -> Selection:
        pts = self.points(ctx)
        labels = ctx.labels.to(pts.device)
        nearest = torch.zeros(len(pts), dtype=pts.dtype, device=pts.device)
        if ctx.balanced:
            picks = []
            for c, k in enumerate(ctx.class_budgets.tolist()):
                members = (labels == c).nonzero().squeeze(1)
                if k > 0:
                    pos, near = k_center_greedy(pts[members], k, ctx.generator, self.distance)
                    nearest[members] = near
                    picks.append(members[pos])
            chosen = torch.cat(picks)
        else:
            pos, nearest = k_center_greedy(pts, ctx.budget, ctx.generator, self.distance)
            chosen = pos
        ctx.log(**{f"{self.name}_radius": float(nearest.max()), f"{self.name}_mean_distance": float(nearest.mean())})
        return Selection(chosen.cpu(), scores=nearest.cpu())


class KCenterSelector(_GreedyCoverSelector):
    """k-Center Greedy on penultimate features of ``source`` ("teacher", "proxy", "student"), Euclidean.

    ``scores``: each sample's distance to its nearest centre (within its class when
    balanced). Indices in pick order (class by class when balanced).
    """

    name: ClassVar[str] = "kcenter"

    def __init__(self, source: str = "teacher", proxy_epochs: int = 5, proxy_lr: float = 0.05,
                 proxy_optimizer: str = "sgd", proxy_init: str = "scratch", proxy_quantized: bool = False,
                 proxy_schedule: str = "prefix", proxy_horizon: int | None = None) -> None:
        super().__init__(source, proxy_epochs, proxy_lr, proxy_optimizer, proxy_init, proxy_quantized,
                         proxy_schedule, proxy_horizon)

    def points(self, ctx: SelectionContext) -> torch.Tensor:
        return outputs_from(ctx, self.source, self).features.float()

    def distance(self, x: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        return euclidean(x, centre)


class ContextualDiversitySelector(_GreedyCoverSelector):
    """k-Center Greedy with the symmetric KL divergence between softmax outputs of ``source``.

    Default ``source="proxy"`` (a 5-epoch proxy trained from scratch), or "teacher" /
    "student". Symmetric KL is not a metric, so the 2-approximation does not carry over;
    the greedy is the one the method prescribes.
    """

    name: ClassVar[str] = "contextual_diversity"

    def __init__(self, source: str = "proxy", proxy_epochs: int = 5, proxy_lr: float = 0.05,
                 proxy_optimizer: str = "sgd", proxy_init: str = "scratch", proxy_quantized: bool = False,
                 proxy_schedule: str = "prefix", proxy_horizon: int | None = None) -> None:
        super().__init__(source, proxy_epochs, proxy_lr, proxy_optimizer, proxy_init, proxy_quantized,
                         proxy_schedule, proxy_horizon)

    def points(self, ctx: SelectionContext) -> torch.Tensor:
        return outputs_from(ctx, self.source, self).logits.float().log_softmax(dim=1)

    def distance(self, x: torch.Tensor, centre: torch.Tensor) -> torch.Tensor:
        return symmetric_kl(x, centre)
