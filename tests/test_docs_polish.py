"""docs/features/yaml-dialogues-and-checks.md: every Python block runs as written, in order, in an
empty folder, offline, on the fake engine, and prints what its ``# comments`` say."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "features" / "yaml-dialogues-and-checks.md"


def test_the_yaml_dialogues_and_checks_page_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    assert len(blocks) == 3
    try:
        for k, code in enumerate(blocks):
            # dont_inherit: each block runs as a script would, without this file's __future__ import
            exec(
                compile(code, f"{PAGE}#block{k}", "exec", dont_inherit=True), {"__name__": f"docs_block_{k}"}
            )
            said = [
                line.rsplit("  # ", 1)[1] for line in code.splitlines() if line.strip().startswith("print(")
            ]
            assert capsys.readouterr().out.splitlines() == said, f"block {k}"
    finally:
        sys.modules.pop("lesson_models", None)
