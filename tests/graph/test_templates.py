import jinja2
import pytest

from chainette.graph.templates import Template


def refs(source: str) -> set[str]:
    return {str(r) for r in Template(source).references}


def test_references_include_names_and_attributes() -> None:
    assert refs("Q: {{ text }} / {{ qa.answer }} / {{ fr['translated'] }}") == {
        "text",
        "qa.answer",
        "fr.translated",
    }


def test_loop_variables_are_not_references() -> None:
    assert refs("{% for item in items %}{{ item.name }}{% endfor %}") == {"items"}


def test_undefined_name_is_an_error_not_an_empty_string() -> None:
    with pytest.raises(jinja2.UndefinedError):
        Template("Hello {{ missing }}").render({})


def test_render_reads_model_attributes() -> None:
    from tests.helpers import Answer

    out = Template("{{ qa.answer }} ({{ qa.confidence }})").render(
        {"qa": Answer(answer="Paris", confidence=0.9)}
    )
    assert out == "Paris (0.9)"


@pytest.mark.parametrize(
    "source",
    [
        "Question: {{ text }}\n",
        "Q: {{ input.text }} A: {{ qa.answer }} ({{ qa.confidence }}) {{ n }} {{ nothing }} {{ d.key }} {{ d.items }}",
        "{{ text }}{{ text }}",
        "{{ range }}",  # a Jinja global the context lacks: Jinja's own rendering
    ],
)
def test_plain_substitutions_render_exactly_as_jinja_does(source: str) -> None:
    from pydantic import BaseModel

    class A(BaseModel):
        answer: str
        confidence: float

    context = {
        "text": "héllo {{ not a template }}",
        "input": {"text": "in"},
        "qa": A(answer="yes", confidence=0.5),
        "n": 3,
        "nothing": None,
        "d": {"key": [1, 2]},
    }
    template = Template(source)
    assert template._parts is not None  # the fast path is taken
    expected = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True).from_string(
        source
    )
    assert template.render(context) == expected.render(context)


def test_plain_substitutions_still_raise_for_missing_names_and_fields() -> None:
    from pydantic import BaseModel

    class A(BaseModel):
        answer: str

    with pytest.raises(jinja2.UndefinedError, match="missing"):
        Template("x {{ missing }}").render({})
    with pytest.raises(jinja2.UndefinedError, match="nope"):
        Template("{{ qa.nope }}").render({"qa": A(answer="a")})
    assert Template("{{ x | upper }}")._parts is None  # anything beyond substitution: Jinja renders it
    assert Template("{% if x %}{{ x }}{% endif %}")._parts is None
