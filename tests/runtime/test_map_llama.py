"""Map / collect on the real embedded engine: one request per list item, the answers collected
back into their record in item order, a later step reading them; every record accounted for."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, Field
from tests.helpers import read_jsonl

from chainette import Chain, Map, RecordView, SamplingParams, Step, apply, register_engine

pytestmark = pytest.mark.llama


class Basket(BaseModel):
    owner: str
    fruits: list[str]


class Fruit(BaseModel):
    name: str


class Color(BaseModel):
    color: str = Field(max_length=20)


class Report(BaseModel):
    owner: str
    colors: list[str]


@pytest.fixture(autouse=True)
def local_engine() -> None:
    register_engine("local", backend="llama_cpp", n_ctx=1024)


@pytest.mark.timeout(180)
def test_a_map_spawns_one_request_per_item_and_collects_them_on_llama_cpp(tmp_path: Path) -> None:
    color = Step(
        id="color",
        input_model=Fruit,
        output_model=Color,
        engine_name="local",
        sampling=SamplingParams(temperature=0, max_tokens=24),
        user_prompt="{{ input.owner }} has a {{ name }}. What color is a {{ name }}? One word.",
    )

    def report(basket: Basket, record: RecordView) -> Report:
        return Report(owner=basket.owner, colors=[c.color for c in record["colors"].items])

    chain = Chain("baskets", [Map("colors", color, over="fruits", on_child_failure="skip"), apply(report)])
    inputs = [Basket(owner="Ann", fruits=["banana", "lemon", "cherry"]), Basket(owner="Bo", fruits=["lime"])]
    result = chain.run(inputs, tmp_path / "run")

    rows = list(result.flattened())
    assert [r["report.owner"] for r in rows] == ["Ann", "Bo"]  # no record lost, input order
    assert result.metadata["cache"]["sent"] == 4  # one request per item
    children = {r["_id"]: r["color"] for r in read_jsonl(tmp_path / "run" / "color")}
    failures = read_jsonl(tmp_path / "run" / "failures.jsonl")
    assert all(f["_parent"] in {r["_id"] for r in rows} for f in failures)  # only children may fail
    for row, basket in zip(rows, inputs, strict=True):
        kept = [k for k in range(len(basket.fruits)) if f"{row['_id']}/{k}" in children]
        assert (
            row["colors.total"] == len(basket.fruits)
            and len(kept) + len(row["colors.failed"]) == row["colors.total"]
        )
        assert row["report.colors"] == [children[f"{row['_id']}/{k}"] for k in kept]  # item order
