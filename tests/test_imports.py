"""The package's import graph, read with ast: no cycles, and selectors without back doors.

Data flows one way (suite -> cells -> runner -> store -> report). A selector may import
the selector contract and the shared selector module, never the runner, the store, the
executors, the command line or the proxy's training: a plugin written against the
contract must be able to do everything a built-in does.
"""

from __future__ import annotations

import ast
from pathlib import Path

import qcore_bench

PACKAGE = Path(qcore_bench.__file__).parent
FORBIDDEN_FOR_SELECTORS = {"qcore_bench.runner", "qcore_bench.store", "qcore_bench.executors", "qcore_bench.cli",
                           "qcore_bench.proxy", "qcore_bench.teacher", "qcore_bench.training", "qcore_bench.claims",
                           "qcore_bench.files"}


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(importer: str, is_pkg: bool, node: ast.ImportFrom) -> list[str]:
    if node.level == 0:
        base = node.module or ""
    else:
        parts = importer.split(".")
        parts = parts if is_pkg else parts[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join([*parts, *([node.module] if node.module else [])])
    if not base.startswith("qcore_bench"):
        return []
    out = []
    for alias in node.names:  # `from . import distributed` imports a module; `from .x import y` imports x
        sub = f"{base}.{alias.name}"
        out.append(sub if (PACKAGE.parent / Path(*sub.split("."))).with_suffix(".py").is_file()
                   or (PACKAGE.parent / Path(*sub.split(".")) / "__init__.py").is_file() else base)
    return out


def import_graph() -> dict[str, set[str]]:
    """Every package module -> the package modules it imports, anywhere in the file (lazy imports
    and TYPE_CHECKING blocks included: they are dependencies all the same)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name, deps = _module(path), set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                deps.update(_resolve(name, path.name == "__init__.py", node))
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("qcore_bench"))
        graph[name] = {d for d in deps if d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The non-trivial strongly connected components (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read_correctly() -> None:
    graph = import_graph()
    assert "qcore_bench.selection" in graph["qcore_bench.selectors.acs"]
    assert "qcore_bench.distributed" in graph["qcore_bench.runner"]  # `from . import distributed`
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def forbidden(deps: set[str]) -> list[str]:
    """The forbidden modules among ``deps``, a package's submodules included (``qcore_bench.cli.run``)."""
    return sorted(d for d in deps if any(d == f or d.startswith(f + ".") for f in FORBIDDEN_FOR_SELECTORS))


def test_selectors_import_only_the_contract_and_shared_selector_code() -> None:
    graph = import_graph()
    offenders = {m: forbidden(deps) for m, deps in graph.items()
                 if m.startswith("qcore_bench.selectors") and forbidden(deps)}
    assert offenders == {}
    # and nothing they import reaches those modules either
    reach: dict[str, set[str]] = {}

    def closure(m: str) -> set[str]:
        if m not in reach:
            reach[m] = set()
            for d in graph.get(m, ()):
                reach[m] |= {d} | closure(d)
        return reach[m]
    indirect = {m: forbidden(closure(m)) for m in graph if m.startswith("qcore_bench.selectors")}
    assert {m: v for m, v in indirect.items() if v} == {}


def test_forbidden_modules_include_the_submodules_of_packages() -> None:
    assert forbidden({"qcore_bench.executors.local", "qcore_bench.cli", "qcore_bench.selection"}) == \
        ["qcore_bench.cli", "qcore_bench.executors.local"]


def test_no_module_is_much_over_400_lines() -> None:
    """Modules are split by what they hold before they grow past a screenful of screens."""
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in sizes.items() if n > 420} == {}


def test_wandb_is_imported_only_when_enabled() -> None:
    """wandb is a default dependency, but a run without W&B never pays for importing it."""
    import subprocess
    import sys

    code = ("import sys, qcore_bench.cli, qcore_bench.runner, qcore_bench.executors, qcore_bench.report; "
            "print('wandb' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
