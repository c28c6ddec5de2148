"""The report's cases: one row per case, its input and expected value beside each run's outcome.

With several runs (``--compare``), each run has its own group of columns, labelled by its folder's
name: status, score, one column per assessor (its verdict, score and reason), output, time,
tokens and cost. With ``group_by``, the case's value of that metadata key is a column of its own
(and :mod:`.report_chart` draws each group's pass rate and score). The page's inline script sorts
by any column (a cell's ``data-v`` is its number) and filters by text, status and group.
"""

from __future__ import annotations

from html import escape
from typing import Any

from .report_html import CASES, as_text, cell, cut, get, money, num, rate
from .report_view import RunView

__all__ = ["MISSING", "case_ids", "cases_section", "group_of"]

MISSING = "(none)"
"""The group of a case whose metadata has no value for the ``group_by`` key."""


def group_of(case: dict[str, Any] | None, key: str) -> str:
    """The case's value of metadata ``key``, as text (:data:`MISSING` when absent)."""
    meta = (case or {}).get("metadata")
    if not isinstance(meta, dict) or meta.get(key) is None:
        return MISSING
    return as_text(meta[key])


def case_ids(views: list[RunView]) -> list[str]:
    """Every case id of the runs, in order (this run's first)."""
    return list(dict.fromkeys(str(c.get("id")) for v in views for c in (get(v.experiment, "cases") or [])))


def _assessors(views: list[RunView]) -> list[str]:
    names: dict[str, None] = {}
    for view in views:
        for case in get(view.experiment, "cases") or []:
            names.update(dict.fromkeys(str(n) for n in case.get("assessments") or {}))
    return list(names)


def _tokens(case: dict[str, Any]) -> int | None:
    tokens = case.get("tokens")
    if not isinstance(tokens, dict):
        return None
    return int(tokens.get("prompt") or 0) + int(tokens.get("completion") or 0)


def _n(value: Any, shown: str | None = None) -> str:
    """A number cell the page sorts by value."""
    v = value if isinstance(value, int | float) and not isinstance(value, bool) else ""
    return f"#v={v}##n:{num(value) if shown is None else shown}"


def _verdict(found: Any) -> str:
    if not isinstance(found, dict):
        return '#v=#<span class="muted">—</span>'
    passed, score, reason = found.get("passed"), found.get("score"), found.get("reason")
    mark = (
        '<span class="pass">✓</span>'
        if passed is True
        else '<span class="fail">✗</span>'
        if passed is False
        else "·"
    )
    value = score if isinstance(score, int | float) else (1 if passed else 0 if passed is False else "")
    text = f"{mark} {num(score)}" if isinstance(score, int | float) else mark
    why = f"<br>{cut(reason, 80)}" if reason else ""
    return f"#v={value}#{text}{why}"


def _unpriced(exp: dict[str, Any]) -> bool:
    """Whether the experiment's engines have no price (its cost is None, or 0 for tokens used)."""
    totals = exp.get("totals") or {}
    tokens = totals.get("tokens") or {}
    used = int(tokens.get("prompt") or 0) + int(tokens.get("completion") or 0)
    usd = get(totals, "cost", "usd")
    return usd is None or (usd == 0 and used > 0)


def _run_cells(case: dict[str, Any] | None, assessors: list[str], unpriced: bool) -> list[str]:
    if case is None:
        return ['<span class="muted">absent</span>'] + ["#v=#—"] * (5 + len(assessors))
    status = escape(str(case.get("status")))
    cells = [f'<span class="{status}">{status}</span>', _n(case.get("score"))]
    found = case.get("assessments") or {}
    cells += [_verdict(found.get(name)) for name in assessors]
    output = case.get("output") if case.get("status") != "error" else case.get("reason")
    cells.append(cut(output))
    cells.append(_n(case.get("duration_s")))
    tokens = _tokens(case)
    cells.append(_n(tokens))
    usd = get(case, "cost", "usd")
    cells.append(_n(None, money(None)) if unpriced else _n(usd, money(usd, tokens)))
    return cells


