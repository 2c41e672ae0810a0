"""The mutation check: break the package one line at a time and make sure a test notices.

    python tests/mutation/run.py                 every mutation in mutations.yaml
    python tests/mutation/run.py 'report-*' ...  those whose id matches a pattern
    python tests/mutation/run.py --list          the ids, the bug each stands for, and its tests

Each mutation replaces one snippet of one line (it must occur exactly once in its file)
in a temporary copy of ``qcore_bench``, never in the working tree, and runs only the tests
named for it, against that copy. Caught: pytest reports a failed test (exit status 1).
Survived: the tests pass. Anything else (the tests cannot be collected, time out, a snippet
that is gone or ambiguous) is an error. The exit status is 0 when every mutation was
caught, 1 when one survived or erred, 2 when the list itself is bad.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
LIST = HERE / "mutations.yaml"
FIELDS = {"id", "bug", "file", "find", "replace", "tests"}
LINKED = ("methods", "suites", "results", "benchmarks", "pyproject.toml", "README.md")  # read by tests, never mutated


class ListError(Exception):
    """A mutation that cannot be applied as written: the message names the entry and what is wrong."""


@dataclass(frozen=True)
class Mutation:
    id: str
    bug: str
    file: str
    find: str
    replace: str
    tests: tuple[str, ...]

    def apply(self, text: str) -> str:
        """``text`` with the snippet replaced; ListError when the snippet is gone or not unique."""
        count = text.count(self.find)
        if count != 1:
            where = "is not in" if count == 0 else f"occurs {count} times in"
            raise ListError(f"{LIST.name}: {self.id}: find {self.find!r} {where} {self.file}; "
                            "expected exactly once (did a refactor move it? update the snippet)")
        return text.replace(self.find, self.replace)


def load(path: Path = LIST, root: Path = REPO) -> list[Mutation]:
    """Every mutation of the list, each checked against the tree at ``root``."""
    entries = yaml.safe_load(path.read_text())
    if not isinstance(entries, list):
        raise ListError(f"{path.name}: expected a list of mutations")
    out, seen = [], set()
    for i, e in enumerate(entries):
        name = e.get("id", f"entry {i}") if isinstance(e, dict) else f"entry {i}"
        if not isinstance(e, dict) or set(e) != FIELDS:
            got = sorted(e) if isinstance(e, dict) else type(e).__name__
            raise ListError(f"{path.name}: {name}: expected the keys {sorted(FIELDS)}, got {got}")
        if name in seen:
            raise ListError(f"{path.name}: {name}: id appears twice")
        seen.add(name)
        m = Mutation(e["id"], e["bug"], e["file"], e["find"], e["replace"], tuple(e["tests"] or ()))
        if "\n" in m.find or m.find == m.replace or not m.tests:
            raise ListError(f"{path.name}: {name}: expected a one-line find, a different replace and named tests")
        source = root / m.file
        if not source.is_file():
            raise ListError(f"{path.name}: {name}: file {m.file} does not exist")
        m.apply(source.read_text())
        for test in m.tests:
            module, _, func = test.partition("::")
            func = func.split("[")[0]
            if not (root / module).is_file() or f"def {func}(" not in (root / module).read_text():
                raise ListError(f"{path.name}: {name}: test {test} does not exist")
        out.append(m)
    return out


def copy_tree(dest: Path) -> Path:
    """A copy of the package and the tests in which mutations may be applied; the rest linked."""
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", ".pytest_cache")
    shutil.copytree(REPO / "qcore_bench", dest / "qcore_bench", symlinks=True, ignore=ignore)
    shutil.copytree(REPO / "tests", dest / "tests", symlinks=True, ignore=ignore)
    for name in LINKED:
        if (REPO / name).exists():
            (dest / name).symlink_to(REPO / name)
    return dest


def pytest_run(tree: Path, tests: tuple[str, ...], basetemp: Path, timeout: float) -> tuple[int, str]:
    """pytest on ``tests`` with ``tree``'s package first on the path; (exit status, output)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]),
           "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-rf", "-p", "no:cacheprovider", "-o", "addopts=",
           f"--basetemp={basetemp}", *tests]
    try:
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout:.0f} s"
    return proc.returncode, proc.stdout + proc.stderr


