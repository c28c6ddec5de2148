"""Engines by name from Python: call a registered engine directly, outside any chain.

``async with chainette.engine("local") as e: await e.generate([...])`` borrows the engine the
way a run does (``broker.py``): started on first use, released when the block ends (or when idle
for its ``idle_timeout``, started again on the next call). ``chainette.generate(name, prompt)`` is
the one-shot form for scripts and notebooks: it starts the engine, asks, and releases it.

A request may be written as a ``ChatRequest``, a list of chat messages, or a string (one user
message); ``system`` / ``json_schema`` / ``sampling`` fill in what a string or a message list
does not say.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing, asynccontextmanager
from typing import Any

import anyio
import sniffio

from .._errors import ChainetteError
from .base import ChatRequest, Completion, Message, SamplingParams
from .broker import EngineBroker
from .registry import get_engine_config

__all__ = ["EngineSession", "Prompt", "engine", "generate"]

Prompt = ChatRequest | str | Sequence[Message]
"""One request: a ``ChatRequest``, a string (one user message), or a list of chat messages."""


class EngineSession:
    """A registered engine borrowed by name (what :func:`engine` yields).

    Example:
        >>> import anyio, chainette
        >>> _ = chainette.register_engine("demo", backend="fake")
        >>> async def main() -> str:
        ...     async with chainette.engine("demo") as e:
        ...         [answer] = await e.generate(["Say hi."])
        ...         return answer.finish_reason
        >>> anyio.run(main)
        'stop'
    """

    def __init__(self, name: str, broker: EngineBroker) -> None:
        self.name = name
        self._broker = broker

    async def generate(
        self,
        prompts: Sequence[Prompt],
        *,
        system: str | None = None,
        json_schema: dict[str, Any] | None = None,
        sampling: SamplingParams | None = None,
    ) -> list[Completion]:
        """Send ``prompts`` (a list: one answer per prompt, in order) in one engine call."""
        if isinstance(prompts, str | ChatRequest) or _is_messages(prompts):
            raise TypeError(
                "generate takes a list of prompts (one answer each): wrap a single one in a list, "
                "e.g. generate([prompt])."
            )
        requests = [as_request(p, system=system, json_schema=json_schema, sampling=sampling) for p in prompts]
        handle = await self._broker.get(self.name)
        return await handle.generate(requests)

    async def stream(
        self,
        prompt: Prompt,
        *,
        system: str | None = None,
        json_schema: dict[str, Any] | None = None,
        sampling: SamplingParams | None = None,
    ) -> AsyncGenerator[str | Completion, None]:
        """Text deltas of one answer as the engine makes them, then its :class:`Completion`
        (an engine that does not stream yields the completion alone)."""
        request = as_request(prompt, system=system, json_schema=json_schema, sampling=sampling)
        handle = await self._broker.get(self.name)
        async with aclosing(handle.stream(request)) as items:
            async for item in items:
                yield item


@asynccontextmanager
async def engine(name: str, *, idle_timeout: float | None = None) -> AsyncIterator[EngineSession]:
    """Borrow registered engine ``name``: started on first use, released when the block ends.

    Args:
        name: A registered engine (``register_engine``, engines.yml, or a warmed server).
        idle_timeout: Seconds of no call after which it is released inside the block (started
            again on the next call); default: the engine's own ``idle_timeout`` option, else 180 s.

    Raises:
        UnknownEngineError: ``name`` is not registered (before anything starts).

    Example:
        >>> import anyio, chainette
        >>> _ = chainette.register_engine("demo", backend="fake")
        >>> async def main() -> int:
        ...     async with chainette.engine("demo") as e:
        ...         return len(await e.generate(["one", "two"]))
        >>> anyio.run(main)
        2
    """
    get_engine_config(name)  # unknown: say so now, with the registered names
    broker = EngineBroker(Counter({name: 1}))
    if idle_timeout is not None:
        broker = EngineBroker(Counter({name: 1}), idle_timeout=idle_timeout)
    async with broker:
        yield EngineSession(name, broker)


def generate(
    name: str,
    prompt: Prompt | Sequence[Prompt],
    *,
    system: str | None = None,
    json_schema: dict[str, Any] | None = None,
    sampling: SamplingParams | None = None,
) -> Completion | list[Completion]:
    """Ask engine ``name`` from synchronous code: start it, send, release it.

    ``prompt`` is one request (a string, a list of chat messages, or a ``ChatRequest``: one
    :class:`Completion` back) or a list of them (a list back, in order). Inside async code, use
    :func:`engine` instead.

    Example:
        >>> import chainette
        >>> _ = chainette.register_engine("demo", backend="fake")
        >>> chainette.generate("demo", "Say hi.").finish_reason
        'stop'
    """
    try:
        sniffio.current_async_library()
    except sniffio.AsyncLibraryNotFoundError:
        pass
    else:
        raise ChainetteError(
            "chainette.generate() runs its own event loop and cannot be called from async code; "
            f"use `async with chainette.engine({name!r}) as e: await e.generate([...])` there."
        )
    one = isinstance(prompt, str | ChatRequest) or _is_messages(prompt)
    prompts: list[Prompt] = [prompt] if one else list(prompt)  # type: ignore[list-item, arg-type]

    async def ask() -> list[Completion]:
        async with engine(name) as session:
            return await session.generate(prompts, system=system, json_schema=json_schema, sampling=sampling)

    answers = anyio.run(ask)
    return answers[0] if one else answers


def as_request(
    prompt: Prompt,
    *,
    system: str | None = None,
    json_schema: dict[str, Any] | None = None,
    sampling: SamplingParams | None = None,
) -> ChatRequest:
    """``prompt`` as a :class:`ChatRequest` (a ``ChatRequest`` is kept as given)."""
    if isinstance(prompt, ChatRequest):
        return prompt
    if isinstance(prompt, str):
        messages: list[Message] = [{"role": "user", "content": prompt}]
    elif _is_messages(prompt):
        messages = [dict(m) for m in prompt]
    else:
        raise TypeError(
            f"A prompt is a string, a list of chat messages ({{'role': ..., 'content': ...}}) or a "
            f"ChatRequest, got {type(prompt).__name__}."
        )
    if system is not None and not any(m.get("role") == "system" for m in messages):
        messages.insert(0, {"role": "system", "content": system})
    return ChatRequest(
        messages=tuple(messages), json_schema=json_schema, sampling=sampling or SamplingParams()
    )


def _is_messages(value: object) -> bool:
    """A list of chat messages (dicts with a role), as opposed to a list of prompts."""
    return isinstance(value, list | tuple) and bool(value) and all(isinstance(m, dict) for m in value)
