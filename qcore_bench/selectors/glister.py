"""Glister-ONLINE (Killamsetty et al., AAAI 2021) on last-layer gradients.

Greedily keeps the samples whose one-step update most lowers the loss of a validation
set: gain(e) = eta * <g_e, grad L_val(theta_S)>, with g_e the cross-entropy gradient of
sample e with respect to the last linear layer (weight and bias). After each pick
theta_S <- theta_S - eta * g_e; for a linear head this moves every validation logit
exactly by -eta * (p_e - y_e) * (<h_e, h_v> + 1), and the validation gradient is
recomputed from the moved logits, so later picks account for earlier ones.

Per-sample gradients are never built: g_e = r_e (x) [h_e, 1] with r_e = p_e - onehot(y_e),
and <g_e, G> = r_e^T G [h_e; 1] for the C x (d+1) validation gradient G. Memory is
O(n (C + d)); candidates are scored in chunks.

DeepCore's Glister never applies the update (a misspelled keyword), which makes it a
static per-class top-k of each sample's alignment with the class-mean gradient;
``deepcore_compat=True`` reproduces that, with per-sample (not batch-mean) gradients.
"""

from __future__ import annotations

import heapq
import math

import torch
import torch.nn.functional as F

from ..selection import Selection, SelectionContext
from .scoring import CHUNK_ELEMENTS, ProxyScoreSelector, check_choice, outputs_from

SOURCES = ("proxy", "student", "teacher")

