"""What several selectors share: per-sample scores, the proxy-score base class, where a
selector's outputs come from, and the chunk size of streamed passes.

Selectors import the selector contract (``qcore_bench.selection``) and this module only,
never the runner, the store or the proxy's training.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..selection import REDUCTIONS, Outputs, ProxyRun, SelectionContext, Selector

OPTIMIZERS = ("sgd", "adam")
INITS = ("scratch", "teacher")
PROXY_SCHEDULES = ("prefix", "complete")
PREFIX_HORIZON = 10  # a prefix proxy stops at 1/10 of its schedule: EL2N's epoch 20 of 200
CHUNK_ELEMENTS = 1 << 22  # rows per chunk * width: about 16 MB of float32 temporaries


def error_vector_score(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """||p - onehot(y)||_2 per sample."""
    return (probs - F.one_hot(labels, probs.shape[1]).to(probs.dtype)).norm(dim=1)


def check_detection_terms(box_weight: float, reduction: str, topk: int) -> None:
    """The per-image reduction parameters of a detection score (see ``AnchorTerms``)."""
    if isinstance(box_weight, bool) or not isinstance(box_weight, (int, float)) or box_weight < 0:
        raise ValueError(f"box_weight must be a number >= 0, got {box_weight!r}")
    check_choice("reduction", reduction, REDUCTIONS)
    _positive_int("topk", topk)


def check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    """Raise a ValueError that names the parameter and the allowed values."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


class ProxyScoreSelector(Selector):
    """A static selector whose scores come from proxy runs; holds and validates the proxy recipe.

    The recipe is explicit so that two selectors asking for the same one share its
    training (``ctx.proxy`` caches by recipe), and so that a suite can vary it.
    ``proxy_schedule``: "prefix" (default) trains the first ``proxy_epochs`` of a cosine
    schedule ``proxy_horizon`` epochs long (default 10 x proxy_epochs) and scores that
    snapshot, before the learning rate has decayed, as the EL2N paper scores at epoch 20 of
    200; "complete" anneals the schedule to ~0 within ``proxy_epochs`` (a more converged
    proxy, the behaviour before the prefix default).
    """

    def __init__(self, proxy_epochs: int = 10, proxy_lr: float = 0.05, proxy_optimizer: str = "sgd",
                 proxy_init: str = "scratch", proxy_quantized: bool = False, repeats: int = 1,
                 proxy_schedule: str = "prefix", proxy_horizon: int | None = None) -> None:
        super().__init__()
        _positive_int("proxy_epochs", proxy_epochs)
        if isinstance(proxy_lr, bool) or not isinstance(proxy_lr, (int, float)) or not proxy_lr > 0:
            raise ValueError(f"proxy_lr must be a number > 0, got {proxy_lr!r}")
        check_choice("proxy_optimizer", proxy_optimizer, OPTIMIZERS)
        check_choice("proxy_init", proxy_init, INITS)
        if not isinstance(proxy_quantized, bool):
            raise ValueError(f"proxy_quantized must be true or false, got {proxy_quantized!r}")
        _positive_int("repeats", repeats)
        check_choice("proxy_schedule", proxy_schedule, PROXY_SCHEDULES)
        if proxy_horizon is not None:
            _positive_int("proxy_horizon", proxy_horizon)
            if proxy_schedule == "complete":
                raise ValueError("proxy_horizon applies to proxy_schedule 'prefix' only")
            if proxy_horizon < proxy_epochs:
                raise ValueError(f"proxy_horizon ({proxy_horizon}) must be >= proxy_epochs ({proxy_epochs})")
        self.proxy_epochs, self.proxy_lr, self.proxy_optimizer = proxy_epochs, float(proxy_lr), proxy_optimizer
        self.proxy_init, self.proxy_quantized, self.repeats = proxy_init, proxy_quantized, repeats
        self.proxy_horizon = (None if proxy_schedule == "complete"
                              else proxy_horizon or PREFIX_HORIZON * proxy_epochs)

    def proxies(self, ctx: SelectionContext) -> list[ProxyRun]:
        """The ``repeats`` proxy runs of this selector's recipe (trained once, then shared)."""
        return ctx.proxy(repeats=self.repeats, epochs=self.proxy_epochs, lr=self.proxy_lr,
                         optimizer=self.proxy_optimizer, init=self.proxy_init, quantized=self.proxy_quantized,
                         horizon=self.proxy_horizon)


def outputs_from(ctx: SelectionContext, source: str, selector: ProxyScoreSelector) -> Outputs:
    """The outputs a selector scores with: its proxy's, or the live student's / the teacher's."""
    return selector.proxies(ctx)[0].outputs if source == "proxy" else ctx.outputs(source)
