"""The README's Python examples run as written: the quick start on the real embedded engine."""

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


def test_readme_union_example_routes_by_variant(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from chainette import register_engine

    [code] = [
        c for c in re.findall(r"```python\n(.*?)```", README.read_text(), re.S) if "discriminator=" in c
    ]
    register_engine("local", backend="fake")  # the quick start's engine name; no model to load
    monkeypatch.chdir(tmp_path)
    # dont_inherit: the block runs as a script would, without this file's `from __future__ import annotations`
    exec(compile(code, str(README), "exec", dont_inherit=True), {"__name__": "readme_union"})
    [line] = capsys.readouterr().out.splitlines()
    kind, reply = line.split(" | ")
    assert reply.startswith({"refund": "Refunding", "question": "See our help page"}[kind])


@pytest.mark.llama
@pytest.mark.timeout(300)
def test_readme_serving_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:  # type: ignore[no-untyped-def]
    section = README.read_text().split("## Serving a chain", 1)[1]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    monkeypatch.syspath_prepend(str(README.parent))  # `from examples.quickstart import chain`
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec", dont_inherit=True), {"__name__": "readme_serving"})
    printed = capsys.readouterr().out.splitlines()
    kinds = [line.split()[0] for line in printed[:-1]]
    assert kinds[:3] == ["queued", "started", "node_started"] and kinds[-1] == "output"
    assert printed[-1] == "Report queued 1"  # the typed output; the other trace was cancelled


def test_readme_policy_example_prints_what_its_comments_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    section = README.read_text().split("### Node policies", 1)[1]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec", dont_inherit=True), {"__name__": "readme_policies"})
    printed = capsys.readouterr().out.splitlines()
    expected = [line.split("# ", 1)[1] for line in code.splitlines() if line.startswith("print(")]
    assert printed == expected


def test_readme_middleware_example_prints_what_its_comment_says(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    section = README.read_text().split("### Events and middleware", 1)[1]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec", dont_inherit=True), {"__name__": "readme_events"})
    [line] = capsys.readouterr().out.splitlines()
    expected = code.rsplit("# ", 1)[1].strip()
    assert line == expected == "2 1 1"
    assert [r.name for r in caplog.records if "exporter down" in (r.exc_text or "")] == ["chainette.events"]


def test_readme_experiment_example_prints_what_its_comments_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    section = README.read_text().split("## Experiments", 1)[1]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec", dont_inherit=True), {"__name__": "__main__"})  # as a script
    printed = capsys.readouterr().out.splitlines()
    expected = [line.split("# ", 1)[1] for line in code.splitlines() if line.lstrip().startswith("print(")]
    assert printed == expected
    data = (tmp_path / "runs" / "calc" / "experiment.json").read_text()
    assert '"pass_rate": 0.5' in data
    # saved as experiments.py, the module imports without running (what `chainette experiment run` does)
    capsys.readouterr()
    exec(compile(code, str(README), "exec", dont_inherit=True), {"__name__": "experiments"})
    assert capsys.readouterr().out == ""


def test_readme_dataset_example_prints_what_its_comments_say(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import datasets
    from tests.helpers import echo, qa_step

    from chainette import Chain, register_engine

    section = README.read_text().split("## Reading a dataset", 1)[1]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    register_engine("fake", backend="fake", responder=echo)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")  # not ~/.cache
    exec(
        compile(code, str(README), "exec"), {"__name__": "readme_dataset", "chain": Chain("qa", [qa_step()])}
    )
    printed = capsys.readouterr().out.splitlines()
    expected = [line.split("# ", 1)[1] for line in code.splitlines() if line.startswith("print(")]
    assert printed == expected
    assert not any(p.name == "hf-cache" for p in (tmp_path / "runs" / "reviews").iterdir())
