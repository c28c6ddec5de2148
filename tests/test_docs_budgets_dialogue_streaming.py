"""docs/features/budgets-dialogue-streaming.md: its Python blocks run as written, in order, from an
empty folder, and print what the page says they print."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "features" / "budgets-dialogue-streaming.md"

EXPECTED = [
    ["max_hops 2", "until 3", "max_iterations 10"],
    ["['note 0', 'note 1', 'note 2']"],
    [
        "5 turns",
        "Explain the tides first.",
        "Answer the question, or go on explaining.",
        "Sum up the lesson on the tides in one sentence.",
    ],
    ["0 'streamed ' False", "1 'word ' False", "2 'by ' False", "3 'word ' False", "4 '' True", "words=4"],
    ["['first', 'second']", "one shot"],
]


@pytest.mark.timeout(120)
def test_every_block_runs_in_order_and_prints_what_the_page_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    assert len(blocks) == len(EXPECTED)
    monkeypatch.chdir(tmp_path)
    for k, (code, expected) in enumerate(zip(blocks, EXPECTED, strict=True)):
        # dont_inherit: each block runs as a script would, without this file's __future__ import
        exec(compile(code, f"{PAGE.name} block {k}", "exec", dont_inherit=True), {"__name__": f"page_{k}"})
        assert capsys.readouterr().out.splitlines() == expected, f"block {k}"
