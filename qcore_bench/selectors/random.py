"""Uniform random subset: the baseline every selector must beat.

With ``every`` set it re-draws the subset every ``every`` epochs (``random_adaptive``):
the control that tells whether an adaptive selector gains from its scores or only
from seeing more distinct samples over the run.
"""

from __future__ import annotations

import torch

from ..selection import Selection, SelectionContext, Selector


class RandomSelector(Selector):
    """Uniform draw without replacement (per class when balanced), from the cell's generator;
    for detection, a uniform draw of images."""

    tasks = ("classification", "detection")

    def __init__(self, every: int | None = None) -> None:
        super().__init__(every or 1)
        self.adaptive = every is not None

    def select(self, ctx: SelectionContext) -> Selection:
        scores = torch.rand(len(ctx), generator=ctx.generator)
        return Selection(ctx.top_k(scores))
