"""``chainette serve``'s app on a real uvicorn server, driven by real HTTP and WebSocket clients."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import httpx
import pytest
from pydantic import BaseModel
from tests.helpers import echo, qa_step
from tests.serving.live import LiveServer
from websockets.sync.client import connect

from chainette import Chain, TraceEvent, apply, register_engine
from chainette.serving import create_app


def qa_chain() -> Chain:
    return Chain(
        name="served",
        steps=[qa_step("echo")],
    )


class N(BaseModel):
    x: int


def slow_chain(seconds: float = 30.0) -> Chain:
    async def slow(n: N) -> N:
        await anyio.sleep(seconds)
        return n

    return Chain(name="slow", steps=[apply(slow)])


@pytest.fixture
def live_server() -> Callable[[Any], LiveServer]:
    return LiveServer


@pytest.fixture(autouse=True)
def echo_engine() -> None:
    register_engine("echo", backend="fake", responder=echo)


def sse_events(response: httpx.Response) -> Iterator[dict[str, Any]]:
    kind = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
            assert data["kind"] == kind
            yield data


def test_post_streams_the_trace_as_server_sent_events(live_server: Callable[[Any], LiveServer]) -> None:
    with live_server(create_app(qa_chain())) as server, httpx.Client(base_url=server.url) as client:
        assert client.get("/health").json() == {"status": "ok", "chain": "served", "open_traces": 0}
        schema = client.get("/schema").json()
        assert schema["input"]["properties"] == {"text": {"title": "Text", "type": "string"}}
        assert "answer" in schema["output"]["properties"]
        with client.stream("POST", "/runs?trace_id=abc", json={"text": "hi"}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            assert response.headers["x-trace-id"] == "abc"
            events = list(sse_events(response))
    assert [e["kind"] for e in events if e["kind"] != "chunk"] == [
        "queued",
        "started",
        "node_started",
        "node_finished",
        "output",
    ]
    chunks = [e for e in events if e["kind"] == "chunk"]
    assert len(chunks) > 1 and [c["seq"] for c in chunks] == list(range(len(chunks)))
    assert json.loads("".join(c["delta"] for c in chunks)) == {"answer": "re: hi", "confidence": 1.0}
    assert events[-1]["output"] == {"answer": "re: hi", "confidence": 1.0}
    assert {e["trace_id"] for e in events} == {"abc"}


def test_bad_bodies_get_422_413_and_400_with_the_reason(live_server: Callable[[Any], LiveServer]) -> None:
    app = create_app(qa_chain(), max_body_bytes=1000)
    with live_server(app) as server, httpx.Client(base_url=server.url) as client:
        wrong = client.post("/runs", json={"txt": "hi"})
        assert wrong.status_code == 422
        assert wrong.json()["errors"] == [
            {"field": "text", "loc": ["text"], "message": "Field required", "type": "missing"}
        ]
        assert client.post("/runs", json={"text": 5}).json()["errors"][0]["field"] == "text"
        big = client.post("/runs", json={"text": "x" * 5000})
        assert big.status_code == 413 and "1000 bytes" in big.json()["message"]
        broken = client.post("/runs", content=b"{not json", headers={"Content-Type": "application/json"})
        assert broken.status_code == 400
        assert client.post("/runs", json={"text": "fine"}).status_code == 200


def test_a_bearer_token_from_the_environment_is_required_and_never_logged(
    live_server: Callable[[Any], LiveServer],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "s3cr3t-token-value"
    monkeypatch.setenv("SERVE_TOKEN", secret)
    caplog.set_level(logging.DEBUG)
    app = create_app(qa_chain(), token_env="SERVE_TOKEN")
    with live_server(app) as server, httpx.Client(base_url=server.url) as client:
        assert client.get("/health").status_code == 200  # health needs no token
        assert client.get("/").status_code == 200  # nor the page (it asks for the token)
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": secret}):
            refused = client.post("/runs", json={"text": "hi"}, headers=headers)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            assert secret not in refused.text
        assert client.get("/schema").status_code == 401
        good = {"Authorization": f"Bearer {secret}"}
        with client.stream("POST", "/runs", json={"text": "hi"}, headers=good) as response:
            assert [e["kind"] for e in sse_events(response)][-1] == "output"
        with (
            pytest.raises(Exception, match=r"4401|rejected|unauthorized"),
            connect(server.url.replace("http", "ws") + "/ws") as ws,
        ):
            ws.recv(timeout=5)
        with connect(server.url.replace("http", "ws") + f"/ws?token={secret}") as ws:
            ws.send(json.dumps({"input": {"text": "ws"}}))
            assert _ws_until_end(ws)[-1]["kind"] == "output"
    server_side = [r for r in caplog.records if r.name.startswith(("uvicorn", "chainette", "starlette"))]
    assert server_side  # the server did log (requests), just never the token
    assert not [r.getMessage() for r in server_side if secret in r.getMessage()]


def test_a_missing_token_variable_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from chainette import ServiceError

    monkeypatch.delenv("NO_SUCH_TOKEN", raising=False)
    with pytest.raises(ServiceError, match="NO_SUCH_TOKEN is not set"):
        create_app(qa_chain(), token_env="NO_SUCH_TOKEN")


def _ws_until_end(ws: Any) -> list[dict[str, Any]]:
    events = []
    while True:
        event = json.loads(ws.recv(timeout=20))
        events.append(event)
        if event["kind"] in ("output", "filtered", "failed", "cancelled"):
            return events


def test_the_websocket_runs_and_cancels_traces(live_server: Callable[[Any], LiveServer]) -> None:
    chain = Chain(name="mixed", steps=[*slow_chain(30).items])
    with live_server(create_app(chain)) as server, connect(server.url.replace("http", "ws") + "/ws") as ws:
        ws.send(json.dumps({"input": {"x": 1}, "trace_id": "w1"}))
        assert json.loads(ws.recv(timeout=10))["kind"] == "queued"
        ws.send(json.dumps({"cancel": "w1"}))
        seen = _ws_until_end(ws)
        kinds = [e["kind"] for e in seen]
        assert "cancel" in kinds and kinds[-1] == "cancelled"
        ws.send(json.dumps({"input": {"x": "nope"}}))
        error = json.loads(ws.recv(timeout=10))
        assert error["kind"] == "error" and error["status"] == 422 and error["errors"][0]["field"] == "x"
        ws.send("not json")
        assert json.loads(ws.recv(timeout=10))["kind"] == "error"


def test_the_websocket_streams_a_result(live_server: Callable[[Any], LiveServer]) -> None:
    with (
        live_server(create_app(qa_chain())) as server,
        connect(server.url.replace("http", "ws") + "/ws") as ws,
    ):
        ws.send(json.dumps({"input": {"text": "a"}, "trace_id": "A"}))
        ws.send(json.dumps({"input": {"text": "b"}, "trace_id": "B"}))
        events = _ws_until_end(ws) + _ws_until_end(ws)
        outputs = {e["trace_id"]: e["output"]["answer"] for e in events if e["kind"] == "output"}
        assert outputs == {"A": "re: a", "B": "re: b"}


def test_a_client_that_goes_away_cancels_its_trace(live_server: Callable[[Any], LiveServer]) -> None:
    seen: list[TraceEvent] = []
    app = create_app(slow_chain(30), on_event=seen.append)
    with live_server(app) as server:
        with (
            httpx.Client(base_url=server.url) as client,
            client.stream("POST", "/runs", json={"x": 1}) as response,
        ):
            first = next(sse_events(response))
            assert first["kind"] == "queued"
        # the connection is closed: the server notices and cancels the trace
        deadline = time.monotonic() + 10
        while not any(e.kind == "cancelled" for e in seen) and time.monotonic() < deadline:
            time.sleep(0.02)
        cancelled = [e for e in seen if e.kind == "cancelled"]
        assert cancelled and cancelled[0].data["reason"] == "the client went away"
        with httpx.Client(base_url=server.url) as client:
            assert client.get("/health").json()["open_traces"] == 0

        with live_websocket_gone(server):
            pass
        deadline = time.monotonic() + 10
        while sum(e.kind == "cancelled" for e in seen) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sum(e.kind == "cancelled" for e in seen) == 2


class live_websocket_gone:
    """Start a slow trace over a WebSocket, then drop the connection."""

    def __init__(self, server: LiveServer) -> None:
        self.server = server

    def __enter__(self) -> None:
        with connect(self.server.url.replace("http", "ws") + "/ws") as ws:
            ws.send(json.dumps({"input": {"x": 2}}))
            assert json.loads(ws.recv(timeout=10))["kind"] == "queued"

    def __exit__(self, *exc: object) -> None:
        pass


def test_cancel_by_trace_id_ends_the_stream(live_server: Callable[[Any], LiveServer]) -> None:
    with (
        live_server(create_app(slow_chain(30))) as server,
        httpx.Client(base_url=server.url, timeout=20) as client,
    ):
        with client.stream("POST", "/runs?trace_id=long", json={"x": 1}) as response:
            events = sse_events(response)
            assert next(events)["kind"] == "queued"
            with httpx.Client(base_url=server.url) as other:
                assert other.post("/runs/long/cancel").json() == {"cancelled": True, "trace_id": "long"}
                assert other.post("/runs/nope/cancel").status_code == 404
            rest = [e["kind"] for e in events]
        assert rest[-1] == "cancelled"