def cases_section(views: list[RunView], labels: list[str], group_by: str | None = None) -> str:
    """The HTML: a line per run (pass rate), the filter controls and the ``#cases`` table."""
    runs = [(v, lb) for v, lb in zip(views, labels, strict=True) if v.experiment is not None]
    by_id = [{str(c.get("id")): c for c in v.experiment.get("cases") or []} for v, _ in runs if v.experiment]
    ids = case_ids([v for v, _ in runs])
    assessors = _assessors([v for v, _ in runs])
    free = [_unpriced(v.experiment or {}) for v, _ in runs]
    lines = []
    for view, label in runs:
        exp = view.experiment or {}
        totals = exp.get("totals") or {}
        summary = " · ".join(
            f'<span class="{s}">{s} {num(totals.get(s))}</span>'
            for s in ("pass", "fail", "error", "unscored")
        )
        first = view is views[0]
        mark = " id='experiment-pass-rate'" if first else ""
        lines.append(
            f"<li><b>{escape(label)}</b>: experiment <b>{escape(str(exp.get('experiment')))}</b>, pass "
            f"rate <b{mark}>{rate(totals.get('pass_rate'))}</b> of {num(totals.get('cases'))} cases ({summary})</li>"
        )
    common = ["case", *([group_by] if group_by else []), "input", "expected"]
    per_run = ["status", "score", *assessors, "output", "time (s)", "tokens", "cost (USD)"]
    rows = []
    for cid in ids[:CASES]:
        cases = [found.get(cid) for found in by_id]
        known = next(c for c in cases if c is not None)
        statuses = {str(c.get("status")) for c in cases if c is not None}
        group = group_of(known, group_by) if group_by else ""
        changed = (
            len({(None if c is None else (c.get("status"), as_text(c.get("output")))) for c in cases}) > 1
        )
        cells = [f"<td><code>{escape(cid)}</code></td>"]
        if group_by:
            cells.append(f"<td>{escape(group)}</td>")
        cells += [f"<td>{cut(known.get('input'))}</td>", f"<td>{cut(known.get('expected'))}</td>"]
        for case, unpriced in zip(cases, free, strict=True):
            cells += [cell(c) for c in _run_cells(case, assessors, unpriced)]
        rows.append(
            f'<tr data-case="{escape(cid)}" data-status="{escape(" ".join(sorted(statuses)))}"'
            f' data-group="{escape(group)}"{" class=changed" if changed else ""}>{"".join(cells)}</tr>'
        )
    top = f'<th colspan="{len(common)}"></th>' + "".join(
        f'<th class="run" colspan="{len(per_run)}">{escape(label)}</th>' for _, label in runs
    )
    head = "".join(f"<th>{escape(h)}</th>" for h in common) + "".join(
        f'<th data-run="{k}">{escape(h)}</th>' for k in range(len(runs)) for h in per_run
    )
    more = f'<p class="muted">{len(ids) - CASES:,} more cases are not shown.</p>' if len(ids) > CASES else ""
    return (
        f"<ul>{''.join(lines)}</ul>"
        + _controls(views, group_by)
        + f'<div class="scroll"><table id="cases" class="sortable"><thead><tr>{top}</tr><tr>{head}</tr></thead>'
        + f"<tbody>{''.join(rows)}</tbody></table></div>{more}"
    )


def _controls(views: list[RunView], group_by: str | None) -> str:
    statuses = "".join(f'<option value="{s}">{s}</option>' for s in ("pass", "fail", "error", "unscored"))
    html = (
        '<div class="controls"><input id="case-filter" type="search" placeholder="filter cases (any text)" '
        'aria-label="filter cases"><select id="status-filter" aria-label="status">'
        f'<option value="">any status</option>{statuses}</select>'
    )
    if group_by:
        groups = list(
            dict.fromkeys(group_of(c, group_by) for v in views for c in get(v.experiment, "cases") or [])
        )
        options = "".join(f'<option value="{escape(g)}">{escape(g)}</option>' for g in groups)
        html += (
            f'<select id="group-filter" aria-label="{escape(group_by)}">'
            f'<option value="">any {escape(group_by)}</option>{options}</select>'
        )
    return html + '<span class="muted" id="case-count"></span></div>'
