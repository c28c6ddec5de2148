"""The README's and the docs pages' Python examples run as written and print what they say.

Every block of every page also runs in ``tests/test_docs_site.py``; these pin what particular
examples print and leave behind.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def section_code(page: str, heading: str) -> tuple[str, str]:
    """The first python block under ``heading`` on ``docs/<page>``, and the page's path (for tracebacks)."""
    path = DOCS / page
    section = path.read_text().split(heading, 1)[1]
    return re.findall(r"```python[^\n]*\n(.*?)```", section, re.S)[0], str(path)


@pytest.mark.llama
@pytest.mark.timeout(150)  # 2-45 s measured on a busy 2-core machine
def test_readme_quick_start_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]
    code = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "{'records_in': 1, 'records_out': 1, 'failures': 0, 'filtered': 0}"
    assert (tmp_path / "runs" / "qa" / "flattened" / "000.jsonl").exists()


def test_subflow_example_prints_what_its_comments_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:  # type: ignore[no-untyped-def]
    code, where = section_code("concepts/control-flow.md", "## Subflows")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, where, "exec"), {"__name__": "readme"})
    printed = capsys.readouterr().out.splitlines()
    expected = [line.split("# ", 1)[1] for line in code.splitlines() if line.startswith("print(")]
    assert printed == expected


def test_union_example_routes_by_variant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    page = DOCS / "concepts" / "control-flow.md"
    [code] = [c for c in re.findall(r"```python\n(.*?)```", page.read_text(), re.S) if "discriminator=" in c]
    assert 'register_engine("demo", backend="fake")' in code  # the block registers its own engine
    monkeypatch.chdir(tmp_path)
    # dont_inherit: the block runs as a script would, without this file's `from __future__ import annotations`
    exec(compile(code, str(page), "exec", dont_inherit=True), {"__name__": "readme_union"})
    [line] = capsys.readouterr().out.splitlines()
    kind, reply = line.split(" | ")
    assert reply.startswith({"refund": "Refunding", "question": "See our help page"}[kind])


def test_serving_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]
    code, where = section_code("guides/serving.md", "# Serving a chain")
    assert "import examples" not in code and "from examples" not in code  # runs from any folder
    monkeypatch.chdir(tmp_path)
    exec(compile(code, where, "exec", dont_inherit=True), {"__name__": "readme_serving"})
    printed = capsys.readouterr().out.splitlines()
    kinds = [line.split()[0] for line in printed[:-1]]
    assert kinds[:3] == ["queued", "started", "node_started"] and kinds[-1] == "output"
    assert printed[-1] == "Report queued 1"  # the typed output; the other trace was cancelled


def test_policy_example_prints_what_its_comments_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, where = section_code("guides/policies.md", "## Node policies")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, where, "exec", dont_inherit=True), {"__name__": "readme_policies"})
    printed = capsys.readouterr().out.splitlines()
    expected = [line.split("# ", 1)[1] for line in code.splitlines() if line.startswith("print(")]
    assert printed == expected


def test_middleware_example_prints_what_its_comment_says(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    code, where = section_code("guides/integrations.md", "## Events and middleware")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, where, "exec", dont_inherit=True), {"__name__": "readme_events"})
    [line] = capsys.readouterr().out.splitlines()
    expected = code.rsplit("# ", 1)[1].strip()
    assert line == expected == "2 1 1"
    assert [r.name for r in caplog.records if "exporter down" in (r.exc_text or "")] == ["chainette.events"]


def test_experiment_example_prints_what_its_comments_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, where = section_code("guides/experiments.md", "# Experiments")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, where, "exec", dont_inherit=True), {"__name__": "__main__"})  # as a script
    printed = capsys.readouterr().out.splitlines()
    expected = [line.split("# ", 1)[1] for line in code.splitlines() if line.lstrip().startswith("print(")]
    assert printed == expected
    data = (tmp_path / "runs" / "calc-python" / "experiment.json").read_text()
    assert '"pass_rate": 0.5' in data
    # saved as experiments.py, the module imports without running (what `chainette experiment run` does)
    capsys.readouterr()
    exec(compile(code, where, "exec", dont_inherit=True), {"__name__": "experiments"})
    assert capsys.readouterr().out == ""


def test_dataset_example_prints_what_its_comments_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import datasets

    code, where = section_code("guides/datasets.md", "# Reading datasets")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-default")  # never ~/.cache
    exec(compile(code, where, "exec", dont_inherit=True), {"__name__": "readme_dataset"})
    printed = capsys.readouterr().out.splitlines()
    expected = [line.split("# ", 1)[1] for line in code.splitlines() if line.startswith("print(")]
    assert printed == expected
    assert not any(p.name == "hf-cache" for p in (tmp_path / "runs" / "reviews").iterdir())
    assert (tmp_path / "hf-cache").is_dir() and not (tmp_path / "hf-default").exists()  # cache_dir= is used
