"""docs/features/yaml-dialogues-and-checks.md: every Python block runs as written, in order, in an
empty folder, offline, on the fake engine, and prints what its ``# comments`` say."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.docs_blocks import run_blocks_as_scripts, said_by_prints

PAGE = Path(__file__).resolve().parents[1] / "docs" / "features" / "yaml-dialogues-and-checks.md"


def test_the_yaml_dialogues_and_checks_page_runs(tmp_path: Path) -> None:
    try:
        blocks = run_blocks_as_scripts(PAGE, tmp_path)
    finally:
        sys.modules.pop("lesson_models", None)
    assert len(blocks) == 3
    for k, (code, printed) in enumerate(blocks):
        assert printed == said_by_prints(code), f"block {k}"
