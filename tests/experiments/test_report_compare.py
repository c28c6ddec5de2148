"""``chainette report RUN --compare ...``: the config and its difference, deltas coloured by meaning,
the ledger caveat, "not priced", per-assessor columns, N runs side by side and grouping by case
metadata; checked as text and in a real headless Chromium (offline, from a file:// URL)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from tests.experiments.shared import CalcConfig, build_chain, calculator, write_jsonl
from tests.serving.test_page import CHROMIUM, browser_page
from typer.testing import CliRunner

from chainette import Experiment, exact, numeric, register_engine
from chainette.cli import app
from chainette.engines.base import ChatRequest
from chainette.experiments.report import build_report, load_run, write_report
from chainette.experiments.report_html import delta, money
from chainette.experiments.report_view import RunView, labels

CASES = [
    {"id": "add", "input": {"question": "2 + 3"}, "expected": {"answer": 5}, "metadata": {"op": "plus"}},
    {"id": "mul", "input": {"question": "2 * 3"}, "expected": {"answer": 6}, "metadata": {"op": "times"}},
    {
        "id": "off",
        "input": {"question": "wrong 1 + 1"},
        "expected": {"answer": 2},
        "metadata": {"op": "plus"},
    },
    {"id": "big", "input": {"question": "7 * 8"}, "expected": {"answer": 56}, "metadata": {"op": "times"}},
]


def sloppy(request: ChatRequest) -> dict[str, Any]:
    """Every product off by one."""
    answer = calculator(request)
    if "*" in request.messages[-1]["content"]:
        answer["answer"] += 1
    return answer


def experiment(tmp_path: Path, name: str, engine: str, *more: str, ledger: str | None = None) -> Path:
    """The calc experiment on ``engine`` (``fast``, ``slow`` or ``sloppy``) into ``tmp_path/name``."""
    register_engine("fast", backend="fake", responder=calculator)
    register_engine("slow", backend="fake", responder=calculator, latency=0.3)
    register_engine("sloppy", backend="fake", responder=sloppy)
    suite = write_jsonl(tmp_path / "cases.jsonl", CASES)
    Experiment("calc", build_chain, suite, [numeric("answer"), exact("answer")], CalcConfig).run(
        tmp_path / name, [f"engine={engine}", *more], ledger=tmp_path / (ledger or f"{name}.sqlite")
    )
    return tmp_path / name


def figure_row(page: str, label: str) -> str:
    figures = page[page.index('<table id="compare-figures"') :].split("</table>")[0]
    row = re.search(rf"<td>{re.escape(label)}</td>(.*?)</tr>", figures)
    assert row is not None, label
    return row.group(1)


# ---------------------------------------------------------------- defects at 116bd9c


def test_a_slower_run_is_shown_worse_and_a_higher_pass_rate_better_not_by_sign(tmp_path: Path) -> None:
    fast = experiment(tmp_path, "fast", "fast")
    slow = experiment(tmp_path, "slow", "slow")
    page = build_report(load_run(slow), load_run(fast))
    assert re.search(r'class="worse" title="worse">\+0\.\d+<', figure_row(page, "duration (s)"))
    sloppy_run = experiment(tmp_path, "sloppy", "sloppy")
    page = build_report(load_run(sloppy_run), load_run(fast))
    assert '<span class="worse" title="worse">-50.0 pp</span>' in figure_row(page, "pass rate")
    assert "from the ledger" in page and 'class="up"' not in page and 'class="down"' not in page


def test_fewer_answers_from_the_ledger_is_neither_better_nor_worse() -> None:
    assert delta(1, 3) == '<span class="neutral">−2</span>'
    assert delta(5.0, 2.0, better="lower") == '<span class="worse" title="worse">+3</span>'
    assert (
        delta(0.5, 0.8, points=True, better="higher") == '<span class="worse" title="worse">-30.0 pp</span>'
    )
    assert delta(100, 40, better="higher").startswith('<span class="better"')


def test_a_run_answered_from_the_ledger_has_a_caveat_beside_its_time_delta(tmp_path: Path) -> None:
    fresh = experiment(tmp_path, "fresh", "fast", ledger="shared.sqlite")
    cached = experiment(tmp_path, "cached", "fast", ledger="shared.sqlite")
    assert json.loads((cached / "metadata.json").read_text())["cache"]["hits"] == 4
    page = build_report(load_run(cached), load_run(fresh))
    row = figure_row(page, "duration (s)")
    assert 'id="time-caveat-1"' in row and "ledger: not comparable" in row
    assert "cached took 4 of 4 answers from the ledger" in page
    assert "time-caveat" not in build_report(load_run(fresh), load_run(experiment(tmp_path, "b", "slow")))


def test_an_unpriced_local_model_says_not_priced_instead_of_zero_dollars(tmp_path: Path) -> None:
    run = experiment(tmp_path, "a", "fast")
    page = build_report(load_run(run), load_run(experiment(tmp_path, "b", "slow")))
    assert re.search(r'id="cost"><span class="muted"[^>]*>not priced<', page)
    assert "$0" not in page and "not priced" in figure_row(page, "cost (USD)")
    assert money(0.0, 0) == "$0" and money(0.0015, 10) == "$0.0015" and "not priced" in money(None)


def test_columns_are_labelled_by_the_run_folders_name_not_the_run_id(tmp_path: Path) -> None:
    a, b = experiment(tmp_path, "baseline", "fast"), experiment(tmp_path, "candidate", "sloppy")
    page = build_report(load_run(b), load_run(a))
    head = page[page.index('<table id="compare-figures"') :].split("</thead>")[0]
    assert "<th>candidate (this run)</th><th>baseline</th><th>Δ this − baseline</th>" in head
    run_id = json.loads((a / "metadata.json").read_text())["run_id"]
    assert run_id not in head
    same = [RunView(Path("x/a/run"), {}, {}, None), RunView(Path("x/b/run"), {}, {}, None)]
    assert labels(same) == ["a/run", "b/run"]


def test_the_config_difference_and_git_commit_are_shown_changed_keys_first(tmp_path: Path) -> None:
    a = experiment(tmp_path, "a", "fast")
    b = experiment(tmp_path, "b", "fast", "sampling.temperature=0.1")
    page = build_report(load_run(b), load_run(a))
    diff = page[page.index('<table id="config-diff"') :].split("</table>")[0]
    assert '<tr data-key="config.sampling.temperature"><th>config.sampling.temperature</th>' in diff
    assert "<code>0.1</code>" in diff and "<code>0.7</code>" in diff
    assert "config.engine" not in diff  # the same in both: folded away under config-same
    assert "1 setting(s) differ" in page or "setting(s) differ" in page
    commit = json.loads((a / "experiment.json").read_text())["git"]["commit"]
    assert commit[:12] in page  # the git commit, beside the config


def test_each_case_shows_its_input_metadata_group_and_every_assessor_with_its_reason(tmp_path: Path) -> None:
    a, b = experiment(tmp_path, "a", "fast"), experiment(tmp_path, "b", "sloppy")
    data = json.loads((a / "experiment.json").read_text())
    assert data["cases"][0]["input"] == {"question": "2 + 3"}
    assert data["cases"][0]["metadata"] == {"op": "plus"}
    page = build_report(load_run(b), load_run(a), group_by="op")
    cases = page[page.index('<table id="cases"') :].split("</table>")[0]
    assert '<th class="run" colspan="8">b</th><th class="run" colspan="8">a</th>' in cases
    assert '<th data-run="0">numeric(answer)</th><th data-run="0">exact(answer)</th>' in cases
    row = re.search(
        r'<tr data-case="mul" data-status="fail pass" data-group="times" class=changed>(.*?)</tr>', cases
    )
    assert row is not None and "{&quot;question&quot;: &quot;2 * 3&quot;}" in row.group(1)
    assert "got 7, expected 6" in row.group(1)  # the assessor's reason, in its column
    groups = page[page.index('<table id="groups"') :].split("</table>")[0]
    assert re.search(r"<td>times</td><td class=\"n\">2</td><td class=\"n\">0.0%</td>", groups)
    assert page.count('<rect class="bar"') == 8  # 2 groups × 2 runs × (pass rate, score)


def test_the_cli_takes_several_runs_after_compare_and_a_group_by_key(tmp_path: Path) -> None:
    a, b, c = (experiment(tmp_path, n, e) for n, e in (("a", "fast"), ("b", "slow"), ("c", "sloppy")))
    out = tmp_path / "r.html"
    for args in (["--compare", str(b), str(c)], ["--compare", str(b), "--compare", str(c)]):
        result = CliRunner().invoke(app, ["report", str(a), *args, "--group-by", "op", "-o", str(out)])
        assert result.exit_code == 0, result.output
        page = out.read_text()
        assert (
            "Compared with 2 other runs" in page
            and "<th>Δ this − b</th>" in page
            and "<th>Δ this − c</th>" in page
        )
        assert 'id="groups"' in page
    wrong = CliRunner().invoke(app, ["report", str(a), str(b), "-o", str(out)])
    assert wrong.exit_code == 2 and "--compare" in wrong.output


# ---------------------------------------------------------------- in Chromium, offline


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")
@pytest.mark.timeout(180)
def test_chromium_shows_three_runs_sorts_filters_and_groups_offline(tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    a = experiment(tmp_path, "a", "fast")
    b = experiment(tmp_path, "b", "slow", "sampling.temperature=0.2")
    c = experiment(tmp_path, "c", "sloppy")
    out = write_report(b, tmp_path / "report.html", [a, c], group_by="op")
    with sync_playwright() as pw:
        browser, page, problems = browser_page(pw, tmp_path)
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        try:
            page.goto(out.as_uri())
            # config diff and commit
            assert page.locator(
                '#config-diff tr[data-key="config.sampling.temperature"] td'
            ).all_text_contents() == [
                "0.2",
                "0.7",
                "0.7",
            ]
            assert page.locator('#config-diff tr[data-key="config.engine"] td').all_text_contents() == [
                "slow",
                "fast",
                "sloppy",
            ]
            assert "git commit" in (
                page.text_content("#config-same") or page.text_content("#config-diff") or ""
            )
            # a slower B is shown as worse (against a, and against c)
            time_row = page.locator("#compare-figures tr", has_text="duration (s)")
            assert time_row.locator("span.worse").count() == 2
            assert page.locator("#compare-figures thead th").all_text_contents()[1:] == [
                "b (this run)", "a", "Δ this − a", "c", "Δ this − c",
            ]  # fmt: skip
            # three runs side by side in the cases table
            assert page.locator("#cases thead th.run").all_text_contents() == ["b", "a", "c"]
            assert page.locator("#cases tbody tr").count() == 4
            assert page.text_content("#case-count") == "4 of 4 cases shown"
            # filter by status (any run failed), by text, by group
            page.select_option("#status-filter", "fail")
            visible = [r for r in page.locator("#cases tbody tr").all() if r.is_visible()]
            assert sorted(r.get_attribute("data-case") or "" for r in visible) == ["big", "mul", "off"]
            page.select_option("#status-filter", "")
            page.fill("#case-filter", "7 * 8")
            assert page.text_content("#case-count") == "1 of 4 cases shown"
            assert page.locator('#cases tr[data-case="big"]').is_visible()
            page.fill("#case-filter", "")
            page.select_option("#group-filter", "plus")
            assert page.text_content("#case-count") == "2 of 4 cases shown"
            page.select_option("#group-filter", "")
            # sort by b's time, slowest first, then by case id
            time_col = page.locator('#cases thead th[data-run="0"]', has_text="time (s)")
            time_col.click()
            time_col.click()
            assert time_col.get_attribute("data-dir") == "desc"
            page.locator("#cases thead tr:last-child th").first.click()
            ids = page.locator("#cases tbody tr").evaluate_all("rs => rs.map(r => r.dataset.case)")
            assert ids == ["add", "big", "mul", "off"]
            # the groups: a table and a chart per metric, a bar per run
            assert page.locator("#groups tbody tr").count() == 2
            assert page.locator("#group-chart-pass-rate rect.bar").count() == 6
            box = page.locator("#group-chart-pass-rate").bounding_box()
            assert box is not None and box["width"] > 100
            page.screenshot(path=str(tmp_path / "report-three-runs.png"), full_page=True)
            assert (tmp_path / "report-three-runs.png").stat().st_size > 5000
        finally:
            browser.close()
    assert problems == []
    assert requests == [out.as_uri()]  # nothing but the file itself: no server, no network


def test_cases_of_one_chunk_get_their_own_spans_and_bars(tmp_path: Path) -> None:
    latency = {"2 + 3": 0.02, "2 * 3": 0.25, "7 * 8": 0.45}

    def slow_by_question(request: ChatRequest) -> float:
        text = request.messages[-1]["content"]
        return next((s for q, s in latency.items() if q in text), 0.0)

    register_engine("each", backend="fake", responder=calculator, latency=slow_by_question, max_batch_size=1)

    def one_chunk(config: CalcConfig) -> Any:
        chain = build_chain(config)
        chain.batch_size = 4  # every case read in one chunk
        return chain

    suite = write_jsonl(tmp_path / "cases.jsonl", CASES)
    Experiment("calc", one_chunk, suite, [numeric("answer")], CalcConfig).run(
        tmp_path / "run", ["engine=each"], ledger=tmp_path / "l.sqlite"
    )
    cases = {c["id"]: c for c in json.loads((tmp_path / "run" / "experiment.json").read_text())["cases"]}
    spans = {cid: c["timeline"] for cid, c in cases.items()}
    assert all(len(s) == 1 and s[0]["chunk"] == 1 for s in spans.values())  # each record's own span
    assert len({(s[0]["start_s"], s[0]["end_s"]) for s in spans.values()}) == 4  # not the chunk's span
    for cid, question in (("add", "2 + 3"), ("mul", "2 * 3"), ("big", "7 * 8")):
        assert cases[cid]["duration_s"] >= latency[question]  # it waited for its own request
    page = build_report(load_run(tmp_path / "run"))
    widths = re.findall(r'<rect class="span" data-node="solve" x="[\d.]+" y="\d+" width="([\d.]+)"', page)
    assert len(widths) == 4 and len(set(widths)) > 1


def test_what_the_new_sections_show_from_a_run_folder_is_escaped(tmp_path: Path) -> None:
    evil = "<img src=x onerror=alert(1)>"
    case = {
        "id": evil,
        "status": "fail",
        "input": {"q": evil},
        "metadata": {"topic": evil},
        "assessments": {evil: {"passed": False, "score": 0.0, "reason": evil}},
    }
    exp = {
        "experiment": evil,
        "config": {evil: evil},
        "git": {"commit": evil, "dirty": True},
        "cases": [case],
    }
    view = RunView(tmp_path / evil.replace("/", "_"), {"engines": {evil: {"model": evil}}}, {}, exp)
    page = build_report(view, [view], group_by="topic")
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
