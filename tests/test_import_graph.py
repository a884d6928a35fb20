"""The import graph of src/gsit, read from the source with ``ast`` (every import, also those inside
functions): no circle among gsit's modules, and the lower floors never import the upper ones -- graph,
attention and models know nothing of data, training, evaluation, run directories, building, the CLI or
the analysis tools (ARCHITECTURE.md: "models never import data"; REVIEW.md §2)."""

from __future__ import annotations

import ast
from pathlib import Path

import gsit

SRC = Path(gsit.__file__).resolve().parent
LOWER = ("gsit.graph", "gsit.attention", "gsit.models")
UPPER = ("gsit.data", "gsit.train", "gsit.evaluate", "gsit.runs", "gsit.build", "gsit.cli", "gsit.analysis")


def _module_name(path: Path) -> str:
    parts = ("gsit",) + path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SRC.rglob("*.py")}


def import_graph() -> dict[str, set[str]]:
    """module -> the gsit modules it imports (``from pkg import sub`` counts as importing ``pkg.sub``)."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                    for a in node.names
                ]
            else:
                assert not (isinstance(node, ast.ImportFrom) and node.level), f"{path}: relative import"
                continue
            deps.update(t for t in targets if t in mods and t != name)
        graph[name] = deps
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 40 and "gsit.models.gsit" in graph["gsit.models.vanilla"]  # the scan sees imports
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_import_graph_lower_floors_never_import_upper_ones():
    upward = sorted(
        f"{m} -> {d}"
        for m, deps in import_graph().items()
        if _under(m, LOWER)
        for d in deps
        if _under(d, UPPER)
    )
    assert upward == []


def test_import_graph_cycle_finder_finds_a_planted_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
