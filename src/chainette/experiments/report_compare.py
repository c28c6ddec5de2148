"""The report's comparison of two runs: counts, tokens, cost, duration and per-node deltas
(this run − the other), and for two experiments the pass-rate change and the cases that changed."""

from __future__ import annotations

from html import escape
from typing import Any

from .report_html import CASES, cut, delta, get, n_cell, rate, table
from .report_view import RunView

__all__ = ["compare_section"]


def compare_section(run: RunView, other: RunView) -> str:
    """The comparison's HTML: figures side by side, per node, and the changed cases."""

    def pick(view: RunView, *keys: str) -> Any:
        return get(view.meta, *keys)

    figures = [
        ("records in", ("counts", "records_in")),
        ("records out", ("counts", "records_out")),
        ("failures", ("counts", "failures")),
        ("filtered", ("counts", "filtered")),
        ("duration (s)", ("duration_s",)),
        ("prompt tokens", ("tokens", "prompt")),
        ("completion tokens", ("tokens", "completion")),
        ("cost (USD)", ("cost", "usd")),
        ("requests sent", ("cache", "sent")),
        ("from the ledger", ("cache", "hits")),
    ]
    rows = [
        [
            escape(label),
            n_cell(pick(run, *k)),
            n_cell(pick(other, *k)),
            "#n:" + delta(pick(run, *k), pick(other, *k)),
        ]
        for label, k in figures
    ]
    a_rate, b_rate = (
        get(run.experiment, "totals", "pass_rate"),
        get(other.experiment, "totals", "pass_rate"),
    )
    if run.experiment is not None or other.experiment is not None:
        rows.insert(
            0,
            [
                "pass rate",
                "#n:" + rate(a_rate),
                "#n:" + rate(b_rate),
                f"#n:<span id='pass-rate-delta'>{delta(a_rate, b_rate, points=True)}</span>",
            ],
        )
    head = ["", f"this run ({run.meta.get('run_id')})", f"other ({other.meta.get('run_id')})", "this − other"]
    html = f"<p>Against <code>{escape(str(other.path))}</code>.</p>" + table(
        head, rows, ' id="compare-figures"'
    )
    a_nodes, b_nodes = run.meta.get("nodes") or {}, other.meta.get("nodes") or {}
    node_rows = []
    for node in dict.fromkeys([*a_nodes, *b_nodes]):
        a, b = a_nodes.get(node, {}), b_nodes.get(node, {})
        cells = [f"<code>{escape(node)}</code>"]
        for key in ("records_out", "failed", "requests", "prompt_tokens", "completion_tokens"):
            cells += [n_cell(a.get(key)), n_cell(b.get(key)), "#n:" + delta(a.get(key), b.get(key))]
        node_rows.append(cells)
    node_head = ["node"] + [
        f"{k} {w}"
        for k in ("out", "failed", "requests", "prompt tok", "completion tok")
        for w in ("this", "other", "Δ")
    ]
    html += "<h3>Per node</h3>" + table(node_head, node_rows, ' id="compare-nodes"')
    if run.experiment is not None and other.experiment is not None:
        html += changed_cases(run.experiment, other.experiment)
    elif run.experiment is not None or other.experiment is not None:
        html += '<p class="muted">Only one of the two runs is an experiment: no cases to compare.</p>'
    return html


def changed_cases(a_exp: dict[str, Any], b_exp: dict[str, Any]) -> str:
    a_cases = {str(c.get("id")): c for c in a_exp.get("cases") or []}
    b_cases = {str(c.get("id")): c for c in b_exp.get("cases") or []}
    rows = []
    for cid in dict.fromkeys([*a_cases, *b_cases]):
        a, b = a_cases.get(cid), b_cases.get(cid)
        if (
            a is not None
            and b is not None
            and (a.get("status"), a.get("output")) == (b.get("status"), b.get("output"))
        ):
            continue

        def status(c: dict[str, Any] | None) -> str:
            s = "absent" if c is None else str(c.get("status"))
            return f'<span class="{escape(s)}">{escape(s)}</span>'

        rows.append(
            [
                f"<code>{escape(cid)}</code>",
                status(b),
                status(a),
                cut(None if b is None else b.get("output")),
                cut(None if a is None else a.get("output")),
                "#n:" + delta(get(a, "duration_s"), get(b, "duration_s")),
                "#n:" + delta(get(a, "cost", "usd"), get(b, "cost", "usd")),
            ]
        )
    if not rows:
        return '<p class="muted" id="no-changed-cases">No case changed status or output.</p>'
    return f"<h3>Cases that changed ({len(rows)})</h3>" + table(
        [
            "case",
            "status (other)",
            "status (this)",
            "output (other)",
            "output (this)",
            "time Δ (s)",
            "cost Δ (USD)",
        ],
        rows[:CASES],
        ' id="changed-cases"',
    )
