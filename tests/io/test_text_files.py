"""Text / Markdown files as inputs: ``text_files(glob, per=...)`` and the CLI's ``-i GLOB --per``."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from pydantic import BaseModel
from tests.helpers import Answer, echo
from typer.testing import CliRunner

from chainette import Chain, InputError, Step, apply, register_engine, text_files
from chainette.cli import app
from chainette.io.inputs import iter_input_chunks


class Doc(BaseModel):
    text: str
    path: str
    part: int


class Note(BaseModel):
    body: str
    source: str


def shout(n: Note) -> Note:
    return Note(body=n.body.upper(), source=n.source)


def _notes(root: Path) -> Path:
    notes = root / "notes"
    (notes / "deep").mkdir(parents=True)
    (notes / "a.md").write_text("First para\nline two\n\nSecond para\n\n\nThird\n")
    (notes / "b.md").write_text("only one")
    (notes / "deep" / "c.md").write_text("deep one\n")
    return notes


def _values(inputs: object, **options: object) -> list[tuple[str, object]]:
    async def main() -> list[tuple[str, object]]:
        out = []
        async for chunk in iter_input_chunks(inputs, 2, **options):  # type: ignore[arg-type]
            out.extend((item.id, item.value if item.error is None else item.error) for item in chunk)
        return out

    return anyio.run(main)


def test_per_paragraph_line_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _notes(tmp_path)
    monkeypatch.chdir(tmp_path)
    paragraphs = [v for _, v in _values(text_files("notes/*.md", per="paragraph"))]
    assert paragraphs == [
        {"text": "First para\nline two", "path": "notes/a.md", "part": 1},
        {"text": "Second para", "path": "notes/a.md", "part": 2},
        {"text": "Third", "path": "notes/a.md", "part": 3},
        {"text": "only one", "path": "notes/b.md", "part": 1},
    ]
    lines = [v for _, v in _values(text_files("notes/a.md", per="line"))]
    assert [(v["part"], v["text"]) for v in lines] == [  # type: ignore[index]
        (1, "First para"),
        (2, "line two"),
        (4, "Second para"),
        (7, "Third"),
    ]
    files = [v for _, v in _values(text_files("notes/**/*.md"))]
    assert [v["path"] for v in files] == ["notes/a.md", "notes/b.md", "notes/deep/c.md"]  # type: ignore[index]
    assert files[2] == {"text": "deep one\n", "path": "notes/deep/c.md", "part": 1}
    # the same files give the same ids (resume), whatever the chunk size
    assert _values(text_files("notes/*.md", per="paragraph")) == _values(
        text_files("notes/*.md", per="paragraph")
    )


def test_undecodable_file_is_a_failure_naming_it_and_the_others_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    notes = _notes(tmp_path)
    monkeypatch.chdir(tmp_path)
    (notes / "bad.md").write_bytes(b"good line\n\nbad \xff\xfe bytes\n")
    register_engine("fake", backend="fake", responder=echo)
    qa = Step(
        id="qa",
        input_model=Doc,
        output_model=Answer,
        engine_name="fake",
        user_prompt="{{ text }} ({{ path }} #{{ part }})",
    )
    chain = Chain("notes", [qa])
    result = chain.run(text_files("notes/*.md", per="paragraph"), tmp_path / "run")
    answers = [row["qa.answer"] for row in result.flattened()]
    assert len(answers) == 5  # a.md: 3, bad.md: its first paragraph, b.md: 1
    assert any("bad.md #1" in a for a in answers)
    (failure,) = [json.loads(line) for line in (tmp_path / "run" / "failures.jsonl").read_text().splitlines()]
    assert failure["node"] == "input"
    assert "bad.md: is not utf-8 text (byte 0xff at byte offset 15)" in failure["message"]
    assert "encoding=" in failure["message"]


def test_columns_map_the_fields_to_the_models_names(tmp_path: Path) -> None:
    _notes(tmp_path)
    chain = Chain("notes", [apply(shout)])
    result = chain.run(
        text_files(str(tmp_path / "notes" / "b.md")),
        tmp_path / "run",
        columns={"body": "text", "source": "path"},
    )
    assert [row["shout.body"] for row in result.flattened()] == ["ONLY ONE"]
    with pytest.raises(InputError, match=r"no column 'txt'.*did you mean 'text'"):
        chain.run(text_files(str(tmp_path / "notes" / "b.md")), tmp_path / "r2", columns={"body": "txt"})


def test_no_match_and_bad_options_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="No file matches"):
        _values(text_files(str(tmp_path / "none" / "*.md")))
    with pytest.raises(InputError, match="per must be one of"):
        text_files("x/*.md", per="sentence")  # type: ignore[arg-type]


def test_cli_reads_a_glob_per_paragraph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _notes(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "chain_notes.py").write_text(
        "from pydantic import BaseModel\n"
        "from chainette import Chain, apply\n"
        "class Doc(BaseModel):\n    text: str\n    path: str\n    part: int\n"
        "def size(d: Doc) -> Doc:\n    return Doc(text=str(len(d.text)), path=d.path, part=d.part)\n"
        "chain = Chain('notes', [apply(size)])\n"
    )
    runner = CliRunner()
    result = runner.invoke(
        app, ["run", "chain_notes.py:chain", "-i", "notes/*.md", "--per", "paragraph", "-o", "run", "-q"]
    )
    assert result.exit_code == 0, result.output
    rows = [
        json.loads(line)
        for f in sorted((tmp_path / "run" / "flattened").glob("*.jsonl"))
        for line in f.read_text().splitlines()
    ]
    assert [(r["input.path"], r["input.part"], r["size.text"]) for r in rows] == [
        ("notes/a.md", 1, "19"),
        ("notes/a.md", 2, "11"),
        ("notes/a.md", 3, "5"),
        ("notes/b.md", 1, "8"),
    ]
    glob_alone = runner.invoke(app, ["run", "chain_notes.py:chain", "-i", "notes/*.md", "-o", "run2"])
    assert glob_alone.exit_code != 0
    assert "--per" in glob_alone.output


def test_a_markdown_or_text_file_without_per_is_refused_naming_per(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("notes.md").write_text("# Notes\n\nSome text.\n")
    Path("notes.txt").write_text("\nplain words\n")
    Path("rows.txt").write_text('{"text": "a JSONL file under a .txt name"}\n')
    Path("chain_notes.py").write_text(
        "from pydantic import BaseModel\n"
        "from chainette import Chain, apply\n"
        "class Doc(BaseModel):\n    text: str\n"
        "def same(d: Doc) -> Doc:\n    return d\n"
        "chain = Chain('notes', [apply(same)])\n"
    )
    runner = CliRunner()
    for name in ("notes.md", "notes.txt"):
        result = runner.invoke(app, ["run", "chain_notes.py:chain", "-i", name, "-o", f"run-{name}", "-q"])
        assert result.exit_code == 1, result.output
        assert "text or Markdown file" in result.stderr and "--per file|paragraph|line" in result.stderr
        assert f"text_files('{name}', per='paragraph')" in " ".join(result.stderr.split())
        assert not Path(f"run-{name}").exists()  # refused before the run folder is made
    with pytest.raises(InputError, match="--per file"):
        _values(tmp_path / "notes.md")
    jsonl = runner.invoke(app, ["run", "chain_notes.py:chain", "-i", "rows.txt", "-o", "run-rows", "-q"])
    assert jsonl.exit_code == 0, jsonl.output  # JSONL under a .txt name still reads as JSONL
