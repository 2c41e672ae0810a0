"""Adaptive Coreset Selection (Huang et al., TMLR 2024).

Every ``every`` epochs, keep the samples with the highest
``beta(t) * d_EVS + (1 - beta(t)) * d_DS`` where
``d_EVS = ||p_student - onehot(y)||_2`` and ``d_DS = ||p_student - p_teacher||_2``,
both from eval-mode, un-augmented forward passes. Each is the norm of the gradient of
the loss with respect to the logits (cross-entropy and distillation, respectively),
a cheap proxy for the sample's gradient on the quantized weights.

For detection the samples are images and both scores come from the student's one eval pass
(``AnchorTerms``): d_EVS reduces the per-anchor error vector (class term plus ``box_weight`` x
box-regression error) over the anchors matched to ground truth, d_DS the disagreement with the
FP teacher over the anchors the teacher is confident about; ``reduction`` ("mean" over those
anchors, "sum", or "topk": the mean of the ``topk`` largest) picks how.
"""

from __future__ import annotations

import math

import torch

from ..selection import Selection, SelectionContext, Selector
from .scoring import check_detection_terms, error_vector_score


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
    tasks = ("classification", "detection")

    def __init__(self, every: int = 10, schedule: str = "cosine", box_weight: float = 1.0, reduction: str = "mean",
                 topk: int = 10) -> None:
        super().__init__(every)
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {sorted(SCHEDULES)}, got '{schedule}'")
        check_detection_terms(box_weight, reduction, topk)
        self.schedule = schedule
        self.terms = {"box_weight": float(box_weight), "reduction": reduction, "k": topk}

    def beta(self, epoch: int, total_epochs: int) -> float:
        return SCHEDULES[self.schedule](epoch, total_epochs)

    def select(self, ctx: SelectionContext) -> Selection:
        beta = self.beta(ctx.epoch, ctx.total_epochs)
        if ctx.task == "detection":
            return self._select_images(ctx, beta)
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

    def _select_images(self, ctx: SelectionContext, beta: float) -> Selection:
        terms = ctx.outputs("student")  # one eval pass gives both scores
        evs, ds = terms.evs(**self.terms), terms.ds(**self.terms)
        scores = beta * evs + (1 - beta) * ds
        ctx.log(acs_beta=beta, evs_mean=float(evs.mean()), ds_mean=float(ds.mean()))
        return Selection(ctx.top_k(scores), scores=scores)
