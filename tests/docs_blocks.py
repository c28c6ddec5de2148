"""The code blocks of the README and of every page under docs/, and how the docs tests run them.

A page's blocks run in order, from a fresh temporary folder, as a reader copying them would:

- ```python blocks run in one namespace per page (``__name__ == "__main__"``, as a script);
- ```bash (``sh``, ``shell``) blocks run with ``bash -euo pipefail`` in the same folder (a
  ```console block: its ``$ `` lines, the rest being their output), with this checkout's
  ``chainette`` and ``python`` first on ``PATH`` (``PYTHONPATH`` points at this checkout's ``src``);
- a block whose info string has ``title="path"`` (```python title="pipeline.py") is first written
  to that file (any language), so later commands can name it; a titled ```python block also runs.

Other languages (yaml, json, text) are only written when titled. Commands that name
``examples/...`` read this checkout's ``examples/`` folder, copied in (as run from the repository
root). A marker comment on the line before a block changes how it runs:

- ``<!-- no-run: why -->``: never run (setup scripts, a server that must already listen, a cluster);
- ``<!-- llama -->``: needs the real embedded engine; the page runs whole only under the ``llama``
  marker, and without those blocks otherwise (so later blocks must not depend on them).

Outside ``docs/features/`` (pages written by each feature's author, checked by their own tests), a
top-level ``print(...)  # text`` line of a python block says what it prints: the block's output must
hold each such ``text`` as a line, in order.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PYTHON = {"python", "py", "python3"}
SHELL = {"bash", "sh", "shell", "console"}

_FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)
_MARKER = re.compile(r"<!--\s*(?P<kind>no-run|llama)\b(?::\s*(?P<why>.*?))?\s*-->")
_TITLE = re.compile(r'title="(?P<title>[^"]+)"')
_PRINTS = re.compile(r"^print\(.*\)\s+# (?P<says>.+)$", re.M)


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    title: str | None
    body: str
    marker: str | None  # "no-run", "llama" or None
    why: str | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def pages() -> list[Path]:
    """The README and every Markdown page of the site (docs/**/*.md), feature pages included."""
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


def blocks(page: Path) -> list[Block]:
    return parse(page.read_text(encoding="utf-8"), page)


def parse(text: str, page: Path) -> list[Block]:
    """The fenced blocks of ``text`` (the Markdown of ``page``), with the marker above each."""
    found: list[Block] = []
    previous_end = 0
    for match in _FENCE.finditer(text):
        info = match["info"].strip()
        lang = info.split(" ", 1)[0].split("{", 1)[0].lower() if info else ""
        title = _TITLE.search(info)
        between = text[previous_end : match.start()].strip().splitlines()
        marker = _MARKER.fullmatch(between[-1].strip()) if between else None
        found.append(
            Block(
                page=page,
                line=text.count("\n", 0, match.start()) + 1,
                lang=lang,
                title=title["title"] if title else None,
                body=match["body"],
                marker=marker["kind"] if marker else None,
                why=marker["why"] if marker else None,
            )
        )
        previous_end = match.end()
    return found


def has_llama_blocks(page: Path) -> bool:
    return any(b.marker == "llama" for b in blocks(page))


def command_env() -> dict[str, str]:
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["COLUMNS"] = "120"
    env["NO_COLOR"] = "1"
    return env


def shell_script(block: Block) -> str:
    """The commands of a shell block: all of it, or a console block's ``$ `` lines."""
    if block.lang != "console":
        return block.body
    return "\n".join(line[2:] for line in block.body.splitlines() if line.startswith("$ "))


def check_prints(block: Block, printed: list[str]) -> None:
    """Each ``print(...)  # text`` comment is a line of the output, in order."""
    expected = [m["says"].strip() for m in _PRINTS.finditer(block.body)]
    lines = iter(line.strip() for line in printed)
    missing = [says for says in expected if not any(line == says for line in lines)]
    assert missing == [], f"{block.where}: printed {printed!r}, the comments say {expected!r}"


def run_page(page: Path, folder: Path, *, llama: bool) -> list[Block]:
    """Runs ``page``'s blocks in order in ``folder`` (the current directory); returns those run."""
    shutil.copytree(ROOT / "examples", folder / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    namespace: dict[str, object] = {"__name__": "__main__"}
    ran: list[Block] = []
    saved_env = dict(os.environ)
    try:
        for block in blocks(page):
            if _run_block(block, folder, namespace, llama=llama):
                ran.append(block)
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
    return ran


def _run_block(block: Block, folder: Path, namespace: dict[str, object], *, llama: bool) -> bool:
    """Runs one block (or leaves it out, by its marker); says whether it ran."""
    if block.marker == "no-run" or (block.marker == "llama" and not llama):
        return False
    if block.title:
        target = folder / block.title
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(block.body, encoding="utf-8")
    if block.lang in PYTHON:
        code = compile(block.body, block.where, "exec", dont_inherit=True)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(code, namespace)
        sys.stdout.write(out.getvalue())
        if DOCS / "features" not in block.page.parents:
            check_prints(block, out.getvalue().splitlines())
    elif block.lang in SHELL:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", shell_script(block)],
            cwd=folder,
            env=command_env(),
            capture_output=True,
            text=True,
            timeout=600 if block.marker == "llama" else 120,
        )
        assert done.returncode == 0, (
            f"{block.where}: exit {done.returncode}\n{block.body}\n--- stdout\n{done.stdout[-3000:]}"
            f"\n--- stderr\n{done.stderr[-3000:]}"
        )
    else:
        return False
    return True


def run_blocks_as_scripts(page: Path, folder: Path) -> list[tuple[str, list[str]]]:
    """A feature page's own check: each ```python block (untitled) runs as a script of its own (a
    fresh namespace, without the caller's ``__future__`` imports) in ``folder``, in page order;
    returns each block's code with the lines it printed."""
    out: list[tuple[str, list[str]]] = []
    with contextlib.chdir(folder):
        for k, code in enumerate(re.findall(r"```python\n(.*?)```", page.read_text(), re.S)):
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                exec(
                    compile(code, f"{page.name} block {k + 1}", "exec", dont_inherit=True),
                    {"__name__": f"page_{k}"},
                )
            out.append((code, printed.getvalue().splitlines()))
    return out


def said_by_prints(code: str) -> list[str]:
    """What a block's ``print(...)  # text`` lines say it prints, exactly and in order."""
    return [line.split("  # ", 1)[1] for line in code.splitlines() if line.strip().startswith("print(")]
