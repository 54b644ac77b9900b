"""docs/reliability.md lists every case with its test: no suite test without a row, no row without its test."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "reliability.md"
SUITES = ("test_faults", "test_lock", "test_bad_input", "test_backup_bad_input", "test_secrets")
ROW_TEST = re.compile(r"\| `(tests/[\w/]+\.py)::(test_\w+)` \|$", re.MULTILINE)


def functions_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_every_suite_test_has_exactly_one_row_and_every_row_names_a_real_test() -> None:
    rows = ROW_TEST.findall(DOC.read_text())
    assert len(rows) == len(set(rows)), "a test has more than one row"
    for path, name in rows:
        assert name in functions_in(REPO / path), f"docs/reliability.md names {path}::{name}, which does not exist"
    listed = set(rows)
    for suite in SUITES:
        path = f"tests/{suite}.py"
        missing = sorted(name for name in functions_in(REPO / path) if (path, name) not in listed)
        assert not missing, f"no row in docs/reliability.md for {path}: {', '.join(missing)}"
