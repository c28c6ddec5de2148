"""docs/features/per-record-flow.md: every Python block runs as written, top to bottom, in an
empty folder, and prints what its comments say."""

from __future__ import annotations

from pathlib import Path

from tests.docs_blocks import run_blocks_as_scripts, said_by_prints

PAGE = Path(__file__).resolve().parents[1] / "docs" / "features" / "per-record-flow.md"


def test_the_pages_blocks_run_and_print_what_they_say(tmp_path: Path) -> None:
    blocks = run_blocks_as_scripts(PAGE, tmp_path)
    assert len(blocks) == 2
    for k, (code, printed) in enumerate(blocks):
        assert printed == said_by_prints(code), f"block {k + 1}"
