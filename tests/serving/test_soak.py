"""A served soak: many traces over SSE and WebSocket on a real uvicorn server (fake engine), a
fifth of them cancelled or dropped, bad frames and bad deadlines mixed in. Afterwards every kept
trace is right, no trace is open, no task, descriptor or socket is left, memory is flat after a
warm-up, and the token is in no log line.

``CHAINETTE_SOAK_TRACES`` sets the count (default 2,000: about 17 s on the loaded 2-core machine
it was written on; more for a longer soak), e.g. ``CHAINETTE_SOAK_TRACES=20000 pytest tests/serving/test_soak.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from tests.helpers import echo, qa_step
from tests.serving.live import LiveServer
from tests.serving.test_hardening import every_log_record
from websockets.sync.client import connect

from chainette import Chain, register_engine
from chainette.serving import create_app

TRACES = int(os.environ.get("CHAINETTE_SOAK_TRACES", "2000"))
SECRET = "soak-t0ken-never-logged"
AUTH = {"Authorization": f"Bearer {SECRET}"}


def with_task_count(app: Any) -> Any:
    """``GET /__tasks``: the asyncio tasks of the server's loop (the app's own routes otherwise)."""

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/__tasks":
            body = str(len(asyncio.all_tasks())).encode()
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    return wrapped


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def sse(client: httpx.Client, n: int) -> str:
    """One trace over SSE; returns what happened to it (checked)."""
    text = f"s{n}"
    if n % 25 == 3:  # a bad deadline: refused before a trace exists
        bad = client.post("/runs", params={"deadline_s": "soon"}, json={"text": text}, headers=AUTH)
        assert bad.status_code == 422
        return "refused"
    with client.stream(
        "POST", "/runs", params={"trace_id": f"sse-{n}"}, json={"text": text}, headers=AUTH
    ) as r:
        assert r.status_code == 200
        events = []
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            events.append(json.loads(line[6:]))
            if n % 10 == 1 and events[-1]["kind"] == "queued":
                return "dropped"  # the client goes away mid-trace
            if n % 10 == 6 and events[-1]["kind"] == "queued":
                client.post(f"/runs/sse-{n}/cancel", headers=AUTH)
    end = events[-1]
    if end["kind"] == "cancelled":
        return "cancelled"
    return check_output(events, text)


def check_output(events: list[dict[str, Any]], text: str) -> str:
    end = events[-1]
    assert end["kind"] == "output" and end["output"]["answer"] == f"re: {text}", end
    pieces = [e for e in events if e["kind"] == "chunk"]
    assert json.loads("".join(p["delta"] for p in pieces)) == end["output"]
    return "output"


def websocket(url: str, first: int, count: int) -> list[str]:
    """``count`` traces over one WebSocket, with bad frames, bad deadlines and cancels mixed in;
    every fifth connection leaves before its answers have come."""
    outcomes: list[str] = []
    drop = (first // count) % 5 == 4
    with connect(url + f"?token={SECRET}", close_timeout=2) as ws:
        expected: dict[str, str] = {}
        for n in range(first, first + count):
            if n % 25 == 3:
                ws.send(json.dumps({"input": {"text": "x"}, "trace_id": f"bad-{n}", "deadline_s": "soon"}))
                outcomes.append("refused")
                continue
            if n % 40 == 7:
                ws.send(b"\x00binary")
                ws.send("[" * 200 + "]" * 200)
            expected[f"ws-{n}"] = f"w{n}"
            ws.send(json.dumps({"input": {"text": f"w{n}"}, "trace_id": f"ws-{n}"}))
            if n % 10 == 6:
                ws.send(json.dumps({"cancel": f"ws-{n}"}))
        if drop:
            return ["dropped"] * len(expected) + outcomes
        events: dict[str, list[dict[str, Any]]] = {tid: [] for tid in expected}
        ended = 0
        while ended < len(expected):
            event = json.loads(ws.recv(timeout=30))
            if event["kind"] in ("error", "cancel"):
                continue
            events[event["trace_id"]].append(event)
            if event["kind"] in ("output", "cancelled", "failed", "filtered"):
                ended += 1
        for tid, seen in events.items():
            if seen[-1]["kind"] == "cancelled":
                outcomes.append("cancelled")
            else:
                outcomes.append(check_output(seen, expected[tid]))
    return outcomes


def run_batch(
    base: str, start: int, count: int, pool: ThreadPoolExecutor, clients: list[httpx.Client]
) -> list[str]:
    half = count // 2
    per_socket = 25
    jobs: list[Callable[[], Any]] = []
    for n in range(start, start + half):
        jobs.append(lambda n=n: [sse(clients[n % len(clients)], n)])
    ws_url = base.replace("http", "ws") + "/ws"
    for first in range(start + half, start + count, per_socket):
        jobs.append(lambda first=first: websocket(ws_url, first, min(per_socket, start + count - first)))
    return [outcome for result in pool.map(lambda job: job(), jobs) for outcome in result]


@pytest.mark.timeout(300)
def test_a_served_soak(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOAK_TOKEN", SECRET)
    register_engine("echo", backend="fake", responder=echo, latency=0.005)
    app = create_app(
        Chain(name="soak", steps=[qa_step("echo")]), token_env="SOAK_TOKEN", cache="off", capacity=64
    )
    server = LiveServer(with_task_count(app), log_level="info")
    with every_log_record() as logs, server, ThreadPoolExecutor(6) as pool:
        clients = [httpx.Client(base_url=server.url, timeout=60) for _ in range(4)]
        fds_before, tasks_before = open_fds(), int(clients[0].get("/__tasks").text)
        warm = min(200, TRACES // 5)
        run_batch(server.url, 0, warm, pool, clients)
        rss_warm = rss_mb()
        outcomes = run_batch(server.url, warm, TRACES - warm, pool, clients)
        rss_after = rss_mb()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # the server notices the dropped clients a moment later
            health = clients[0].get("/health").json()
            tasks = int(clients[0].get("/__tasks").text)
            if health["open_traces"] == 0 and tasks <= tasks_before:
                break
            time.sleep(0.1)
        assert health["open_traces"] == 0
        assert tasks <= tasks_before, (tasks, tasks_before)
        for client in clients:
            client.close()
        while open_fds() > fds_before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert open_fds() <= fds_before
    counts = {kind: outcomes.count(kind) for kind in set(outcomes)}
    print(
        f"soak: {TRACES} traces, warm-up {warm}, {counts}, RSS {rss_warm:.0f} -> {rss_after:.0f} MB, tasks {tasks}/{tasks_before}"
    )
    assert len(outcomes) == TRACES - warm
    assert counts["output"] >= 0.6 * len(outcomes), counts
    assert counts.get("cancelled", 0) + counts.get("dropped", 0) >= 0.1 * len(outcomes), counts
    assert rss_after - rss_warm < 64, (rss_warm, rss_after)  # MB: flat, with room for the allocator
    lines = logs.lines()
    assert lines and not [line for line in lines if SECRET in line]
