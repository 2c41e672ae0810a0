"""The compute cost model and equal-compute budgets.

Costs are counted in sample forward passes ("units"): a training step on one sample
is 3 units (forward + backward ~ 2 forwards), plus 1 when a distillation teacher runs
on it; one eval-mode scoring pass over the training set is n units; a proxy costs 3
units per trained sample plus n for its final outputs; the teacher's training
(3 per sample) is excluded unless ``include_teacher`` is set.

``per_epoch_fraction`` (the paper's protocol) trains every method for the same number
of epochs on the same number of samples per epoch. ``total_compute`` gives every
method the cost of that protocol for *random* selection at the same fraction: methods
that spend on scoring or proxies get fewer training epochs. The plan is revised after
every selection (the learning-rate schedule follows it), because a selector's cost is
known only once it has run.
"""

from __future__ import annotations

from typing import Callable

TRAIN_UNITS = 3


def train_units(samples: int, kd: bool) -> int:
    return samples * (TRAIN_UNITS + (1 if kd else 0))


def plan_epochs(*, epochs: int, per_epoch: int, kd: bool, spent: int, per_selection: int,
                due: Callable[[int], bool], start: int = 0) -> int:
    """The most epochs whose total cost stays within the random baseline's (at least start + 1).

    Called after each selection at epoch ``start``: ``spent`` is every unit used so far
    (training, selections, proxies, the teacher if counted); later re-selections are
    assumed to cost ``per_selection`` each, the cost of the one just made, so a plan
    that guessed wrong is corrected at the next selection.
    """
    allowed = train_units(epochs * per_epoch, kd)
    for e in range(epochs, start, -1):
        reselections = sum(due(t) for t in range(start + 1, e))
        if train_units((e - start) * per_epoch, kd) + spent + reselections * per_selection <= allowed:
            return e
    return start + 1
