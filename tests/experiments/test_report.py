"""``chainette report``: a real run and a real experiment on the fake engine, the HTML checked as text
and in a real headless Chromium (Debian's, driven by Playwright), offline."""

from __future__ import annotations

import json
import re
from html import escape
from pathlib import Path
from typing import Any

import pytest
from tests.experiments.shared import CalcConfig, build_chain, write_jsonl
from tests.helpers import Answer, Question, Translation
from tests.serving.test_page import CHROMIUM, browser_page
from typer.testing import CliRunner

from chainette import Chain, Experiment, RunFolderError, Step, numeric, register_engine
from chainette.cli import app
from chainette.engines.base import ChatRequest
from chainette.experiments.report import build_report, load_run, write_report
from chainette.experiments.report_graph import graph_svg

SCRIPT = "<script>alert('owned')</script>"

CASES = [
    {"id": "add", "input": {"question": "2 + 3"}, "expected": {"answer": 5}},
    {"id": "mul", "input": {"question": "wrong 4 * 5"}, "expected": {"answer": 20}},
    {"id": "boom", "input": {"question": "boom 1 + 1"}, "expected": {"answer": 2}},
]


def answer(request: ChatRequest) -> dict[str, Any]:
    text = request.messages[-1]["content"]
    if text.startswith("FR: "):
        return {"translated": "fr " + text[4:]}
    if "boom" in text:
        raise RuntimeError("the engine exploded on <b>purpose</b>")
    return {"answer": f"{text} {SCRIPT}", "confidence": 0.9}


def two_step_run(tmp_path: Path, n: int = 4, **options: Any) -> Path:
    """qa → tr over ``n`` records, the third of which fails in qa."""
    register_engine("fake", backend="fake", responder=answer)
    qa = Step(
        id="qa", input_model=Question, output_model=Answer, engine_name="fake", user_prompt="{{ text }}"
    )
    tr = Step(
        id="tr",
        input_model=Answer,
        output_model=Translation,
        engine_name="fake",
        user_prompt="FR: {{ answer }}",
    )
    texts = [f"q{k}" if k != 2 else "boom" for k in range(n)]
    Chain(name="Ask & translate", steps=[qa, tr]).run(
        [{"text": t} for t in texts], tmp_path / "run", **options
    )
    return tmp_path / "run"


def calc_run(tmp_path: Path, name: str, cases: list[dict[str, Any]]) -> Path:
    suite = write_jsonl(tmp_path / f"{name}.jsonl", cases)
    Experiment("calc", build_chain, suite, [numeric("answer")], CalcConfig).run(
        tmp_path / name, ["engine=calc"]
    )
    return tmp_path / name


def test_the_report_holds_counts_graph_nodes_failures_and_samples_all_escaped(tmp_path: Path) -> None:
    run = two_step_run(tmp_path)
    page = build_report(load_run(run))
    assert re.search(r'id="records-in">4<', page) and re.search(r'id="records-out">3<', page)
    assert re.search(r'id="failures">1<', page)
    assert "Ask &amp; translate" in page
    assert 'data-node="qa"' in page and 'data-node="tr"' in page  # the SVG boxes
    assert "<td>input</td><td>qa</td>" in page and "<td>qa</td><td>tr</td>" in page  # the edges table
    assert '<table id="node-stats">' in page and "<code>tr</code>" in page
    # the failure: its node, error and message, escaped
    assert "engine_error" in page and "the engine exploded on &lt;b&gt;purpose&lt;/b&gt;" in page
    # the samples: qa's output with its input joined by _id, and the output's <script> escaped
    assert page.count('class="samples"') == 2
    assert "&lt;script&gt;alert(&#x27;owned&#x27;)&lt;/script&gt;" in page
    assert page.count("<script") == 1 and "<b>purpose" not in page  # the page's own script only
    samples = page[page.index('<section id="samples">') :]
    for text in ("q0", "q1", "q3"):  # each row's input, found by _id in flattened/ (q2 failed)
        assert samples.count(f"{{&quot;text&quot;: &quot;{text}&quot;}}") == 2  # beside qa's row and tr's
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page


