"""Chains written in YAML: the same chain as in Python (same outputs), run by the CLI; every
mistake in the file names the file, the place in it and what to write."""

from __future__ import annotations

import json
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.helpers import read_jsonl
from typer.testing import CliRunner

from chainette import Chain
from chainette.cli import app
from chainette.graph.yaml_chain import YamlChainError

MODELS = """
from typing import Literal
from pydantic import BaseModel


class Question(BaseModel):
    text: str


class Answer(BaseModel):
    answer: str


class Label(BaseModel):
    kind: Literal["short", "long"]
    text: str


def label(q: Question) -> Label:
    return Label(kind="short" if len(q.text) < 12 else "long", text=q.text)


def shout(label: Label) -> Label:
    return Label(kind=label.kind, text=label.text.upper())


def whisper(label: Label) -> Label:
    return Label(kind=label.kind, text=label.text.lower())
"""

CHAIN_YAML = """
name: yaml demo
batch_size: 4
imports: [yaml_models]
engines:
  - {name: yaml_fake, backend: fake}
steps:
  - apply: {fn: label}
  - router:
      id: loud
      by: kind
      routes:
        short: [{apply: shout}]
        long: {apply: {fn: whisper}}
  - step:
      id: qa
      input_model: Question
      output_model: yaml_models:Answer
      engine: yaml_fake
      sampling: {temperature: 0, max_tokens: 32}
      user_prompt: "Q: {{ input.text }} ({{ loud.text }})"
  - parallel:
      - branch:
          name: again
          join: again_out
          steps:
            - step: {id: qa2, input_model: Answer, output_model: Answer, engine: yaml_fake, user_prompt: "{{ answer }}"}
  - take: 3
"""

INPUTS = ["hi", "a longer question", "why?", "what is the time now"]


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "yaml_models.py").write_text(MODELS)
    (tmp_path / "chain.yaml").write_text(CHAIN_YAML)
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in INPUTS))
    yield tmp_path
    sys.modules.pop("yaml_models", None)


def test_yaml_chain_runs_like_the_python_chain(project: Path) -> None:
    chain = Chain.from_yaml(project / "chain.yaml")
    assert isinstance(chain, Chain) and chain.name == "yaml demo" and chain.batch_size == 4
    assert [n.kind for n in chain.items] == ["apply", "router", "step", "parallel", "take"]
    result = chain.run(project / "in.jsonl", project / "run")
    rows = read_jsonl(result.path / "flattened")
    assert [r["loud.text"] for r in rows] == ["HI", "a longer question", "WHY?"]
    assert all("qa.answer" in r and "again_out.answer" in r for r in rows)

    import yaml_models as m

    from chainette import Branch, Router, SamplingParams, Step, apply

    python_chain = Chain(
        "yaml demo",
        [
            apply(m.label),
            Router("loud", {"short": [apply(m.shout)], "long": apply(m.whisper)}, by="kind"),
            Step(
                id="qa",
                input_model=m.Question,
                output_model=m.Answer,
                engine_name="yaml_fake",
                sampling=SamplingParams(temperature=0, max_tokens=32),
                user_prompt="Q: {{ input.text }} ({{ loud.text }})",
            ),
            [
                Branch(
                    "again",
                    [
                        Step(
                            id="qa2",
                            input_model=m.Answer,
                            output_model=m.Answer,
                            engine_name="yaml_fake",
                            user_prompt="{{ answer }}",
                        )
                    ],
                ).join("again_out")
            ],
        ],
        batch_size=4,
    )
    same = python_chain.run(project / "in.jsonl", project / "py")
    assert read_jsonl(same.path / "flattened")[:3] == rows


