"""What the served page reads: ``/graph`` (the chain's shape before a run), ``/schema``'s examples,
and the WebSocket's error frames (one shape, the trace id they concern)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import BaseModel, ConfigDict
from tests.helpers import Answer, echo, qa_step
from tests.serving.live import LiveServer
from websockets.sync.client import connect

from chainette import Branch, Chain, Step, register_engine
from chainette._errors import InputError
from chainette.serving import create_app
from chainette.serving.page_data import read_examples


def branched_chain() -> Chain:
    def step(id: str) -> Step:
        return Step(
            id=id,
            input_model=Answer,
            output_model=Answer,
            engine_name="echo",
            user_prompt=id + ": {{ answer }}",
        )

    return Chain(
        name="branched",
        steps=[
            qa_step("echo"),
            [Branch(name="fr", steps=[step("fr")]), Branch(name="es", steps=[step("es")])],
        ],
    )


@pytest.fixture(autouse=True)
def echo_engine() -> None:
    register_engine("echo", backend="fake", responder=echo)


def test_graph_describes_branches_nested_before_any_run() -> None:
    with LiveServer(create_app(branched_chain())) as server:
        graph = httpx.get(server.url + "/graph").json()
    assert [n["id"] for n in graph["tree"]] == ["qa", "parallel(fr,es)"]
    group = graph["tree"][1]
    assert group["kind"] == "parallel"
    assert [(b["kind"], b["name"], [s["id"] for s in b["children"]]) for b in group["children"]] == [
        ("branch", "fr", ["fr"]),
        ("branch", "es", ["es"]),
    ]
    assert graph["tree"][0]["engine"] == "echo"
    assert {"from": "qa", "to": "fr"} in graph["edges"]  # graph.json's description comes along


def test_the_graph_needs_the_token_like_the_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAGE_TOKEN", "t0k")
    with LiveServer(create_app(branched_chain(), token_env="PAGE_TOKEN")) as server:
        assert httpx.get(server.url + "/graph").status_code == 401
        ok = httpx.get(server.url + "/graph", headers={"Authorization": "Bearer t0k"})
        assert ok.status_code == 200 and ok.json()["name"] == "branched"


class Asked(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"text": "from the model"}]})
    text: str


def test_schema_offers_given_examples_then_the_models_own() -> None:
    chain = Chain(
        name="ex",
        steps=[
            Step(
                id="qa", input_model=Asked, output_model=Answer, engine_name="echo", user_prompt="{{ text }}"
            )
        ],
    )
    app = create_app(chain, examples=[{"text": "given"}, Asked(text="an instance")])
    with LiveServer(app) as server:
        schema = httpx.get(server.url + "/schema").json()
    assert schema["examples"] == [{"text": "given"}, {"text": "an instance"}, {"text": "from the model"}]


def test_an_example_that_does_not_fit_is_refused_when_the_app_is_built() -> None:
    chain = Chain(name="ex", steps=[qa_step("echo")])
    with pytest.raises(InputError, match=r"Example 2 does not fit Question: .*text"):
        create_app(chain, examples=[{"text": "fine"}, {"text": 3}])


def test_read_examples_takes_json_lists_objects_and_jsonl(tmp_path: Path) -> None:
    (tmp_path / "one.json").write_text('{"text": "a"}')
    (tmp_path / "many.json").write_text('[{"text": "a"}, {"text": "b"}]')
    (tmp_path / "lines.jsonl").write_text('{"text": "a"}\n\n{"text": "b"}\n')
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{nope\n')
    assert read_examples(tmp_path / "one.json") == [{"text": "a"}]
    assert read_examples(tmp_path / "many.json") == [{"text": "a"}, {"text": "b"}]
    assert read_examples(tmp_path / "lines.jsonl") == [{"text": "a"}, {"text": "b"}]
    with pytest.raises(InputError, match=r"bad.jsonl, line 2: not JSON"):
        read_examples(tmp_path / "bad.jsonl")


def test_every_websocket_error_frame_has_one_shape() -> None:
    """Issue 28: error frames came as ``error`` + ``message`` or only ``message``, and without a
    ``trace_id`` unless one was named: a client could not read them one way."""
    with LiveServer(create_app(Chain(name="s", steps=[qa_step("echo")]))) as server:
        url = server.url.replace("http", "ws") + "/ws"
        with connect(url) as ws:
            frames: list[dict[str, Any]] = []
            for sent in (
                b"\x00binary",
                "not json",
                "[1]",
                json.dumps({"what": 1, "trace_id": "u1"}),
                json.dumps({"input": {"text": 5}, "trace_id": "v1"}),
                json.dumps({"input": {"text": "x"}, "trace_id": "bad id!"}),
            ):
                ws.send(sent)
                frames.append(json.loads(ws.recv(timeout=10)))
    for frame in frames:
        assert {"kind", "trace_id", "status", "error", "message"} <= frame.keys(), frame
        assert frame["kind"] == "error"
    assert [(f["status"], f["error"], f["trace_id"]) for f in frames] == [
        (400, "invalid_frame", None),
        (400, "invalid_json", None),
        (400, "invalid_message", None),
        (400, "invalid_message", "u1"),
        (422, "invalid_input", "v1"),
        (422, "invalid_input", "bad id!"),
    ]
    assert frames[4]["errors"][0]["loc"] == ["text"]
