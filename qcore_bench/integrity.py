"""What makes a cell folder trustworthy: the store counts a result only when every check passes.

A folder's name must be the content hash of the config in its ``cell.json``: a backup copy
(``runs/ID.bak``) or another cell's ``cell.json`` copied in would otherwise count one run
twice, or average one method into another's row. ``result.json`` must hold every number the
tables read, as numbers; ``history.jsonl`` one JSON line per epoch the result reports. Each
check returns None, or what is wrong, naming the file, for a one-line warning.
"""

from __future__ import annotations

import json
import math
from typing import Any

from pydantic import ValidationError

from .cells import Cell

# the numbers every table, plot and fair report reads from a result, besides its headline
RESULT_NUMBERS = ("epochs", "selection_seconds", "train_seconds", "samples_trained", "distinct_samples_seen",
                  "train_size", "noisy_selected_frac_mean")
FINITE = ("epochs", "samples_trained", "distinct_samples_seen", "train_size")
# a task's headline: (final value, best over epochs, the history's per-epoch key)
HEADLINES = {"acc": ("final_acc", "best_acc_over_epochs", "test_acc"),
             "mAP": ("final_map", "best_map_over_epochs", "test_map")}


def headline_keys(result: dict[str, Any]) -> tuple[str, str, str]:
    """Classification's top-1 keys, or detection's mAP keys (its results name their metric)."""
    return HEADLINES["mAP" if result.get("metric") == "mAP" or "final_map" in result else "acc"]


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def cell_json_problem(content: Any, folder_name: str) -> str | None:
    """Why this ``cell.json`` content does not belong in a folder of that name (None: it does)."""
    if not isinstance(content, dict) or not isinstance(content.get("config"), dict):
        return "cell.json: expected an object with a 'config' object"
    try:
        cell_id = Cell.model_validate(content["config"]).id
    except ValidationError as exc:
        return f"cell.json: config does not parse ({str(exc).splitlines()[0]})"
    if cell_id != folder_name:
        return (f"cell.json: its config is cell {cell_id}, not {folder_name} (a copied or renamed folder?); "
                "never counted")
    return None


def result_problem(result: Any) -> str | None:
    """Why this ``result.json`` content cannot be tabled (None: it can)."""
    if not isinstance(result, dict):
        return f"result.json: expected a JSON object, got {_shown(result)}"
    final, best, _ = headline_keys(result)
    for key in (final, best, *RESULT_NUMBERS):
        if key not in result:
            return f"result.json: missing '{key}'"
        value = result[key]
        if not _is_number(value) or (key in (final, best, *FINITE) and not math.isfinite(value)):
            finite = key in (final, best, *FINITE)
            return f"result.json: {key}: expected a {'finite ' if finite else ''}number, got {_shown(value)}"
    if result["train_size"] <= 0:
        return f"result.json: train_size: expected > 0, got {_shown(result['train_size'])}"
    for key in ("cost_units", "proxy"):
        value = result.get(key)
        if value is not None and not isinstance(value, dict):
            return f"result.json: {key}: expected an object, got {_shown(value)}"
    units = result.get("cost_units") or {}
    bad = [k for k, v in units.items() if not _is_number(v)]
    if bad:
        return f"result.json: cost_units.{bad[0]}: expected a number, got {_shown(units[bad[0]])}"
    return None


def history_problem(text: str, epochs: int, per_epoch: str = "test_acc") -> str | None:
    """Why ``history.jsonl`` does not hold one line per epoch 0..epochs-1, each with the
    task's ``per_epoch`` number (None: it does)."""
    lines = text.splitlines()
    for i, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            return f"history.jsonl: line {i} is not JSON (truncated?)"
        if not isinstance(entry, dict) or entry.get("epoch") != i - 1 or not _is_number(entry.get(per_epoch)):
            return f"history.jsonl: line {i}: expected epoch {i - 1} with a {per_epoch}, got {_shown(entry)}"
    if len(lines) != epochs:
        return f"history.jsonl: {len(lines)} epochs, result.json reports {epochs} (truncated?)"
    return None
