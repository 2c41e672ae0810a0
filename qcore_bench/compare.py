"""Two results folders side by side: the cells they share, their numbers, and how far apart.

Cells are matched by id, the hash of everything that sets their numbers, so the same suite run
by two code versions, on two machines or with two thread counts lines up cell by cell. Each
shared cell is compared on its final and best accuracy and on every epoch's test accuracy and
losses (the history, where a difference starts); provenance keys that differ (torch, device,
commit, threads) are listed, since they are the usual reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .integrity import headline_keys
from .loggers import config_label
from .store import Store

EPOCH_KEYS = ("test_loss", "train_loss")  # besides the headline's per-epoch key (test_acc, or test_map)
PROVENANCE_KEYS = ("torch", "numpy", "python", "device", "device_name", "cpu_threads", "host")


@dataclass(frozen=True)
class CellDiff:
    """One cell found done in both folders."""

    id: str
    label: str
    final: tuple[float, float]
    best: tuple[float, float]
    epoch_delta: float  # the largest |difference| of a per-epoch test accuracy (points)
    first_epoch: int | None  # the first epoch whose record differs at all; None: histories identical

    @property
    def delta(self) -> float:
        return self.final[1] - self.final[0]

    def verdict(self, tolerance: float) -> str:
        if self.first_epoch is None and self.final[0] == self.final[1] and self.best[0] == self.best[1]:
            return "identical"
        worst = max(abs(self.delta), abs(self.best[1] - self.best[0]), self.epoch_delta)
        return "within" if worst <= tolerance else "DIFFERS"


@dataclass
class Comparison:
    cells: list[CellDiff] = field(default_factory=list)
    only: tuple[list[str], list[str]] = field(default_factory=lambda: ([], []))
    provenance: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)

    def differing(self, tolerance: float) -> list[CellDiff]:
        return [c for c in self.cells if c.verdict(tolerance) == "DIFFERS"]


def _provenance_value(prov: dict[str, Any], key: str) -> str:
    return str(prov.get(key, "?")) if key != "commit" else str((prov.get("qcore_bench") or {}).get("commit", "?"))[:10]


def compare(a: Store, b: Store) -> Comparison:
    """Match the finished cells of two folders by id and measure their differences."""
    ra, rb = ({r["id"]: r for r in s.records()} for s in (a, b))
    out = Comparison(only=(sorted(ra.keys() - rb.keys()), sorted(rb.keys() - ra.keys())))
    seen: dict[str, tuple[set[str], set[str]]] = {}
    for cid in sorted(ra.keys() & rb.keys()):
        x, y = ra[cid]["result"], rb[cid]["result"]
        final, best, per_epoch = headline_keys(x)  # top-1, or mAP for a detection cell
        hx, hy = a.history(cid), b.history(cid)
        gaps = [abs(p.get(per_epoch, math.nan) - q.get(per_epoch, math.nan)) for p, q in zip(hx, hy)]
        first = next((e for e, (p, q) in enumerate(zip(hx, hy))
                      if any(p.get(k) != q.get(k) for k in (per_epoch, *EPOCH_KEYS))), None)
        if first is None and len(hx) != len(hy):
            first = min(len(hx), len(hy))
        out.cells.append(CellDiff(cid, config_label(ra[cid]["config"]), (x[final], y.get(final, math.nan)),
                                  (x[best], y.get(best, math.nan)),
                                  max(gaps, default=0.0), first))
        for key in (*PROVENANCE_KEYS, "commit"):
            pair = seen.setdefault(key, (set(), set()))
            pair[0].add(_provenance_value(x.get("provenance", {}), key))
            pair[1].add(_provenance_value(y.get("provenance", {}), key))
    out.provenance = {k: (sorted(u), sorted(v)) for k, (u, v) in seen.items() if u != v}
    return out


def render(cmp: Comparison, names: tuple[str, str], tolerance: float, every: bool = False) -> str:
    """A Markdown report: a summary line, differing provenance, and a row per cell (``every``) or per
    cell that is not identical."""
    a, b = names
    counts = {v: sum(c.verdict(tolerance) == v for c in cmp.cells) for v in ("identical", "within", "DIFFERS")}
    lines = [f"{len(cmp.cells)} cells in both: {counts['identical']} identical, {counts['within']} within "
             f"{tolerance:g} points, {counts['DIFFERS']} differ by more; {len(cmp.only[0])} only in {a}, "
             f"{len(cmp.only[1])} only in {b}"]
    for key, (u, v) in cmp.provenance.items():
        lines.append(f"provenance {key}: {', '.join(u)} ({a}) vs {', '.join(v)} ({b})")
    rows = [c for c in cmp.cells if every or c.verdict(tolerance) != "identical"]
    if rows:
        lines += ["", f"| cell | label | final {a} | final {b} | Δ final | max Δ epoch acc | first differing epoch | verdict |",
                  "|---|---|---:|---:|---:|---:|---:|---|"]
        lines += [f"| {c.id} | {c.label} | {c.final[0]:.2f} | {c.final[1]:.2f} | {c.delta:+.2f} | {c.epoch_delta:.2f} | "
                  f"{'–' if c.first_epoch is None else c.first_epoch} | {c.verdict(tolerance)} |" for c in rows]
    return "\n".join(lines) + "\n"