def test_the_report_caps_samples_and_failures_and_cuts_long_text(tmp_path: Path) -> None:
    run = two_step_run(tmp_path, n=12)
    page = build_report(load_run(run), samples=2, failures=0)
    samples = page[page.index('<section id="samples">') :]
    assert samples.count("<tr><td><code>") == 4  # 2 rows for each of the 2 steps
    # one failure in the run, none shown: it says so
    assert "Failures: 1, none shown" in page and "No record failed" not in page
    meta = json.loads((run / "metadata.json").read_text())
    assert meta["counts"]["failures"] == 1
    # ... and with the cap under the count, how many more there are
    meta["counts"]["failures"] = 250
    (run / "metadata.json").write_text(json.dumps(meta))
    page = build_report(load_run(run), failures=1)
    assert "249 more failures are not shown" in page
    # a long output is cut, the whole of it folded in a <details>
    long = "x" * 500
    (run / "qa" / "000.jsonl").write_text(json.dumps({"_id": "a", "answer": long, "confidence": 1}) + "\n")
    page = build_report(load_run(run))
    whole = json.dumps({"answer": long, "confidence": 1})
    assert f"<details><summary>all {len(whole)} characters</summary><pre>{escape(whole)}</pre>" in page
    assert f"<code>{escape(whole[:160])}…</code>" in page
    # only what is shown is read: a broken line after the shown rows is never parsed
    rows = [json.dumps({"_id": str(k), "answer": "a", "confidence": 1}) + "\n" for k in range(2)]
    (run / "qa" / "000.jsonl").write_text("".join(rows) + "not json\n")
    with (run / "failures.jsonl").open("a") as fh:
        fh.write("not json\n")
    assert "249 more failures" in build_report(load_run(run), samples=2, failures=1)


def test_a_parquet_run_is_read_the_same_way(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow")
    run = two_step_run(tmp_path, fmt="parquet")
    samples = build_report(load_run(run), samples=2)
    samples = samples[samples.index('<section id="samples">') :]
    assert samples.count("<tr><td><code>") == 4
    assert samples.count("{&quot;text&quot;: &quot;q1&quot;}") == 2


def test_a_folder_without_metadata_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RunFolderError, match=r"no metadata\.json"):
        load_run(tmp_path)


def test_an_experiment_report_shows_the_pass_rate_and_each_case(calc_engine: str, tmp_path: Path) -> None:
    run = calc_run(tmp_path, "a", CASES)
    page = build_report(load_run(run))
    assert re.search(r'id="pass-rate">33.3%<', page)
    cases = page[page.index('<table id="cases"') :]
    assert (
        cases.index("<code>add</code>") < cases.index("<code>mul</code>") < cases.index("<code>boom</code>")
    )
    assert "got 21, expected 20" in cases and '<span class="error">error</span>' in cases
    assert "{&quot;answer&quot;: 21.0}" in cases  # mul's output


def test_the_report_draws_each_cases_timeline_as_inline_svg(calc_engine: str, tmp_path: Path) -> None:
    run = calc_run(tmp_path, "a", CASES)
    data = json.loads((run / "experiment.json").read_text())
    page = build_report(load_run(run))
    timeline = page[page.index('<section id="timeline-section">') :].split("</section>")[0]
    rows = re.findall(r'<div class="case-timeline" data-case="(\w+)">(.*?)</svg></div>', timeline)
    assert [case for case, _ in rows] == ["add", "mul", "boom"]
    for (_, svg), recorded in zip(rows, data["cases"], strict=True):
        [span] = recorded["timeline"]
        assert svg.count('<rect class="span" data-node="solve"') == 1
        took = span["end_s"] - span["start_s"]
        assert f"{span['start_s']:.4f}s → {span['end_s']:.4f}s ({took:.4f} s)<" in svg  # its own span
    assert "http" not in timeline.replace("http://www.w3.org/2000/svg", "")  # self-contained
    assert page.count("<script") == 1 and "src=" not in page
    cases = page[page.index('<table id="cases"') :].split("</table>")[0]
    assert (
        '<th data-run="0">time (s)</th><th data-run="0">tokens</th><th data-run="0">cost (USD)</th>' in cases
    )
    plain = build_report(load_run(two_step_run(tmp_path / "plain")))
    assert "timeline-section" not in plain  # a plain run records no per-case timeline


def test_compare_shows_the_pass_rate_change_and_the_changed_cases(calc_engine: str, tmp_path: Path) -> None:
    old = calc_run(tmp_path, "old", CASES)
    fixed = [dict(CASES[0]), {**CASES[1], "input": {"question": "4 * 5"}}, dict(CASES[2])]
    new = calc_run(tmp_path, "new", fixed)
    page = build_report(load_run(new), load_run(old))
    assert re.search(r"id='pass-rate-delta'><span class=\"better\" title=\"better\">\+33.3 pp<", page)
    changed = page[page.index('<table id="changed-cases"') :].split("</table>")[0]
    assert "<code>mul</code>" in changed and "<code>add</code>" not in changed
    assert "{&quot;answer&quot;: 21.0}" in changed and "{&quot;answer&quot;: 20.0}" in changed
    assert 'Cases that changed (1) <span class="muted">from old</span>' in page
    assert "<th>time Δ (s)</th><th>cost Δ (USD)</th>" in changed


