"""Reading a finished batch's result files back into completions (for :mod:`.openai_batch`).

A result line is ``{"custom_id", "response": {"status_code", "body"}, "error"}``; an answer is a
:class:`Completion`, anything else an error completion whose text is the provider's reason with
the batch id (and, for an unreadable line, the file and line number).
"""

from __future__ import annotations

from typing import Any

import orjson

from .base import Completion
from .openai_http import parse_chat_completion

__all__ = ["error_completion", "line_completion", "missing_reason", "read_lines"]


def read_lines(
    text: str,
    where: str,
    batch_id: str,
    items: dict[str, str],
    answers: dict[str, Completion],
    notes: list[str],
) -> None:
    """The completions of ``text`` (a result file, ``where`` names it) for the custom ids in
    ``items``, into ``answers``; a line that is not a result line goes into ``notes``."""
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        place = f"{where} line {number}"
        try:
            data = orjson.loads(line)
            custom_id = data["custom_id"]
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            notes.append(f"{place} is not a result line ({type(exc).__name__}: {exc}): {line[:120]!r}")
            continue
        if custom_id in items and custom_id not in answers:
            answers[custom_id] = line_completion(place, batch_id, data)


def error_completion(text: str) -> Completion:
    return Completion(text=text, finish_reason="error")


def line_completion(where: str, batch_id: str, data: dict[str, Any]) -> Completion:
    """One result line as a completion: the answer, or the provider's reason with the batch id."""
    error = data.get("error")
    response = data.get("response") or {}
    if error:
        if isinstance(error, dict):
            error = f"{error.get('code') or 'error'}: {error.get('message') or ''}".rstrip(": ")
        return error_completion(f"batch {batch_id}: {error}")
    status = response.get("status_code") if isinstance(response, dict) else None
    body = response.get("body") if isinstance(response, dict) else None
    if status != 200:
        detail = body.get("error", body) if isinstance(body, dict) else body
        detail = detail.get("message", detail) if isinstance(detail, dict) else detail
        return error_completion(f"batch {batch_id}: HTTP {status}: {detail}")
    try:
        completion = parse_chat_completion(body)
    except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
        return error_completion(f"{where}: unreadable answer ({type(exc).__name__}: {exc})")
    return completion


def missing_reason(batch_id: str, batch: dict[str, Any], window: str, notes: list[str]) -> str:
    """Why an item has no line in the batch's files."""
    status = batch.get("status")
    if status == "failed":
        errors = (batch.get("errors") or {}).get("data") or []
        said = "; ".join(
            f"{e.get('code') or 'error'}: {e.get('message') or ''}"
            + (f" (line {e['line']})" if e.get("line") else "")
            for e in errors
            if isinstance(e, dict)
        )
        reason = f"batch {batch_id} failed: {said or 'no reason given'}"
    elif status == "expired":
        reason = f"batch {batch_id} expired (completion_window {window}) before this request ran"
    elif status == "cancelled":
        reason = f"batch {batch_id} was cancelled before this request ran"
    else:
        reason = f"batch {batch_id} ended {status} without a result for this request"
    if notes:
        reason += "; " + "; ".join(notes[:3]) + (f" (and {len(notes) - 3} more)" if len(notes) > 3 else "")
    return reason
