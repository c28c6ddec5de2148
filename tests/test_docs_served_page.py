"""docs/features/served-page.md's Python blocks run as written, in order, from an empty folder."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "features" / "served-page.md"


@pytest.mark.timeout(60)
def test_served_page_blocks_run_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    assert len(blocks) == 3
    monkeypatch.chdir(tmp_path)
    scope: dict[str, object] = {"__name__": "served_page"}
    for code in blocks:
        exec(compile(code, str(PAGE), "exec", dont_inherit=True), scope)
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        "[{'text': 'Where is my refund?', 'priority': 'low'}, {'text': 'My parcel is late'}]",
        "[('step', 'answer')]",
        "error t-1 422 invalid_input",
        "[(['copies'], 'Input should be less than or equal to 5')]",
    ]
