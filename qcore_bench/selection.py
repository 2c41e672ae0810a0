"""The selector plugin contract: Selector, SelectionContext, Selection.

This is qcore-bench's public API for new selectors. A selector reads a
``SelectionContext`` (everything it may see, nothing it may change) and returns a
``Selection``; the runner checks the selection before training on it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Any, Callable, ClassVar, Iterator, Literal

import torch
from pydantic import Field
from torch import nn

from .recipes import Recipe


class SelectionError(ValueError):
    """A selector returned something the runner cannot train on."""


@dataclass(frozen=True)
class Outputs:
    """A model's eval-mode outputs over the whole (un-augmented) training set."""

    logits: torch.Tensor  # [n, classes]
    features: torch.Tensor  # [n, d], penultimate layer

    @property
    def probs(self) -> torch.Tensor:
        return self.logits.softmax(dim=1)


REDUCTIONS = ("mean", "sum", "topk")


def reduce_per_image(values: torch.Tensor, image: torch.Tensor, n: int, reduction: str = "mean",
                     k: int = 10) -> torch.Tensor:
    """Per-image reduction of per-anchor ``values`` (``image`` holds each value's image index):
    "mean", "sum", or "topk" (the mean of the ``k`` largest); 0 for an image without values."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {list(REDUCTIONS)}, got {reduction!r}")
    values, image = values.float(), image.long()
    out = torch.zeros(n, dtype=torch.float32, device=values.device)
    if values.numel() == 0:
        return out
    if reduction == "topk":  # keep each image's k largest: sort by value, then stably by image
        by_value = torch.sort(values, descending=True, stable=True).indices
        grouped = by_value[torch.sort(image[by_value], stable=True).indices]
        img = image[grouped]
        rank = torch.arange(len(img), device=img.device) - torch.searchsorted(img, img, right=False)
        keep = grouped[rank < k]
        values, image = values[keep], image[keep]
    out.index_add_(0, image, values)
    if reduction != "sum":
        count = torch.zeros(n, dtype=torch.float32, device=values.device).index_add_(
            0, image, torch.ones_like(values))
        out = out / count.clamp(min=1)
    return out


@dataclass(frozen=True)
class AnchorTerms:
    """A detector's per-anchor terms from one eval-mode pass over the un-augmented training images,
    ragged per image (each term beside the index of its image): what detection selectors score.

    ``evs_*``: the anchors matched to a ground-truth box (IoU >= 0.5): ``evs_cls`` =
    ||sigmoid(class logits) - onehot(y)||_2 with y the (noisy) training label, ``evs_box`` = the L1
    error of the box regression against its target. ``ds_*``: the anchors the FP teacher is
    confident about: ||p - p_T||_2 and the L1 distance of the two regressions. ``entropy``: the
    summed binary entropy of the class probabilities on the model's candidate anchors (max
    probability >= 0.05, torchvision's score threshold).
    """

    n: int
    evs_cls: torch.Tensor
    evs_box: torch.Tensor
    evs_image: torch.Tensor
    ds_cls: torch.Tensor
    ds_box: torch.Tensor
    ds_image: torch.Tensor
    entropy: torch.Tensor
    entropy_image: torch.Tensor

    def evs(self, box_weight: float = 1.0, reduction: str = "mean", k: int = 10) -> torch.Tensor:
        """d_EVS per image: the reduction of class term + ``box_weight`` x box term over matched anchors."""
        return reduce_per_image(self.evs_cls + box_weight * self.evs_box, self.evs_image, self.n, reduction, k)

    def ds(self, box_weight: float = 1.0, reduction: str = "mean", k: int = 10) -> torch.Tensor:
        """d_DS per image: the same over the teacher's confident anchors."""
        return reduce_per_image(self.ds_cls + box_weight * self.ds_box, self.ds_image, self.n, reduction, k)

    def uncertainty(self, reduction: str = "mean", k: int = 10) -> torch.Tensor:
        """Mean (or other reduction of the) classification entropy per image over its candidate anchors."""
        return reduce_per_image(self.entropy, self.entropy_image, self.n, reduction, k)


class ProxyRecipe(Recipe):
    """How a proxy is trained: a training recipe, plus where it starts, whether it is quantized,
    and the length of the learning-rate schedule it follows.

    ``horizon`` None: the schedule spans the proxy's ``epochs`` (it anneals to ~0 by the end).
    ``horizon`` > epochs: the proxy trains the first ``epochs`` of a ``horizon``-epoch schedule
    and is scored there, as EL2N scores at epoch 20 of a 200-epoch run.
    """

    epochs: Annotated[int, Field(gt=0)] = 10
    init: Literal["scratch", "teacher"] = "scratch"
    quantized: bool = False  # True: LSQ at the cell's bits
    horizon: Annotated[int, Field(gt=0)] | None = None


