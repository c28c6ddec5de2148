"""Inputs: JSONL paths and iterables; bad lines are named by line number."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.helpers import Question, read_jsonl

from chainette import Chain, InputError, apply


def upper(q: Question) -> Question:
    return Question(text=q.text.upper())


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_jsonl_path_input(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", ['{"text": "a"}', "", '{"text": "b"}'])
    result = Chain("c", [apply(upper)]).run(src, output_dir=tmp_path / "run")
    assert [r["upper.text"] for r in result.flattened()] == ["A", "B"]
    assert result.counts["records_in"] == 2  # blank lines are not records


def test_malformed_line_goes_to_failures_with_line_number(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", ['{"text": "a"}', '{"text": ', '{"text": "c"}', "[1, 2]"])
    result = Chain("c", [apply(upper)]).run(src, output_dir=tmp_path / "run")
    failures = read_jsonl(tmp_path / "run" / "failures.jsonl")
    assert [f["message"].split(":")[0] for f in failures] == ["in.jsonl line 2", "in.jsonl line 4"]
    assert "not valid JSON" in failures[0]["message"] and "Fix or remove the line" in failures[0]["message"]
    assert "expected a JSON object" in failures[1]["message"]
    assert [r["upper.text"] for r in result.flattened()] == ["A", "C"]


def test_strict_inputs_raise_on_the_first_bad_line(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", ['{"text": "a"}', "{oops"])
    with pytest.raises(InputError, match=r"in.jsonl line 2: not valid JSON"):
        Chain("c", [apply(upper)]).run(src, output_dir=tmp_path / "run", strict_inputs=True)


def test_record_not_fitting_input_model_names_the_field(tmp_path: Path) -> None:
    src = write_lines(tmp_path / "in.jsonl", ['{"txt": "a"}'])
    result = Chain("c", [apply(upper)]).run(src, output_dir=tmp_path / "run")
    [failure] = list(result.failures())
    assert failure["node"] == "input" and failure["error_type"] == "invalid_input"
    assert "in.jsonl line 1" in failure["message"] and "field 'text': Field required" in failure["message"]


def test_missing_input_file_is_an_error_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        Chain("c", [apply(upper)]).run(tmp_path / "nope.jsonl", output_dir=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_generators_and_async_iterables(tmp_path: Path) -> None:
    async def agen():  # type: ignore[no-untyped-def]
        for t in ("x", "y"):
            yield {"text": t}

    gen = (Question(text=t) for t in ("p", "q"))
    a = Chain("c", [apply(upper)]).run(gen, output_dir=tmp_path / "a")
    b = Chain("c", [apply(upper)]).run(agen(), output_dir=tmp_path / "b")
    assert [r["upper.text"] for r in a.flattened()] == ["P", "Q"]
    assert [r["upper.text"] for r in b.flattened()] == ["X", "Y"]


def test_a_line_that_is_not_utf8_is_named_with_the_byte_and_the_fix(tmp_path: Path) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(b'{"text": "a"}\n{"text": "caf\xe9"}\n{"text": "c"}\n')
    result = Chain("c", [apply(upper)]).run(src, output_dir=tmp_path / "run")
    [failure] = list(result.failures())
    assert failure["message"].startswith(
        "in.jsonl line 2: not valid UTF-8 (byte 0xe9 at byte 14 of the line)"
    ), failure["message"]
    assert (
        "surrogates" not in failure["message"] and "iconv -f latin1 -t utf-8 in.jsonl" in failure["message"]
    )
    assert [r["upper.text"] for r in result.flattened()] == ["A", "C"]
    with pytest.raises(InputError, match=r"in.jsonl line 2: not valid UTF-8"):
        Chain("c", [apply(upper)]).run(src, output_dir=tmp_path / "strict", strict_inputs=True)


def test_a_bad_line_is_kept_in_raw_and_a_parsed_one_in_input(tmp_path: Path) -> None:
    long_line = '{"text": "' + "x" * 20_000  # cut off: not valid JSON, and too long to keep whole
    src = tmp_path / "in.jsonl"
    lines = ['{"text": ', "[1, 2]", '{"txt": "a"}', long_line, '{"text": "ok"}']
    src.write_bytes("\n".join(lines).encode() + b"\n" + b'{"text": "caf\xe9"}\n')
    result = Chain("c", [apply(upper)]).run(src, output_dir=tmp_path / "run")
    failures = {f["message"].split(":")[0]: f for f in result.failures()}

    assert failures["in.jsonl line 1"]["raw"] == '{"text": ' and failures["in.jsonl line 1"]["input"] is None
    assert failures["in.jsonl line 2"]["raw"] == "[1, 2]" and failures["in.jsonl line 2"]["input"] == [1, 2]
    assert failures["in.jsonl line 3"]["raw"] == '{"txt": "a"}'
    assert failures["in.jsonl line 3"]["input"] == {"txt": "a"}  # valid JSON that does not fit the model
    raw = failures["in.jsonl line 4"]["raw"]
    assert raw.startswith(long_line[:10_000]) and len(raw) < 10_100
    assert raw.endswith("... [cut: the line has 20,010 characters; the first 10,000 are kept]")
    assert failures["in.jsonl line 6"]["raw"] == '{"text": "caf\\xe9"}'  # the bad byte, shown
    assert [r["upper.text"] for r in result.flattened()] == ["OK"]
