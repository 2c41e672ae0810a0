"""Suite YAML -> validated ``Suite`` -> list of ``Cell``.

A suite is a base recipe plus a grid; a cell is one fully resolved run with a stable
id. Every error is one line that names the file, the key path and what was expected;
nothing runs and nothing is written before the whole suite validated.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import itertools
import json
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from .presets import PresetError, presets, resolve_method
from .recipes import Recipe, Strict
from .registry import UnknownNameError, did_you_mean, registry
from .wandb_log import WandbCfg


class SuiteError(ValueError):
    """A suite that cannot run; str() is the one-line message for the user."""


class ModelSpec(Strict):
    """A registered model and its parameters, e.g. ``{name: mobilenetv2, params: {width: 0.5}}``."""

    name: str
    params: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v


class KD(Strict):
    """Distillation: soft cross-entropy at a temperature, plus a hard-label term.

    ``teacher`` names another full-precision model as the distillation teacher (e.g.
    ResNet-101 on ImageNet); by default it is the DS reference (the student's architecture).
    ``weights``: a path to its published weights (where they lie: not part of the cell id).
    """

    enabled: bool = False
    temperature: Annotated[float, Field(gt=0)] = 1.0
    hard_weight: Annotated[float, Field(ge=0)] = 0.0
    teacher: ModelSpec | None = None
    weights: str | None = None


class Train(Recipe):
    """The QAT recipe every method shares. ``compile``: torch.compile the student's training step."""

    kd: KD = KD()
    compile: bool = False


class Teacher(Recipe):
    """The full-precision model of the student's architecture: the DS reference and the student's start.

    Trained on the full (noisy) training set with this recipe, or, with ``pretrained``,
    loaded from published weights (torchvision's for ``resnet18_imagenet``) found in the
    torch hub cache or at ``weights`` (a path: not part of the cell id).
    """

    epochs: Annotated[int, Field(gt=0)] = 30
    lr: Annotated[float, Field(gt=0)] = 0.1
    pretrained: bool = False
    weights: str | None = None


class Quant(Strict):
    """Which layers are quantized; ``policy`` as in ``qcore_bench.quant.quantize_model``."""

    first_last: Literal["fp", "8bit"] = "fp"
    quantize_downsample: bool = True
    policy: Literal["all", "acs_resnet", "weight_only_blocks"] = "all"
    act_grad_scale: Literal["per_sample", "per_batch"] = "per_sample"  # see quant.quantize_model


class SelectionCfg(Strict):
    balanced: bool = True


class Budget(Strict):
    """How methods are made comparable; see qcore_bench.budget for the cost model."""

    mode: Literal["per_epoch_fraction", "total_compute"] = "per_epoch_fraction"
    include_teacher: bool = False


def spec_label(name: str, params: dict[str, Any]) -> str:
    """``name``, or ``name(k=v,...)`` with its parameters: variants stay apart in tables and labels."""
    return f"{name}({','.join(f'{k}={v}' for k, v in sorted(params.items()))})" if params else name


class DatasetSpec(Strict):
    name: str
    root: str | None = None
    params: dict[str, Any] = {}

    @property
    def label(self) -> str:
        return spec_label(self.name, self.params)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        return {"name": v} if isinstance(v, str) else v


class NoiseSpec(Strict):
    kind: Literal["none", "symmetric"] = "symmetric"
    rate: Annotated[float, Field(ge=0, lt=1)] = 0.0

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return {"kind": "symmetric" if v > 0 else "none", "rate": v}
        return v

    @model_validator(mode="after")
    def _consistent(self) -> "NoiseSpec":
        if self.kind == "none" and self.rate != 0:
            raise ValueError("kind 'none' needs rate 0")
        if self.kind != "none" and self.rate == 0:
            return NoiseSpec(kind="none", rate=0.0)
        return self

    @property
    def label(self) -> str:
        return "clean" if self.kind == "none" else f"{self.kind}-{self.rate:g}"


class MethodSpec(Strict):
    name: str
    selector: str = ""
    params: dict[str, Any] = {}

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, v: Any) -> Any:
        if isinstance(v, str):
            return {"name": v, "selector": v}
        if isinstance(v, dict) and "name" in v and not v.get("selector"):
            return {**v, "selector": v["name"]}
        return v


def _listify(v: Any) -> Any:
    return v if isinstance(v, list) else [v]


class Grid(Strict):
    dataset: Annotated[list[DatasetSpec], Field(min_length=1)]
    model: Annotated[list[ModelSpec], Field(min_length=1)]
    bits: Annotated[list[str], Field(min_length=1)]
    fraction: Annotated[list[Annotated[float, Field(gt=0, le=1)]], Field(min_length=1)]
    noise: Annotated[list[NoiseSpec], Field(min_length=1)] = [NoiseSpec(kind="none")]
    method: Annotated[list[MethodSpec], Field(min_length=1)]
    seed: Annotated[list[int], Field(min_length=1)] = [0]

    @field_validator("*", mode="before")
    @classmethod
    def _wrap(cls, v: Any) -> Any:
        return _listify(v)

    @field_validator("bits", mode="after")
    @classmethod
    def _bits(cls, values: list[str]) -> list[str]:
        for v in values:
            parse_bits(v)
        return values