def test_cli_runs_and_inspects_a_yaml_chain(project: Path) -> None:
    runner = CliRunner()
    out = project / "cli-run"
    result = runner.invoke(
        app, ["run", str(project / "chain.yaml"), "-i", str(project / "in.jsonl"), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert len(read_jsonl(out / "flattened")) == 3
    shown = runner.invoke(app, ["inspect", str(project / "chain.yaml")])
    assert shown.exit_code == 0, shown.output
    assert "qa" in shown.output and "loud" in shown.output


def write(project: Path, text: str) -> Path:
    path = project / "bad.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("steps:\n  - stepp: {}\n", r"steps\[0\]: unknown node kind 'stepp'.*Did you mean 'step'"),
        (
            "imports: [yaml_models]\nsteps:\n  - step: {id: qa, input_model: Question, output_model: Answer, user_prompt: x}\n",
            r"steps\[0\]\.step: missing 'engine'",
        ),
        (
            "imports: [yaml_models]\nsteps:\n  - step: {id: qa, input_model: Question, output_model: Answer, engine: e, user_promt: x}\n",
            r"steps\[0\]\.step: unknown key 'user_promt'.*Did you mean 'user_prompt'",
        ),
        (
            "imports: [yaml_models]\nsteps:\n  - apply: {fn: label, idd: x}\n",
            r"steps\[0\]\.apply: unknown key 'idd'.*Did you mean 'id'",
        ),
        ("steps:\n  - apply: label\n", r"bare name.*no 'imports:'"),
        (
            "imports: [yaml_models]\nsteps:\n  - apply: lable\n",
            r"steps\[0\]\.apply\.fn: 'lable' is not defined in yaml_models\. Did you mean 'label'",
        ),
        ("imports: [no_such_module]\nsteps:\n  - apply: label\n", r"importing 'no_such_module' failed"),
        (
            "imports: [yaml_models]\nsteps:\n  - step: {id: qa, input_model: label, output_model: Answer, engine: e, user_prompt: x}\n",
            r"steps\[0\]\.step\.input_model: 'label' is .*not a pydantic model class",
        ),
        ("steps: [\n", r"not valid YAML"),
        ("name: x\n", r"expected a mapping with 'steps:'"),
        ("imports: [yaml_models]\nstepz: []\nsteps: [{apply: label}]\n", r"unknown top-level key 'stepz'"),
        (
            "imports: [yaml_models]\nsteps:\n  - take: 0\n",
            r"steps\[0\]\.take: take: n must be an integer >= 1",
        ),
    ],
)
def test_mistakes_name_the_file_and_the_place(project: Path, text: str, expected: str) -> None:
    path = write(project, text)
    with pytest.raises(YamlChainError, match=expected) as info:
        Chain.from_yaml(path)
    assert str(path) in str(info.value)


def test_the_quickstart_yaml_describes_the_quickstart_chain() -> None:
    root = Path(__file__).resolve().parents[2]
    from_yaml = Chain.from_yaml(root / "examples" / "quickstart.yaml")
    sys.path.insert(0, str(root / "examples"))
    try:
        import quickstart
    finally:
        sys.path.remove(str(root / "examples"))
    assert from_yaml.check().ok
    ours, theirs = from_yaml.describe(), quickstart.chain.describe()
    strip = [{k: v for k, v in n.items() if k not in ("function",)} for n in ours["nodes"]]
    assert strip == [{k: v for k, v in n.items() if k not in ("function",)} for n in theirs["nodes"]]
    assert ours["edges"] == theirs["edges"]


MAP_MODELS = """
from pydantic import BaseModel


class Chapter(BaseModel):
    title: str
    paragraphs: list[str]


class Para(BaseModel):
    text: str


def upper(p: Para) -> Para:
    return Para(text=p.text.upper())
"""


def test_a_map_in_yaml_collects_its_items(tmp_path: Path) -> None:
    (tmp_path / "map_models.py").write_text(MAP_MODELS)
    (tmp_path / "map.yaml").write_text(
        "imports: [map_models]\n"
        "steps:\n"
        "  - map: {id: parts, over: paragraphs, input_model: Chapter, body: [{apply: upper}], join_k: 2}\n"
    )
    try:
        chain = Chain.from_yaml(tmp_path / "map.yaml")
        result = chain.run([{"title": "t", "paragraphs": ["a", "b", "c"]}], tmp_path / "run")
    finally:
        sys.modules.pop("map_models", None)
    (row,) = read_jsonl(result.path / "flattened")
    assert row["parts.items"] == [{"text": "A"}, {"text": "B"}]
    assert row["parts.skipped"] == 1


LOOP_MODELS = """
from pydantic import BaseModel


class Num(BaseModel):
    x: int


def inc(n: Num) -> Num:
    return Num(x=n.x + 1)


def big(n: Num) -> bool:
    return n.x >= 3
"""


def test_a_loop_in_yaml_runs_until_its_condition(tmp_path: Path) -> None:
    (tmp_path / "loop_models.py").write_text(LOOP_MODELS)
    (tmp_path / "loop.yaml").write_text(
        "imports: [loop_models]\n"
        "steps:\n"
        "  - loop: {id: grow, body: [{apply: inc}], until: loop_models:big, max_iterations: 10}\n"
    )
    try:
        result = Chain.from_yaml(tmp_path / "loop.yaml").run([{"x": 0}, {"x": 5}], tmp_path / "run")
    finally:
        sys.modules.pop("loop_models", None)
    rows = read_jsonl(result.path / "flattened")
    assert [(r["inc.x"], r["grow.iterations"], r["grow.stop_reason"]) for r in rows] == [
        (3, 3, "until"),
        (6, 1, "until"),
    ]


