"""examples/routing.py (PenguiFlow's routing examples, ported): each request takes the triage
route its predicate names and the search route of the task's model class; one flat row each."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.helpers import EXAMPLES, load_example

from chainette import register_engine

INPUTS = EXAMPLES / "routing.jsonl"


def expected_routes() -> list[tuple[str, str]]:
    texts = [json.loads(line)["text"] for line in INPUTS.read_text().splitlines() if line.strip()]
    return [("metrics", "sql") if t.startswith("metric") else ("general", "web") for t in texts]


def test_each_request_takes_its_predicate_route_then_its_model_class_route(run_dir: Path) -> None:
    example = load_example("routing")
    register_engine(example.ENGINE, backend="fake")  # same name, no model to load
    result = example.chain.run(INPUTS, output_dir=run_dir)
    rows = list(result.flattened())
    expected = expected_routes()
    assert {"metrics", "general"} == {t for t, _ in expected}  # the input exercises every route

    assert result.counts == {
        "records_in": len(expected),
        "records_out": len(expected),
        "failures": 0,
        "filtered": 0,
    }
    assert [(r["report.triage"], r["report.search"]) for r in rows] == expected
    for row, (triage, search) in zip(rows, expected, strict=True):
        other_triage, other_search = (
            {"metrics": "general", "general": "metrics"}[triage],
            {"sql": "web", "web": "sql"}[search],
        )
        assert f"{triage}.summary" in row and f"{other_triage}.summary" not in row  # only the route taken ran
        assert row["triage.summary"] == row[f"{triage}.summary"]
        assert f"{search}.result" in row and f"{other_search}.result" not in row
        assert row["search.result"] == row[f"{search}.result"] == row["report.result"]
        assert row["plan.kind"] == search
        if search == "sql":  # PenguiFlow's handle_sql, on the metric's table
            table = row["input.text"].split()[0].removeprefix("metric-")
            assert row["plan.table"] == table and row["sql.result"] == f"sql::{table}"
        else:
            assert row["plan.query"] == row["input.text"]
        assert row["report.request"] == row["input.text"]

    nodes = result.metadata["nodes"]
    n_metrics = sum(t == "metrics" for t, _ in expected)
    assert (nodes["metrics"]["records_in"], nodes["general"]["records_in"]) == (
        n_metrics,
        len(expected) - n_metrics,
    )
    assert (nodes["sql"]["records_in"], nodes["web"]["records_in"]) == (n_metrics, len(expected) - n_metrics)
    assert nodes["sql"]["requests"] == 0  # the sql route is Python: only the other steps call the engine
    assert result.metadata["cache"]["sent"] == len(expected) + (len(expected) - n_metrics)


@pytest.mark.llama
@pytest.mark.timeout(300)
def test_the_example_runs_on_the_embedded_engine(run_dir: Path) -> None:
    example = load_example("routing")
    result = example.chain.run(INPUTS, output_dir=run_dir)
    rows = list(result.flattened())
    assert result.counts["records_in"] == len(expected_routes())
    assert len(rows) + result.counts["failures"] == len(expected_routes())  # every record accounted for
    by_text = {r["input.text"]: (r["report.triage"], r["report.search"]) for r in rows}
    texts = [json.loads(line)["text"] for line in INPUTS.read_text().splitlines() if line.strip()]
    assert all(by_text[t] == e for t, e in zip(texts, expected_routes(), strict=True) if t in by_text)
    assert result.metadata["nodes"]["metrics"]["requests"] > 0
