"""No import cycle inside ``engines/`` or inside ``cli/``, counting imports inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import chainette

PACKAGE = Path(chainette.__file__).parent


def imports_within(folder: str) -> dict[str, set[str]]:
    """Module → the modules of the same folder it imports (``from .x import``, ``from . import x``)."""
    modules = {p.stem for p in (PACKAGE / folder).glob("*.py") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for name in modules:
        tree = ast.parse((PACKAGE / folder / f"{name}.py").read_text(encoding="utf-8"))
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                found |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom | ast.Import):
                prefix = f"chainette.{folder}."
                for dotted in [getattr(node, "module", None) or "", *(a.name for a in node.names)]:
                    if dotted.startswith(prefix):
                        found.add(dotted.removeprefix(prefix).split(".")[0])
        graph[name] = found & modules - {name}
    return graph


def cycle_in(graph: dict[str, set[str]]) -> list[str] | None:
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        for nxt in sorted(graph[node]):
            if (found := visit(nxt, [*path, node])) is not None:
                return found
        done.add(node)
        return None

    for start in sorted(graph):
        if (found := visit(start, [])) is not None:
            return found
    return None


@pytest.mark.parametrize("folder", ["engines", "cli"])
def test_no_import_cycle(folder: str) -> None:
    graph = imports_within(folder)
    assert graph, folder
    assert cycle_in(graph) is None, " → ".join(cycle_in(graph) or [])


def test_the_checker_sees_a_cycle() -> None:
    assert cycle_in({"a": {"b"}, "b": {"a"}, "c": set()}) == ["a", "b", "a"]
    assert "registry" in imports_within("engines")["servers"]
    assert {"_common", "servers"} <= imports_within("cli")["app"]
