"""The page at ``/`` in headless Chromium: the form built from the schema, errors beside fields, the
graph before / during / after a run, a cancelled node, a union's variant select, examples and this
tab's history. Screenshots go to ``$CHAINETTE_SCREENSHOTS`` or the test's ``screenshots/`` folder."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import pytest
from pydantic import BaseModel, Field
from tests.helpers import Answer, echo, qa_step
from tests.serving.live import LiveServer
from tests.serving.test_page import CHROMIUM, browser_page

from chainette import Branch, Chain, Router, Step, apply, register_engine
from chainette.serving import create_app

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")


class Address(BaseModel):
    city: str = Field(description="Where it goes.")
    zip: str | None = None


class Order(BaseModel):
    note: str = Field(description="What the customer wrote.")
    tier: Literal["free", "pro", "team"] = Field("pro", description="The plan.")
    quantity: int = Field(1, ge=1, le=10)
    tags: list[str] = []
    address: Address | None = None


def same_order(order: Order) -> Order:
    return order


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CHAINETTE_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def browser() -> Iterator[tuple[Any, list[str]]]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        opened, page, problems = browser_page(pw, Path("."))
        try:
            yield page, problems
        finally:
            opened.close()


def shot(page: Any, folder: Path, name: str) -> None:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 5000


def error_beside(page: Any, widget: str) -> str:
    return str(page.text_content(f".field:has(> {widget}) > .err, .item:has({widget}) .err"))


@pytest.mark.timeout(120)
def test_the_form_follows_the_schema_and_errors_sit_beside_their_fields(
    browser: tuple[Any, list[str]], shots: Path
) -> None:
    page, problems = browser
    example = {
        "note": "from the example",
        "tier": "team",
        "quantity": 2,
        "tags": ["a"],
        "address": {"city": "Oslo"},
    }
    app = create_app(Chain(name="Orders", steps=[apply(same_order)]), examples=[example])
    with LiveServer(app) as server:
        page.goto(server.url + "/")
        page.wait_for_selector("#f-tier")
        # a Literal is a select with its default chosen; a bounded int a number input with bounds
        assert page.eval_on_selector("#f-tier", "e => e.tagName") == "SELECT"
        assert page.eval_on_selector("#f-tier", "e => [...e.options].map(o => o.text)") == [
            "—",
            "free",
            "pro",
            "team",
        ]
        assert page.eval_on_selector("#f-tier", "e => e.selectedOptions[0].text") == "pro"
        number = page.eval_on_selector("#f-quantity", "e => [e.type, e.min, e.max, e.value]")
        assert number == ["number", "1", "10", "1"]
        assert "≥ 1 ≤ 10" in page.text_content("label[for='f-quantity']")
        assert "The plan." in page.text_content(".field:has(> #f-tier)")  # descriptions as hints
        assert "optional" in page.text_content("label[for='f-tier']")
        assert "optional" not in page.text_content("label[for='f-note']")
        # an optional nested model: a fieldset, off until ticked
        assert page.eval_on_selector("#f-address-on", "e => e.checked") is False
        assert page.is_hidden("#f-address-city")

        # type into the widgets, with a value the server refuses and a required field left empty
        page.select_option("#f-tier", label="free")
        page.fill("#f-quantity", "50")
        page.click("[data-add='tags']")
        page.click("[data-add='tags']")
        page.click("[data-add='tags']")
        page.fill("#f-tags-0", "first")
        page.fill("#f-tags-1", "dropped")
        page.fill("#f-tags-2", "third")
        page.click(".item:has(#f-tags-1) button")  # remove the middle one
        assert page.input_value("#f-tags-1") == "third"
        page.check("#f-address-on")
        page.click("#send")
        page.wait_for_function(
            "document.getElementById('status').textContent.startsWith('422')", timeout=20000
        )
        assert "less than or equal to 10" in error_beside(page, "#f-quantity")
        assert "Field required" in error_beside(page, "#f-note")
        assert "Field required" in page.text_content(
            "fieldset:has(#f-address-city) .field:has(> #f-address-city) .err"
        )
        assert page.text_content("#form-errors") == ""  # nothing left over in one paragraph
        shot(page, shots, "form-errors")

        page.fill("#f-quantity", "3")
        page.fill("#f-note", "ship it")
        page.fill("#f-address-city", "Lyon")
        page.click("#send")
        page.wait_for_function(
            "document.getElementById('status').textContent.startsWith('Done')", timeout=20000
        )
        sent = json.loads(page.text_content("#answer"))
        assert sent == {
            "note": "ship it",
            "tier": "free",
            "quantity": 3,
            "tags": ["first", "third"],
            "address": {"city": "Lyon", "zip": None},
        }
        assert error_beside(page, "#f-quantity") == ""

        page.click("#examples button")  # an example fills the form
        assert page.input_value("#f-note") == "from the example"
        assert page.eval_on_selector("#f-tier", "e => e.selectedOptions[0].text") == "team"
        assert page.input_value("#f-tags-0") == "a" and page.input_value("#f-address-city") == "Oslo"
        shot(page, shots, "form-example")
    assert [p for p in problems if "422" not in p] == []


def translator(step_id: str) -> Step:
    return Step(
        id=step_id,
        input_model=Answer,
        output_model=Answer,
        engine_name="echo",
        user_prompt=step_id + ": {{ answer }}",
    )


@pytest.mark.timeout(120)
def test_the_graph_is_shown_before_the_run_and_every_output_after_it(
    browser: tuple[Any, list[str]], shots: Path
) -> None:
    page, problems = browser
    register_engine("echo", backend="fake", responder=echo, latency=0.1)
    chain = Chain(
        name="Translate",
        steps=[
            qa_step("echo"),
            [Branch(name="to_fr", steps=[translator("fr")]), Branch(name="to_es", steps=[translator("es")])],
        ],
    )
    with LiveServer(create_app(chain)) as server:
        page.goto(server.url + "/")
        page.wait_for_selector("#graph [data-node='fr']")
        # before any run: the branches nested side by side under their group, each with its step
        group = "#graph .node.parallel"
        assert page.eval_on_selector_all(f"{group} > .row > .node", "es => es.map(e => e.dataset.node)") == [
            "to_fr",
            "to_es",
        ]
        assert page.is_visible(f"{group} > .row > [data-node='to_fr'] > .seq > [data-node='fr']")
        shot(page, shots, "graph-before")

        page.fill("#f-text", "hello")
        page.click("#send")
        page.wait_for_function(
            "document.getElementById('status').textContent.startsWith('Done')", timeout=20000
        )
        outputs = {
            n: page.text_content(f"#graph [data-node='{n}'] > details.out pre") for n in ("qa", "fr", "es")
        }
        assert '"re: hello"' in outputs["qa"]
        assert '"re: fr: re: hello"' in outputs["fr"] and '"re: es: re: hello"' in outputs["es"]
        for n in ("qa", "fr", "es"):
            assert page.is_visible(f"#graph [data-node='{n}'] > details.out pre")  # kept, open, after the end
            assert "done" in page.get_attribute(f"#graph [data-node='{n}']", "class")
        shot(page, shots, "graph-after")

        # a second run, then the first from this tab's history
        page.fill("#f-text", "again")
        page.click("#send")
        page.wait_for_function("document.querySelectorAll('#history li').length === 2", timeout=20000)
        page.click("#history li:last-child")
        assert page.input_value("#f-text") == "hello"
        assert '"re: fr: re: hello"' in page.text_content("#graph [data-node='fr'] > details.out pre")
        assert "re: hello" in page.text_content("#answer")
        shot(page, shots, "history")
    assert problems == []


@pytest.mark.timeout(120)
def test_a_cancelled_run_marks_its_node_and_nothing_stays_running(
    browser: tuple[Any, list[str]], shots: Path
) -> None:
    page, problems = browser
    register_engine("slow", backend="fake", responder=echo, latency=60)
    with LiveServer(create_app(Chain(name="Slow", steps=[qa_step("slow")]))) as server:
        page.goto(server.url + "/")
        page.wait_for_selector("#graph [data-node='qa']")
        page.fill("#f-text", "wait")
        page.click("#send")
        page.wait_for_selector("#graph [data-node='qa'].running", timeout=20000)
        page.click("#cancel")
        page.wait_for_function(
            "document.getElementById('status').textContent.startsWith('Cancelled')", timeout=20000
        )
        assert "cancelled" in page.get_attribute("#graph [data-node='qa']", "class")
        assert page.text_content("#graph [data-node='qa'] > .head .state") == "cancelled"
        assert "running…" not in page.text_content("#graph")
        assert page.text_content("#history li .st").startswith("cancelled")
        shot(page, shots, "cancelled")
    assert problems == []


class Circle(BaseModel):
    kind: Literal["circle"] = "circle"
    radius: float = Field(gt=0)


class Square(BaseModel):
    kind: Literal["square"] = "square"
    side: int = Field(ge=1)


class Drawing(BaseModel):
    title: str
    shape: Annotated[Circle | Square, Field(discriminator="kind")]


def same_drawing(drawing: Drawing) -> Drawing:
    return drawing


@pytest.mark.timeout(120)
def test_a_union_gets_a_variant_select_then_that_variants_fields(
    browser: tuple[Any, list[str]], shots: Path
) -> None:
    page, problems = browser
    with LiveServer(create_app(Chain(name="Shapes", steps=[apply(same_drawing)]))) as server:
        page.goto(server.url + "/")
        page.wait_for_selector("#f-shape-variant")
        assert page.eval_on_selector("#f-shape-variant", "e => [...e.options].map(o => o.text)") == [
            "circle",
            "square",
        ]
        assert page.is_visible("#f-shape-radius")
        page.select_option("#f-shape-variant", label="square")
        assert page.is_visible("#f-shape-side") and page.query_selector("#f-shape-radius") is None
        page.fill("#f-title", "box")
        page.fill("#f-shape-side", "0")  # out of bounds: refused by the server, shown beside the field
        page.click("#send")
        page.wait_for_function(
            "document.getElementById('status').textContent.startsWith('422')", timeout=20000
        )
        assert "greater than or equal to 1" in error_beside(page, "#f-shape-side")
        page.fill("#f-shape-side", "4")
        page.click("#send")
        page.wait_for_function(
            "document.getElementById('status').textContent.startsWith('Done')", timeout=20000
        )
        assert json.loads(page.text_content("#answer")) == {
            "title": "box",
            "shape": {"kind": "square", "side": 4},
        }
        shot(page, shots, "union-field")
    assert [p for p in problems if "422" not in p] == []


class Area(BaseModel):
    shape: str
    area: float


def circle_area(circle: Circle) -> Area:
    return Area(shape="circle", area=round(3.0 * circle.radius**2, 2))


def square_area(square: Square) -> Area:
    return Area(shape="square", area=float(square.side**2))


def shapes_chain(discriminated: bool) -> Chain:
    """``Chain(input_model=A | B)``: declared with a discriminator, or inferred (a plain smart
    union) from a first router keyed by the classes."""
    router = Router("by_shape", {Circle: apply(circle_area), Square: apply(square_area)})
    if discriminated:
        return Chain("Shapes", [router], input_model=Annotated[Circle | Square, Field(discriminator="kind")])
    return Chain("Shapes", [router])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("discriminated", [True, False], ids=["discriminated", "smart"])
def test_a_served_union_input_picks_a_variant_and_runs_its_route(
    browser: tuple[Any, list[str]], shots: Path, discriminated: bool
) -> None:
    """Issue 27: the page built from the real ``/schema`` of a union input, run over the real
    server: the chosen variant's fields, its route's output, its errors beside its fields (a smart
    union's 422 also lists the other variants' misfits: not shown)."""
    page, problems = browser
    chain = shapes_chain(discriminated)
    names = ["circle", "square"] if discriminated else ["Circle", "Square"]
    with LiveServer(create_app(chain, examples=[{"kind": "square", "side": 2}])) as server:
        page.goto(server.url + "/")
        page.wait_for_selector("#f-variant")
        assert page.eval_on_selector("#f-variant", "e => [...e.options].map(o => o.text)") == names
        assert page.is_visible("#f-radius")
        page.click("#examples button")  # an example picks its variant
        assert page.input_value("#f-variant") == "1" and page.input_value("#f-side") == "2"

        page.select_option("#f-variant", label=names[0])
        page.fill("#f-radius", "-1")  # refused by the server, shown beside the field
        page.click("#send")
        page.wait_for_function(
            "document.getElementById('status').textContent.startsWith('422')", timeout=20000
        )
        assert "greater than 0" in error_beside(page, "#f-radius")
        assert page.text_content("#form-errors") == ""  # the other variant's misfits are not shown
        shot(page, shots, f"union-input-{'discriminated' if discriminated else 'smart'}-error")

        page.select_option("#f-variant", label=names[1])
        assert page.is_visible("#f-side") and page.query_selector("#f-radius") is None
        page.fill("#f-side", "4")
        page.click("#send")
        page.wait_for_function(
            "document.getElementById('status').textContent.startsWith('Done')", timeout=20000
        )
        assert json.loads(page.text_content("#answer")) == {"shape": "square", "area": 16.0}
        done = page.eval_on_selector_all("#graph .node.done", "es => es.map(e => e.dataset.node)")
        assert "square_area" in done and "circle_area" not in done  # the square's route ran
        shot(page, shots, f"union-input-{'discriminated' if discriminated else 'smart'}")
    assert [p for p in problems if "422" not in p] == []
