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
