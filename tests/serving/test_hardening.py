"""The served app against what a careless or hostile client sends: each test is one defect found
by a probe of 5c9edbb (tokens in logs, leaked slots, tracebacks on close, forged log lines,
cross-site calls, quadratic streaming, deep JSON, backlogs sent for nobody)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from pydantic import BaseModel
from tests.helpers import echo, qa_step
from tests.serving.live import LiveServer
from tests.serving.test_http import slow_chain, sse_events
from websockets.sync.client import connect

from chainette import Chain, Step, TraceEvent, register_engine
from chainette.serving import create_app


def qa_chain() -> Chain:
    return Chain(name="served", steps=[qa_step("echo")])


@pytest.fixture(autouse=True)
def echo_engine() -> None:
    register_engine("echo", backend="fake", responder=echo)


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        client_side = record.name.startswith(("httpx", "httpcore", "websockets.client"))
        if not client_side and not any(r is record for r in self.records):
            self.records.append(record)

    def lines(self) -> list[str]:
        return [self.format(r) for r in self.records]  # with any traceback (exc_info)


@contextmanager
def every_log_record() -> Iterator[_Capture]:
    """Every record of every logger the server uses (uvicorn's do not propagate to the root); the
    test's own clients (httpx, websockets.client) left out."""
    capture = _Capture()
    names = ["", "uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi", "websockets", "chainette"]
    root_level = logging.getLogger().level
    logging.getLogger().setLevel(logging.DEBUG)
    for name in names:
        logging.getLogger(name).addHandler(capture)
    try:
        yield capture
    finally:
        for name in names:
            logging.getLogger(name).removeHandler(capture)
        logging.getLogger().setLevel(root_level)


def ws_url(server: LiveServer, query: str = "") -> str:
    return server.url.replace("http", "ws") + "/ws" + query


def until_end(ws: Any) -> list[dict[str, Any]]:
    events = []
    while True:
        event = json.loads(ws.recv(timeout=20))
        events.append(event)
        if event["kind"] in ("output", "filtered", "failed", "cancelled"):
            return events


def test_the_token_is_in_no_log_line_at_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "tok-s3cr3t-value-42"
    monkeypatch.setenv("SERVE_TOKEN", secret)
    app = create_app(qa_chain(), token_env="SERVE_TOKEN")
    server = LiveServer(app, log_level="debug")  # first: uvicorn's logging setup drops handlers
    with every_log_record() as logs, server:
        with connect(ws_url(server, f"?token={secret}")) as ws:
            ws.send(json.dumps({"input": {"text": "hi"}}))
            assert until_end(ws)[-1]["kind"] == "output"
        good = {"Authorization": f"Bearer {secret}"}
        assert httpx.post(server.url + "/runs", json={"text": "x"}, headers=good).status_code == 200
        assert httpx.get(server.url + f"/schema?token={secret}").status_code == 401
    lines = logs.lines()
    assert any("WebSocket /ws" in line for line in lines)  # uvicorn's handshake line, scrubbed
    assert [line for line in lines if secret in line] == []


def test_a_normal_close_is_quiet_and_bad_frames_get_error_frames() -> None:
    app = create_app(qa_chain())
    server = LiveServer(app, log_level="info")  # first: uvicorn's logging setup drops handlers
    with every_log_record() as logs, server, connect(ws_url(server)) as ws:
        ws.send(b"\x00\x01 not text")
        binary = json.loads(ws.recv(timeout=10))
        assert binary["kind"] == "error" and binary["status"] == 400 and "text frames" in binary["message"]
        ws.send("[" * 100_000 + "]" * 100_000)
        deep = json.loads(ws.recv(timeout=10))
        assert deep["kind"] == "error" and "nested deeper than 64" in deep["message"]
        ws.send(json.dumps({"input": {"text": 5}, "trace_id": "T1"}))
        unfit = json.loads(ws.recv(timeout=10))
        assert (unfit["kind"], unfit["status"], unfit["trace_id"]) == ("error", 422, "T1")
        ws.send(json.dumps({"input": {"text": "ok"}, "trace_id": "T2"}))  # the socket is still open
        assert until_end(ws)[-1]["output"]["answer"] == "re: ok"
        # the client closed with 1000; the server handles it before it stops
    problems = [
        line for r, line in zip(logs.records, logs.lines(), strict=True) if r.levelno >= logging.ERROR
    ]
    assert problems == []
    assert not [line for line in logs.lines() if "Traceback" in line or "ExceptionGroup" in line]


def test_a_refused_submission_leaks_no_slot() -> None:
    app = create_app(qa_chain(), capacity=2, when_full="refuse")
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=20) as client:
        with connect(ws_url(server)) as ws:
            for n in range(3):
                ws.send(json.dumps({"input": {"text": "a"}, "deadline_s": "soon", "trace_id": f"d{n}"}))
                error = json.loads(ws.recv(timeout=10))
                assert (error["kind"], error["status"], error["trace_id"]) == ("error", 422, f"d{n}")
                assert "deadline_s must be a positive number" in error["message"]
            ws.send(json.dumps({"input": {"text": "b"}, "trace_id": "fine"}))
            assert until_end(ws)[-1]["kind"] == "output"
        for bad in ("soon", "nan", "-1", "inf"):
            refused = client.post("/runs", params={"deadline_s": bad}, json={"text": "a"})
            assert refused.status_code == 422, bad
        assert client.get("/health").json()["open_traces"] == 0
        for _ in range(3):  # both slots are free: these are not refused as full
            assert client.post("/runs", json={"text": "c"}).status_code == 200


