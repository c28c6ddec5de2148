"""The ``openai`` back-end's wire (aiohttp, ``chainette.engines.http_transport``): kept connections,
proxies from the environment, httpx's names for failures."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from chainette import ChatRequest
from chainette.engines.openai_http import OpenAIEngine
from chainette.engines.stub_server import Faults, StubServer


@pytest.fixture
def counted_stub(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[StubServer, list[int]]]:
    """A stub server that counts the connections it accepts."""
    opened: list[int] = []
    accept = StubServer._connection

    async def counting(self: StubServer, reader: Any, writer: Any) -> None:
        opened.append(1)
        await accept(self, reader, writer)

    monkeypatch.setattr(StubServer, "_connection", counting)
    with StubServer() as server:
        yield server, opened


def ask(engine: OpenAIEngine, n: int) -> list[str]:
    async def main() -> list[str]:
        await engine.start()
        try:
            requests = [ChatRequest(messages=({"role": "user", "content": f"q{i}"},)) for i in range(n)]
            return [c.finish_reason + ":" + c.text for c in await engine.generate(requests)]
        finally:
            await engine.close()

    return anyio.run(main)


def test_requests_reuse_at_most_max_concurrency_connections(
    counted_stub: tuple[StubServer, list[int]],
) -> None:
    stub, opened = counted_stub
    stub.faults = Faults(rate_slow=0.5, slow_seconds=0.05)  # some answers late, so requests overlap
    out = ask(OpenAIEngine("m", base_url=stub.base_url, max_concurrency=4, max_retries=0), 40)
    assert all(text.startswith("stop:") for text in out) and stub.stats["requests"] == 40
    assert 1 <= len(opened) <= 4  # kept alive between requests, never more than the slots


def test_proxies_come_from_the_environment(
    counted_stub: tuple[StubServer, list[int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    stub, _ = counted_stub
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("http_proxy", raising=False)
    (text,) = ask(OpenAIEngine("m", base_url=stub.base_url, max_retries=0), 1)
    assert text.startswith("error:connection failed (ConnectError") and stub.stats["requests"] == 0
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    (text,) = ask(OpenAIEngine("m", base_url=stub.base_url, max_retries=0), 1)
    assert text.startswith("stop:") and stub.stats["requests"] == 1


def test_failures_keep_httpx_names(counted_stub: tuple[StubServer, list[int]]) -> None:
    stub, _ = counted_stub
    stub.faults = Faults(rate_slow=1.0, slow_seconds=2.0)
    (text,) = ask(OpenAIEngine("m", base_url=stub.base_url, timeout=0.2, max_retries=0), 1)
    assert text.startswith("error:timed out after 0.2 s (ReadTimeout)"), text
    stub.faults = Faults(rate_drop=1.0)
    (text,) = ask(OpenAIEngine("m", base_url=stub.base_url, max_retries=0), 1)
    assert text.startswith("error:connection failed (RemoteProtocolError"), text
