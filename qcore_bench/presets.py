"""Method presets: named selector configurations shipped as YAML in qcore_bench/methods/.

A suite names a preset ("acs_linear") or a selector with inline parameters; a preset's
parameters can be overridden inline. Presets ship inside the package so that they
work for non-editable installs too.
"""

from __future__ import annotations

import functools
from importlib import resources
from typing import Any

import yaml

DEEPCORE_PREFIX = "deepcore:"  # "deepcore:Uncertainty" is selector deepcore with params {method: Uncertainty}


@functools.cache
def presets() -> dict[str, dict[str, Any]]:
    """name -> {"description", "selector", "params"}, read once."""
    found = {}
    for f in resources.files("qcore_bench").joinpath("methods").iterdir():
        if f.name.endswith(".yaml"):
            found[f.name.removesuffix(".yaml")] = yaml.safe_load(f.read_text())
    return found


def resolve_method(entry: Any) -> Any:
    """Expand a grid method entry that names a preset or ``deepcore:<Method>``; the rest is left to validation."""
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict) or entry.get("selector"):
        return entry
    name = entry.get("name")
    if isinstance(name, str) and name.startswith(DEEPCORE_PREFIX):
        preset = {"selector": "deepcore", "params": {"method": name.removeprefix(DEEPCORE_PREFIX)}}
    elif name in presets():
        preset = presets()[name]
    else:
        return entry
    params = entry.get("params", {})
    if not isinstance(params, dict):
        return entry  # validation reports the type error
    return {**entry, "selector": preset["selector"], "params": {**preset["params"], **params}}
