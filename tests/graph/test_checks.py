"""Mistakes in the chain definition are caught before any request is sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel
from tests.helpers import Answer, Question, Summary, Translation

from chainette import (
    Branch,
    Chain,
    ChainDefinitionError,
    ChatRequest,
    IncompatibleStepsError,
    Router,
    Step,
    TemplateError,
    UnknownEngineError,
    apply,
    register_engine,
)


@pytest.fixture(autouse=True)
def fake_engine() -> None:
    register_engine("fake", backend="fake")


def qa_step(prompt: str = "Q: {{ text }}", **kw: object) -> Step:
    return Step(
        id="qa", input_model=Question, output_model=Answer, engine_name="fake", user_prompt=prompt, **kw
    )


def test_valid_chain_has_no_issues() -> None:
    translate = Step(
        id="tr",
        input_model=Answer,
        output_model=Translation,
        engine_name="fake",
        user_prompt="Translate: {{ answer }} (question was {{ input.text }})",
    )
    agg = Step(
        id="agg",
        input_model=Answer,
        output_model=Summary,
        engine_name="fake",
        user_prompt="{{ fr.translated }} {{ tr.translated }} {{ qa.confidence }}",
    )
    chain = Chain("ok", [qa_step(), [Branch("fr", [translate]).join("fr")], agg])
    report = chain.check()
    assert report.issues == []


def test_missing_field_names_step_field_and_suggestion() -> None:
    chain = Chain("c", [qa_step("Q: {{ txt }}")])
    with pytest.raises(TemplateError) as exc:
        chain.check().raise_for_errors()
    message = str(exc.value)
    assert "Step 'qa'" in message and "'txt'" in message and "Did you mean 'text'?" in message


def test_missing_attribute_of_earlier_step() -> None:
    second = Step(
        id="two", input_model=Answer, output_model=Summary, engine_name="fake", user_prompt="{{ qa.answr }}"
    )
    report = Chain("c", [qa_step(), second]).check()
    assert len(report.errors) == 1
    assert "Answer has no field 'answr'" in report.errors[0].message
    assert "did you mean 'answer'" in report.errors[0].message


def test_reference_to_unjoined_branch_step_is_explained() -> None:
    tr = Step(
        id="tr", input_model=Answer, output_model=Translation, engine_name="fake", user_prompt="{{ answer }}"
    )
    agg = Step(
        id="agg",
        input_model=Answer,
        output_model=Summary,
        engine_name="fake",
        user_prompt="{{ tr.translated }}",
    )
    report = Chain("c", [qa_step(), [Branch("fr", [tr])], agg]).check()
    assert [e.node_id for e in report.errors] == ["agg"]
    assert "inside branch 'fr', which is not joined" in report.errors[0].message


def test_reference_to_later_step_is_explained() -> None:
    first = qa_step("{{ agg.summary }}")
    agg = Step(id="agg", input_model=Answer, output_model=Summary, engine_name="fake", user_prompt="x")
    report = Chain("c", [first, agg]).check()
    assert "runs later in the chain" in report.errors[0].message


def test_incompatible_models_are_reported_before_running() -> None:
    class Other(BaseModel):
        something: int

    wrong = Step(
        id="wrong", input_model=Other, output_model=Summary, engine_name="fake", user_prompt="{{ something }}"
    )
    with pytest.raises(IncompatibleStepsError) as exc:
        Chain("c", [qa_step(), wrong]).check().raise_for_errors()
    assert "'qa' outputs Answer" in str(exc.value) and "'something'" in str(exc.value)


def test_a_step_whose_templates_read_no_input_field_need_not_fit_its_input_model() -> None:
    """The seed README's join example: ``agg`` declares ``input_model=Translation`` and reads only
    ``{{ fr.translated }}`` / ``{{ es.translated }}``: a warning, not an error."""

    class Other(BaseModel):
        something: int

    reads_earlier = Step(
        id="agg", input_model=Other, output_model=Summary, engine_name="fake", user_prompt="{{ qa.answer }}"
    )
    report = Chain("c", [qa_step(), reads_earlier]).check()
    assert report.errors == []
    assert "its templates read no field of its input" in report.warnings[-1].message


def test_unknown_engine_lists_known_ones() -> None:
    step = Step(
        id="qa", input_model=Question, output_model=Answer, engine_name="fak", user_prompt="{{ text }}"
    )
    with pytest.raises(UnknownEngineError) as exc:
        Chain("c", [step]).check().raise_for_errors()
    assert "'fak'" in str(exc.value) and "'fake'" in str(exc.value) and "did you mean" in str(exc.value)


def test_untyped_apply_is_a_warning_not_an_error() -> None:
    report = Chain("c", [apply(lambda x: x, id="anything")]).check()
    assert report.ok
    assert "declares no input or output model" in report.warnings[0].message


def test_apply_models_come_from_type_hints() -> None:
    def to_summary(a: Answer) -> list[Summary]:
        return [Summary(summary=a.answer)]

    node = apply(to_summary)
    assert node.input_model is Answer and node.output_model is Summary


def test_template_syntax_error_names_step_and_line() -> None:
    with pytest.raises(TemplateError, match=r"Step 'qa' user_prompt line 2: template syntax error"):
        qa_step("line one\n{{ text ")


def test_duplicate_ids_are_rejected() -> None:
    with pytest.raises(ChainDefinitionError, match="used more than once: qa"):
        Chain("c", [qa_step(), qa_step()])


def test_reserved_and_invalid_ids_are_rejected() -> None:
    with pytest.raises(ChainDefinitionError, match="reserved"):
        Step(id="input", input_model=Question, output_model=Answer, engine_name="fake", user_prompt="x")
    with pytest.raises(ChainDefinitionError, match="not a valid identifier"):
        Step(id="my-step", input_model=Question, output_model=Answer, engine_name="fake", user_prompt="x")


def test_several_errors_are_listed_together() -> None:
    step = Step(
        id="qa", input_model=Question, output_model=Answer, engine_name="nope", user_prompt="{{ oops }}"
    )
    with pytest.raises(ChainDefinitionError, match="2 problems"):
        Chain("c", [step]).check().raise_for_errors()


def test_a_step_id_shadowed_by_an_input_field_is_caught() -> None:
    """``{{ text.text }}`` where ``text`` is both a step and a str field of the input: the field wins
    in templates, so the reference would fail on every record; the check says so up front."""
    text = Step(
        id="text", input_model=Question, output_model=Question, engine_name="fake", user_prompt="{{ text }}"
    )
    reads = Step(
        id="reads",
        input_model=Question,
        output_model=Answer,
        engine_name="fake",
        user_prompt="Earlier: {{ text.text }}",
    )
    report = Chain("shadow", [text, reads]).check()
    errors = [i for i in report.issues if i.level == "error"]
    assert len(errors) == 1 and errors[0].node_id == "reads"
    assert "input field Question.text (str)" in errors[0].message
    assert "shadows the earlier output 'text'" in errors[0].message
    with pytest.raises(TemplateError, match=r"text\.text"):
        report.raise_for_errors()


def test_attributes_of_str_fields_that_exist_are_allowed() -> None:
    assert qa_step("{{ text.upper() }}").id == "qa"
    assert Chain("ok", [qa_step("{{ text.upper() }}")]).check().issues == []


@pytest.mark.parametrize(("node_id", "shown"), [("étape", "'é'"), ("qa step", "' '"), ("qa\n", "'\\n'")])
def test_an_id_with_other_characters_says_exactly_which_are_allowed(node_id: str, shown: str) -> None:
    with pytest.raises(ChainDefinitionError) as info:
        Step(id=node_id, input_model=Question, output_model=Answer, engine_name="fake", user_prompt="x")
    message = str(info.value)
    assert "ASCII letters (a-z, A-Z), digits (0-9) and underscores (_), not starting with a digit" in message
    assert f"{shown} is not allowed" in message, message


# a step whose output is a union of models, then a router keyed by the variant classes


class Cat(BaseModel):
    kind: Literal["cat"]
    name: str
    lives: int


class Dog(BaseModel):
    kind: Literal["dog"]
    name: str
    good: bool


class Bird(BaseModel):
    wings: int


def pet_step(output_model: Any = Cat | Dog) -> Step:
    return Step(
        id="pet", input_model=Question, output_model=output_model, engine_name="fake", user_prompt="x"
    )


def to_summary(value: Any) -> Summary:
    return Summary(summary=type(value).__name__)


def variant_router(routes: dict[type[BaseModel], Any] | None = None, **options: Any) -> Router:
    routes = (
        routes if routes is not None else {Cat: apply(to_summary, id="c"), Dog: apply(to_summary, id="d")}
    )
    return Router("by_kind", routes, **options)


def reads(prompt: str) -> Step:
    return Step(
        id="after", input_model=Question, output_model=Summary, engine_name="fake", user_prompt=prompt
    )


def test_a_variant_without_a_route_is_an_error_before_any_request(run_dir: Path) -> None:
    asked: list[ChatRequest] = []
    register_engine("fake", backend="fake", responder=lambda r: asked.append(r) or {})
    chain = Chain("c", [pet_step(), variant_router({Cat: apply(to_summary, id="c")})])
    [error] = chain.check().errors
    assert error.node_id == "by_kind"
    assert error.message == (
        "Router 'by_kind': step 'pet' can answer Dog (its output is Cat | Dog), but no route takes Dog. "
        "Add a route keyed by Dog, a default= route, or on_no_match='filter' (or 'pass')."
    )
    with pytest.raises(ChainDefinitionError, match="no route takes Dog"):
        chain.run([Question(text="q")], output_dir=run_dir)
    assert asked == [] and not run_dir.exists()


def test_a_default_or_filtering_lets_a_variant_go_without_a_route() -> None:
    only_cat = {Cat: apply(to_summary, id="c"), Bird: apply(to_summary, id="b")}
    for options in ({"default": Cat}, {"on_no_match": "filter"}, {"on_no_match": "pass"}):
        messages = [
            e.message for e in Chain("c", [pet_step(), variant_router(only_cat, **options)]).check().errors
        ]
        assert messages == [  # the stray Bird route is still wrong; the missing Dog route is not
            "Router 'by_kind': route 'Bird' is keyed by Bird, which is not a variant of step 'pet''s output "
            "(Cat | Dog), so no record can take it. Key it by one of Cat | Dog, or remove it."
        ]
    assert Chain("c", [pet_step(), variant_router(default=Cat)]).check().issues == []


def test_each_route_is_checked_with_its_variant() -> None:
    def cat_only(c: Cat) -> Summary:
        return Summary(summary=c.name)

    def wants_cat_in_dog_route(c: Cat) -> Summary:
        return Summary(summary=c.name)

    in_route = Step(
        id="lives", input_model=Cat, output_model=Summary, engine_name="fake", user_prompt="{{ pet.lives }}"
    )
    good = Chain("c", [pet_step(), variant_router({Cat: in_route, Dog: apply(to_summary)})])
    assert good.check().issues == []  # in the Cat route, {{ pet.lives }} is a Cat's field
    bad = Chain("c", [pet_step(), variant_router({Cat: apply(cat_only), Dog: apply(wants_cat_in_dog_route)})])
    [error] = bad.check().errors
    assert error.node_id == "wants_cat_in_dog_route" and "needs Cat but 'pet' outputs Dog" in error.message


def test_template_fields_after_a_union_step() -> None:
    assert Chain("c", [pet_step(), reads("{{ pet.name }} {{ pet.kind }}")]).check().errors == []
    [error] = Chain("c", [pet_step(), reads("{{ pet.wings }}")]).check().errors
    assert error.node_id == "after" and error.error_type is TemplateError
    assert "'pet' is one of Cat | Dog, and none of them has a field 'wings'" in error.message
    report = Chain("c", [pet_step(), reads("{{ pet.lives }}")]).check()
    assert report.errors == []
    assert any(
        "only Cat has the field 'lives': records that got Dog fail to render" in w.message
        for w in report.warnings
    )


def test_a_union_step_describes_itself_and_goes_through_inspect() -> None:
    node = pet_step().describe()
    assert node["output_model"] == f"{__name__}.Cat | {__name__}.Dog"
    assert {o["$ref"] for o in node["output_schema"]["anyOf"]} == {"#/$defs/Cat", "#/$defs/Dog"}
    chain = Chain("c", [pet_step(), variant_router()])
    assert [n["id"] for n in chain.describe()["nodes"]][:2] == ["pet", "by_kind"]


def test_a_union_member_that_is_not_a_model_is_refused() -> None:
    with pytest.raises(ChainDefinitionError) as exc:
        pet_step(Cat | str)
    assert str(exc.value) == (
        "Step 'pet': output_model must be a pydantic BaseModel class or a union of them (Cat | Dog, "
        "typing.Union[Cat, Dog], or Annotated[Cat | Dog, Field(discriminator='kind')]), got "
        f"{Cat | str!r}."
    )
