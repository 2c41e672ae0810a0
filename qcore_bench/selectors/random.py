"""Uniform random subset: the baseline every selector must beat."""

from __future__ import annotations

import torch

from ..selection import Selection, SelectionContext, Selector


class RandomSelector(Selector):
    """Uniform draw without replacement (per class when balanced), from the cell's generator."""

    def select(self, ctx: SelectionContext) -> Selection:
        scores = torch.rand(len(ctx), generator=ctx.generator)
        return Selection(ctx.top_k(scores))
