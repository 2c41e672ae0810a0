"""One cell, everything a researcher asks of it: config, provenance, result, history and log.

Reads only the cell's folder, so it works for cells run by any executor, on any machine, and
for cells that failed or are still running.
"""

from __future__ import annotations

import fnmatch
from typing import Any

import yaml

from .loggers import config_label
from .store import Store, StoreError, read_json

LOG_LINES = 40
HISTORY_COLUMNS = ("epoch", "lr", "train_loss", "test_loss", "test_acc", "selected", "selected_noisy_frac")


class CellNotFound(LookupError):
    """No stored cell, or more than one, matches what the user typed."""


def find_cell(store: Store, query: str) -> str:
    """The one stored cell whose id starts with ``query`` or whose label matches it (a glob)."""
    stored = {cid: config_label(cfg) for cid, cfg in store.stored().items()}
    hits = [cid for cid in stored if cid.startswith(query)] or \
        [cid for cid, label in stored.items() if fnmatch.fnmatchcase(label, query)]
    if not hits:
        raise CellNotFound(f"{store.root}: no stored cell has an id starting with '{query}' or a label matching it "
                           f"({len(stored)} stored; `qcore-bench plan SUITE` lists ids and labels)")
    if len(hits) > 1:
        listed = ", ".join(f"{cid} {stored[cid]}" for cid in sorted(hits)[:3])
        raise CellNotFound(f"{store.root}: '{query}' matches {len(hits)} cells ({listed}{', ...' if len(hits) > 3 else ''}); "
                           "give more of the id or a narrower label")
    return hits[0]


def _number(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else "" if v is None else str(v)


def _history(rows: list[dict[str, Any]]) -> str:
    header = [c for c in HISTORY_COLUMNS if any(c in r for r in rows)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    lines += ["| " + " | ".join(_number(r.get(c)) for c in header) + " |" for r in rows]
    return "\n".join(lines)


def render_cell(store: Store, cell_id: str, log_lines: int = LOG_LINES) -> str:
    """The cell's folder as one report (Markdown)."""
    d = store.dir(cell_id)
    try:
        cell = read_json(d / "cell.json")
    except (StoreError, OSError) as exc:
        cell = {"config": {}, "provenance": {}, "error": str(exc)}
    status = store.status(cell_id)
    reason = store.damage(cell_id) if status == "damaged" else store.read_status(cell_id).get("reason")
    out = [f"# cell {cell_id}  {config_label(cell.get('config', {}))}", "",
           f"status: {status}{f' ({reason})' if reason else ''}  folder: {d}"]
    try:
        result = store.result(cell_id) or {}
    except StoreError as exc:
        result = {}
        out.append(f"result.json: {exc}")
    if result and status == "done":  # a damaged result may lack the numbers: its reason is shown above
        teacher = result.get("teacher", {})
        out.append(f"final acc {result['final_acc']:.2f}%, best over epochs {result['best_acc_over_epochs']:.2f}%, "
                   f"{result.get('epochs')} epochs, train {result.get('train_seconds', 0):.1f}s, selection "
                   f"{result.get('selection_seconds', 0):.1f}s, teacher {teacher.get('test_acc', float('nan')):.2f}% "
                   f"({'cached' if teacher.get('cached') else 'trained here'})")
    provenance = result.get("provenance") or cell.get("provenance") or {}
    out += ["", "## config", "", "```yaml", yaml.safe_dump(cell.get("config", {}), sort_keys=True).rstrip(), "```",
            "", "## provenance", "", "```yaml", yaml.safe_dump(provenance, sort_keys=True).rstrip(), "```"]
    try:
        history = store.history(cell_id)
    except StoreError as exc:
        history = []
        out.append(f"history.jsonl: {exc}")
    out += ["", f"## history ({len(history)} epochs)", "", _history(history) if history else "(no epoch finished)"]
    for name in ("log.txt", "error.txt"):
        path = d / name
        if path.is_file():
            lines = path.read_text(errors="replace").splitlines()
            cut = f", the last {log_lines} of {len(lines)} lines" if len(lines) > log_lines else ""
            out += ["", f"## {name}{cut}", "", "```", *lines[-log_lines:], "```"]
    return "\n".join(out) + "\n"
