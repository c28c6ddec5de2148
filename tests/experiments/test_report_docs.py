"""docs/features/report.md: its Python blocks run in order, as written, in an empty folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[2] / "docs" / "features" / "report.md"


@pytest.mark.timeout(120)
def test_the_report_pages_python_blocks_run_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    assert len(blocks) == 2
    monkeypatch.chdir(tmp_path)
    for k, code in enumerate(blocks):
        # dont_inherit: each block runs as a script would, without this file's __future__ import
        exec(
            compile(code, f"{PAGE}#block{k + 1}", "exec", dont_inherit=True), {"__name__": f"report_doc_{k}"}
        )
    printed = capsys.readouterr().out.splitlines()
    assert printed == ["baseline 1.0", "slower 1.0", "sloppy 0.3333", "report.html"]
    assert (tmp_path / "report.html").stat().st_size > 10_000