def test_compare_of_plain_runs_shows_count_deltas(tmp_path: Path) -> None:
    small = two_step_run(tmp_path / "s", n=3)
    big = two_step_run(tmp_path / "b", n=6)
    page = build_report(load_run(big), load_run(small))
    figures = page[page.index('<table id="compare-figures">') :]
    assert "pass rate" not in figures.split("</table>")[0]
    row = re.search(r"<td>records out</td>(.*?)</tr>", figures)
    assert row is not None and ">5<" in row.group(1) and ">2<" in row.group(1) and "+3" in row.group(1)
    assert '<table id="compare-nodes"' in page


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
@pytest.mark.timeout(120)
def test_the_report_opens_offline_in_chromium_with_its_numbers(calc_engine: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    run = calc_run(tmp_path, "a", CASES)
    out = write_report(run, tmp_path / "report.html")
    with sync_playwright() as pw:
        browser, page, problems = browser_page(pw, tmp_path)
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        try:
            page.goto(out.as_uri())
            assert page.title().startswith("calc · ")
            assert page.text_content("#records-in") == "3"
            assert page.text_content("#records-out") == "2"
            assert page.text_content("#pass-rate") == "33.3%"
            assert page.locator("#graph-svg g.node").count() == 2  # input and solve
            assert page.locator("#cases tbody tr").count() == 3
            assert page.locator("#timeline .case-timeline").count() == 3
            assert page.locator('#timeline .case-timeline[data-case="mul"] rect.span').count() == 1
            tip = page.text_content('#timeline .case-timeline[data-case="add"] rect.span title')
            assert tip is not None and tip.startswith("solve (run): ")
            box = page.locator('#timeline .case-timeline[data-case="add"] svg').bounding_box()
            assert box is not None and box["width"] > 100 and box["height"] > 5  # drawn, not collapsed
            page.click("#graph summary")
            assert page.is_visible("#graph-edges")
            shot = tmp_path / "report.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 5000
        finally:
            browser.close()
    assert problems == []
    assert requests == [out.as_uri()]  # nothing but the file itself


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
@pytest.mark.timeout(120)
def test_the_cli_writes_a_comparison_that_chromium_shows(calc_engine: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    old = calc_run(tmp_path, "old", CASES)
    new = calc_run(tmp_path, "new", [dict(CASES[0]), {**CASES[1], "input": {"question": "4 * 5"}}])
    out = tmp_path / "cmp.html"
    result = CliRunner().invoke(app, ["report", str(new), "--compare", str(old), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip().splitlines()[-1] == str(out)
    with sync_playwright() as pw:
        browser, page, problems = browser_page(pw, tmp_path)
        try:
            page.goto(out.as_uri())
            assert page.text_content("#pass-rate") == "100.0%"
            assert page.text_content("#pass-rate-delta") == "+66.7 pp"
            changed = page.text_content("#changed-cases")
            assert changed is not None and "mul" in changed and "boom" in changed and "absent" in changed
            page.screenshot(path=str(tmp_path / "cmp.png"), full_page=True)
            assert (tmp_path / "cmp.png").stat().st_size > 5000
        finally:
            browser.close()
    assert problems == []
    missing = CliRunner().invoke(app, ["report", str(tmp_path / "nope"), "-o", str(tmp_path / "x.html")])
    assert missing.exit_code == 1 and "no metadata.json" in missing.output


def test_the_graph_svg_lays_out_rows_draws_a_repeat_edge_and_escapes_ids() -> None:
    graph = {
        "nodes": [{"id": "a", "kind": "step"}, {"id": "<b>", "kind": "loop", "summary": "until done"}],
        "edges": [{"from": "input", "to": "a"}, {"from": "a", "to": "<b>"}, {"from": "<b>", "to": "a"}],
    }
    svg = graph_svg(graph)
    ys = {
        m[0]: int(m[1])
        for m in re.findall(r'data-node="([^"]+)"><title>[^<]*</title><rect x="\d+" y="(\d+)"', svg)
    }
    assert ys["input"] < ys["a"] < ys["&lt;b&gt;"]  # one row each, top to bottom, the cycle cut
    assert svg.count('class="edge"') == 3 and svg.count(" C") == 1  # the repeat edge curves back up
    assert "<b>" not in svg and "until done" in svg
