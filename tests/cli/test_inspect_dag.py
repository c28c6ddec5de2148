"""``chainette inspect-dag --format tree|mermaid|dot|json`` on a real chain module."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from chainette.cli import app

CHAIN_MODULE = """
from pydantic import BaseModel

from chainette import Branch, Chain, Step, apply


class Question(BaseModel):
    text: str


class Answer(BaseModel):
    answer: str


def tidy(answer: Answer) -> Answer:
    return answer


def step(id, name=None):
    return Step(id=id, name=name, input_model=Answer, output_model=Answer, engine_name="fake",
                user_prompt="{{ answer }}")


qa = Step(id="qa", name='Answer "it"', input_model=Question, output_model=Answer, engine_name="fake",
          user_prompt="Q: {{ text }}")
chain = Chain(name="dag demo", steps=[
    qa,
    [
        Branch(name="french", steps=[step("to_fr")]).join("fr"),
        Branch(name="spanish", steps=[step("to_es")]).join("es"),
        Branch(name="notes", steps=[step("note")]),
    ],
    apply(tidy),
])
"""

EDGES = {
    ("input", "qa"),
    ("qa", "to_fr"),
    ("qa", "to_es"),
    ("qa", "note"),
    ("qa", "tidy"),
    ("to_fr", "tidy"),
    ("to_es", "tidy"),
}


@pytest.fixture
def target(tmp_path: Path) -> Iterator[str]:
    path = tmp_path / "dag_chain.py"
    path.write_text(CHAIN_MODULE)
    yield f"{path}:chain"
    for name, module in list(sys.modules.items()):  # leave sys.modules as it was
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


def invoke(*args: str) -> Result:
    result = CliRunner(env={"COLUMNS": "200"}).invoke(app, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_default_output_is_still_the_tree(target: str) -> None:
    default = invoke("inspect-dag", target)
    tree = invoke("inspect-dag", target, "--format", "tree")

    assert default.exit_code == 0 and tree.exit_code == 0
    assert default.stdout == tree.stdout
    assert default.stdout.startswith("dag demo (batch size 64)")
    assert "branch notes → not joined (side output)" in default.stdout


def test_dot_output_has_the_chain_edges_and_branch_clusters(target: str) -> None:
    result = invoke("inspect-dag", target, "--format", "dot")

    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert text.startswith('digraph "dag demo" {') and text.rstrip().endswith("}")
    assert set(re.findall(r'^  "(\w+)" -> "(\w+)";$', text, re.M)) == EDGES
    assert len(re.findall("->", text)) == len(EDGES)
    assert '"qa" [label="Answer \\"it\\"", shape=box];' in text
    assert '"tidy" [label="tidy", shape=parallelogram];' in text
    assert 'subgraph "cluster_2" {\n    label="branch notes (side output)";' in text


def test_short_option_and_mermaid_still_work(target: str) -> None:
    result = invoke("inspect-dag", target, "-f", "mermaid")

    assert result.exit_code == 0
    assert result.stdout.startswith("flowchart LR\n")
    assert set(re.findall(r"^  (\w+) --> (\w+)$", result.stdout, re.M)) == EDGES


def test_json_is_unchanged(target: str) -> None:
    result = invoke("inspect-dag", target, "--format", "json")

    assert [n["id"] for n in json.loads(result.stdout)["nodes"]] == ["qa", "to_fr", "to_es", "note", "tidy"]


def test_unknown_format_is_a_usage_error(target: str) -> None:
    result = invoke("inspect-dag", target, "--format", "svg")

    assert result.exit_code == 2
    assert "dot" in result.stderr  # the choices are listed


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
def test_dot_output_pipes_into_graphviz(target: str, tmp_path: Path) -> None:
    text = invoke("inspect-dag", target, "--format", "dot").stdout

    svg = subprocess.run(["dot", "-Tsvg"], input=text, capture_output=True, text=True, timeout=30)

    assert svg.returncode == 0 and svg.stderr == "", svg.stderr
    assert "</svg>" in svg.stdout and "Answer &quot;it&quot;" in svg.stdout
