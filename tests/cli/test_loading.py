"""Resolving TARGET strings and counting input records."""

from __future__ import annotations

from pathlib import Path

import pytest

from chainette.cli.loading import TargetError, count_jsonl_records, load_chain, split_target


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("pkg.module:chain", ("pkg.module", "chain")),
        ("dir/file.py:chain", ("dir/file.py", "chain")),
        ("dir/file.py", ("dir/file.py", None)),
        (r"C:\work\file.py", (r"C:\work\file.py", None)),
        (r"C:\work\file.py:chain", (r"C:\work\file.py", "chain")),
        ("pkg.module:", ("pkg.module", None)),
    ],
)
def test_split_target(target: str, expected: tuple[str, str | None]) -> None:
    assert split_target(target) == expected


def test_target_that_is_not_a_chain_says_what_it_is(tmp_path: Path) -> None:
    module = tmp_path / "not_a_chain.py"
    module.write_text("chain = 42\n")

    with pytest.raises(TargetError, match=r"is a int, not a chainette Chain"):
        load_chain(f"{module}:chain")


def test_target_without_attribute_needs_exactly_one_chain(tmp_path: Path) -> None:
    module = tmp_path / "no_chains.py"
    module.write_text("x = 1\n")

    with pytest.raises(TargetError, match=r"does not say which chain.*Chain objects: none"):
        load_chain(str(module))


def test_syntax_error_names_the_line(tmp_path: Path) -> None:
    module = tmp_path / "syntax.py"
    module.write_text("x = 1\ndef broken(:\n")

    with pytest.raises(TargetError, match=r"SyntaxError.*line 2"):
        load_chain(f"{module}:chain")


def test_count_jsonl_records_skips_blank_lines_across_chunk_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    line = b'{"text": "' + b"x" * 997 + b'"}'
    # ~3 MB: records and blank / whitespace-only / CRLF lines straddle the 1 MB read boundaries.
    body = b"".join(line + (b"\n\n  \r\n" if i % 7 == 0 else b"\r\n") for i in range(3000))
    path.write_bytes(body + line)  # last record without a trailing newline

    assert count_jsonl_records(path) == 3001
    assert count_jsonl_records(path) == sum(1 for raw in [*body.splitlines(), line] if raw.strip())


def test_count_jsonl_records_gives_up_on_huge_or_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"a": 1}\n' * 10)

    assert count_jsonl_records(path, max_bytes=50) is None
    assert count_jsonl_records(tmp_path / "missing.jsonl") is None
    assert count_jsonl_records(path) == 10
