"""The mutation check's list stays applicable: every snippet is still where it was, once.

The mutations themselves run in CI's own step (``python tests/mutation/run.py``); this
catches, in the ordinary test run, a refactor that moved a snippet the list relies on.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
spec = importlib.util.spec_from_file_location("mutation_run", HERE / "mutation" / "run.py")
mutation = sys.modules.setdefault("mutation_run", importlib.util.module_from_spec(spec))
spec.loader.exec_module(mutation)


def test_every_mutation_applies_to_exactly_one_place_and_names_existing_tests() -> None:
    mutations = mutation.load()
    assert len(mutations) >= 40 and len({m.id for m in mutations}) == len(mutations)
    for m in mutations:
        source = (mutation.REPO / m.file).read_text()
        mutated = m.apply(source)
        assert mutated != source and len(mutated.splitlines()) == len(source.splitlines()), m.id


def write_list(tmp_path: Path, find: str) -> Path:
    (tmp_path / "pkg").mkdir(parents=True)
    (tmp_path / "pkg" / "m.py").write_text("x = 1\ny = 1\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_m.py").write_text("def test_x():\n    pass\n")
    path = tmp_path / "mutations.yaml"
    path.write_text(f"- {{id: one, bug: b, file: pkg/m.py, find: '{find}', replace: 'z = 2', "
                    "tests: [tests/test_m.py::test_x]}\n")
    return path


@pytest.mark.parametrize("find, why", [("w = 1", "is not in pkg/m.py"), ("= 1", "occurs 2 times in pkg/m.py")])
def test_a_snippet_that_moved_or_is_ambiguous_stops_the_check_naming_the_entry(tmp_path: Path, find: str,
                                                                               why: str) -> None:
    with pytest.raises(mutation.ListError, match=f"mutations.yaml: one: find '{find}' {why}; expected exactly once"):
        mutation.load(write_list(tmp_path, find), tmp_path)
    assert [m.id for m in mutation.load(write_list(tmp_path / "ok", "x = 1"), tmp_path / "ok")] == ["one"]
