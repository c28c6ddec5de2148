"""A fake engine that answers instantly with schema-valid JSON. Ships for users' own tests.

Example:
    >>> from chainette import register_engine
    >>> _ = register_engine("test", backend="fake")             # random-but-valid outputs
    >>> _ = register_engine("canned", backend="fake",
    ...                     responder=lambda request: '{"answer": "42"}')

Answers are deterministic: the same request always gets the same answer.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import AsyncGenerator, Callable, Sequence
from typing import Any, ClassVar

import anyio
import anyio.lowlevel

from .base import ChatRequest, Completion, Engine

__all__ = ["FakeEngine", "example_for_schema"]

_WORDS = ("alpha", "bravo", "cedar", "delta", "ember", "fjord", "grove", "harbor", "iris", "juniper")

Responder = Callable[[ChatRequest], "str | dict[str, Any] | Completion"]


class FakeEngine(Engine):
    """Answers each request with JSON that validates against the request's schema.

    Args:
        model: Ignored; kept so the fake accepts any engine definition.
        responder: Optional ``fn(request) -> str | dict | Completion`` to script answers.
            An exception it raises fails that request (``finish_reason="error"``), not the batch.
        latency: Seconds each ``generate`` call sleeps (to exercise concurrency), or
            ``fn(request) -> seconds``: each request's own latency (a call sleeps as long as its
            slowest request, as a batch would).
        max_concurrency: How many ``generate`` calls may run at once.
        max_batch_size: How many requests one ``generate`` call takes.
        stream_pieces: How many deltas :meth:`stream` cuts an answer into (fewer for a short one).
        stream_delay: Seconds between two deltas of :meth:`stream`.
    """

    backend: ClassVar[str] = "fake"
    supports_streaming = True

    def __init__(
        self,
        model: str | None = None,
        *,
        responder: Responder | None = None,
        latency: float | Callable[[ChatRequest], float] = 0.0,
        max_concurrency: int = 64,
        max_batch_size: int = 16,
        stream_pieces: int = 4,
        stream_delay: float = 0.0,
    ) -> None:
        self.model = model or "fake"
        self.responder = responder
        self.latency = latency
        self.max_concurrency = max_concurrency
        self.max_batch_size = max_batch_size
        self.stream_pieces = max(1, stream_pieces)
        self.stream_delay = stream_delay
        self.calls = 0
        """Number of requests answered (tests count engine calls with it)."""
        self.started = False
        self.closed = False

    async def start(self) -> None:
        self.started = True

    async def close(self) -> None:
        self.closed = True

    async def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        latency = self.latency
        if callable(latency):
            latency = max((latency(request) for request in requests), default=0.0)
        if latency:
            await anyio.sleep(latency)
        out = []
        for request in requests:
            self.calls += 1
            out.append(self._answer(request))
        return out

    async def stream(self, request: ChatRequest) -> AsyncGenerator[str | Completion, None]:
        """The answer :meth:`generate` gives, in ``stream_pieces`` deltas, then the completion."""
        (completion,) = await self.generate([request])
        if completion.finish_reason != "error":  # an error's text is its reason, not an answer
            text = completion.text
            size = -(-len(text) // self.stream_pieces) or 1
            for start in range(0, len(text), size):
                if self.stream_delay:
                    await anyio.sleep(self.stream_delay)
                else:
                    await anyio.lowlevel.checkpoint()
                yield text[start : start + size]
        yield completion

    def describe(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model}

    def _answer(self, request: ChatRequest) -> Completion:
        prompt_tokens = sum(len(m["content"].split()) for m in request.messages)
        if self.responder is not None:
            try:
                answer = self.responder(request)
            except Exception as exc:  # one scripted failure fails one request, like a real server
                return Completion(text=f"{type(exc).__name__}: {exc}", finish_reason="error")
            if isinstance(answer, Completion):
                return answer
            text = answer if isinstance(answer, str) else json.dumps(answer)
        elif request.json_schema is not None:
            digest = hashlib.sha256(request.model_dump_json().encode()).digest()
            rng = random.Random(digest)
            text = json.dumps(example_for_schema(request.json_schema, rng))
        else:
            text = "ok"
        return Completion(
            text=text, finish_reason="stop", prompt_tokens=prompt_tokens, completion_tokens=len(text.split())
        )


def example_for_schema(schema: dict[str, Any], rng: random.Random | None = None) -> Any:
    """Build a value that validates against ``schema`` (the subset Pydantic emits)."""
    return _example(schema, schema, rng or random.Random(0), 0)


def _example(node: dict[str, Any], root: dict[str, Any], rng: random.Random, depth: int) -> Any:
    if "$ref" in node:
        return _example(_resolve(node["$ref"], root), root, rng, depth + 1)
    if "const" in node:
        return node["const"]
    if "enum" in node:
        return rng.choice(node["enum"])
    if "default" in node and depth > 6:
        return node["default"]
    for key in ("anyOf", "oneOf"):
        if key in node:
            options = [o for o in node[key] if o.get("type") != "null"] or node[key]
            objects = all(_is_object(o, root) for o in options)
            # a union of models: any variant (their own const discriminators keep it valid)
            pick = rng.choice(options) if objects and len(options) > 1 else options[0]
            return _example(pick, root, rng, depth + 1)
    if "allOf" in node:
        merged: dict[str, Any] = {}
        for part in node["allOf"]:
            merged.update(_resolve(part["$ref"], root) if "$ref" in part else part)
        return _example(merged, root, rng, depth + 1)
    kind = node.get("type", "object" if "properties" in node else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        props = node.get("properties", {})
        return {name: _example(sub, root, rng, depth + 1) for name, sub in props.items()}
    if kind == "array":
        low = node.get("minItems", 1)
        high = max(low, min(node.get("maxItems", 2), low + 2))
        return [_example(node.get("items", {}), root, rng, depth + 1) for _ in range(rng.randint(low, high))]
    if kind == "string":
        return _string(node, rng)
    if kind in ("integer", "number"):
        return _number(node, rng, integer=kind == "integer")
    if kind == "boolean":
        return rng.random() < 0.5
    return None


def _string(node: dict[str, Any], rng: random.Random) -> str:
    low = node.get("minLength", 1)
    high = node.get("maxLength", max(low, 24))
    text = " ".join(rng.choice(_WORDS) for _ in range(4))
    while len(text) < low:
        text += " " + rng.choice(_WORDS)
    return text[: max(low, min(high, len(text)))]


def _number(node: dict[str, Any], rng: random.Random, *, integer: bool) -> float | int:
    low = node.get("minimum", node.get("exclusiveMinimum", 0))
    high = node.get("maximum", node.get("exclusiveMaximum", low + 10))
    if integer:
        lo = int(low) + (1 if "exclusiveMinimum" in node else 0)
        hi = int(high) - (1 if "exclusiveMaximum" in node else 0)
        return rng.randint(lo, max(lo, hi))
    value = rng.uniform(float(low), float(high))
    if value in (node.get("exclusiveMinimum"), node.get("exclusiveMaximum")):
        value = (float(low) + float(high)) / 2
    return round(value, 3)


def _is_object(node: dict[str, Any], root: dict[str, Any]) -> bool:
    if "$ref" in node:
        node = _resolve(node["$ref"], root)
    return node.get("type") == "object" or "properties" in node


def _resolve(ref: str, root: dict[str, Any]) -> dict[str, Any]:
    target: Any = root
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    result: dict[str, Any] = target
    return result