def test_a_trace_id_outside_the_alphabet_is_refused_before_a_trace_exists() -> None:
    seen: list[TraceEvent] = []
    app = create_app(qa_chain(), on_event=seen.append)
    forged = "evil\n00:00:00 trace admin output in 0.01 s\n"
    server = LiveServer(app, log_level="info")  # first: uvicorn's logging setup drops handlers
    with every_log_record() as logs, server:
        with httpx.Client(base_url=server.url, timeout=20) as client:
            for bad in (forged, "a b", "x" * 129, "é"):
                refused = client.post("/runs", params={"trace_id": bad}, json={"text": "hi"})
                assert refused.status_code == 422 and "A-Z a-z 0-9 . _ : -" in refused.json()["message"]
            assert client.post("/runs/evil%0a00:00:00 forged/cancel").status_code == 404
            ok = client.post("/runs", params={"trace_id": "ok:" + "x" * 125}, json={"text": "hi"})
            assert ok.status_code == 200 and ok.headers["x-trace-id"] == "ok:" + "x" * 125
        with connect(ws_url(server)) as ws:
            ws.send(json.dumps({"input": {"text": "hi"}, "trace_id": forged}))
            error = json.loads(ws.recv(timeout=10))
            assert (error["kind"], error["status"], error["trace_id"]) == ("error", 422, forged)
    assert {e.trace_id for e in seen} == {"ok:" + "x" * 125}  # no trace ran for the refused ids
    served = [r.getMessage() for r in logs.records if r.name.startswith("chainette")]
    assert served and not [m for m in served if "\n" in m]  # one record, one line


def test_a_foreign_page_can_neither_start_nor_read_a_trace() -> None:
    with (
        LiveServer(create_app(qa_chain())) as server,
        httpx.Client(base_url=server.url, timeout=20) as client,
    ):
        port = server.url.rsplit(":", 1)[1]
        # a simple cross-site request: text/plain needs no preflight, so the browser just sends it
        simple = client.post(
            "/runs",
            content=b'{"text": "hi"}',
            headers={"Content-Type": "text/plain", "Origin": "http://evil.example"},
        )
        assert simple.status_code == 403 and "--allow-origin" in simple.json()["message"]
        plain = client.post("/runs", content=b'{"text": "hi"}', headers={"Content-Type": "text/plain"})
        assert plain.status_code == 415
        rebound = client.get("/schema", headers={"Host": f"evil.example:{port}"})  # DNS rebinding
        assert rebound.status_code == 403 and "--allow-host" in rebound.json()["message"]
        cancel = client.post("/runs/x/cancel", headers={"Origin": "http://evil.example"})
        assert cancel.status_code == 403
        with (
            pytest.raises(Exception, match="403"),
            connect(ws_url(server), origin="http://evil.example") as ws,
        ):
            ws.recv(timeout=5)
        # its own page, curl, and the names of this machine still work
        own = client.post("/runs", json={"text": "hi"}, headers={"Origin": server.url})
        assert own.status_code == 200
        assert client.get("/health", headers={"Host": f"localhost:{port}"}).status_code == 200
        with connect(ws_url(server), origin=server.url) as ws:
            ws.send(json.dumps({"input": {"text": "own"}}))
            assert until_end(ws)[-1]["kind"] == "output"


