"""The built-in page at ``/`` in a real headless Chromium (Debian's, driven by Playwright)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import qa_step
from tests.serving.live import LiveServer

from chainette import Chain, register_engine
from chainette.engines.base import ChatRequest
from chainette.serving import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (scripts/setup dev installs it with apt-get)"
)


def echo(request: ChatRequest) -> dict[str, Any]:
    return {"answer": "re: " + request.messages[-1]["content"], "confidence": 0.5}


def browser_page(playwright: Any, tmp_path: Path) -> tuple[Any, Any, list[str]]:
    browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
    page = browser.new_page()
    problems: list[str] = []
    page.on(
        "console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    return browser, page, problems


@pytest.mark.timeout(120)
def test_a_person_types_an_input_and_watches_the_answer_arrive(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    register_engine("echo", backend="fake", responder=echo, latency=0.2, stream_delay=0.05)
    chain = Chain(
        name="Ask me",
        steps=[qa_step("echo")],
    )
    with LiveServer(create_app(chain)) as server, sync_playwright() as pw:
        browser, page, problems = browser_page(pw, tmp_path)
        try:
            frames: list[dict[str, Any]] = []
            page.on(
                "websocket", lambda ws: ws.on("framereceived", lambda data: frames.append(json.loads(data)))
            )
            page.goto(server.url + "/")
            assert page.title() == "Ask me · Chainette"
            page.fill("#f-text", "why is the sky blue")
            page.click("#send")
            page.wait_for_function(
                "document.getElementById('answer').textContent.includes('re: why')", timeout=20000
            )
            assert '"confidence": 0.5' in page.text_content("#answer")
            # the streamed text, shown as the object it became: fields, not JSON fragments
            assert page.text_content("#live .who") == "qa"
            assert page.text_content("#live dl.obj dt") == "answer"
            assert page.text_content("#live dl.obj dd").startswith("re: why")
            assert page.evaluate("window.chunksSeen") > 1  # it arrived in pieces
            # the answer ends with an empty `final` piece: the view still shows the whole answer
            last = [f for f in frames if f.get("kind") == "chunk"][-1]
            assert last["final"] is True and last["delta"] == ""
            assert page.text_content("#live dl.obj dd") == "re: why is the sky blue"
            assert page.text_content("#graph [data-node='qa'] > .head .state").endswith(" s")
            assert page.text_content("#status").startswith("Done in")
            shot = tmp_path / "page.png"
            import os

            if os.environ.get("CHAINETTE_KEEP_SCREENSHOT"):
                shot = Path(os.environ["CHAINETTE_KEEP_SCREENSHOT"])
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 5000
        finally:
            browser.close()
    assert problems == []


@pytest.mark.timeout(120)
def test_the_page_shows_field_errors_and_asks_for_a_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from playwright.sync_api import sync_playwright

    register_engine("echo", backend="fake", responder=echo)
    monkeypatch.setenv("PAGE_TOKEN", "tok-123")
    chain = Chain(
        name="Guarded",
        steps=[qa_step("echo")],
    )
    with LiveServer(create_app(chain, token_env="PAGE_TOKEN")) as server, sync_playwright() as pw:
        browser, page, problems = browser_page(pw, tmp_path)
        try:
            page.goto(server.url + "/")
            page.wait_for_selector("#token-box", state="visible", timeout=10000)
            page.fill("#token", "tok-123")
            page.click("#send")  # loads the schema with the token, builds the form, then runs it empty
            page.wait_for_function(
                "document.getElementById('status').textContent.includes('422')", timeout=10000
            )
            # beside its field, not in one red paragraph
            assert "Field required" in page.text_content(".field:has(#f-text) .err")
            page.fill("#f-text", "hello")
            page.click("#send")
            page.wait_for_function(
                "document.getElementById('answer').textContent.includes('re: hello')", timeout=10000
            )
        finally:
            browser.close()
    # the 401 of the first schema request is an answer the page handles, not a script error
    assert [p for p in problems if "401" not in p] == []
