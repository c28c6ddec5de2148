"""examples/controller_loop.py (PenguiFlow's controller_multihop, ported): each question loops
think → act until it is answered or a budget ends it, and the final row says which."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import EXAMPLES, load_example, read_jsonl

from chainette import ChatRequest, register_engine

INPUTS = EXAMPLES / "controller_loop.jsonl"


def script(request: ChatRequest) -> str:
    """Search once, then answer, except for the krill question, which keeps searching."""
    prompt = request.messages[-1]["content"]
    if "eat" in prompt:
        return json.dumps({"action": "search", "term": "krill", "answer": ""})
    if "none" in prompt.split("Notes so far:")[1]:
        return json.dumps({"action": "search", "term": "emperor", "answer": ""})
    return json.dumps({"action": "answer", "term": "", "answer": "About 1.1 m."})


def test_each_question_loops_until_answered_or_the_budget_ends_it(run_dir: Path) -> None:
    example = load_example("controller_loop")
    register_engine(example.ENGINE, backend="fake", responder=script)
    result = example.chain.run(INPUTS, output_dir=run_dir)
    order = {r["_id"]: r["_index"] for r in read_jsonl(run_dir / "flattened")}
    rows = {order[r["_id"]]: r for r in read_jsonl(run_dir / "final")}
    assert sorted(rows) == [0, 1, 2] and result.counts["failures"] == 0
    # answered on the second pass, after one search
    assert (rows[0]["stop_reason"], rows[0]["passes"], rows[0]["notes"], rows[0]["answer"]) == (
        "until",
        2,
        1,
        "About 1.1 m.",
    )
    # never answers: the pass cap ends it, and it still goes on with what it found
    assert (rows[1]["stop_reason"], rows[1]["passes"], rows[1]["notes"]) == ("max_iterations", 4, 4)
    assert rows[1]["answer"].startswith("Krill are small crustaceans")
    think_rows = read_jsonl(run_dir / "think")
    assert sorted(r["controller.iteration"] for r in think_rows if r["_id"] == rows[1]["_id"]) == [0, 1, 2, 3]
    assert result.metadata["nodes"]["controller"]["stop_reasons"] == {"until": 2, "max_iterations": 1}
