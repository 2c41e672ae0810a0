"""Every ``pytest.raises`` names the message it expects: without ``match`` any error of the type passes."""

from __future__ import annotations

import ast
from pathlib import Path


def test_every_pytest_raises_has_a_match() -> None:
    missing = []
    for path in sorted(Path(__file__).parent.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "raises"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "pytest"
                    and not any(k.arg == "match" for k in node.keywords)):
                missing.append(f"{path.name}:{node.lineno}")
    assert not missing, f"pytest.raises without match= at {', '.join(missing)}"
