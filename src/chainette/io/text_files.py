"""Text and Markdown files as inputs: a glob of files, one record per file, per paragraph (blank-line
separated) or per line (BatchFactory's ``ReadMarkdownLines``).

Each record is ``{"text": ..., "path": ..., "part": ...}``: the text (a paragraph's lines joined by
``\\n``, a line without its line break), the file's path as matched (``/`` separators), and the
part's number in its file (1-based: the paragraph's number, the line's number in the file, 1 for a
whole file). Blank lines are no record (per line) and separate paragraphs. Files are read in
sorted path order, one at a time, in 1 MiB blocks: only the current paragraph or line (or, per
file, the current file) is held. A file that cannot be read, or is not valid text in its
encoding, is one failure naming the path and the reason (per line or paragraph: the records
before the bad bytes were read, the rest of that file is not); the next file is read as usual.
"""

from __future__ import annotations

import codecs
import glob
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from .._errors import InputError
from .columns import ColumnMap, resolve_columns
from .items import InputItem, InputSource, record_id, row_item

__all__ = ["TEXT_FIELDS", "TextFiles", "TextFilesInput", "open_text_files", "text_files"]

Per = Literal["file", "paragraph", "line"]
PER: tuple[str, ...] = ("file", "paragraph", "line")
TEXT_FIELDS = ("text", "path", "part")
"""The fields of each record read from text files."""
_BLOCK = 1 << 20


@dataclass(frozen=True)
class TextFiles:
    """A glob of text / Markdown files as a chain's inputs (see :func:`text_files`)."""

    pattern: str
    per: Per = "file"
    encoding: str = "utf-8"

    def __post_init__(self) -> None:
        if self.per not in PER:
            raise InputError(f"text_files: per must be one of {', '.join(map(repr, PER))}, got {self.per!r}.")
        try:
            codecs.lookup(self.encoding)
        except LookupError:
            raise InputError(
                f"text_files: unknown encoding {self.encoding!r} (e.g. 'utf-8', 'latin-1')."
            ) from None


def text_files(pattern: str | Path, *, per: Per = "file", encoding: str = "utf-8") -> TextFiles:
    """Text or Markdown files as inputs: one record per file, paragraph or line.

    Each record has the fields ``text``, ``path`` (as matched) and ``part`` (the paragraph's or
    line's number in its file, from 1; 1 for a whole file); map them to the input model's own
    names with ``columns={"body": "text"}``. ``**`` matches folders at any depth.

    Args:
        pattern: A file path or a glob (``notes/*.md``, ``docs/**/*.txt``).
        per: ``"file"``, ``"paragraph"`` (blank-line separated) or ``"line"`` (blank lines skipped).
        encoding: The files' text encoding.

    Example:
        >>> from chainette import text_files
        >>> text_files("notes/*.md", per="paragraph").per
        'paragraph'
    """
    return TextFiles(str(pattern), per, encoding)


def open_text_files(
    spec: TextFiles, *, columns: Mapping[str, str] | None, model: type[BaseModel] | None
) -> TextFilesInput:
    """The matched files (sorted), the fields checked against ``model`` and ``columns``."""
    paths = sorted(p for p in glob.iglob(spec.pattern, recursive=True) if not Path(p).is_dir())
    if not paths:
        raise InputError(
            f"No file matches {spec.pattern!r} (relative to {str(Path.cwd())!r}). Check the pattern; "
            "'**' matches folders at any depth (docs/**/*.md)."
        )
    cmap = resolve_columns(f"text files {spec.pattern!r}", list(TEXT_FIELDS), model, columns)
    return TextFilesInput(spec, paths, cmap)


class TextFilesInput(InputSource):
    """The records of the matched files, in path order."""

    def __init__(self, spec: TextFiles, paths: list[str], cmap: ColumnMap) -> None:
        self.spec = spec
        self.paths = paths
        self.cmap = cmap
        self.name = f"the text files {spec.pattern!r}"
        self.total = len(paths) if spec.per == "file" else None

    def items(self) -> Iterator[InputItem]:
        index = 0
        for name in self.paths:
            path = name.replace("\\", "/")
            for part, text, error in _parts(Path(name), self.spec):
                if error is not None:
                    message = f"{path}: {error}"
                    yield InputItem(index, record_id(index, message.encode()), None, path, message)
                else:
                    value: dict[str, Any] = {"text": text, "path": path, "part": part}
                    if self.cmap.read is not None:  # only the fields the model reads
                        value = {k: v for k, v in value.items() if k in self.cmap.read}
                    unit = "" if self.spec.per == "file" else f" {self.spec.per} {part}"
                    yield row_item(index, self.cmap.value(value), f"{path}{unit}")
                index += 1


def _parts(path: Path, spec: TextFiles) -> Iterator[tuple[int, str, str | None]]:
    """``(part, text, None)`` for each record of one file, or ``(0, "", reason)`` once, last."""
    try:
        handle = path.open("rb")
    except OSError as exc:
        yield 0, "", f"cannot be read ({exc.strerror or type(exc).__name__}); check its permissions."
        return
    split = _Splitter(spec.per)
    decoder = codecs.getincrementaldecoder(spec.encoding)(errors="strict")
    offset = 0
    with handle:
        while True:
            try:
                block = handle.read(_BLOCK)
            except OSError as exc:
                yield 0, "", f"cannot be read ({exc.strerror or type(exc).__name__})."
                return
            held = decoder.getstate()[0]
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as exc:
                if spec.per != "file":  # the records before the bad bytes go on
                    yield from split.feed(codecs.decode(exc.object[: exc.start], spec.encoding))
                yield (
                    0,
                    "",
                    f"is not {spec.encoding} text (byte {exc.object[exc.start]:#04x} at byte offset "
                    f"{offset - len(held) + exc.start}); convert it, or read it with text_files(..., encoding=...).",
                )
                return
            offset += len(block)
            yield from split.feed(text)
            if not block:
                yield from split.end()
                return


class _Splitter:
    """Text in, records out: the whole text, its paragraphs or its non-blank lines."""

    def __init__(self, per: str) -> None:
        self.per = per
        self.pending = ""
        self.paragraph: list[str] = []
        self.paragraphs = 0
        self.line_no = 0

    def feed(self, text: str) -> Iterator[tuple[int, str, None]]:
        self.pending += text
        if self.per == "file":
            return
        *lines, self.pending = self.pending.split("\n")
        yield from self._lines(lines)

    def end(self) -> Iterator[tuple[int, str, None]]:
        if self.per == "file":
            yield 1, self.pending, None
            return
        rest, self.pending = self.pending, ""
        yield from self._lines([rest, ""])

    def _lines(self, lines: list[str]) -> Iterator[tuple[int, str, None]]:
        for raw in lines:
            line = raw.rstrip("\r")
            self.line_no += 1
            if self.per == "line":
                if line.strip():
                    yield self.line_no, line, None
            elif line.strip():
                self.paragraph.append(line)
            elif self.paragraph:
                self.paragraphs += 1
                yield self.paragraphs, "\n".join(self.paragraph), None
                self.paragraph = []