@dataclass(frozen=True)
class ProxyRun:
    """One proxy's record over the training set (n samples, E epochs), as selectors read it."""

    correct: torch.Tensor  # bool [E, n]: prediction right at the sample's visit, before the update
    losses: torch.Tensor  # float [E, n]: per-sample loss at the visit
    outputs: Outputs | AnchorTerms  # eval-mode outputs on the un-augmented training set after training
    samples: int  # sample passes spent training it
    seconds: float  # wall time of its training, wherever it was trained
    cached: bool
    key: str = ""  # what identifies it in the cache: cells that share a proxy share its key


@dataclass(frozen=True)
class Selection:
    """The training subset for the next epochs; weights and scores are optional extras."""

    indices: torch.Tensor
    weights: torch.Tensor | None = None
    scores: torch.Tensor | None = None


class Selector:
    """Base class of every selector.

    ``adaptive = False``: chosen once before epoch 0. ``adaptive = True``: chosen again
    every ``every`` epochs. ``uses_fraction = False`` marks selectors (``full``) that
    ignore the kept-fraction axis of a suite. ``variable_budget = True`` lets a
    selector return fewer or more than ``ctx.budget`` samples. ``tasks`` lists the tasks
    (``qcore_bench.tasks``) whose outputs the selector knows how to score; a suite that
    pairs it with another task is refused before anything runs.
    """

    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    adaptive: ClassVar[bool] = False
    uses_fraction: ClassVar[bool] = True
    variable_budget: ClassVar[bool] = False

    def __init__(self, every: int = 10) -> None:
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.every = every

    def due(self, epoch: int) -> bool:
        """Whether the runner must call ``select`` before training epoch ``epoch``."""
        return epoch == 0 or (self.adaptive and epoch % self.every == 0)

    def select(self, ctx: "SelectionContext") -> Selection:
        raise NotImplementedError


def class_budgets(labels: torch.Tensor, num_classes: int, budget: int, generator: torch.Generator) -> torch.Tensor:
    """Split ``budget`` over classes in proportion to their sizes, summing exactly to it.

    Largest-remainder apportionment; equal remainders are ordered by the generator,
    never by class index.
    """
    counts = torch.bincount(labels.cpu(), minlength=num_classes).double()
    quota = counts * budget / counts.sum()
    base = quota.floor().long()
    short = budget - int(base.sum())
    if short > 0:
        order = torch.randperm(num_classes, generator=generator)
        rema = (quota - base)[order]
        # stable sort keeps the random order among equal remainders
        picks = order[torch.sort(rema, descending=True, stable=True).indices[:short]]
        base[picks] += 1
    return torch.minimum(base, counts.long())


def top_k(scores: torch.Tensor, k: int | torch.Tensor, generator: torch.Generator, *,
          labels: torch.Tensor | None = None, largest: bool = True) -> torch.Tensor:
    """Indices of the ``k`` best scores, per class when ``labels`` is given.

    ``k`` is an int, or a per-class tensor of budgets with ``labels``. Ties are broken
    by a random permutation from ``generator``, not by position. Two stable sorts, no
    Python loop over samples or classes.
    """
    n = scores.numel()
    perm = torch.randperm(n, generator=generator).to(scores.device)
    by_score = perm[torch.sort(scores[perm], descending=largest, stable=True).indices]
    if labels is None:
        return by_score[: int(k)]
    ks = torch.as_tensor(k, device=scores.device)
    lab = labels.to(scores.device)[by_score]
    grouped = torch.sort(lab, stable=True)
    starts = torch.searchsorted(grouped.values, grouped.values, right=False)
    rank = torch.arange(n, device=scores.device) - starts
    keep = rank < ks[grouped.values]
    return by_score[grouped.indices[keep]]


@torch.no_grad()
def compute_outputs(model: nn.Module, batches: Callable[[], Iterator[torch.Tensor]]) -> Outputs:
    """One streamed eval-mode forward pass: the cost floor of a score-based selector."""
    was_training = model.training
    model.eval()
    logits, feats = [], []
    try:
        for x in batches():
            f = model.features(x)
            feats.append(f)
            logits.append(model.fc(f))
    finally:
        model.train(was_training)
    return Outputs(torch.cat(logits).float(), torch.cat(feats).float())


