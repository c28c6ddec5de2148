"""``docs/features/cli.md``: every Python block runs as written, in order, from an empty folder,
and prints what its ``# comments`` say."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[2] / "docs" / "features" / "cli.md"


def _expected(code: str) -> list[str]:
    """The ``print(...)  # shown`` comments of a block, and the ``# line`` comments that follow a
    print inside a loop, in order."""
    out: list[str] = []
    for line in code.splitlines():
        stripped = line.strip()
        if stripped.startswith("print(") and "  # " in stripped:
            out.append(stripped.rsplit("  # ", 1)[1])
        elif stripped.startswith("# ") and not line.startswith(" "):
            out.append(stripped[2:])
    return out


@pytest.mark.timeout(120)
def test_every_block_of_the_cli_page_runs_and_prints_what_it_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    assert len(blocks) >= 5
    import chainette

    # a block that starts `python -m chainette` gets the chainette this test imports (a relative
    # PYTHONPATH=src would not survive the chdir)
    src = str(Path(chainette.__file__).resolve().parents[1])
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    monkeypatch.chdir(tmp_path)
    for number, code in enumerate(blocks, 1):
        # each block as a script: a namespace of its own, without this file's __future__ import
        exec(
            compile(code, f"{PAGE}:block {number}", "exec", dont_inherit=True),
            {"__name__": f"cli_page_{number}"},
        )
        printed = capsys.readouterr().out.splitlines()
        assert printed == _expected(code), f"block {number}"
