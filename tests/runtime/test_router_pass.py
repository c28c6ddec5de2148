"""``Router(..., on_no_match="pass")`` (issue 27): a record that matches no route goes on unchanged
(BatchFactory's ``If`` without ``else``); the checks take both ways on; graph.json and the diagrams
draw the unchanged record's edge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import BaseModel
from tests.helpers import read_jsonl

from chainette import Chain, IncompatibleStepsError, Router, Step, apply, register_engine


class Doc(BaseModel):
    text: str


class Fixed(BaseModel):
    text: str
    note: str


class Other(BaseModel):
    other: str


def fixer(output: type[BaseModel] = Doc) -> Step:
    return Step(id="fix", input_model=Doc, output_model=output, engine_name="fixer", user_prompt="{{ text }}")


@pytest.fixture(autouse=True)
def fixer_engine() -> None:
    register_engine(
        "fixer",
        backend="fake",
        responder=lambda r: {"text": "FIXED " + r.messages[-1]["content"], "note": "n"},
    )


def needs_fixing(d: Doc) -> str | None:
    return "fix" if d.text.startswith("bad") else None


def keep(d: Doc) -> Doc:
    return d


def maybe_fix(output: type[BaseModel] = Doc) -> Router:
    return Router("maybe_fix", {"fix": fixer(output)}, by=needs_fixing, on_no_match="pass")


def test_a_record_that_matches_no_route_goes_on_unchanged(tmp_path: Path) -> None:
    chain = Chain("pass", [maybe_fix(), apply(keep)])
    assert chain.check().issues == []
    result = chain.run([Doc(text="bad one"), Doc(text="good one")], output_dir=tmp_path / "run")
    rows = {r["_index"]: r for r in read_jsonl(tmp_path / "run" / "flattened" / "000.jsonl")}
    assert rows[0]["keep.text"] == "FIXED bad one" and rows[0]["maybe_fix.text"] == "FIXED bad one"
    assert rows[1]["keep.text"] == "good one" and "fix.text" not in rows[1]  # went on unchanged
    assert read_jsonl(tmp_path / "run" / "failures.jsonl") == []
    node = result.metadata["nodes"]["maybe_fix"]
    assert node["records_in"] == 2 and node["records_out"] == 2 and node["filtered"] == 0


def test_a_route_ending_in_another_model_must_fit_what_follows_too(tmp_path: Path) -> None:
    def takes_doc(d: Doc) -> Doc:
        return d

    # Fixed has Doc's fields: both ways on fit a Doc, no issue
    assert Chain("ok", [maybe_fix(Fixed), apply(takes_doc)]).check().issues == []

    def takes_other(o: Other) -> Other:
        return o

    chain = Chain("bad", [maybe_fix(Fixed), apply(takes_other)])
    with pytest.raises(IncompatibleStepsError) as caught:
        chain.run([Doc(text="x")], output_dir=tmp_path / "run")
    message = str(caught.value)
    assert "may hand on Doc (one of Fixed | Doc), which lacks required field(s) 'other'" in message
    assert "go on unchanged" in message and "default= route" in message
    assert not (tmp_path / "run").exists()  # caught before any request or folder


def test_graph_json_and_diagrams_show_the_unchanged_records_edge(tmp_path: Path) -> None:
    chain = Chain("pass", [maybe_fix(), apply(keep)])
    chain.run([Doc(text="good")], output_dir=tmp_path / "run")
    graph = json.loads((tmp_path / "run" / "graph.json").read_text())
    router = next(n for n in graph["nodes"] if n["id"] == "maybe_fix")
    assert router["on_no_match"] == "pass" and router["passes_unmatched"] is True
    assert {"from": "maybe_fix", "to": "keep", "label": "no match: unchanged"} in graph["edges"]
    assert {"from": "fix", "to": "keep"} in graph["edges"]
    assert '"maybe_fix" -> "keep" [label="no match: unchanged"];' in chain.to_dot()
    assert 'maybe_fix -->|"no match#58; unchanged"| keep' in chain.to_mermaid()


def test_with_a_default_route_there_is_no_unchanged_way_on() -> None:
    router = Router(
        "r", {"fix": fixer(), "keep": apply(keep)}, by=needs_fixing, default="keep", on_no_match="pass"
    )
    assert not router.passes_unmatched
    edges = Chain("d", [router, apply(keep, id="after")]).describe()["edges"]
    assert all(e["from"] != "r" or e["to"] in ("fix", "keep") for e in edges)


def test_an_unknown_on_no_match_names_pass_too() -> None:
    with pytest.raises(Exception, match=r"on_no_match must be 'fail', 'filter' or 'pass'"):
        Router("r", {"fix": fixer()}, by=needs_fixing, on_no_match="skip")  # type: ignore[arg-type]
