"""The project's import graph, read from the source (``ast``; imports inside functions count: the service
imports lazily), rendered as the block docs/architecture.md shows. tests/test_architecture_doc.py checks that
the page holds exactly what this renders, so the graph there is generated, never guessed.

    .venv/bin/python tests/support/testkit/import_graph.py            # print the block
    .venv/bin/python tests/support/testkit/import_graph.py --write    # replace it in docs/architecture.md
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
DOC = REPO / "docs" / "architecture.md"
BEGIN, END = "<!-- import-graph:begin -->", "<!-- import-graph:end -->"
LAYERS = ("tune", "bench")  # the modules whose imports are listed (pahcl's own layering is described above)


def _module_name(path: Path) -> str:
    rel = path.relative_to(REPO).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "bench":
        return "bench/" + parts[-1]
    return ".".join(p for p in parts if p != "__init__")


def _imported(tree: ast.AST, importer: str) -> set[str]:
    """Project modules named by the imports of one file (``pahcl`` at sub-module level, ``tune`` modules,
    ``bench/_common``)."""
    out: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for n in names:
            parts = n.split(".")
            if parts[0] == "pahcl" and len(parts) > 1 and _exists("pahcl", parts[1]):
                out.add(f"pahcl.{parts[1]}")
            elif parts[0] == "tune" and len(parts) > 1 and _exists("tune", parts[1]):
                out.add(f"tune.{parts[1]}")
            elif parts[0] == "_common" and importer.startswith("bench/"):
                out.add("bench/_common")
    out.discard(importer)
    return out


def _exists(pkg: str, name: str) -> bool:
    return (REPO / pkg / f"{name}.py").exists() or (REPO / pkg / name / "__init__.py").exists()


def graph() -> dict[str, list[str]]:
    """{module: sorted project modules it imports} for every module of ``LAYERS``."""
    g: dict[str, list[str]] = {}
    for layer in LAYERS:
        for path in sorted((REPO / layer).glob("*.py")):
            name = _module_name(path)
            if name in LAYERS:  # the package docstring only
                continue
            g[name] = sorted(_imported(ast.parse(path.read_text()), name))
    return g


def render() -> str:
    """One line per module: ``importer -> tune: a, b | pahcl: c | bench: _common`` (nothing: ``-> -``)."""
    g = graph()
    width = max(len(k) for k in g)
    lines = []
    for mod, deps in g.items():
        groups = []
        for prefix, label in (("tune.", "tune"), ("pahcl.", "pahcl"), ("bench/", "bench")):
            names = [d[len(prefix):] for d in deps if d.startswith(prefix)]
            if names:
                groups.append(f"{label}: {', '.join(names)}")
        lines.append(f"{mod:<{width}} -> {' | '.join(groups) or '-'}")
    return "\n".join(["```", *lines, "```"])


def doc_block(text: str) -> str:
    return text[text.index(BEGIN) + len(BEGIN):text.index(END)].strip("\n")


def write() -> None:
    text = DOC.read_text()
    DOC.write_text(text[:text.index(BEGIN) + len(BEGIN)] + "\n" + render() + "\n" + text[text.index(END):])


if __name__ == "__main__":
    write() if "--write" in sys.argv[1:] else print(render())