def check_copy_is_imported(tree: Path) -> None:
    """The tests must import the copy, not the installed package: else nothing would be mutated."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")])}
    where = subprocess.run([sys.executable, "-c", "import qcore_bench; print(qcore_bench.__file__)"], cwd=tree,
                           env=env, capture_output=True, text=True).stdout.strip()
    if not Path(where).resolve().is_relative_to(tree.resolve()):
        sys.exit(f"error: the tests would import qcore_bench from {where}, not from the mutated copy in {tree}")


def run_one(m: Mutation, tree: Path, timeout: float) -> tuple[str, str, float]:
    """(verdict, detail, seconds) of one mutation, applied in ``tree`` and undone afterwards."""
    path = tree / m.file
    original = path.read_text()
    path.write_text(m.apply(original))
    start = time.perf_counter()
    try:
        code, out = pytest_run(tree, m.tests, tree / f"tmp-{m.id}", timeout)
    finally:
        path.write_text(original)
        shutil.rmtree(tree / f"tmp-{m.id}", ignore_errors=True)
    seconds = time.perf_counter() - start
    failed = [line.split(" - ")[0].removeprefix("FAILED ") for line in out.splitlines() if line.startswith("FAILED ")]
    if code == 1:
        return "caught", f"by {', '.join(failed) or 'a failing test'}", seconds
    if code == 0:
        return "SURVIVED", f"{', '.join(m.tests)} passed with it", seconds
    return "ERROR", f"pytest exit status {code}:\n{out[-3000:]}", seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("patterns", nargs="*", help="mutation ids or glob patterns (default: all)")
    parser.add_argument("--list", action="store_true", help="print the mutations and exit")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="mutations run at once (default 1)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed per mutation")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip running the named tests on the unmutated copy first")
    args = parser.parse_args(argv)
    try:
        mutations = load()
    except ListError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    chosen = [m for m in mutations if not args.patterns or any(fnmatch.fnmatch(m.id, p) for p in args.patterns)]
    if not chosen:
        print(f"error: {', '.join(args.patterns)}: matches no mutation id in {LIST.name}", file=sys.stderr)
        return 2
    if args.list:
        for m in chosen:
            print(f"{m.id}: {m.bug}\n    {m.file}: {m.find!r} -> {m.replace!r}\n    tests: {' '.join(m.tests)}")
        return 0
    jobs = max(1, min(args.jobs, len(chosen)))
    with tempfile.TemporaryDirectory(prefix="qcore-mutation-") as tmp:
        trees = [copy_tree(Path(tmp) / f"tree{j}") for j in range(jobs)]
        check_copy_is_imported(trees[0])
        start = time.perf_counter()
        if not args.no_baseline:  # a test that fails without any mutation would "catch" every one
            tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            code, out = pytest_run(trees[0], tests, Path(tmp) / "baseline", args.timeout)
            if code != 0:
                print(f"error: the named tests fail on the unmutated package:\n{out[-3000:]}", file=sys.stderr)
                return 1
            print(f"baseline: the {len(tests)} named tests pass unmutated ({time.perf_counter() - start:.0f} s)")
        free = list(trees)

        def work(m: Mutation) -> tuple[str, str, float]:
            tree = free.pop()
            try:
                return run_one(m, tree, args.timeout)
            finally:
                free.append(tree)

        bad = 0
        with ThreadPoolExecutor(jobs) as pool:
            for m, (verdict, detail, seconds) in zip(chosen, pool.map(work, chosen)):
                bad += verdict != "caught"
                print(f"{verdict:8} {m.id} ({seconds:.1f} s) {detail}", flush=True)
    total = time.perf_counter() - start
    print(f"{len(chosen) - bad} of {len(chosen)} mutations caught in {total:.0f} s"
          + (f"; {bad} not caught" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