class SlurmCfg(Strict):
    """Cluster settings for ``run --executor slurm`` (runtime only: not part of any cell id)."""

    partition: str | None = None
    time: Annotated[int, Field(gt=0)] = 240  # minutes per task; a longer cell is requeued and resumes
    gpus_per_task: Annotated[int, Field(ge=0)] = 1
    cpus_per_task: Annotated[int, Field(gt=0)] | None = None
    mem: Annotated[float, Field(gt=0)] | None = None  # GB per task
    array_parallelism: Annotated[int, Field(gt=0)] = 64  # tasks running at once
    max_timeouts: Annotated[int, Field(ge=0)] = 10  # requeues after time-outs (preemptions are unlimited)
    sbatch: dict[str, str | int | float | bool] = {}  # extra sbatch options, e.g. {account: proj, qos: high}
    setup: list[str] = []  # shell lines run before each task, e.g. 'source ~/venv/bin/activate'


class Suite(Strict):
    name: str
    description: str = ""
    train: Train = Train()
    teacher: Teacher = Teacher()
    quant: Quant = Quant()
    selection: SelectionCfg = SelectionCfg()
    budget: Budget = Budget()
    grid: Grid
    # runtime settings: they do not change results and are not part of a cell's id
    device: str = "auto"
    eval_batch_size: Annotated[int, Field(gt=0)] = 1024
    cpu_threads: Annotated[int, Field(gt=0)] = 1  # a CPU cell's torch threads: fixed, so results reproduce
    wandb: WandbCfg = WandbCfg()
    slurm: SlurmCfg = SlurmCfg()


def parse_bits(text: str) -> tuple[int, int]:
    """'W/A' -> (w_bits, a_bits); each 2..8 or 32 (full precision)."""
    from .quant import bits_supported

    parts = str(text).split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"expected bits written W/A such as '2/32' or '4/4', got '{text}'")
    w, a = (int(p) for p in parts)
    for kind, b in (("weight", w), ("activation", a)):
        if not bits_supported(b):
            raise ValueError(f"{kind} bits {b} in '{text}' not supported: expected 2..8 or 32")
    return w, a


_NOT_IN_ID = (("dataset", "root"), ("teacher", "weights"), ("train", "kd", "weights"), ("train", "compile"))
_ID_NEUTRAL_DEFAULTS: dict[tuple[str, ...], Any] = {
    ("model_params",): {},
    ("quant", "policy"): "all",
    ("quant", "act_grad_scale"): "per_sample",
    ("teacher", "pretrained"): False,
    ("train", "kd", "teacher"): None,
}


def _drop(tree: dict[str, Any], path: tuple[str, ...], only_if: Any = ...) -> None:
    """Remove the key at ``path`` (only when its value equals ``only_if``, if given)."""
    *parents, key = path
    for p in parents:
        tree = tree.get(p, {})
    if key in tree and (only_if is ... or tree[key] == only_if):
        del tree[key]


class Cell(Strict):
    """One fully resolved run. Its id hashes everything that can change its numbers."""

    suite: str
    dataset: DatasetSpec
    noise: NoiseSpec
    model: str
    w_bits: int
    a_bits: int
    quant: Quant
    method: MethodSpec
    fraction: float
    seed: int
    train: Train
    teacher: Teacher
    selection: SelectionCfg
    budget: Budget
    model_params: dict[str, Any] = {}

    def identity(self) -> dict[str, Any]:
        """The canonical config: without the suite name, paths (where data and weights lie) and
        torch.compile; keys added later are left out while at their default, so the ids of
        suites that do not use them stay what they were."""
        ident = self.model_dump(mode="json", exclude={"suite"})
        for path in _NOT_IN_ID:
            _drop(ident, path)
        for path, default in _ID_NEUTRAL_DEFAULTS.items():
            _drop(ident, path, default)
        return ident

    @property
    def id(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    @property
    def bits(self) -> str:
        return f"{self.w_bits}/{self.a_bits}"

    @property
    def model_label(self) -> str:
        return spec_label(self.model, self.model_params)


# ---------------------------------------------------------------- loading


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
            grid["method"] = [resolve_method(m, path) for m in _listify(grid["method"])]
        except PresetError as exc:
            raise SuiteError(str(exc)) from None
    try:
        suite = Suite.model_validate(raw)
    except ValidationError as exc:
        raise SuiteError(_error_line(str(path), exc.errors()[0])) from None
    _check_names(suite, str(path))
    return suite


def expand(suite: Suite) -> list[Cell]:
    """The grid's cells in a stable order, one per distinct id (``full`` ignores fraction)."""
    g = suite.grid
    cells: dict[str, Cell] = {}
    for ds, model, bits, noise, method, fraction, seed in itertools.product(
            g.dataset, g.model, g.bits, g.noise, g.method, g.fraction, g.seed):
        uses_fraction = registry("selectors").get(method.selector).uses_fraction
        w, a = parse_bits(bits)
        cell = Cell(suite=suite.name, dataset=ds, noise=noise, model=model.name, model_params=model.params,
                    w_bits=w, a_bits=a,
                    quant=suite.quant, method=method, fraction=fraction if uses_fraction else 1.0,
                    seed=seed, train=suite.train, teacher=suite.teacher, selection=suite.selection,
                    budget=suite.budget)
        cells.setdefault(cell.id, cell)
    return list(cells.values())
