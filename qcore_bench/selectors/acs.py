"""Adaptive Coreset Selection (Huang et al., TMLR 2024).

Every ``every`` epochs, keep the samples with the highest
``beta(t) * d_EVS + (1 - beta(t)) * d_DS`` where
``d_EVS = ||p_student - onehot(y)||_2`` and ``d_DS = ||p_student - p_teacher||_2``,
both from eval-mode, un-augmented forward passes. Each is the norm of the gradient of
the loss with respect to the logits (cross-entropy and distillation, respectively),
a cheap proxy for the sample's gradient on the quantized weights.
"""

from __future__ import annotations

import math

import torch

from ..selection import Selection, SelectionContext, Selector
from .scoring import error_vector_score


def _cosine(t: int, e: int) -> float:
    return math.cos(math.pi * t / (2 * e))  # the paper's beta(t)


SCHEDULES = {
    "cosine": _cosine,
    "cosine_sq": lambda t, e: 0.5 * (1 + math.cos(math.pi * t / e)),  # the released code's "cosine"
    "linear": lambda t, e: 1 - t / e,
    "evs": lambda t, e: 1.0,
    "ds": lambda t, e: 0.0,
}


def disagreement_score(probs: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """||p - p_T||_2 per sample."""
    return (probs - teacher_probs).norm(dim=1)


class ACSSelector(Selector):
    """ACS with the paper's cosine schedule by default; ``schedule`` picks another."""

    adaptive = True

    def __init__(self, every: int = 10, schedule: str = "cosine") -> None:
        super().__init__(every)
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got '{schedule}'")
        self.schedule = schedule

    def beta(self, epoch: int, total_epochs: int) -> float:
        return SCHEDULES[self.schedule](epoch, total_epochs)

    def select(self, ctx: SelectionContext) -> Selection:
        beta = self.beta(ctx.epoch, ctx.total_epochs)
        probs = ctx.outputs("student").probs
        labels = ctx.labels.to(probs.device)
        scores = torch.zeros(len(ctx), device=probs.device)
        evs = error_vector_score(probs, labels) if beta > 0 else None
        ds = disagreement_score(probs, ctx.outputs("teacher").probs) if beta < 1 else None
        if evs is not None:
            scores += beta * evs
        if ds is not None:
            scores += (1 - beta) * ds
        ctx.log(acs_beta=beta,
                **({"evs_mean": float(evs.mean())} if evs is not None else {}),
                **({"ds_mean": float(ds.mean())} if ds is not None else {}))
        return Selection(ctx.top_k(scores.cpu()), scores=scores.cpu())
