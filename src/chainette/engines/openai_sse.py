"""Reading a streamed chat completion: OpenAI's server-sent events, or Ollama's JSON lines.

:class:`StreamedAnswer` is fed the body's lines one at a time, returns each content delta, and
keeps everything else (reasoning deltas, finish reason, usage) for the final
:class:`~chainette.engines.base.Completion`. No I/O here: :mod:`.openai_http` owns the connection.
"""

from __future__ import annotations

from typing import Any

import orjson

from .base import Completion

__all__ = ["StreamError", "StreamedAnswer"]


class StreamError(ValueError):
    """The server sent an error event in the middle of the stream."""


class StreamedAnswer:
    """One streamed answer, assembled line by line.

    Args:
        ollama: The body is Ollama's native ``/api/chat`` stream (one JSON object a line)
            rather than OpenAI's ``data: {...}`` events ending with ``data: [DONE]``.

    Example:
        >>> answer = StreamedAnswer()
        >>> answer.feed('data: {"choices": [{"delta": {"content": "Hi"}, "finish_reason": "stop"}]}')
        'Hi'
        >>> answer.feed("data: [DONE]"), answer.complete, answer.completion(1).text
        ('', True, 'Hi')
    """

    def __init__(self, *, ollama: bool = False) -> None:
        self.ollama = ollama
        self.parts: list[str] = []
        """The content deltas so far."""
        self.reasoning: list[str] = []
        self.finish_reason: str | None = None
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.done = False
        """The end marker arrived (``[DONE]``, or Ollama's ``"done": true``)."""

    @property
    def complete(self) -> bool:
        """The answer is whole: its end marker arrived, or at least its finish reason."""
        return self.done or self.finish_reason is not None

    def feed(self, line: str) -> str:
        """Take one line of the body; returns the content it adds ("" for none)."""
        if self.ollama:
            return self._feed_ollama(line)
        if not line.startswith("data:"):
            return ""  # blank separators, ": keep-alive" comments, "event:" / "id:" fields
        data = line[5:].strip()
        if data == "[DONE]":
            self.done = True
            return ""
        if self.done or not data:
            return ""
        chunk = orjson.loads(data)
        if chunk.get("error"):
            raise StreamError(_error_message(chunk["error"]))
        usage = chunk.get("usage")
        if usage:
            self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            self.completion_tokens = int(usage.get("completion_tokens") or 0)
        choices = chunk.get("choices") or []
        if not choices:
            return ""
        choice = choices[0]
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        delta = choice.get("delta") or {}
        return self._add(delta.get("content"), delta.get("reasoning_content") or delta.get("reasoning"))

    def _feed_ollama(self, line: str) -> str:
        if not line.strip() or self.done:
            return ""
        chunk = orjson.loads(line)
        if chunk.get("error"):
            raise StreamError(_error_message(chunk["error"]))
        if chunk.get("done"):
            self.done = True
            self.finish_reason = chunk.get("done_reason") or "stop"
            self.prompt_tokens = int(chunk.get("prompt_eval_count") or 0)
            self.completion_tokens = int(chunk.get("eval_count") or 0)
        message = chunk.get("message") or {}
        return self._add(message.get("content"), message.get("thinking"))

    def _add(self, content: Any, reasoning: Any) -> str:
        if reasoning:
            self.reasoning.append(str(reasoning))
        text = str(content) if content else ""
        if text:
            self.parts.append(text)
        return text

    def completion(self, attempts: int) -> Completion:
        """The whole answer, as the non-streamed request would have returned it."""
        return Completion(
            text="".join(self.parts),
            finish_reason=self.finish_reason or "stop",
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            reasoning="".join(self.reasoning) or None,
            attempts=attempts,
        )


def _error_message(error: Any) -> str:
    text = error.get("message", error) if isinstance(error, dict) else error
    text = " ".join(str(text).split())
    return text[:300] + ("..." if len(text) > 300 else "")
