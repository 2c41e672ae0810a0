"""Forgetting events (Toneva et al., ICLR 2019).

A proxy trains on the full data and records, at each visit of a sample, whether its
prediction (before the update) was right. A forgetting event is right at one visit and
wrong at the next; the samples with the most events are kept. Samples never learned
(wrong at every visit) are the most forgettable in the original protocol: they count
E + 1 events, above any real count. ``never_learned="zero"`` gives them 0 events, as
DeepCore does, which ties them with never-forgotten samples. Ties are broken by the
cell's generator, not by position; counts are summed over ``repeats`` proxies.
"""

from __future__ import annotations

import torch

from ..selection import Selection, SelectionContext
from .scoring import ProxyScoreSelector

NEVER_LEARNED = ("most", "zero")


def forgetting_events(correct: torch.Tensor, never_learned: str = "most") -> torch.Tensor:
    """Per-sample event counts from correctness at successive visits, ``correct`` [E, n] bool."""
    events = (correct[:-1] & ~correct[1:]).sum(dim=0)
    if never_learned == "most":
        events[~correct.any(dim=0)] = correct.shape[0] + 1
    return events


class ForgettingSelector(ProxyScoreSelector):
    """Keeps the samples forgotten most often during proxy training."""

    def __init__(self, never_learned: str = "most", proxy_epochs: int = 10, proxy_lr: float = 0.05,
                 proxy_optimizer: str = "sgd", proxy_init: str = "scratch", proxy_quantized: bool = False,
                 repeats: int = 1, proxy_schedule: str = "prefix", proxy_horizon: int | None = None) -> None:
        super().__init__(proxy_epochs, proxy_lr, proxy_optimizer, proxy_init, proxy_quantized, repeats,
                         proxy_schedule, proxy_horizon)
        if never_learned not in NEVER_LEARNED:
            raise ValueError(f"never_learned must be one of {list(NEVER_LEARNED)}, got {never_learned!r}")
        self.never_learned = never_learned

    def select(self, ctx: SelectionContext) -> Selection:
        runs = self.proxies(ctx)
        scores = torch.stack([forgetting_events(r.correct, self.never_learned) for r in runs]).sum(0).float()
        never = torch.stack([~r.correct.any(dim=0) for r in runs]).any(0)
        ctx.log(forgetting_mean=float(scores.mean()), forgetting_never_learned_frac=float(never.float().mean()))
        return Selection(ctx.top_k(scores), scores=scores)
