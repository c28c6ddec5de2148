"""examples/playbook.py (PenguiFlow's playbook_retrieval, ported): one retrieval chain used twice as
subflows; each use retrieves, reranks and compresses on its own query and writes its own folders."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import EXAMPLES, load_example, read_jsonl

from chainette import ChatRequest, register_engine

INPUTS = EXAMPLES / "playbook.jsonl"


def script(request: ChatRequest) -> str:
    """Compress: the first passage (so the tests can see which passages each use got); answer: ok."""
    prompt = request.messages[-1]["content"]
    if prompt.startswith("Query:"):
        first = prompt.split("\n- ", 2)[1].split("\n")[0]
        return json.dumps({"summary": first[:160]})
    return json.dumps({"reply": "ok: " + prompt.split("Notes: ", 1)[1][:190]})


def test_the_playbook_runs_twice_per_question_each_use_on_its_own_query(run_dir: Path) -> None:
    example = load_example("playbook")
    register_engine(example.ENGINE, backend="fake", responder=script)
    result = example.chain.run(INPUTS, output_dir=run_dir)
    assert result.counts == {"records_in": 3, "records_out": 3, "failures": 0, "filtered": 0}
    rows = sorted(read_jsonl(run_dir / "flattened"), key=lambda r: r["_index"])
    breed = rows[0]
    assert breed["background.summary"] == "Emperor penguins breed on Antarctic sea ice during the winter."
    assert breed["follow_up.text"].startswith("How do emperor penguins breed? ")  # narrowed by the summary
    assert breed["answer.reply"].startswith("ok: " + breed["background.summary"])
    assert set(breed) >= {"background.summary", "detail.summary", "answer.reply"}
    assert not any(
        k.startswith(("rerank.", "compress.", "retrieve.")) for k in breed
    )  # inner names stay inside
    nodes = result.metadata["nodes"]
    for use in ("background", "detail"):
        assert nodes[f"{use}.compress"]["records_out"] == 3
        assert len(read_jsonl(run_dir / f"{use}.compress")) == 3
    assert rows[1]["background.summary"] == "Penguins eat krill, fish and squid."
