"""Reading a run folder's JSON files back safely: ``experiment.json``, ``metadata.json``, ``graph.json``.

A run folder may have been edited by hand, damaged, or made by someone else, so what
``chainette runs`` and ``chainette report`` read is checked before it is used:

- :func:`read_json_file` opens only regular files (a FIFO named ``experiment.json`` would block
  the read, a link to ``/dev/zero`` would never end), reads at most ``limit`` bytes, and refuses
  JSON nested deeper than :data:`MAX_DEPTH`;
- :func:`check_experiment` checks the types of the ``experiment.json`` fields the readers use
  (a ``"cases": "abc"`` or a ``"score": "high"`` is named, with its place, instead of failing
  later in a table).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["MAX_DEPTH", "MAX_JSON_BYTES", "StoredFileError", "check_experiment", "read_json_file"]

MAX_JSON_BYTES = 256 << 20
"""Bytes read at most from one JSON file of a run folder."""
MAX_DEPTH = 64
"""Nesting (objects and lists) allowed at most: recorded runs stay far below it."""


class StoredFileError(ValueError):
    """A run folder's file cannot be used; the message says why (not what file: the caller names it)."""


def read_json_file(path: Path, *, limit: int = MAX_JSON_BYTES) -> Any:
    """The JSON value in ``path``.

    Raises:
        OSError: the file cannot be opened or read.
        StoredFileError: it is not a regular file, is larger than ``limit`` bytes, is not JSON, or
            is nested deeper than :data:`MAX_DEPTH`.
    """
    # O_NONBLOCK: a FIFO opens at once instead of waiting for a writer (it is then refused);
    # reads of a regular file are not affected.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StoredFileError("it is not a regular file (a FIFO, device or socket)")
        if info.st_size > limit:
            raise StoredFileError(f"it holds {info.st_size:,} bytes, more than the {limit:,} read at most")
        raw = handle.read(limit + 1)
    if len(raw) > limit:
        raise StoredFileError(f"it holds more than the {limit:,} bytes read at most")
    try:
        value = json.loads(raw)
    except RecursionError:
        raise StoredFileError(f"its JSON is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise StoredFileError(f"it is not JSON ({exc})") from None
    if _depth_over(value, MAX_DEPTH):
        raise StoredFileError(f"its JSON is nested deeper than {MAX_DEPTH} levels")
    return value


def _depth_over(value: Any, limit: int) -> bool:
    """Whether ``value`` nests containers deeper than ``limit`` (iterative: no recursion to exhaust)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth >= limit:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


# ---------------------------------------------------------------- experiment.json's shape

Int = int | None
Num = float | None
Text = str | None


class _Part(BaseModel):
    # strict: a "1" is not a number, a 1 is not a name; extra keys are allowed (older and newer files)
    model_config = ConfigDict(strict=True, extra="allow", allow_inf_nan=False)


class _Tokens(_Part):
    prompt: Int = None
    completion: Int = None
    saved_prompt: Int = None
    saved_completion: Int = None


class _Cost(_Part):
    usd: Num = None
    saved_usd: Num = None


class _Cache(_Part):
    sent: Int = None
    hits: Int = None
    deduped: Int = None
    mode: Text = None
    runs: Int = None
    ledger: Text = None


class _Totals(_Part):
    cases: Int = None
    passed: Int = Field(None, alias="pass")
    fail: Int = None
    error: Int = None
    unscored: Int = None
    pass_rate: Num = None
    duration_s: Num = None
    tokens: _Tokens | None = None
    cost: _Cost | None = None
    cache: _Cache | None = None


class _Assessment(_Part):
    passed: bool | None = None
    score: Num = None
    metric: Num = None
    reason: Text = None


class _StepFigures(_Part):
    prompt: Int = None
    completion: Int = None
    saved_prompt: Int = None
    saved_completion: Int = None
    usd: Num = None
    saved_usd: Num = None


class _Span(_Part):
    node: str | int
    run: Text = None
    start_s: float
    end_s: float
    chunk: Int = None


class _Case(_Part):
    id: str | int
    status: Text = None
    score: Num = None
    reason: Text = None
    duration_s: Num = None
    tokens: _Tokens | None = None
    cost: _Cost | None = None
    error: dict[str, Any] | None = None
    assessments: dict[str, _Assessment] | None = None
    by_step: dict[str, _StepFigures] | None = None
    timeline: list[_Span] | None = None


class _Suite(_Part):
    path: Text = None
    sha256: Text = None
    cases: Int = None


class _Git(_Part):
    commit: Text = None
    dirty: bool | None = None


class _Rerun(_Part):
    target: Text = None
    overrides: list[str] | None = None
    engines: Text = None


class _Run(_Part):
    status: Text = None
    started_at: Text = None


class _Experiment(_Part):
    experiment: Text = None
    run: _Run | None = None
    totals: _Totals | None = None
    config: dict[str, Any] | None = None
    cases: list[_Case] | None = None
    suite: _Suite | None = None
    git: _Git | None = None
    rerun: _Rerun | None = None
    timeline_started_at: Text = None


def check_experiment(data: Any) -> None:
    """Check that ``data`` (an ``experiment.json`` read back) has the types its readers use.

    Raises:
        StoredFileError: naming the first wrong field by its place (``cases[2].score``) and what it holds.
    """
    if not isinstance(data, dict):
        raise StoredFileError(
            f"it holds a JSON {type(data).__name__}, not an object (an experiment's record)"
        )
    try:
        _Experiment.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        place = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"]).lstrip(".")
        given = json.dumps(first.get("input"), ensure_ascii=False, default=str)
        given = given if len(given) <= 60 else given[:59] + "…"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise StoredFileError(f"{place}: {first['msg'].lower()}, got {given}{more}") from None