def test_an_allowed_origin_is_an_explicit_option() -> None:
    app = create_app(qa_chain(), allowed_origins=["http://app.example"])
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=20) as client:
        preflight = client.options(
            "/runs",
            headers={
                "Origin": "http://app.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://app.example"
        answer = client.post("/runs", json={"text": "hi"}, headers={"Origin": "http://app.example"})
        assert (
            answer.status_code == 200
            and answer.headers["access-control-allow-origin"] == "http://app.example"
        )
        assert "x-trace-id" in answer.headers["access-control-expose-headers"].lower()
        assert (
            client.post("/runs", json={"text": "hi"}, headers={"Origin": "http://other.example"}).status_code
            == 403
        )


class Long(BaseModel):
    text: str


def test_streaming_sends_deltas_not_the_text_so_far() -> None:
    text = "0123456789" * 2000  # a 20 kB answer in 2,000 pieces
    register_engine("long", backend="fake", responder=lambda request: {"text": text}, stream_pieces=2000)
    step = Step(id="say", input_model=Long, output_model=Long, engine_name="long", user_prompt="{{ text }}")
    with (
        LiveServer(create_app(Chain(name="long", steps=[step]), cache="off")) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
        client.stream("POST", "/runs", json={"text": "go"}) as response,
    ):
        raw = b"".join(response.iter_bytes())
    assert len(raw) < 20 * len(text)  # linear: about 100 bytes per piece (it was 36.8 MB)
    events = [json.loads(line[6:]) for line in raw.decode().splitlines() if line.startswith("data: ")]
    chunks = [e for e in events if e["kind"] == "chunk"]
    assert len(chunks) >= 1800 and [c["seq"] for c in chunks] == list(range(len(chunks)))
    assembled = json.loads("".join(c["delta"] for c in chunks))
    assert assembled == {"text": text} and events[-1]["output"] == assembled


def test_deeply_nested_json_is_a_400_with_the_reason() -> None:
    with (
        LiveServer(create_app(qa_chain())) as server,
        httpx.Client(base_url=server.url, timeout=20) as client,
    ):
        for depth in (100_000, 100):
            body = b"[" * depth + b"]" * depth
            answer = client.post("/runs", content=body, headers={"Content-Type": "application/json"})
            assert answer.status_code == 400, depth
            assert "nested deeper than 64 levels" in answer.json()["message"]
        assert client.get("/health").json()["status"] == "ok"


def test_a_websocket_that_leaves_with_a_backlog_submits_nothing_more() -> None:
    seen: list[TraceEvent] = []
    app = create_app(slow_chain(30), capacity=2, on_event=seen.append)
    with LiveServer(app) as server, httpx.Client(base_url=server.url, timeout=20) as client:
        with connect(ws_url(server), close_timeout=1) as ws:
            for n in range(350):
                ws.send(json.dumps({"input": {"x": n}, "trace_id": f"b{n}"}))
            assert json.loads(ws.recv(timeout=10))["kind"] == "queued"
        deadline = time.monotonic() + 20
        while client.get("/health").json()["open_traces"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/health").json()["open_traces"] == 0
        time.sleep(0.3)  # nothing more is submitted after the close
        queued = [e.trace_id for e in seen if e.kind == "queued"]
        assert len(queued) <= 2 and all(
            e.data["reason"] == "the client went away" for e in seen if e.kind == "cancelled"
        )
        with client.stream("POST", "/runs", json={"x": 1}) as response:  # the slots are free
            assert next(sse_events(response))["kind"] == "queued"