class SelectionContext:
    """What a selector may read at one selection call."""

    def __init__(self, *, epoch: int, total_epochs: int, fraction: float, labels: torch.Tensor,
                 num_classes: int, balanced: bool, student: nn.Module, teacher: nn.Module,
                 output_fns: dict[str, Callable[[], Outputs]], generator: torch.Generator,
                 device: torch.device, seed: int,
                 proxy_fn: Callable[[ProxyRecipe, int], ProxyRun] | None = None,
                 images_fn: Callable[[], torch.Tensor] | None = None, task: str = "classification") -> None:
        self.epoch = epoch
        self.task = task
        self.total_epochs = total_epochs
        self.fraction = fraction
        self._labels = labels
        self.num_classes = num_classes
        self.balanced = balanced
        self.student = student
        self.teacher = teacher
        self.generator = generator
        self.device = device
        self.seed = seed
        self._output_fns = output_fns
        self._proxy_fn = proxy_fn
        self._images_fn = images_fn
        self._outputs: dict[str, Outputs] = {}
        self.metrics: dict[str, float] = {}
        self.budget = max(1, round(fraction * len(labels)))
        self.class_budgets = class_budgets(labels, num_classes, self.budget, generator) if balanced else None
        if self.class_budgets is not None:
            self.budget = int(self.class_budgets.sum())
        self.forward_seconds = 0.0
        self.proxy_seconds = 0.0

    def __len__(self) -> int:
        return len(self._labels)

    @property
    def labels(self) -> torch.Tensor:
        """The labels training sees (noisy where noise was injected); a copy."""
        return self._labels.clone()

    def outputs(self, which: str) -> Any:
        """Outputs of "student" or "teacher" on the un-augmented training set, computed once:
        ``Outputs`` for classification, ``AnchorTerms`` for detection (``ctx.task``)."""
        if which not in self._output_fns:
            raise KeyError(f"outputs('{which}'): expected one of {sorted(self._output_fns)}")
        if which not in self._outputs:
            start = time.perf_counter()
            self._outputs[which] = self._output_fns[which]()
            self.forward_seconds += time.perf_counter() - start
        return self._outputs[which]

    def train_images(self) -> torch.Tensor:
        """The whole training set, normalised and un-augmented, as one float [n, C, H, W] CPU tensor.

        For selectors that run their own models on the images (the DeepCore adapter); it
        materialises the set in memory, so only small-image data sets suit it.
        """
        if self._images_fn is None:
            raise RuntimeError("this context has no training images (SelectionContext built without images_fn)")
        return self._images_fn()

    def proxy(self, repeats: int = 1, **recipe: Any) -> list[ProxyRun]:
        """``repeats`` independently seeded proxy runs.

        ``recipe`` holds ``ProxyRecipe`` fields: epochs, optimizer, lr, init
        ("scratch" | "teacher"), quantized, horizon, ... Runs are cached by what determines
        them, so selectors and fractions that ask for the same recipe share one training.
        """
        if self._proxy_fn is None:
            raise RuntimeError("this context has no proxy trainer")
        spec = ProxyRecipe(**recipe)
        start = time.perf_counter()
        runs = [self._proxy_fn(spec, r) for r in range(repeats)]
        self.proxy_seconds += time.perf_counter() - start
        return runs

    def top_k(self, scores: torch.Tensor, largest: bool = True) -> torch.Tensor:
        """The budgeted selection by score: per class when balanced, seeded tie-breaking."""
        if self.balanced:
            return top_k(scores, self.class_budgets, self.generator, labels=self._labels, largest=largest)
        return top_k(scores, self.budget, self.generator, largest=largest)

    def log(self, **metrics: float) -> None:
        """Record selector statistics into this epoch's history line."""
        self.metrics.update({k: float(v) for k, v in metrics.items()})


def validate_selection(sel: object, *, n: int, budget: int, name: str, variable_budget: bool) -> Selection:
    """Check a selector's answer; the error names the selector and what was wrong."""
    if not isinstance(sel, Selection):
        raise SelectionError(f"selector '{name}' returned {type(sel).__name__}, expected a Selection")
    idx = sel.indices
    if not isinstance(idx, torch.Tensor) or idx.dim() != 1 or idx.dtype not in (torch.int64, torch.int32):
        raise SelectionError(f"selector '{name}': indices must be a 1-D integer tensor")
    if idx.numel() == 0:
        raise SelectionError(f"selector '{name}' selected no samples")
    if int(idx.min()) < 0 or int(idx.max()) >= n:
        raise SelectionError(f"selector '{name}': indices out of range [0, {n})")
    if torch.unique(idx).numel() != idx.numel():
        raise SelectionError(f"selector '{name}': indices are not unique")
    if not variable_budget and idx.numel() != budget:
        raise SelectionError(f"selector '{name}' selected {idx.numel()} samples, budget is {budget}")
    if sel.weights is not None and sel.weights.shape != idx.shape:
        raise SelectionError(f"selector '{name}': weights must have one value per selected index")
    return Selection(idx.long().cpu(), None if sel.weights is None else sel.weights.float().cpu(),
                     None if sel.scores is None else sel.scores.float().cpu())
