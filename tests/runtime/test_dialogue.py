"""Dialogue: agents take turns in round-robin order over real chat messages (own turns as
assistant, the others' as named user messages), in lockstep across a chunk; the transcript goes on
under the dialogue's id; a failing turn fails only its record, naming the turn and the agent;
reruns send nothing; mistakes are caught before any request."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field
from tests.helpers import Summary, assert_every_record_accounted_for, read_jsonl

from chainette import (
    Agent,
    Branch,
    Chain,
    ChainDefinitionError,
    ChatRequest,
    Dialogue,
    RecordView,
    Step,
    TemplateError,
    Transcript,
    UnknownEngineError,
    apply,
    register_engine,
)
from chainette.graph.dialogue import DEFAULT_MAX_TURNS


class Topic(BaseModel):
    subject: str


class Verdict(BaseModel):
    score: int
    reason: str = Field(max_length=40)


def speaker_of(request: ChatRequest) -> str:
    """The agent a request is for: its tag is ``<dialogue>.<agent>/<record id>``."""
    return request.tag.split("/")[0].split(".", 1)[1]


def subject_of(request: ChatRequest) -> str:
    return next(m["content"] for m in request.messages if m["role"] == "user").split("\n\n")[0]


class Recorder:
    """A scripted fake engine: answers ``"<agent>#<n>"`` (its n-th turn for that opening) and
    keeps every request it received, in order."""

    def __init__(self) -> None:
        self.requests: list[ChatRequest] = []

    def __call__(self, request: ChatRequest) -> Any:
        self.requests.append(request)
        agent = speaker_of(request)
        own = sum(1 for m in request.messages if m["role"] == "assistant")
        return {"text": f"{agent}#{own + 1}"}

    def messages(self, agent: str) -> list[list[tuple[str, str]]]:
        return [
            [(m["role"], m["content"]) for m in r.messages if m["role"] != "system"]
            for r in self.requests
            if speaker_of(r) == agent
        ]


@pytest.fixture
def recorder() -> Recorder:
    rec = Recorder()
    register_engine("fake", backend="fake", responder=rec)
    return rec


def agents(*names: str, engine: str = "fake") -> list[Agent]:
    return [Agent(n, f"You are {n}. The topic is {{{{ subject }}}}.", engine) for n in names]


def talk(*names: str, **options: Any) -> Dialogue:
    options.setdefault("turns", 4)
    return Dialogue(
        "talk", agents(*names), opening="Let us discuss {{ subject }}.", input_model=Topic, **options
    )


def test_each_agent_hears_its_own_turns_as_assistant_and_the_others_as_named_user_messages(
    recorder: Recorder, run_dir: Path
) -> None:
    result = Chain("c", [talk("ann", "bob", "cy", turns=6)]).run([Topic(subject="tea")], output_dir=run_dir)
    assert result.counts["failures"] == 0
    opening = "Let us discuss tea."
    assert [speaker_of(r) for r in recorder.requests] == ["ann", "bob", "cy", "ann", "bob", "cy"]
    assert recorder.messages("ann") == [
        [("user", opening)],
        [("user", opening), ("assistant", "ann#1"), ("user", "bob: bob#1\n\ncy: cy#1")],
    ]
    assert recorder.messages("bob") == [
        [("user", f"{opening}\n\nann: ann#1")],
        [("user", f"{opening}\n\nann: ann#1"), ("assistant", "bob#1"), ("user", "cy: cy#1\n\nann: ann#2")],
    ]
    assert recorder.messages("cy") == [
        [("user", f"{opening}\n\nann: ann#1\n\nbob: bob#1")],
        [
            ("user", f"{opening}\n\nann: ann#1\n\nbob: bob#1"),
            ("assistant", "cy#1"),
            ("user", "ann: ann#2\n\nbob: bob#2"),
        ],
    ]
    systems = {speaker_of(r): r.messages[0] for r in recorder.requests}
    assert systems["bob"]["role"] == "system" and systems["bob"]["content"].startswith(
        "You are bob. The topic is tea."
    )
    assert "JSON object" in systems["bob"]["content"]  # free text is asked for as {"text": ...}
    [row] = result.flattened()
    assert [(t["speaker"], t["text"]) for t in row["talk.turns"]] == [
        ("ann", "ann#1"),
        ("bob", "bob#1"),
        ("cy", "cy#1"),
        ("ann", "ann#2"),
        ("bob", "bob#2"),
        ("cy", "cy#2"),
    ]
    assert row["talk.stop_reason"] == "turns"
    # the agents' internal steps leave nothing in the record: its history is the input and the transcript
    assert set(row) == {"_id", "_index", "input.subject", "talk.turns", "talk.stop_reason"}


def test_n_turns_are_n_requests_per_record_each_record_at_its_own_pace(
    recorder: Recorder, run_dir: Path
) -> None:
    topics = [Topic(subject=s) for s in ("tea", "rain", "owls")]
    result = Chain("c", [talk("ann", "bob", turns=5)]).run(topics, output_dir=run_dir)
    assert len(recorder.requests) == 15 and result.metadata["cache"]["sent"] == 15
    # each record's turns alternate in order; records do not wait for each other (no lockstep)
    by_subject: dict[str, list[str]] = {}
    for r in recorder.requests:
        by_subject.setdefault(subject_of(r), []).append(speaker_of(r))
    assert by_subject == {
        f"Let us discuss {s}.": ["ann", "bob", "ann", "bob", "ann"] for s in ("tea", "rain", "owls")
    }
    rows = list(result.flattened())
    assert [len(r["talk.turns"]) for r in rows] == [5, 5, 5]
    assert [r["talk.turns"][4]["text"] for r in rows] == ["ann#3"] * 3
    nodes = result.metadata["nodes"]
    assert (nodes["talk"]["records_in"], nodes["talk"]["records_out"], nodes["talk"]["done"]) == (3, 3, 3)
    assert (nodes["talk.ann"]["requests"], nodes["talk.bob"]["requests"]) == (9, 6)
    assert set(result.metadata["cost"]["by_step"]) == {"talk.ann", "talk.bob"}


def test_the_transcript_is_the_value_after_the_dialogue_and_is_written_to_its_folder(
    recorder: Recorder, run_dir: Path
) -> None:
    def count(transcript: Transcript) -> Summary:
        return Summary(summary=f"{len(transcript.turns)} turns")

    register_engine("plain", backend="fake")  # the recorder answers agents only
    recap = Step(
        id="recap",
        input_model=Transcript,
        output_model=Summary,
        engine_name="plain",
        user_prompt="{% for t in talk.turns %}{{ t.speaker }} said {{ t.text }}\n{% endfor %}",
    )
    chain = Chain("c", [talk("ann", "bob", turns=2), apply(count), recap])
    assert chain.check().issues == []
    result = chain.run([Topic(subject="tea"), Topic(subject="rain")], output_dir=run_dir, ordered=True)
    assert [r["count.summary"] for r in result.flattened()] == ["2 turns", "2 turns"]
    written = read_jsonl(run_dir / "talk")
    assert [len(w["turns"]) for w in written] == [2, 2] and {w["stop_reason"] for w in written} == {"turns"}
    assert [w["_id"] for w in written] == [r["_id"] for r in result.flattened()]


def test_until_stops_each_record_early_with_its_reason(recorder: Recorder, run_dir: Path) -> None:
    def enough(transcript: Transcript, record: RecordView) -> bool:
        return len(transcript.turns) >= len(record.input.subject)  # "ab": 2 turns, "abc": 3

    chain = Chain("c", [talk("ann", "bob", turns=None, until=enough)])
    result = chain.run(
        [Topic(subject="ab"), Topic(subject="abcd"), Topic(subject="abc")], output_dir=run_dir, ordered=True
    )
    rows = list(result.flattened())
    assert [len(r["talk.turns"]) for r in rows] == [2, 4, 3]
    assert {r["talk.stop_reason"] for r in rows} == {"until"}
    assert len(recorder.requests) == 9  # a record that stopped asks nothing more


def test_planned_turns_end_a_dialogue_whose_until_has_not_held(recorder: Recorder, run_dir: Path) -> None:
    result = Chain("c", [talk("ann", "bob", turns=3, until=lambda t: t.turns[-1].text == "bob#1")]).run(
        [Topic(subject="tea")], output_dir=run_dir
    )
    [row] = result.flattened()
    assert (len(row["talk.turns"]), row["talk.stop_reason"]) == (2, "until")
    run_dir2 = run_dir.parent / "again"
    result = Chain("c", [talk("ann", "bob", turns=3, until=lambda t: False)]).run(
        [Topic(subject="tea")], output_dir=run_dir2
    )
    [row] = result.flattened()
    assert (len(row["talk.turns"]), row["talk.stop_reason"]) == (3, "turns")


def test_max_turns_caps_a_dialogue_whose_until_never_holds(recorder: Recorder, run_dir: Path) -> None:
    result = Chain("c", [talk("ann", "bob", turns=None, until=lambda t: False, max_turns=3)]).run(
        [Topic(subject="tea")], output_dir=run_dir
    )
    [row] = result.flattened()
    assert (len(row["talk.turns"]), row["talk.stop_reason"]) == (3, "max_turns")
    result = Chain("c", [talk("ann", "bob", turns=None, until=lambda t: False)]).run(
        [Topic(subject="tea")], output_dir=run_dir.parent / "default_cap"
    )
    [row] = result.flattened()
    assert (len(row["talk.turns"]), row["talk.stop_reason"]) == (DEFAULT_MAX_TURNS, "max_turns")


def test_an_until_that_raises_fails_that_record_only(recorder: Recorder, run_dir: Path) -> None:
    def picky(transcript: Transcript, record: RecordView) -> bool:
        if record.input.subject == "bad":
            raise ValueError("cannot judge")
        return False

    result = Chain("c", [talk("ann", "bob", turns=2, until=picky)]).run(
        [Topic(subject="bad"), Topic(subject="tea")], output_dir=run_dir
    )
    _, failures = assert_every_record_accounted_for(run_dir, 2)
    [failure] = failures
    assert failure["node"] == "talk" and failure["error_type"] == "apply_error"
    assert "Dialogue 'talk' turn 1 (agent 'ann'): until raised ValueError: cannot judge" in failure["message"]
    assert result.metadata["nodes"]["talk"]["failed"] == 1


def test_a_typed_agent_output_is_validated_reasked_and_stored(run_dir: Path) -> None:
    requests: list[ChatRequest] = []

    def responder(request: ChatRequest) -> Any:
        requests.append(request)
        if speaker_of(request) == "critic":
            if request.messages[-1]["content"].startswith("Your reply was not valid"):
                return {"score": 7, "reason": "clear"}
            return {"score": "high"}  # invalid the first time: re-asked
        return {"text": "a poem"}

    register_engine("fake", backend="fake", responder=responder)
    poet = Agent("poet", "You write poems about {{ subject }}.", "fake")
    critic = Agent("critic", "You score poems.", "fake", output_model=Verdict, max_reasks=1)
    dialogue = Dialogue("talk", [poet, critic], opening="{{ subject }}", turns=3, input_model=Topic)
    result = Chain("c", [dialogue]).run([Topic(subject="tea")], output_dir=run_dir)
    [row] = result.flattened()
    poem, verdict, again = row["talk.turns"]
    assert poem == {"speaker": "poet", "text": "a poem", "output": None}
    assert verdict["output"] == {"score": 7, "reason": "clear"}
    assert json.loads(verdict["text"]) == verdict["output"]
    assert again["speaker"] == "poet"
    critic_requests = [r for r in requests if speaker_of(r) == "critic"]
    assert critic_requests[0].json_schema == Verdict.model_json_schema()
    assert len(critic_requests) == 2 and result.metadata["nodes"]["talk.critic"]["reasks"] == 1
    # the poet hears the validated verdict, not the detour through the re-ask
    assert requests[-1].messages[-1] == {"role": "user", "content": f"critic: {verdict['text']}"}


@pytest.mark.parametrize("mode", ["engine_error", "invalid_output"])
def test_a_failing_turn_fails_only_its_record_naming_the_turn_and_agent(mode: str, run_dir: Path) -> None:
    def responder(request: ChatRequest) -> Any:
        own = sum(1 for m in request.messages if m["role"] == "assistant")
        if subject_of(request) == "Let us discuss rain." and speaker_of(request) == "bob" and own >= 1:
            if mode == "engine_error":
                raise ConnectionError("server went away")
            return "this is not json"
        return {"text": f"{speaker_of(request)}#{own + 1}"}

    register_engine("fake", backend="fake", responder=responder)
    result = Chain("c", [talk("ann", "bob", turns=5)]).run(
        [Topic(subject=s) for s in ("tea", "rain", "owls")], output_dir=run_dir, ordered=True
    )
    flat, failures = assert_every_record_accounted_for(run_dir, 3)
    assert [r["input.subject"] for r in flat] == ["tea", "owls"]
    assert all(len(r["talk.turns"]) == 5 for r in flat)
    [failure] = failures
    assert failure["node"] == "talk" and failure["error_type"] == mode
    assert failure["message"].startswith("Dialogue 'talk' turn 4 (agent 'bob'): ")
    assert failure["input"] == {"subject": "rain"} and (
        failure["details"]["turn"],
        failure["details"]["agent"],
    ) == (4, "bob")
    if mode == "invalid_output":
        assert failure["attempts"] == 3 and failure["raw"] == "this is not json"
    nodes = result.metadata["nodes"]
    assert (nodes["talk"]["failed"], nodes["talk"]["records_out"], nodes["talk"]["done"]) == (1, 2, 3)
    assert nodes["talk.bob"]["failed"] == 0  # counted once, where the failures row says
    assert len(read_jsonl(run_dir / "talk")) == 2


def test_a_rerun_into_the_same_ledger_sends_nothing(recorder: Recorder, run_dir: Path) -> None:
    chain = Chain("c", [talk("ann", "bob", turns=4)])
    topics = [Topic(subject=s) for s in ("tea", "rain")]
    first = chain.run(topics, output_dir=run_dir, ordered=True)
    sent = len(recorder.requests)
    second = chain.run(topics, output_dir=run_dir.parent / "rerun", ordered=True)
    assert sent == 8 and len(recorder.requests) == sent
    assert second.metadata["cache"]["sent"] == 0 and second.metadata["cache"]["hits"] == 8
    assert list(second.flattened()) == list(first.flattened())


def test_identical_records_share_their_requests(recorder: Recorder, run_dir: Path) -> None:
    result = Chain("c", [talk("ann", "bob", turns=3)]).run([Topic(subject="tea")] * 3, output_dir=run_dir)
    assert len(recorder.requests) == 3 and result.metadata["cache"]["deduped"] == 6
    assert result.counts["records_out"] == 3


def test_a_dialogue_in_a_joined_branch_hands_its_transcript_back(recorder: Recorder, run_dir: Path) -> None:
    chain = Chain("c", [[Branch("side", [talk("ann", "bob", turns=2)]).join("talked")]])
    assert chain.check().errors == []
    result = chain.run([Topic(subject="tea")], output_dir=run_dir)
    [row] = result.flattened()
    assert row["talked.turns"] == row["talk.turns"] and len(row["talk.turns"]) == 2
    assert len(read_jsonl(run_dir / "talk")) == 1


def test_a_template_failing_on_a_record_fails_that_record(recorder: Recorder, run_dir: Path) -> None:
    dialogue = Dialogue("talk", agents("ann", "bob"), opening="About {{ subject }} ({{ note }})", turns=2)
    chain = Chain("c", [dialogue])
    [warning] = chain.check().warnings  # the records are plain dicts: their fields are known at run time
    assert "reads subject, note from the record" in warning.message
    chain.run([{"subject": "tea", "note": "hot"}, {"subject": "rain"}], output_dir=run_dir)
    flat, [failure] = assert_every_record_accounted_for(run_dir, 2)
    assert failure["node"] == "talk" and failure["error_type"] == "render_error"
    assert (
        "Dialogue 'talk' opening failed on record" in failure["message"]
        and "'note' is undefined" in failure["message"]
    )
    assert flat[0]["talk.turns"][0]["text"] == "ann#1"


def test_graph_json_describes_the_dialogue_and_its_agents(recorder: Recorder, run_dir: Path) -> None:
    chain = Chain("c", [talk("ann", "bob", turns=2)])
    chain.run([Topic(subject="tea")], output_dir=run_dir)
    graph = json.loads((run_dir / "graph.json").read_text())
    [node] = graph["nodes"]
    assert (node["id"], node["kind"], node["turns"], node["max_turns"]) == ("talk", "dialogue", 2, 2)
    assert [(a["name"], a["engine"], a["system_prompt"]) for a in node["agents"]] == [
        ("ann", "fake", "You are ann. The topic is {{ subject }}."),
        ("bob", "fake", "You are bob. The topic is {{ subject }}."),
    ]
    assert node["opening"] == "Let us discuss {{ subject }}." and graph["edges"] == [
        {"from": "input", "to": "talk"}
    ]
    assert "fake" in graph["engines"]
    assert "talk" in chain.to_mermaid() and "dialogue" in chain.to_mermaid()


# -- checks: before any request ------------------------------------------------------------


def test_an_unknown_engine_is_refused_naming_the_dialogue_and_agent(run_dir: Path) -> None:
    register_engine("fake", backend="fake")
    dialogue = Dialogue(
        "talk",
        [Agent("ann", "Hi", "fake"), Agent("bob", "Hi", "fak")],
        opening="{{ subject }}",
        turns=2,
        input_model=Topic,
    )
    [error] = Chain("c", [dialogue]).check().errors
    assert error.error_type is UnknownEngineError and error.node_id == "talk"
    assert error.message.startswith("Dialogue 'talk' agent 'bob' uses engine 'fak' (did you mean 'fake'?)")
    with pytest.raises(UnknownEngineError):
        Chain("c", [dialogue]).run([Topic(subject="tea")], output_dir=run_dir)
    assert not run_dir.exists()


def test_template_references_are_checked_against_the_record_and_earlier_outputs() -> None:
    register_engine("fake", backend="fake")
    dialogue = Dialogue(
        "talk",
        [Agent("ann", "You are ann on {{ subjct }}.", "fake"), Agent("bob", "{{ prep.subject }}", "fake")],
        opening="{{ prep.subjet }} {{ later.x }}",
        turns=2,
        input_model=Topic,
    )

    def prep(t: Topic) -> Topic:
        return Topic(subject=t.subject.strip())

    def later(t: Transcript) -> Topic:
        return Topic(subject="x")

    report = Chain("c", [apply(prep), dialogue, apply(later)]).check()
    messages = [e.message for e in report.errors]
    assert all(e.error_type is TemplateError and e.node_id == "talk" for e in report.errors)
    assert len(messages) == 3
    assert messages[0].startswith("Dialogue 'talk' agent 'ann' system_prompt line 1 uses {{ subjct }}")
    assert "Did you mean 'subject'?" in messages[0]
    assert messages[1].startswith("Dialogue 'talk' opening line 1 uses {{ prep.subjet }}; Topic has no field")
    assert messages[2].startswith("Dialogue 'talk' opening line 1 uses {{ later.x }}, but 'later' runs later")


def test_a_step_after_the_dialogue_reads_its_transcript_fields_checked() -> None:
    register_engine("fake", backend="fake")
    recap = Step(
        id="recap",
        input_model=Transcript,
        output_model=Summary,
        engine_name="fake",
        user_prompt="{{ talk.turn }}",
    )
    [error] = Chain("c", [talk("ann", "bob"), recap]).check().errors
    assert "Transcript has no field 'turn' (did you mean 'turns'?)" in error.message


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Dialogue("t", agents("ann", "ann"), opening="x", turns=2), "used more than once: ann"),
        (lambda: Dialogue("t", agents("ann"), opening="x", turns=2), "two or more Agent"),
        (lambda: Dialogue("t", agents("ann", "bob"), opening="x", turns=0), "turns must be an integer >= 1"),
        (lambda: Dialogue("t", agents("ann", "bob"), opening="x"), "turns=n, or until="),
        (
            lambda: Dialogue("t", agents("ann", "bob"), opening="x", turns=5, max_turns=3),
            "exceeds max_turns=3",
        ),
        (lambda: Dialogue("t", agents("ann", "bob"), opening="{{ x", turns=2), "Dialogue 't' opening line 1"),
        (lambda: Agent("ann smith", "x", "fake"), "Agent id 'ann smith' is not a valid identifier"),
        (lambda: Agent("ann", "{% if %}", "fake"), "Agent 'ann' system_prompt line 1: template syntax"),
        (lambda: Agent("ann", "x", "fake", output_model=Verdict, max_chars=10), "max_chars bounds free text"),
    ],
)
def test_mistakes_in_the_definition_are_refused(build: Any, message: str) -> None:
    with pytest.raises(ChainDefinitionError, match=re.escape(message)):
        build()


def test_max_chars_bounds_a_free_text_reply_schema(recorder: Recorder, run_dir: Path) -> None:
    short = Agent("ann", "Hi", "fake", max_chars=30)
    dialogue = Dialogue("talk", [short, Agent("bob", "Hi", "fake")], opening="{{ subject }}", turns=2)
    Chain("c", [dialogue]).run([Topic(subject="tea")], output_dir=run_dir)
    schemas = {speaker_of(r): r.json_schema for r in recorder.requests}
    assert schemas["ann"] is not None and schemas["ann"]["properties"]["text"]["maxLength"] == 30
    assert schemas["bob"] is not None and "maxLength" not in schemas["bob"]["properties"]["text"]