def test_a_subflow_in_yaml_runs_another_yaml_chain_twice(tmp_path: Path) -> None:
    (tmp_path / "loop_models.py").write_text(LOOP_MODELS)
    (tmp_path / "bump.yaml").write_text(
        "name: bump\nimports: [loop_models]\nsteps:\n  - apply: inc\n  - apply: {fn: inc, id: inc2}\n"
    )
    (tmp_path / "outer.yaml").write_text(
        "imports: [loop_models]\n"
        "steps:\n"
        "  - subflow: {id: one, chain: bump.yaml}\n"
        "  - subflow: {id: two, chain: bump.yaml}\n"
    )
    (tmp_path / "self.yaml").write_text("steps:\n  - subflow: {id: me, chain: self.yaml}\n")
    try:
        chain = Chain.from_yaml(tmp_path / "outer.yaml")
        assert [n.id for n in chain.iter_nodes()] == ["one.inc", "one.inc2", "two.inc", "two.inc2"]
        rows = read_jsonl(chain.run([{"x": 0}], tmp_path / "run").path / "flattened")
        with pytest.raises(
            YamlChainError, match=r"self.yaml: steps\[0\].subflow.chain: 'self.yaml' uses itself"
        ):
            Chain.from_yaml(tmp_path / "self.yaml")
    finally:
        sys.modules.pop("loop_models", None)
    assert [(r["one.x"], r["two.x"]) for r in rows] == [(2, 4)]


UNION_MODELS = """
from typing import Literal
from pydantic import BaseModel


class Question(BaseModel):
    text: str


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


class Label(BaseModel):
    label: str


def cat(c: Cat) -> Label:
    return Label(label="cat")


def dog(d: Dog) -> Label:
    return Label(label="dog")
"""


def test_a_list_of_output_models_is_their_union(tmp_path: Path) -> None:
    (tmp_path / "union_models.py").write_text(UNION_MODELS)
    (tmp_path / "union.yaml").write_text(
        "imports: [union_models]\n"
        "engines: [{name: pets, backend: fake}]\n"
        "steps:\n"
        "  - step: {id: pet, input_model: Question, output_model: [Cat, union_models:Dog], engine: pets,"
        " user_prompt: '{{ text }}'}\n"
        "  - router: {id: by_kind, routes: {'union_models:Cat': {apply: cat}, 'union_models:Dog': {apply: dog}}}\n"
    )
    (tmp_path / "bad.yaml").write_text(
        "imports: [union_models]\nsteps:\n"
        "  - step: {id: pet, input_model: Question, output_model: [Cat, cat], engine: e, user_prompt: x}\n"
    )
    try:
        chain = Chain.from_yaml(tmp_path / "union.yaml")
        import union_models as m

        assert chain.items[0].output_variants == (m.Cat, m.Dog)
        result = chain.run([{"text": f"pet {i}"} for i in range(8)], tmp_path / "run")
        with pytest.raises(YamlChainError, match=r"output_model\[1\]: 'cat' is .*not a pydantic model class"):
            Chain.from_yaml(tmp_path / "bad.yaml")
    finally:
        sys.modules.pop("union_models", None)
    rows = read_jsonl(result.path / "flattened")
    assert len(rows) == 8 and all(r["by_kind.label"] == r["pet.kind"] for r in rows)


def test_a_policy_in_yaml_is_the_nodes_policy(project: Path) -> None:
    from chainette import Backoff, NodePolicy

    text = (
        "imports: [yaml_models]\nsteps:\n"
        "  - apply: {fn: label, policy: {timeout_s: 2, retries: 1, validate: none}}\n"
        "  - step: {id: qa, input_model: Label, output_model: Answer, engine: e, user_prompt: '{{ text }}',"
        " policy: {retries: 3, backoff: {base_s: 0.1, jitter: 0}}}\n"
    )
    chain = Chain.from_yaml(write(project, text))
    label, qa = chain.items
    assert label.policy == NodePolicy(timeout_s=2, retries=1, validate="none")
    assert qa.policy == NodePolicy(retries=3, backoff=Backoff(base_s=0.1, jitter=0))
    with pytest.raises(YamlChainError, match=r"steps\[0\]\.apply\.policy: unknown key 'retry'"):
        Chain.from_yaml(
            write(project, "imports: [yaml_models]\nsteps:\n  - apply: {fn: label, policy: {retry: 1}}\n")
        )


