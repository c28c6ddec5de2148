"""docs/features/per-record-flow.md: every Python block runs as written, top to bottom, in an
empty folder, and prints what its comments say."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "features" / "per-record-flow.md"


def test_the_pages_blocks_run_and_print_what_they_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    for k, code in enumerate(blocks):
        # dont_inherit: each block runs as a script would, without this file's __future__ import
        exec(
            compile(code, f"{PAGE.name} block {k + 1}", "exec", dont_inherit=True), {"__name__": f"page_{k}"}
        )
        printed = capsys.readouterr().out.splitlines()
        expected = [
            line.split("  # ", 1)[1] for line in code.splitlines() if line.strip().startswith("print(")
        ]
        assert printed == expected, f"block {k + 1}"
