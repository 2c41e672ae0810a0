"""Cells: the grid's points, each one fully resolved run with a stable id."""

from __future__ import annotations

import hashlib
import itertools
import json
from typing import Any

from .recipes import Strict
from .registry import registry
from .schema import Budget, DatasetSpec, MethodSpec, NoiseSpec, Quant, SelectionCfg, Suite, Teacher, Train, \
    parse_bits, spec_label


_NOT_IN_ID = (("dataset", "root"), ("dataset", "display"), ("teacher", "weights"), ("train", "kd", "weights"), ("train", "compile"))
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