DIALOGUE_MODELS = """
from pydantic import BaseModel

from chainette import register_engine

heard = []


def respond(request):
    heard.append(request.messages[-1]["content"].split("\\n\\n")[-1])
    return {"text": f"reply {len(heard)}"}


register_engine("yaml_talk", backend="fake", responder=respond)


class Lesson(BaseModel):
    text: str


def said_three(transcript):
    return len(transcript.turns) >= 3
"""

DIALOGUE_YAML = """
imports: [talk_models]
steps:
  - dialogue:
      id: lesson
      input_model: Lesson
      opening: "Today's text: {{ text }}"
      turns: 4
      agents:
        - name: teacher
          system_prompt: You are a patient teacher.
          engine: yaml_talk
          instructions: ["Explain {{ text }} first.", "Answer the question."]
        - name: student
          system_prompt: You are a curious student.
          engine: yaml_talk
          instructions: {"1": "Ask why."}
      closing: {agent: teacher, instruction: "Sum up {{ text }}."}
"""


def test_a_dialogue_in_yaml_takes_instructions_and_a_closing(tmp_path: Path) -> None:
    """YAML chains had no ``dialogue`` kind: 'unknown node kind'."""
    (tmp_path / "talk_models.py").write_text(DIALOGUE_MODELS)
    (tmp_path / "talk.yaml").write_text(DIALOGUE_YAML)
    (tmp_path / "until.yaml").write_text(
        DIALOGUE_YAML.replace("turns: 4", "until: talk_models:said_three")
        .replace('{"1": "Ask why."}', "Ask one question.")
        .replace("closing: {agent: teacher, instruction: ", "closing: [teacher, ")
        .replace('."}', '."]')
    )
    (tmp_path / "typo.yaml").write_text(DIALOGUE_YAML.replace("closing:", "closin:"))
    try:
        chain = Chain.from_yaml(tmp_path / "talk.yaml")
        heard = sys.modules["talk_models"].heard
        [row] = chain.run([{"text": "the tides"}], tmp_path / "run").flattened()
        said = list(heard)
        heard.clear()
        [again] = (
            Chain.from_yaml(tmp_path / "until.yaml").run([{"text": "waves"}], tmp_path / "r2").flattened()
        )
        said_until = list(heard)
        with pytest.raises(YamlChainError, match=r"steps\[0\]\.dialogue: unknown key 'closin'.*'closing'"):
            Chain.from_yaml(tmp_path / "typo.yaml")
    finally:
        sys.modules.pop("talk_models", None)
    assert len(row["lesson.turns"]) == 5 and row["lesson.stop_reason"] == "turns"
    # teacher turn 0, student turn 0 (no instruction), teacher turn 1, student turn 1, closing
    assert said[0] == "Explain the tides first." and said[2] == "Answer the question."
    assert said[3] == "Ask why." and said[4] == "Sum up the tides."
    assert not said[1].startswith(("Explain", "Answer", "Ask", "Sum"))
    assert again["lesson.stop_reason"] == "until" and len(again["lesson.turns"]) == 4
    assert said_until[1] == "Ask one question." and said_until[-1] == "Sum up waves."


def test_a_loops_per_record_limits_in_yaml_read_a_field_or_a_function(tmp_path: Path) -> None:
    (tmp_path / "loop_models.py").write_text(
        LOOP_MODELS.replace(
            "class Num(BaseModel):\n    x: int", "class Num(BaseModel):\n    x: int\n    hops: int = 2"
        )
        + "\n\ndef one_hop(n: Num) -> int:\n    return 1\n"
    )
    (tmp_path / "field.yaml").write_text(
        "imports: [loop_models]\nsteps:\n"
        "  - loop: {id: grow, body: [{apply: inc}], until: loop_models:big, max_iterations: 10, max_hops: hops}\n"
    )
    (tmp_path / "fn.yaml").write_text(
        "imports: [loop_models]\nsteps:\n"
        "  - loop: {id: grow, body: [{apply: inc}], until: loop_models:big, max_iterations: 10,"
        " max_hops: 'loop_models:one_hop'}\n"
    )
    try:
        by_field = Chain.from_yaml(tmp_path / "field.yaml").run([{"x": 0, "hops": 2}], tmp_path / "a")
        by_fn = Chain.from_yaml(tmp_path / "fn.yaml").run([{"x": 0}], tmp_path / "b")
    finally:
        sys.modules.pop("loop_models", None)
    [a] = read_jsonl(by_field.path / "flattened")
    [b] = read_jsonl(by_fn.path / "flattened")
    assert (a["inc.x"], a["grow.iterations"], a["grow.stop_reason"]) == (2, 2, "max_hops")
    assert (b["inc.x"], b["grow.iterations"], b["grow.stop_reason"]) == (1, 1, "max_hops")
