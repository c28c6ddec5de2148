"""The OpenAI chat-completions wire format: request bodies out, completions in.

Shared by the ``openai`` back-end (:mod:`.openai_http`) and the batch back-end
(:mod:`.openai_batch`, :mod:`.batch_results`), which writes the same bodies into its JSONL file
and reads the same completion objects back.
"""

from __future__ import annotations

from typing import Any

import httpx
import orjson

from .base import ChatRequest, Completion
from .http_transport import Reply


def chat_body(model: str, request: ChatRequest, dialect: str) -> dict[str, Any]:
    """The ``/chat/completions`` body of ``request`` (without ``extra_body``), its schema sent in
    ``dialect`` (any of :data:`DIALECTS` but ``auto`` and ``ollama``). The batch back-end writes
    the same bodies into its JSONL file."""
    sampling = request.sampling
    schema = request.json_schema
    body: dict[str, Any] = {
        "model": model,
        "messages": list(request.messages),
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "max_tokens": sampling.max_tokens,
    }
    if sampling.seed is not None:
        body["seed"] = sampling.seed
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if schema is not None:
        if dialect == "json_schema":
            spec = {"name": str(schema.get("title") or "output"), "schema": schema, "strict": False}
            body["response_format"] = {"type": "json_schema", "json_schema": spec}
        elif dialect == "json_object":
            body["response_format"] = {"type": "json_object", "schema": schema}
        elif dialect == "structured_outputs":
            body["structured_outputs"] = {"json": schema}
        elif dialect == "guided_json":
            body["guided_json"] = schema
    return body


def parse_chat_reply(response: Reply) -> Completion:
    return parse_chat_completion(orjson.loads(response.content))


def parse_chat_completion(data: Any) -> Completion:
    """A chat-completion object (a response body, or a batch output line's ``response.body``) as
    a :class:`Completion`; ``KeyError`` / ``IndexError`` / ``TypeError`` when it is not one."""
    choice = data["choices"][0]
    message = choice.get("message") or {}
    usage = data.get("usage") or {}
    return Completion(
        text=message.get("content") or "",
        finish_reason=choice.get("finish_reason") or "stop",
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        reasoning=message.get("reasoning_content") or message.get("reasoning") or None,
    )


def parse_ollama_reply(response: Reply) -> Completion:
    data = orjson.loads(response.content)
    message = data["message"]
    return Completion(
        text=message.get("content") or "",
        finish_reason=data.get("done_reason") or "stop",
        prompt_tokens=int(data.get("prompt_eval_count") or 0),
        completion_tokens=int(data.get("eval_count") or 0),
        reasoning=message.get("thinking") or None,
    )


def error_text(response: Reply | httpx.Response) -> str:
    """The server's error message, short."""
    try:
        data = orjson.loads(response.content)
        error = data.get("error", data) if isinstance(data, dict) else data
        text = error.get("message", error) if isinstance(error, dict) else error
    except orjson.JSONDecodeError:
        text = response.text
    text = " ".join(str(text).split())
    return text[:300] + ("..." if len(text) > 300 else "")
