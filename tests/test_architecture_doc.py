"""docs/architecture.md shows the import graph of tune/ and bench/ generated from the source
(tests/support/testkit/import_graph.py), and the layering it describes holds: pahcl/ imports nothing from tune/,
Ray or MLflow; nothing in tune/, bench/ or tests/ edits sys.path; tests/pahcl imports nothing from tune."""
from __future__ import annotations

import ast
import re
from pathlib import Path

from testkit.import_graph import DOC, REPO, doc_block, render


def test_the_import_graph_in_the_doc_is_the_generated_one():
    assert doc_block(DOC.read_text()) == render(), (
        "docs/architecture.md is out of date: run .venv/bin/python tests/support/testkit/import_graph.py --write")


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_layers_and_no_sys_path_edits():
    for path in (REPO / "pahcl").rglob("*.py"):
        assert not _imports(path) & {"tune", "ray", "mlflow"}, path
    for path in (REPO / "tests" / "pahcl").rglob("*.py"):
        assert "tune" not in _imports(path), path
    edits = re.compile(r"sys\.path\.(insert|append|extend)|sys\.path\s*[+]?=")
    for folder in ("tune", "bench", "tests"):
        for path in (REPO / folder).rglob("*.py"):
            assert not edits.search(path.read_text()), f"{path}: sys.path edited (the project is installed)"
