"""A dialogue on the real embedded engine: two agents, four turns each record; the transcript has
the planned shape and every request the engine got is a chat whose roles alternate."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from chainette import Agent, Chain, ChatRequest, Dialogue, SamplingParams, register_engine
from chainette.engines.llama_cpp import LlamaCppEngine

pytestmark = pytest.mark.llama


class Topic(BaseModel):
    subject: str


@pytest.fixture(autouse=True)
def local_engine() -> None:
    register_engine("local", backend="llama_cpp", n_ctx=2048)


@pytest.mark.timeout(240)
def test_two_agents_four_turns_on_llama_cpp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[ChatRequest] = []
    generate = LlamaCppEngine.generate

    async def recording(self: LlamaCppEngine, requests: Sequence[ChatRequest]) -> Any:
        seen.extend(requests)
        return await generate(self, requests)

    monkeypatch.setattr(LlamaCppEngine, "generate", recording)
    sampling = SamplingParams(temperature=0, max_tokens=60)
    host = Agent(
        "host",
        "You host a radio show about {{ subject }}. Ask one short question.",
        "local",
        sampling=sampling,
        max_chars=120,
    )
    guest = Agent(
        "guest",
        "You are an expert on {{ subject }}. Answer in one short sentence.",
        "local",
        sampling=sampling,
        max_chars=120,
    )
    show = Dialogue(
        "show", [host, guest], opening="Today's topic: {{ subject }}.", turns=4, input_model=Topic
    )
    result = Chain("radio", [show]).run([Topic(subject="bees"), Topic(subject="volcanoes")], tmp_path / "run")

    rows = list(result.flattened())
    assert result.counts["records_in"] == 2 and len(rows) + result.counts["failures"] == 2
    assert rows, "no dialogue finished on the real engine"
    for row in rows:
        assert [t["speaker"] for t in row["show.turns"]] == ["host", "guest", "host", "guest"]
        assert all(t["text"] and len(t["text"]) <= 120 for t in row["show.turns"])
        assert row["show.stop_reason"] == "turns"
    assert len(seen) >= 8  # 4 turns x 2 records (re-asks would add more)
    for request in seen:
        roles = [m["role"] for m in request.messages]
        assert roles[0] == "system" and roles[-1] == "user"
        assert roles[1:] == ["user", "assistant"] * (len(roles) // 2 - 1) + ["user"]
    last_host = [r for r in seen if r.tag.startswith("show.host/")][-1]
    assert [m["role"] for m in last_host.messages] == ["system", "user", "assistant", "user"]
    assert last_host.messages[3]["content"].startswith("guest: ")
    assert result.metadata["nodes"]["show.host"]["requests"] + result.metadata["nodes"]["show.guest"][
        "requests"
    ] == len(seen)