def residuals(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """p - onehot(y): the gradient of per-sample cross-entropy with respect to the logits."""
    return logits.softmax(dim=1) - F.one_hot(labels, logits.shape[1]).to(logits.dtype)


def alignment(resid: torch.Tensor, feats: torch.Tensor, grad_w: torch.Tensor, grad_b: torch.Tensor) -> torch.Tensor:
    """<r_i (x) [h_i, 1], [grad_w | grad_b]> for every row, in chunks (never an n x C(d+1) matrix)."""
    out = torch.empty(len(resid), dtype=resid.dtype, device=resid.device)
    step = max(1, CHUNK_ELEMENTS // max(1, feats.shape[1]))
    for s in range(0, len(resid), step):
        r = resid[s:s + step]
        out[s:s + step] = ((r @ grad_w) * feats[s:s + step]).sum(dim=1) + r @ grad_b
    return out


def mean_gradient(resid: torch.Tensor, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean last-layer gradient over rows: (C x d weight part, C bias part)."""
    m = max(1, len(resid))
    return resid.T @ feats / m, resid.sum(dim=0) / m


class GlisterSelector(ProxyScoreSelector):
    """Glister with the Taylor-updated validation gradient; see the module docstring.

    ``source``: whose outputs give p and h ("proxy": a ``proxy_*`` recipe trained on the
    full data; "student"; "teacher"). ``validation``: "holdout" (``val_fraction`` of the
    training set drawn with the generator, not selected unless a budget needs it) or
    "train" (the whole training set); default "holdout", or "train" under
    ``deepcore_compat``. ``eta``: the Taylor step, by default ``proxy_lr`` (the GLISTER paper's
    inner step is the model's learning rate; with ``source`` student or teacher, give that
    model's). As in the paper and its reference code, theta_S moves by the sum of the chosen
    samples' gradients, so the validation loss after the greedy (logged, beside the one
    before) shows whether the step overshoots. ``greedy``: "stochastic" (each step scores a random sample of
    (pool / budget) * log(1 / epsilon) remaining candidates) or "lazy" (a priority queue
    of stale gains; exact only for non-increasing gains, which the Taylor update does not
    guarantee, so it is an approximation, as in the original code). Balanced: one greedy
    over the whole validation set, each class capped at its budget. Indices come back in
    pick order; ``scores`` are the first-step gains of every sample.
    """

    def __init__(self, source: str = "proxy", eta: float | None = None, greedy: str = "stochastic",
                 epsilon: float = 0.01, validation: str | None = None, val_fraction: float = 0.1,
                 deepcore_compat: bool = False, proxy_epochs: int = 5, proxy_lr: float = 0.05,
                 proxy_optimizer: str = "sgd", proxy_init: str = "scratch", proxy_quantized: bool = False,
                 proxy_schedule: str = "prefix", proxy_horizon: int | None = None) -> None:
        super().__init__(proxy_epochs, proxy_lr, proxy_optimizer, proxy_init, proxy_quantized, 1,
                         proxy_schedule, proxy_horizon)
        check_choice("source", source, SOURCES)
        check_choice("greedy", greedy, ("stochastic", "lazy"))
        if validation is not None:
            check_choice("validation", validation, ("holdout", "train"))
        if eta is None:  # the GLISTER paper's inner step is the model's learning rate
            eta = proxy_lr
        if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not eta > 0:
            raise ValueError(f"eta must be a number > 0, got {eta!r}")
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not 0 < epsilon < 1:
            raise ValueError(f"epsilon must be in (0, 1), got {epsilon!r}")
        if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction!r}")
        if not isinstance(deepcore_compat, bool):
            raise ValueError(f"deepcore_compat must be true or false, got {deepcore_compat!r}")
        self.source, self.eta, self.greedy, self.epsilon = source, float(eta), greedy, float(epsilon)
        self.validation = validation or ("train" if deepcore_compat else "holdout")
        self.val_fraction, self.deepcore_compat = float(val_fraction), deepcore_compat

    def select(self, ctx: SelectionContext) -> Selection:
        out = outputs_from(ctx, self.source, self)
        feats = out.features.float()
        logits = out.logits.float().to(feats.device)
        labels = ctx.labels.to(feats.device)
        resid = residuals(logits, labels)
        n = len(labels)
        val_mask = torch.ones(n, dtype=torch.bool)
        if self.validation == "holdout":
            val_mask[:] = False
            val_mask[torch.randperm(n, generator=ctx.generator)[:min(n - 1, max(1, round(self.val_fraction * n)))]] = True
        ctx.log(glister_val_size=int(val_mask.sum()))
        if self.deepcore_compat:
            return self._static(ctx, resid, feats, labels, val_mask)
        return self._greedy(ctx, logits, resid, feats, labels, val_mask)

    def _static(self, ctx: SelectionContext, resid: torch.Tensor, feats: torch.Tensor, labels: torch.Tensor,
                val_mask: torch.Tensor) -> Selection:
        """DeepCore's effective Glister: alignment with the (class-)mean validation gradient, top-k."""
        if ctx.balanced:
            scores = torch.zeros(len(labels), dtype=resid.dtype, device=resid.device)
            for c in range(ctx.num_classes):
                members = (labels == c).nonzero().squeeze(1)
                held = members[val_mask[members.cpu()].to(members.device)]
                grad_w, grad_b = mean_gradient(resid[held], feats[held])
                scores[members] = alignment(resid[members], feats[members], grad_w, grad_b)
        else:
            held = slice(None) if self.validation == "train" else val_mask.to(resid.device)
            scores = alignment(resid, feats, *mean_gradient(resid[held], feats[held]))
        scores = (self.eta * scores).cpu()
        if self.validation == "holdout":  # held-out samples are chosen only if the budget needs them
            scores[val_mask] = -math.inf
        return Selection(ctx.top_k(scores), scores=scores)

    def _greedy(self, ctx: SelectionContext, logits: torch.Tensor, resid: torch.Tensor, feats: torch.Tensor,
                labels: torch.Tensor, val_mask: torch.Tensor) -> Selection:
        n = len(labels)
        groups = labels.cpu() if ctx.balanced else torch.zeros(n, dtype=torch.long)
        caps = ctx.class_budgets.clone() if ctx.balanced else torch.tensor([ctx.budget])
        held = slice(None) if self.validation == "train" else val_mask.to(feats.device)
        val = _Validation(logits[held], labels[held], feats[held], self.eta)
        pool = ~val_mask if self.validation == "holdout" else torch.ones(n, dtype=torch.bool)
        short = caps > torch.bincount(groups[pool], minlength=len(caps))
        pool |= short[groups]  # a group whose budget exceeds its non-held-out members may use them all
        if self.validation == "holdout":
            ctx.log(glister_groups_using_holdout=int(short.sum()))
        scores = val.gains(resid, feats).cpu()
        loss_before = val.loss()
        ids = pool.nonzero().squeeze(1)
        ids = ids[torch.randperm(len(ids), generator=ctx.generator)]  # a random order breaks ties
        ids = ids[caps[groups[ids]] > 0]  # a class with no budget never enters the greedy
        run = self._lazy if self.greedy == "lazy" else self._stochastic
        picks, evaluated = run(ctx, ids, groups, caps.tolist(), resid, feats, val)
        ctx.log(glister_val_loss=loss_before, glister_val_loss_after_taylor=val.loss(),
                glister_evaluations=evaluated)
        return Selection(torch.tensor(picks, dtype=torch.long), scores=scores)

    def _stochastic(self, ctx: SelectionContext, ids: torch.Tensor, groups: torch.Tensor, left: list[int],
                    resid: torch.Tensor, feats: torch.Tensor, val: _Validation) -> tuple[list[int], int]:
        """Stochastic greedy (Mirzasoleiman et al., 2015): each step scores a random sample of the remaining.

        The sample is drawn with replacement from the remaining candidates (rejecting
        those already taken or of a full class); the candidate array is compacted when
        half of it is dead, so a draw never costs more than twice its size.
        """
        sample = math.ceil(len(ids) / ctx.budget * math.log(1 / self.epsilon))
        gids = groups[ids]
        alive = torch.ones(len(ids), dtype=torch.bool)
        live, picks, evaluated = len(ids), [], 0
        while len(picks) < ctx.budget:
            if 2 * live < len(ids):
                ids, gids, alive = ids[alive], gids[alive], torch.ones(live, dtype=torch.bool)
            if live <= sample:
                trial = alive.nonzero().squeeze(1)
            else:
                draws = torch.randint(len(ids), (math.ceil(sample * len(ids) / live),), generator=ctx.generator)
                trial = draws[alive[draws]]
                if len(trial) == 0:
                    continue
            cand = ids[trial].to(feats.device)
            best = int(trial[int(val.gains(resid[cand], feats[cand]).argmax())])
            evaluated += len(trial)
            e, g = int(ids[best]), int(gids[best])
            picks.append(e)
            alive[best] = False
            live -= 1
            left[g] -= 1
            if left[g] == 0:
                full = alive & (gids == g)
                live -= int(full.sum())
                alive &= ~full
            val.step(resid[e], feats[e])
        return picks, evaluated

    def _lazy(self, ctx: SelectionContext, ids: torch.Tensor, groups: torch.Tensor, left: list[int],
              resid: torch.Tensor, feats: torch.Tensor, val: _Validation) -> tuple[list[int], int]:
        """Lazy greedy (Minoux, 1978): re-score the top of a queue of stale gains until it stays on top.

        Exact when gains only decrease as the set grows; the Taylor update does not
        guarantee that, so here (as in the original Glister code) it is an approximation.
        """
        dev_ids = ids.to(feats.device)
        first = val.gains(resid[dev_ids], feats[dev_ids]).tolist()
        grp = groups.tolist()
        heap = [(-gain, rank, e) for rank, (gain, e) in enumerate(zip(first, ids.tolist()))]
        heapq.heapify(heap)
        picks: list[int] = []
        evaluated = len(heap)
        while len(picks) < ctx.budget:
            _, rank, e = heapq.heappop(heap)
            if left[grp[e]] == 0:
                continue
            gain = float(val.gains(resid[e:e + 1], feats[e:e + 1]))
            evaluated += 1
            if heap and gain < -heap[0][0]:
                heapq.heappush(heap, (-gain, rank, e))
                continue
            picks.append(e)
            left[grp[e]] -= 1
            val.step(resid[e], feats[e])
        return picks, evaluated


class _Validation:
    """The validation set under theta_S: its last-layer logits and mean last-layer gradient."""

    def __init__(self, logits: torch.Tensor, labels: torch.Tensor, feats: torch.Tensor, eta: float) -> None:
        self.logits, self.labels, self.feats, self.eta = logits.clone(), labels, feats, eta
        self.onehot = F.one_hot(labels, logits.shape[1]).to(logits.dtype)
        self.grad_w, self.grad_b = mean_gradient(residuals(self.logits, labels), feats)

    def gains(self, resid: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """eta * <g_e, grad L_val(theta_S)> for each row: the first-order drop of the validation loss."""
        return self.eta * alignment(resid, feats, self.grad_w, self.grad_b)

    def step(self, resid_e: torch.Tensor, feats_e: torch.Tensor) -> None:
        """theta_S <- theta_S - eta * g_e, applied to the validation logits in closed form."""
        self.logits.sub_(self.eta * (self.feats @ feats_e + 1)[:, None] * resid_e[None, :])
        self.grad_w, self.grad_b = mean_gradient(self.logits.softmax(dim=1) - self.onehot, self.feats)

    def loss(self) -> float:
        return float(F.cross_entropy(self.logits, self.labels))
