"""docs/features/sources-and-sinks.md: every Python block runs as written, in order, in an empty
folder, offline, on the fake engine."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[1] / "docs" / "features" / "sources-and-sinks.md"


def test_sources_and_sinks_page_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    assert len(blocks) == 5
    for k, code in enumerate(blocks):
        # dont_inherit: each block runs as a script would, without this file's __future__ import
        exec(compile(code, f"{PAGE}#block{k}", "exec", dont_inherit=True), {"__name__": f"docs_block_{k}"})
    out = capsys.readouterr().out.splitlines()
    for line in (
        "[('notes/a.md', 1), ('notes/a.md', 2), ('notes/a.md', 3), ('notes/b.md', 1)]",
        "[(1, 'ONE'), (2, 'TWO'), (4, 'THREE')]",
        "['q0 (2 chars)', 'q1 (2 chars)', 'q2 (2 chars)']",
        "2",
        "['reply', 'score']",
        "True",
    ):
        assert line in out
    assert any("did you mean 'answer'" in line for line in out)
    assert len([line for line in out if line.startswith("[show] ")]) == 2
