"""Progress of the long steps inside a cell (teacher and proxy training), for whoever shows it.

The runner's epoch callback covers the student. The teacher and the proxies are trained deep
inside the cache code, so they report here instead of through a callback threaded through
every layer: the console progress shows these events, and ``run-cell`` prints them on
stderr (the local pool keeps that in the cell's log.txt and relays it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

LOGGER = logging.getLogger("qcore_bench.progress")
LOGGER.setLevel(logging.INFO)
LOGGER.propagate = False  # shown by the progress handlers only, never twice through the root logger


@dataclass(frozen=True)
class Phase:
    """One step of a teacher's or proxy's training: started (epoch 0), an epoch done, or finished."""

    what: str  # "teacher resnet8", "proxy 1 of 1 (10 epochs)"
    epoch: int
    total: int
    seconds: float | None = None  # set when finished
    detail: str = ""

    @property
    def finished(self) -> bool:
        return self.seconds is not None

    def __str__(self) -> str:
        if self.finished:
            return f"{self.what}: trained in {self.seconds:.1f}s{f', {self.detail}' if self.detail else ''}"
        if self.epoch == 0:
            return f"{self.what}: training, {self.total} epochs"
        return f"{self.what}: epoch {self.epoch}/{self.total}"


def report(what: str, epoch: int, total: int, seconds: float | None = None, detail: str = "") -> None:
    """Tell whoever listens how a teacher or proxy training goes; nothing happens without a listener."""
    if LOGGER.handlers:
        phase = Phase(what, epoch, total, seconds, detail)
        LOGGER.info("%s", phase, extra={"phase": phase})


class PhaseHandler(logging.Handler):
    """Calls ``show(phase)`` for every event while installed (``with PhaseHandler(show):``)."""

    def __init__(self, show: Callable[[Phase], None]) -> None:
        super().__init__()
        self.show = show

    def emit(self, record: logging.LogRecord) -> None:
        phase = getattr(record, "phase", None)
        if phase is not None:
            self.show(phase)

    def __enter__(self) -> "PhaseHandler":
        LOGGER.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        LOGGER.removeHandler(self)
