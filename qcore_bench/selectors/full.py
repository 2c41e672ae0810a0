"""All training samples every epoch: the full-data QAT reference row of a table."""

from __future__ import annotations

import torch

from ..selection import Selection, SelectionContext, Selector


class FullSelector(Selector):
    """Keeps everything; a suite makes one cell per setting, whatever its fractions."""

    tasks = ("classification", "detection")

    uses_fraction = False
    variable_budget = True

    def select(self, ctx: SelectionContext) -> Selection:
        return Selection(torch.arange(len(ctx)))
