"""Streaming from any node: ``emit_chunk`` inside an ``apply`` (sync, async, on a worker thread,
under a policy) becomes the trace's ``chunk`` events (``node``, ``seq``, ``delta``, ``final``),
over SSE and WebSocket too; in a batch run it does nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import pytest
from pydantic import BaseModel
from tests.serving.live import LiveServer
from websockets.sync.client import connect

from chainette import Chain, ChainService, NodePolicy, apply, emit_chunk
from chainette.serving import create_app


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Text(BaseModel):
    text: str


class Words(BaseModel):
    text: str
    words: int


def spell(t: Text) -> Words:
    """A sync apply that streams its output word by word."""
    for word in t.text.split():
        emit_chunk(word + " ")
    return Words(text=t.text, words=len(t.text.split()))


async def spell_async(t: Text) -> Words:
    words = t.text.split()
    for k, word in enumerate(words):
        await anyio.lowlevel.checkpoint()
        emit_chunk(word + " ", final=k == len(words) - 1)
    return Words(text=t.text, words=len(words))


async def trace_chunks(chain: Chain, text: str) -> tuple[list[dict[str, Any]], Any]:
    async with ChainService(chain, cache="off") as service:
        trace = await service.submit({"text": text})
        events = [e async for e in trace.events()]
        result = await trace.result()
    return [e.data for e in events if e.kind == "chunk"], result


@pytest.mark.anyio
async def test_a_sync_apply_streams_its_pieces_to_the_trace_and_the_runner_ends_them() -> None:
    chunks, result = await trace_chunks(Chain("c", [apply(spell)]), "the quick fox")
    assert result == Words(text="the quick fox", words=3)
    assert chunks == [
        {"node": "spell", "seq": 0, "delta": "the ", "final": False},
        {"node": "spell", "seq": 1, "delta": "quick ", "final": False},
        {"node": "spell", "seq": 2, "delta": "fox ", "final": False},
        {"node": "spell", "seq": 3, "delta": "", "final": True},  # closed by the runner
    ]


@pytest.mark.anyio
async def test_an_async_apply_marks_its_own_last_piece_and_a_second_node_starts_at_seq_0() -> None:
    def shout(w: Words) -> Text:
        emit_chunk(w.text.upper(), final=True)
        return Text(text=w.text.upper())

    chunks, _ = await trace_chunks(Chain("c", [apply(spell_async), apply(shout)]), "a b")
    assert [(c["node"], c["seq"], c["delta"], c["final"]) for c in chunks] == [
        ("spell_async", 0, "a ", False),
        ("spell_async", 1, "b ", True),  # final given: no closing piece
        ("shout", 0, "A B", True),
    ]


@pytest.mark.anyio
async def test_pieces_from_a_worker_thread_and_under_a_policy_reach_the_trace() -> None:
    tries: list[int] = []

    def flaky(t: Text) -> Words:
        emit_chunk(f"try {len(tries)} ")
        tries.append(1)
        if len(tries) == 1:
            raise ConnectionError("once")
        return spell(t)

    chain = Chain("c", [apply(flaky, policy=NodePolicy(retries=1, timeout_s=30))])  # a thread per call
    chunks, result = await trace_chunks(chain, "x y")
    assert result.words == 2
    texts = [(c["seq"], c["delta"], c["final"]) for c in chunks]
    # each try is one output: the failed one is closed, the retry starts again at seq 0
    assert texts == [
        (0, "try 0 ", False),
        (1, "", True),
        (0, "try 1 ", False),
        (1, "x ", False),
        (2, "y ", False),
        (3, "", True),
    ]


def test_in_a_batch_run_emit_chunk_does_nothing(run_dir: Path) -> None:
    result = Chain("c", [apply(spell), apply(spell_async, id="again", input_model=Words)]).run(
        [Text(text="one two")], output_dir=run_dir
    )
    assert result.counts["failures"] == 0 and [r["spell.words"] for r in result.flattened()] == [2]
    emit_chunk("outside any node")  # no listener: a no-op


def test_sse_and_websocket_readers_get_the_pieces() -> None:
    chain = Chain("c", [apply(spell)])
    with LiveServer(create_app(chain)) as server:
        with (
            httpx.Client(base_url=server.url, timeout=30) as client,
            client.stream("POST", "/runs", json={"text": "hello there"}) as response,
        ):
            raw = b"".join(response.iter_bytes()).decode()
        events = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: ")]
        sse = [(e["seq"], e["delta"], e["final"]) for e in events if e["kind"] == "chunk"]
        assert sse == [(0, "hello ", False), (1, "there ", False), (2, "", True)]
        with connect(server.url.replace("http", "ws") + "/ws") as ws:
            ws.send(json.dumps({"input": {"text": "hi"}, "trace_id": "w"}))
            seen = []
            while not seen or seen[-1]["kind"] not in ("output", "failed"):
                seen.append(json.loads(ws.recv(timeout=20)))
        ws_chunks = [(e["node"], e["delta"], e["final"]) for e in seen if e["kind"] == "chunk"]
        assert ws_chunks == [("spell", "hi ", False), ("spell", "", True)]
        assert seen[-1]["output"] == {"text": "hi", "words": 1}
