"""Method presets: named selector configurations, one YAML file each.

The built-in presets live in the repository's top-level ``methods/`` folder, readable and
copyable (the package's ``qcore_bench/methods`` links to it, so a wheel ships them). Users
add their own in a ``methods/`` folder beside a suite and in the folders named by
``$QCORE_METHODS`` (separated by ``os.pathsep``). Two presets with one name are an error
that names both files: a suite must never depend on which folder was read first.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

DEEPCORE_PREFIX = "deepcore:"  # "deepcore:Uncertainty" is selector deepcore with params {method: Uncertainty}
ENV = "QCORE_METHODS"


class PresetError(ValueError):
    """A preset folder or file that cannot be used; str() is the one-line message."""


@dataclass(frozen=True)
class Preset:
    name: str
    selector: str
    params: dict[str, Any]
    description: str
    source: str  # "built-in", or the file it came from


def method_dirs(suite: str | Path | None = None) -> tuple[Path, ...]:
    """The folders presets are read from: the built-in one, $QCORE_METHODS, and ``methods/`` beside ``suite``."""
    dirs: list[Path] = []
    for entry in os.environ.get(ENV, "").split(os.pathsep):
        if entry.strip():
            path = Path(entry).expanduser()
            if not path.is_dir():
                raise PresetError(f"${ENV}: {entry}: not a folder")
            dirs.append(path)
    if suite is not None and (Path(suite).parent / "methods").is_dir():
        dirs.append(Path(suite).parent / "methods")
    return tuple(dirs)


def _read(path: Path, source: str) -> Preset:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise PresetError(f"{path}: unreadable method preset ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or not isinstance(data.get("selector"), str):
        raise PresetError(f"{path}: selector: expected the name of a selector, e.g. 'selector: acs'")
    params = data.get("params") or {}
    if not isinstance(params, dict):
        raise PresetError(f"{path}: params: expected a mapping of selector parameters")
    unknown = set(data) - {"selector", "params", "description"}
    if unknown:
        raise PresetError(f"{path}: {sorted(unknown)[0]}: unknown key; expected selector, params, description")
    return Preset(path.stem, data["selector"], params, str(data.get("description", "")), source)


@functools.cache
def _presets(dirs: tuple[Path, ...], stamps: tuple[int, ...]) -> dict[str, Preset]:
    builtin = resources.files("qcore_bench") / "methods"
    files = [(Path(str(f)), "built-in") for f in builtin.iterdir() if f.name.endswith(".yaml")]
    seen_files = {p.resolve() for p, _ in files}
    for d in dirs:
        for f in sorted(d.glob("*.yaml")):
            if f.resolve() not in seen_files:  # a suite beside the built-in folder reads it once
                seen_files.add(f.resolve())
                files.append((f, str(f)))
    found: dict[str, Preset] = {}
    for path, source in sorted(files, key=lambda x: (x[1] != "built-in", str(x[0]))):
        preset = _read(path, source)
        if preset.name in found:
            first = found[preset.name].source
            first = f"the built-in {preset.name}.yaml" if first == "built-in" else first
            raise PresetError(f"method preset '{preset.name}' is defined twice: {first} and {path}; rename one")
        found[preset.name] = preset
    return found


def presets(suite: str | Path | None = None) -> dict[str, Preset]:
    """name -> Preset, from every folder that applies to ``suite`` (read again only when a folder changed)."""
    dirs = method_dirs(suite)
    return _presets(dirs, tuple(d.stat().st_mtime_ns for d in dirs))


def resolve_method(entry: Any, suite: str | Path | None = None) -> Any:
    """Expand a grid method entry that names a preset or ``deepcore:<Method>``; the rest is left to validation."""
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict) or entry.get("selector"):
        return entry
    name = entry.get("name")
    known = presets(suite)
    if isinstance(name, str) and name.startswith(DEEPCORE_PREFIX):
        selector, preset_params = "deepcore", {"method": name.removeprefix(DEEPCORE_PREFIX)}
    elif name in known:
        selector, preset_params = known[name].selector, known[name].params
    else:
        return entry
    params = entry.get("params", {})
    if not isinstance(params, dict):
        return entry  # validation reports the type error
    return {**entry, "selector": selector, "params": {**preset_params, **params}}
