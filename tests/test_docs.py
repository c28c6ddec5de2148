"""The README's Python example runs as written, on the real embedded engine."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.llama
@pytest.mark.timeout(150)  # 2-45 s measured on a busy 2-core machine
def test_readme_quick_start_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "{'records_in': 1, 'records_out': 1, 'failures': 0, 'filtered': 0}"
    assert (tmp_path / "runs" / "qa" / "flattened" / "000.jsonl").exists()


def test_readme_subflow_example_prints_what_its_comments_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    section = README.read_text().split("### Subflows", 1)[1]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out.splitlines()
    expected = [line.split("# ", 1)[1] for line in code.splitlines() if line.startswith("print(")]
    assert printed == expected
