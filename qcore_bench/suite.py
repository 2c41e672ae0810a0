"""Suite YAML -> validated ``Suite`` -> list of ``Cell``.

A suite is a base recipe plus a grid; a cell is one fully resolved run with a stable
id. Every error is one line that names the file, the key path and what was expected;
nothing runs and nothing is written before the whole suite validated. This module
reads and checks the files; the schema is in ``schema``, the cells in ``cells``.
"""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from .cells import Cell, expand
from .presets import PresetError, presets, resolve_method
from .registry import UnknownNameError, did_you_mean, registry
from .schema import DatasetSpec, ModelSpec, Suite, SuiteError, listify, parse_bits
from .tasks import suite_task_error

__all__ = ["Cell", "DatasetSpec", "ModelSpec", "Suite", "SuiteError", "apply_overrides", "expand", "load_suite",
           "parse_bits"]



def _read_yaml(path: Path, key: str = "") -> dict[str, Any]:
    where = f"{path}: {key}: " if key else f"{path}: "
    if not path.is_file():
        raise SuiteError(f"{where}file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}: " if mark else ""
        raise SuiteError(f"{path}: {line}invalid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(data, dict):
        raise SuiteError(f"{path}: expected a mapping of keys at the top level")
    return data


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _load_raw(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = path.resolve() if path.exists() else path
    if path in seen:
        raise SuiteError(f"{seen[-1]}: include: includes itself through {path}")
    data = _read_yaml(path, "include" if seen else "")
    inc = data.pop("include", None)
    if inc is None:
        return data
    if not isinstance(inc, str):
        raise SuiteError(f"{path}: include: expected a file path, got {type(inc).__name__}")
    parent = _load_raw(path.parent / inc, (*seen, path))
    return _merge(parent, data)


def _parse_set(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise SuiteError(f"--set {item}: expected KEY=VALUE, e.g. train.epochs=3")
    key, value = item.split("=", 1)
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    for item in overrides:
        keys, value = _parse_set(item)
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise SuiteError(f"--set {item}: '{k}' is not a mapping")
        node[keys[-1]] = value
    return out


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Valid key names of the model that holds the key at ``loc`` (for suggestions)."""
    model: Any = Suite
    for part in loc[:-1]:
        if isinstance(part, int) or not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = field.annotation
        while get_origin(model) in (list, Annotated):
            model = get_args(model)[0]
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _error_line(file: str, err: dict[str, Any]) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function"))))
    key = _path(loc)
    if err["type"] == "extra_forbidden":
        return f"{file}: {key}: unknown key '{loc[-1]}'{did_you_mean(str(loc[-1]), _fields_at(loc))}"
    if err["type"] == "missing":
        return f"{file}: {key}: required key is missing"
    msg = err["msg"].removeprefix("Value error, ")
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f", got {got!r}"
    return f"{file}: {key}: {msg[0].lower() + msg[1:]}{shown if 'got' not in msg else ''}"


def _check_names(suite: Suite, file: str) -> None:
    """Registry names and plugin parameters: only knowable once the grid is parsed."""
    g = suite.grid
    for i, ds in enumerate(g.dataset):
        key = f"{file}: grid.dataset[{i}]"
        try:
            loader = registry("datasets").get(ds.name)
        except UnknownNameError as exc:
            raise SuiteError(f"{key}.name: {exc}") from None
        _bind(loader, ds.params, f"{key}.params", skip=2)
    models = [(f"{file}: grid.model[{i}]", m, suite.teacher.weights) for i, m in enumerate(g.model)]
    if suite.train.kd.teacher is not None:
        models.append((f"{file}: train.kd.teacher", suite.train.kd.teacher, suite.train.kd.weights))
    for key, spec, weights in models:
        try:
            arch = registry("models").get(spec.name)
        except UnknownNameError as exc:
            raise SuiteError(f"{key}: {exc}") from None
        _bind(arch, spec.params, f"{key}.params", skip=2)
        if suite.teacher.pretrained and weights is None and not getattr(arch, "weights_file", None):
            raise SuiteError(f"{key}: model '{spec.name}' has no published weights for teacher.pretrained; "
                             f"give a state dict's path ({'train.kd' if 'kd' in key else 'teacher'}.weights)")
    if suite.quant.policy == "weight_only_blocks":
        for i, bits in enumerate(g.bits):
            if parse_bits(bits)[1] != 32:
                raise SuiteError(f"{file}: grid.bits[{i}]: policy 'weight_only_blocks' keeps activations full "
                                 f"precision: write W/32, got '{bits}'")
    names = [m.name for m in g.method]
    for i, m in enumerate(g.method):
        key = f"{file}: grid.method[{i}]"
        if names.count(m.name) > 1:
            raise SuiteError(f"{key}.name: method name '{m.name}' appears twice; give each variant its own name")
        try:
            cls = registry("selectors").get(m.selector)
        except UnknownNameError as exc:
            if m.selector in registry("selectors"):  # registered, but its plugin failed to import
                raise SuiteError(f"{key}: {exc}") from None
            known = [*registry("selectors").names(), *presets(file)]
            raise SuiteError(f"{key}: unknown method '{m.selector}'{did_you_mean(m.selector, known)}") from None
        from .selection import Selector

        if not (isinstance(cls, type) and issubclass(cls, Selector)):
            entry = registry("selectors").entries[m.selector]
            raise SuiteError(f"{key}: selector '{m.selector}' (from package {entry.package}, {entry.target}) "
                             f"is not a subclass of qcore_bench.Selector")
        _bind(cls, m.params, f"{key}.params")
        try:
            selector = cls(**m.params)
        except (TypeError, ValueError) as exc:
            raise SuiteError(f"{key}.params: {exc}") from None
        if selector.adaptive and cls.uses_fraction and 1.0 in g.fraction:
            raise SuiteError(f"{file}: grid.fraction[{g.fraction.index(1.0)}]: fraction 1 with adaptive method "
                             f"'{m.name}' keeps every sample at every selection (full-data training at extra "
                             f"cost); drop 1 from grid.fraction, method 'full' gives that point")
    pairing = suite_task_error(suite)  # each data set's task against its models, selectors and settings
    if pairing is not None:
        raise SuiteError(f"{file}: {pairing[0]}: {pairing[1]}")


def _bind(fn: Any, params: dict[str, Any], key: str, skip: int = 0) -> None:
    sig = inspect.signature(fn)
    allowed = list(sig.parameters)[skip:]
    for p in params:
        if p not in allowed:
            raise SuiteError(f"{key}: unknown parameter '{p}'{did_you_mean(p, allowed)}")


def load_suite(path: str | Path, overrides: list[str] | None = None) -> Suite:
    """Read, merge includes, apply ``--set`` overrides, validate. Raises SuiteError."""
    path = Path(path)
    raw = apply_overrides(_load_raw(path), overrides or [])
    raw.setdefault("name", path.stem)
    grid = raw.get("grid")
    if isinstance(grid, dict) and "method" in grid:
        try:
            grid["method"] = [resolve_method(m, path) for m in listify(grid["method"])]
        except PresetError as exc:
            raise SuiteError(str(exc)) from None
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as exc:
        raise SuiteError(_error_line(str(path), exc.errors()[0])) from None
    _check_names(suite, str(path))
    return suite
