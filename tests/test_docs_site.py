"""The documentation site builds with no warning, and every page's code blocks run as written.

How blocks run, and the two markers that change it, is in ``tests/docs_blocks.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.docs_blocks import (
    ROOT,
    blocks,
    check_prints,
    has_llama_blocks,
    pages,
    parse,
    run_page,
    shell_script,
)

PAGES = pages()
IDS = [str(p.relative_to(ROOT)) for p in PAGES]


@pytest.mark.timeout(180)
def test_site_builds_with_strict_warnings(tmp_path: Path) -> None:
    quiet = {"DISABLE_MKDOCS_2_WARNING": "true", "NO_MKDOCS_2_WARNING": "1"}  # plugins' banners, not warnings
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), **quiet)
    build = ["mkdocs", "build", "--strict", "-f", "mkdocs.yml", "-d", str(tmp_path / "site")]
    done = subprocess.run(
        [sys.executable, "-m", *build],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    warnings = [line for line in done.stderr.splitlines() if line.startswith(("WARNING", "ERROR"))]
    assert done.returncode == 0 and warnings == [], done.stderr[-5000:]
    assert (tmp_path / "site" / "reference" / "api" / "index.html").read_text().count("doc-heading") > 50


@pytest.mark.parametrize("page", PAGES, ids=IDS)
@pytest.mark.timeout(300)
def test_page_blocks_run_in_order(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run_page(page, tmp_path, llama=False)


LLAMA_PAGES = [p for p in PAGES if has_llama_blocks(p)]


@pytest.mark.llama
@pytest.mark.parametrize("page", LLAMA_PAGES, ids=[str(p.relative_to(ROOT)) for p in LLAMA_PAGES])
@pytest.mark.timeout(1200)
def test_page_blocks_run_in_order_with_the_embedded_engine(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    run_page(page, tmp_path, llama=True)


def test_skipped_blocks_are_few_and_say_why() -> None:
    skipped = [b for p in PAGES for b in blocks(p) if b.marker == "no-run"]
    assert [b.where for b in skipped if not b.why] == []
    assert len(skipped) <= 12, [b.where for b in skipped]


def test_a_console_block_runs_its_prompt_lines() -> None:
    [block] = parse("```console\n$ chainette --version\nchainette 0.1.0\n$ echo ok\nok\n```\n", ROOT / "x.md")
    assert shell_script(block) == "chainette --version\necho ok"


def test_the_runner_catches_a_false_comment_and_honours_markers(tmp_path: Path) -> None:
    page = ROOT / "docs" / "probe.md"  # only parsed, never written
    text = (
        "<!-- no-run: a server -->\n```bash\nexit 1\n```\n\n"
        "<!-- llama -->\n```python\nraise SystemExit('needs the model')\n```\n\n"
        '```python title="made.py"\nprint(6 * 7)  # 42\n```\n\n'
        "```python\nprint(6 * 7)  # 41\n```\n"
    )
    found = parse(text, page)
    assert [(b.lang, b.marker, b.title) for b in found] == [
        ("bash", "no-run", None),
        ("python", "llama", None),
        ("python", None, "made.py"),
        ("python", None, None),
    ]
    assert found[0].why == "a server"
    check_prints(found[2], ["42"])
    with pytest.raises(AssertionError, match="the comments say"):
        check_prints(found[3], ["42"])
