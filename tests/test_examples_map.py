"""examples/text_segmentation.py (spawn paragraphs → summarise each → collect → chapter synopsis)
has the shape it promises, run on the fake engine."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers import EXAMPLES, load_example, read_jsonl

from chainette import ChatRequest, register_engine


def test_text_segmentation_summarises_each_paragraph_and_collects_them_in_order(tmp_path: Path) -> None:
    example = load_example("text_segmentation")
    prompts: list[str] = []

    def answer(request: ChatRequest) -> dict[str, str]:
        prompt = str(request.messages[-1]["content"])
        prompts.append(prompt)
        return {"summary": prompt.split("\n", 1)[0][:40], "synopsis": f"{prompt.count(chr(10))} lines"}

    register_engine("local", backend="fake", responder=answer)  # in place of the embedded model
    inputs = EXAMPLES / "text_segmentation.jsonl"
    chapters = [json.loads(line) for line in inputs.read_text().splitlines()]
    result = example.chain.run(inputs, tmp_path / "run")

    rows = list(result.flattened())
    assert [r["input.title"] for r in rows] == [c["title"] for c in chapters]
    for row, chapter in zip(rows, chapters, strict=True):
        paragraphs = example.paragraphs(example.Chapter(**chapter))
        assert len(paragraphs) >= 3
        assert [s["summary"] for s in row["summaries.items"]] == [p[:40] for p in paragraphs]
        assert row["summaries.total"] == len(paragraphs) and row["summaries.failed"] == []
        assert row["synopsis.synopsis"]
    children = [r["_id"] for r in read_jsonl(tmp_path / "run" / "paragraph_summary")]
    assert sorted(children) == sorted(f"{r['_id']}/{k}" for r in rows for k in range(r["summaries.total"]))
    synopsis_prompts = [p for p in prompts if p.startswith("1. ")]
    assert len(synopsis_prompts) == len(chapters)  # the synopsis reads the collected summaries, numbered
    assert result.counts == {"records_in": 2, "records_out": 2, "failures": 0, "filtered": 0}
