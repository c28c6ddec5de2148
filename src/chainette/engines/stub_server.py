"""A small OpenAI-compatible HTTP server on 127.0.0.1, for tests and benchmarks (ships like the fake engine).

It answers ``POST /v1/chat/completions`` with schema-valid JSON at once (from the request's
structured-output field, as :class:`~chainette.engines.fake.FakeEngine` does), or forwards the
request to a real ``upstream`` server, and injects faults at configurable rates: 429 with
``Retry-After``, 500, answers slower than the client's timeout, dropped connections, and
streams cut after their first piece of content. Faults are drawn from a seeded RNG, so a run
is repeatable for a given request order.

A request with ``"stream": true`` is answered with server-sent events, as OpenAI does: the
answer in ``stream_chunks`` pieces, ``stream_delay`` seconds apart, the finish reason, the usage
(with ``stream_options.include_usage``), then ``data: [DONE]``. A client that closes the
connection before the end is recorded in :attr:`StubServer.disconnects`, with the time it was
seen.

Example:
    >>> with StubServer(faults=Faults(rate_500=0.2)) as server:   # doctest: +SKIP
    ...     register_engine("stub", backend="openai", model="m", base_url=server.base_url)

The files and batches endpoints of OpenAI's batch API are served too (:mod:`.stub_batches`,
``server.batches``: delays, partial expiry, failing lines and batches, counters).

Also a command: ``python -m chainette.engines.stub_server --port 8000 [--upstream URL]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import threading
import time
from collections import Counter, deque
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

from .fake import example_for_schema
from .stub_batches import BatchFaults, BatchStub
from .stub_http import _raw, _read_request, _response

__all__ = ["BatchFaults", "Disconnect", "Faults", "StubServer"]


@dataclass
class Faults:
    """Rates (0..1) of each injected fault per chat request; the rest is answered normally."""

    rate_429: float = 0.0
    rate_500: float = 0.0
    rate_slow: float = 0.0
    rate_drop: float = 0.0
    rate_cut: float = 0.0
    """Streamed answers whose connection is dropped after their first piece of content (a plain answer: dropped)."""
    retry_after: str = "1"
    """``Retry-After`` header value sent with 429."""
    slow_seconds: float = 5.0
    """How long a slow answer takes (set it above the client's timeout)."""
    seed: int = 0


@dataclass(frozen=True)
class Disconnect:
    """A streamed answer whose client closed the connection before the end."""

    request: int
    """The request's number (``stats["requests"]`` when it arrived, from 1)."""
    at: float
    """``time.monotonic()`` when the server saw the connection closed (same clock in every thread)."""
    chunks_sent: int
    """Event chunks written before that."""


class StubServer:
    """Serve on ``127.0.0.1:port`` (0 = a free port) from a background thread.

    Args:
        upstream: Base URL (``http://host:port/v1``) of a real server to forward to; ``None``
            answers instantly with schema-valid JSON.
        faults: What to inject.
        api_key: When set, requests without ``Authorization: Bearer <api_key>`` get 401
            (``unauthorized_status``: 403 for servers that answer so).
        reject: Structured-output dialects to refuse with 400 (``json_schema``, ``json_object``, ...),
            to exercise dialect detection.
        reasoning: A ``reasoning_content`` to add to every stub answer.
        stream_chunks: How many pieces a streamed answer's content is cut into (fewer for a short one).
        stream_delay: Seconds between two chunks of a streamed answer.
        batch_faults: What goes wrong in batches (:class:`~.stub_batches.BatchFaults`).
        batch_polls: Polls a batch needs before it ends.
        batch_delay: Seconds after its creation before a batch may end.
    """

    def __init__(
        self,
        *,
        upstream: str | None = None,
        faults: Faults | None = None,
        api_key: str | None = None,
        reject: Sequence[str] = (),
        reasoning: str | None = None,
        port: int = 0,
        unauthorized_status: int = 401,
        stream_chunks: int = 4,
        stream_delay: float = 0.0,
        batch_faults: BatchFaults | None = None,
        batch_polls: int = 1,
        batch_delay: float = 0.0,
    ) -> None:
        self.upstream = upstream.rstrip("/") if upstream else None
        self.faults = faults or Faults()
        self.api_key = api_key
        self.unauthorized_status = unauthorized_status
        self.reject = set(reject)
        self.reasoning = reasoning
        self.port = port
        self.stream_chunks = max(1, stream_chunks)
        self.stream_delay = stream_delay
        self.stats: Counter[str] = Counter()
        """Requests seen and faults injected, by kind (``requests``, ``429``, ``500``, ``slow``, ``drop``,
        ``cut``, ``ok``; ``streams`` answered as events, ``disconnects`` closed by the client)."""
        self.dialects: Counter[str] = Counter()
        """Structured-output dialect of each chat request received."""
        self.received: deque[tuple[str, dict[str, str], dict[str, Any]]] = deque(maxlen=100)
        """The last chat requests received (at most 100): request target (path and query), headers, body."""
        self.disconnects: list[Disconnect] = []
        """Streamed answers the client stopped reading (closed the connection) before the end."""
        self.disconnected = threading.Event()
        """Set at each new entry of :attr:`disconnects` (clear it to wait for the next)."""
        self._rng = random.Random(self.faults.seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._client: Any = None
        self.batches = BatchStub(self._batch_answer, batch_faults, polls=batch_polls, delay=batch_delay)
        """The batch API's state and counters (:class:`~.stub_batches.BatchStub`)."""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> StubServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> str:
        """Start serving; returns the base URL."""
        ready = threading.Event()
        self._loop = asyncio.new_event_loop()

        def serve() -> None:
            assert self._loop is not None
            asyncio.set_event_loop(self._loop)
            self._loop.run_until_complete(self._open())
            ready.set()
            self._loop.run_forever()
            self._loop.run_until_complete(self._shutdown())
            self._loop.close()

        self._thread = threading.Thread(target=serve, name="chainette-stub-server", daemon=True)
        self._thread.start()
        ready.wait()
        return self.base_url

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop = self._thread = None

    async def serve_forever(self) -> None:
        """Serve in the current event loop until cancelled (the command-line entry point)."""
        await self._open()
        try:
            await asyncio.Event().wait()
        finally:
            await self._shutdown()

    async def _open(self) -> None:
        if self.upstream:
            import httpx

            self._client = httpx.AsyncClient(timeout=None, limits=httpx.Limits(max_connections=64))
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
        if self._client is not None:
            await self._client.aclose()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                method, path, headers, body = request
                reply = await self._handle(method, path, headers, body)
                if reply is None:  # dropped connection
                    writer.transport.abort()
                    break
                if isinstance(reply, _Stream):
                    if not await self._send_stream(reply, reader, writer):
                        break
                    continue
                writer.write(reply)
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _send_stream(
        self, reply: _Stream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Write a chunked event stream while watching the connection; False once it is closed."""
        sent = 0

        async def deliver() -> None:
            nonlocal sent
            writer.write(reply.head)
            try:
                async for chunk in reply.chunks:
                    writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    await writer.drain()
                    sent += 1
                    if sent == reply.cut_after:
                        writer.transport.abort()
                        return
            finally:
                await reply.chunks.aclose()
            writer.write(b"0\r\n\r\n")
            await writer.drain()

        # the client sends nothing while it reads an answer: a read that ends means it closed
        closed = asyncio.ensure_future(reader.read(1))
        delivery = asyncio.ensure_future(deliver())
        try:
            await asyncio.wait({closed, delivery}, return_when=asyncio.FIRST_COMPLETED)
            if not delivery.done() or delivery.exception() is not None:
                seen = time.monotonic()
                self.stats["disconnects"] += 1
                self.disconnects.append(Disconnect(reply.number, seen, sent))
                self.disconnected.set()
                return False
            return reply.cut_after is None
        finally:
            for future in (closed, delivery):
                future.cancel()
            await asyncio.gather(closed, delivery, return_exceptions=True)

    async def _handle(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> bytes | _Stream | None:
        route = path.partition("?")[0]
        if method == "GET" and route.rstrip("/").endswith(("/models", "/health")):
            return _response(200, {"object": "list", "data": [{"id": "stub", "object": "model"}]})
        if {"files", "batches"} & set(route.split("/")):
            if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
                self.stats["unauthorized"] += 1
                return _response(
                    self.unauthorized_status, {"error": {"message": "invalid or missing API key"}}
                )
            return await self.batches.handle(method, route, headers, body)
        if method != "POST" or not route.endswith("/chat/completions"):
            return _response(404, {"error": {"message": f"no route {method} {route}"}})
        self.stats["requests"] += 1
        number = self.stats["requests"]
        with contextlib.suppress(ValueError):
            self.received.append((path, headers, json.loads(body or b"{}")))
        if self.api_key is not None and headers.get("authorization") != f"Bearer {self.api_key}":
            self.stats["unauthorized"] += 1
            return _response(self.unauthorized_status, {"error": {"message": "invalid or missing API key"}})
        fault = self._draw()
        if fault:
            self.stats[fault] += 1
        if fault == "429":
            return _response(
                429, {"error": {"message": "rate limited"}}, {"Retry-After": self.faults.retry_after}
            )
        if fault == "500":
            return _response(500, {"error": {"message": "injected fault"}})
        if fault == "drop" or (fault == "cut" and not _streamed(body)):
            return None
        if fault == "slow":
            await asyncio.sleep(self.faults.slow_seconds)
        payload = json.loads(body or b"{}")
        dialect, schema = _structured(payload)
        self.dialects[dialect] += 1
        if dialect in self.reject:
            return _response(400, {"error": {"message": f"unsupported structured output field: {dialect}"}})
        if payload.get("stream"):
            self.stats["streams"] += 1
            if self._client is not None:
                return await self._forward_stream(body, number)
            answer = self._answer(payload, schema)
            self.stats["ok"] += 1
            # cut after the first piece of content: role, (reasoning,) content
            cut = 2 + ("reasoning_content" in answer["choices"][0]["message"]) if fault == "cut" else None
            return _Stream(_EVENT_HEAD, self._events(payload, answer), number, cut_after=cut)
        if self._client is not None:
            upstream = await self._client.post(
                f"{self.upstream}/chat/completions",
                content=body,
                headers={"content-type": "application/json"},
            )
            self.stats["ok"] += upstream.status_code == 200
            return _raw(upstream.status_code, upstream.content)
        self.stats["ok"] += 1
        return _response(200, self._answer(payload, schema))

    async def _forward_stream(self, body: bytes, number: int) -> _Stream | bytes:
        """The upstream server's event stream, relayed chunk by chunk (closed when the client leaves)."""
        request = self._client.build_request(
            "POST",
            f"{self.upstream}/chat/completions",
            content=body,
            headers={"content-type": "application/json"},
        )
        upstream = await self._client.send(request, stream=True)
        if upstream.status_code != 200:
            content = await upstream.aread()
            await upstream.aclose()
            return _raw(upstream.status_code, content)
        self.stats["ok"] += 1

        async def relay() -> AsyncGenerator[bytes, None]:
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await upstream.aclose()

        return _Stream(_EVENT_HEAD, relay(), number)

    async def _events(self, payload: dict[str, Any], answer: dict[str, Any]) -> AsyncGenerator[bytes, None]:
        """``answer`` (a whole chat completion) as OpenAI's streamed chunks."""
        message = answer["choices"][0]["message"]
        base = {k: answer[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}

        def event(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
            choice = {"index": 0, "delta": delta, "finish_reason": finish}
            return b"data: " + json.dumps({**base, "choices": [choice], **extra}).encode() + b"\n\n"

        content = message["content"]
        size = -(-len(content) // self.stream_chunks) or 1
        pieces = [content[i : i + size] for i in range(0, len(content), size)]
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        if "reasoning_content" in message:
            deltas.append({"reasoning_content": message["reasoning_content"]})
        deltas += [{"content": piece} for piece in pieces]
        for i, delta in enumerate(deltas):
            if i and self.stream_delay:
                await asyncio.sleep(self.stream_delay)
            yield event(delta)
        yield event({}, answer["choices"][0]["finish_reason"])
        if (payload.get("stream_options") or {}).get("include_usage"):
            usage = {**base, "choices": [], "usage": answer["usage"]}
            yield b"data: " + json.dumps(usage).encode() + b"\n\n"
        yield b"data: [DONE]\n\n"

    async def _batch_answer(self, payload: dict[str, Any]) -> tuple[int, Any]:
        """A batch line answered as ``POST /chat/completions`` would be: upstream, or the stub's answer."""
        if self._client is not None:
            response = await self._client.post(f"{self.upstream}/chat/completions", json=payload)
            try:
                return response.status_code, response.json()
            except ValueError:
                return response.status_code, {"error": {"message": response.text[:300]}}
        return 200, self._answer(payload, _structured(payload)[1])

    def _draw(self) -> str:
        f = self.faults
        r = self._rng.random()
        for kind, rate in (
            ("429", f.rate_429),
            ("500", f.rate_500),
            ("slow", f.rate_slow),
            ("drop", f.rate_drop),
            ("cut", f.rate_cut),
        ):
            if r < rate:
                return kind
            r -= rate
        return ""

    def _answer(self, payload: dict[str, Any], schema: dict[str, Any] | None) -> dict[str, Any]:
        digest = hashlib.sha256(json.dumps(payload.get("messages"), sort_keys=True).encode()).digest()
        content = json.dumps(example_for_schema(schema, random.Random(digest))) if schema else "ok"
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if self.reasoning is not None:
            message["reasoning_content"] = self.reasoning
        prompt = sum(len(str(m.get("content", ""))) for m in payload.get("messages", [])) // 4
        return {
            "id": "chatcmpl-stub",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": payload.get("model", "stub"),
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": len(content) // 4, "total_tokens": 0},
        }


@dataclass
class _Stream:
    """A reply sent as a chunked body, piece by piece."""

    head: bytes
    chunks: AsyncGenerator[bytes, None]
    number: int
    cut_after: int | None = None
    """Drop the connection after this many chunks."""


_EVENT_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)


def _streamed(body: bytes) -> bool:
    try:
        return bool(json.loads(body or b"{}").get("stream"))
    except (ValueError, AttributeError):
        return False


def _structured(payload: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """Which dialect a request used, and its schema."""
    fmt = payload.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return "json_schema", (fmt.get("json_schema") or {}).get("schema")
    if fmt.get("type") == "json_object":
        return "json_object", fmt.get("schema")
    if isinstance(payload.get("structured_outputs"), dict):
        return "structured_outputs", payload["structured_outputs"].get("json")
    if "guided_json" in payload:
        return "guided_json", payload["guided_json"]
    return "none", None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--upstream", default=None)
    parser.add_argument("--batch-polls", type=int, default=1, help="polls a batch needs before it ends")
    args = parser.parse_args(argv)
    server = StubServer(upstream=args.upstream, port=args.port, batch_polls=args.batch_polls)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(server.serve_forever())


if __name__ == "__main__":
    main()
