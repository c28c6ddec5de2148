"""Dependencies point one way: ``cli → serving → runtime → graph → engines, io, ledger``, with
``integrations`` beside ``serving`` (only users import it) and ``experiments`` beside it too
(``cli`` imports it); lower layers never
import upper ones, not even lazily inside a function (read from the source, every import).

Inside a folder too, modules import each other one way: no import loop among a folder's modules
(lazy and ``TYPE_CHECKING`` imports count). ``PENDING`` lists loops tolerated for a while, to be
untangled and struck off; it is empty: no folder has one.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "chainette"

ALLOWED: dict[str, set[str]] = {
    "engines": set(),
    "io": set(),
    "ledger": {"engines"},
    "graph": {"engines", "io"},
    "runtime": {"graph", "engines", "io", "ledger"},
    "serving": {"runtime", "graph", "engines", "io", "ledger"},
    "integrations": {"runtime", "graph", "engines", "io", "ledger"},  # OpenTelemetry, MLflow
    "experiments": {"runtime", "graph", "engines", "io", "ledger"},  # suites, assessors, experiment.json
    "cli": {
        "experiments",
        "serving",
        "runtime",
        "graph",
        "engines",
        "io",
        "ledger",
        "(package root)",
    },  # __version__
}
SHARED = {"_errors"}  # the exception tree: everyone may import it


def _imports(path: Path) -> set[str]:
    """Top-level chainette packages/modules that ``path`` imports (relative or absolute)."""
    package = path.relative_to(SRC).parts[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                parts = base + (node.module.split(".") if node.module else [])
                names = [parts[0]] if parts else ["(package root)"]
            elif node.module and node.module.split(".")[0] == "chainette":
                names = node.module.split(".")[1:2] or ["(package root)"]
            else:
                continue
            found.update(names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("chainette."))
    return found


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_a_layer_imports_only_the_layers_below_it(layer: str) -> None:
    offences = []
    for path in sorted((SRC / layer).rglob("*.py")):
        for target in _imports(path) - {layer} - SHARED - ALLOWED[layer]:
            offences.append(f"{path.relative_to(SRC)} imports chainette.{target}")
    assert offences == []


def test_the_checker_finds_an_upward_import(tmp_path: Path) -> None:
    """The scan itself works: a lazy import inside a function is found."""
    module = SRC / "graph" / "_probe_for_test.py"
    module.write_text("def f():\n    from ..runtime.executor import run_chain\n")
    try:
        assert "runtime" in _imports(module)
    finally:
        module.unlink()


# Import loops inside a folder ------------------------------------------------------------------

FOLDERS = sorted(p.name for p in SRC.iterdir() if p.is_dir() and any(p.glob("*.py")))

PENDING: dict[str, set[str]] = {}
"""The loops still tolerated, folder by folder (the to-do in the module docstring): a loop not
listed fails, and a listed one that is gone must be struck off, so the list only shrinks."""


def folder_imports(folder: Path) -> dict[str, set[str]]:
    """Module → the modules of the same folder it imports: relative or absolute, at the top, in a
    function or under ``TYPE_CHECKING``; ``from . import name`` of a non-module is the folder's
    ``__init__``."""
    package = ["chainette", folder.name]
    modules = {p.stem for p in folder.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for name in sorted(modules):
        found: set[str] = set()
        for node in ast.walk(ast.parse((folder / f"{name}.py").read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                target = package[: len(package) - node.level + 1] if node.level else []
                target += node.module.split(".") if node.module else []
                if target[:2] == package:
                    if len(target) > 2:
                        found.add(target[2])
                    else:
                        found.update(a.name if a.name in modules else "__init__" for a in node.names)
            elif isinstance(node, ast.Import):
                dotted = [a.name.split(".") for a in node.names]
                found.update(parts[2] for parts in dotted if parts[:2] == package and len(parts) > 2)
        graph[name] = found & modules - {name}
    return graph


def import_loops(graph: dict[str, set[str]]) -> set[str]:
    """Every simple loop, as ``a → b → a`` starting from its first module in sort order."""
    loops: set[str] = set()
    order = sorted(graph)
    for k, start in enumerate(order):
        later = set(order[k:])
        stack = [[start]]
        while stack:
            path = stack.pop()
            for nxt in graph[path[-1]]:
                if nxt == start:
                    loops.add(" → ".join([*path, start]))
                elif nxt in later and nxt not in path:
                    stack.append([*path, nxt])
    return loops


@pytest.mark.parametrize("folder", FOLDERS)
def test_no_import_loop_inside_a_folder(folder: str) -> None:
    new = sorted(import_loops(folder_imports(SRC / folder)) - PENDING.get(folder, set()))
    assert new == [], (
        f"import loops inside {folder}/ (make one side import the other, not both):\n" + "\n".join(new)
    )


def test_the_pending_loops_are_still_there() -> None:
    """A loop that is gone comes off ``PENDING`` and the to-do in the module docstring."""
    assert __doc__ is not None
    for folder, loops in sorted(PENDING.items()):
        gone = sorted(loops - import_loops(folder_imports(SRC / folder)))
        assert gone == [], f"no longer loops in {folder}/: strike them off PENDING and the to-do: {gone}"
        assert [loop for loop in sorted(loops) if loop not in __doc__] == []


def test_the_loop_checker_finds_a_planted_loop(tmp_path: Path) -> None:
    """Relative, absolute, lazy and ``TYPE_CHECKING`` imports all count."""
    folder = tmp_path / "probe"
    folder.mkdir()
    (folder / "__init__.py").write_text("from .a import A\n")
    (folder / "a.py").write_text("def f():\n    from .b import B\n")
    (folder / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import chainette.probe.c\n"
    )
    (folder / "c.py").write_text("from ..probe import a\nfrom chainette.probe import A\n")
    (folder / "d.py").write_text("from . import b\n")
    graph = folder_imports(folder)
    assert graph == {"__init__": {"a"}, "a": {"b"}, "b": {"c"}, "c": {"a", "__init__"}, "d": {"b"}}
    assert import_loops(graph) == {"__init__ → a → b → c → __init__", "a → b → c → a"}
    assert "graph" in FOLDERS and "runtime" in FOLDERS
