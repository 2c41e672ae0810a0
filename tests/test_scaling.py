"""ACS selection time grows linearly in the training-set size n, not faster.

A tiny convolutional student over 3x8x8 images; one ACS call (a real streamed forward pass
of the student, the cached teacher outputs, scores, per-class top-k) at n = 2k, 4k, 8k.
Sizes are visited in alternating order and each time is the median of three calls, so a
loaded shared machine slows all sizes alike; the log-log slope must stay below 1.2
(linear: 1, an n x n step: 2).
"""

from __future__ import annotations

import math
import statistics
import time

import torch
from torch import nn

from qcore_bench.selection import SelectionContext, compute_outputs
from qcore_bench.selectors.acs import ACSSelector


class TinyConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def acs_seconds(n: int, student: nn.Module, teacher: nn.Module) -> float:
    g = torch.Generator().manual_seed(n)
    x, labels = torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g)
    teacher_out = compute_outputs(teacher, lambda: iter(x.split(1024)))  # cached, as the runner does
    ctx = SelectionContext(epoch=5, total_epochs=10, fraction=0.1, labels=labels, num_classes=10, balanced=True,
                           student=student, teacher=teacher,
                           output_fns={"student": lambda: compute_outputs(student, lambda: iter(x.split(1024))),
                                       "teacher": lambda: teacher_out},
                           generator=torch.Generator().manual_seed(0), device=torch.device("cpu"), seed=0)
    start = time.perf_counter()
    sel = ACSSelector().select(ctx)
    seconds = time.perf_counter() - start
    assert len(sel.indices) == ctx.budget
    return seconds


def test_acs_selection_time_is_linear_in_n() -> None:
    torch.manual_seed(0)
    student, teacher = TinyConv(), TinyConv()
    ns = [2000, 4000, 8000]
    acs_seconds(1000, student, teacher)  # warm-up: one-off kernel and allocator costs
    times: dict[int, list[float]] = {n: [] for n in ns}
    for rep in range(3):
        for n in (ns if rep % 2 == 0 else ns[::-1]):
            times[n].append(acs_seconds(n, student, teacher))
    med = [statistics.median(times[n]) for n in ns]
    lx, ly = [math.log(n) for n in ns], [math.log(t) for t in med]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    slope = sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)
    assert slope < 1.2, f"ACS selection time grows as n^{slope:.2f}: {dict(zip(ns, med))}"
