"""Dependencies point one way: ``cli → serving → runtime → graph → engines, io, ledger``, with
``integrations`` beside ``serving`` (only users import it) and ``experiments`` beside it too
(``cli`` imports it); lower layers never
import upper ones, not even lazily inside a function (read from the source, every import)."""

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
