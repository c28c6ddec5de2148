"""The report's comparison of a run with one or more others: figures side by side, per node, and
(between experiments) the cases whose status or output changed.

Columns are labelled by each run folder's name. Each other run's column has a Δ beside it: *this
run − that run*, coloured by whether this run is better (more time, tokens or cost: worse; a
higher pass rate or more records out: better; answers from the ledger, records in: neither). A
run that took answers from the ledger did not wait for them: its time is not comparable, and the
duration's Δ says so.
"""

from __future__ import annotations

from html import escape
from typing import Any

from .report_html import CASES, Better, cut, delta, get, money, n_cell, num, priced, rate, table
from .report_view import RunView

__all__ = ["FIGURES", "compare_section", "ledger_note"]

FIGURES: list[tuple[str, tuple[str, ...], Better]] = [
    ("records in", ("counts", "records_in"), None),
    ("records out", ("counts", "records_out"), "higher"),
    ("failures", ("counts", "failures"), "lower"),
    ("filtered", ("counts", "filtered"), None),
    ("duration (s)", ("duration_s",), "lower"),
    ("prompt tokens", ("tokens", "prompt"), "lower"),
    ("completion tokens", ("tokens", "completion"), "lower"),
    ("cost (USD)", ("cost", "usd"), "lower"),
    ("requests sent", ("cache", "sent"), None),
    ("from the ledger", ("cache", "hits"), None),
]
"""Label, place in ``metadata.json`` and which way is better, of each compared figure."""


def _tokens(view: RunView) -> int:
    tokens = view.meta.get("tokens") or {}
    return int(tokens.get("prompt") or 0) + int(tokens.get("completion") or 0)


def ledger_note(view: RunView, label: str) -> str | None:
    """Why ``view``'s time is not comparable (answers from the ledger), or None."""
    hits, sent = get(view.meta, "cache", "hits"), get(view.meta, "cache", "sent")
    if not isinstance(hits, int) or hits <= 0:
        return None
    total = hits + (sent if isinstance(sent, int) else 0)
    return (
        f"{label} took {hits:,} of {total:,} answers from the ledger (no request sent): its time "
        "is not comparable with a run that sent them"
    )


def compare_section(views: list[RunView], labels: list[str]) -> str:
    """The comparison's HTML: ``views[0]`` is this run, the rest are compared with it."""
    run, others = views[0], views[1:]
    values = [[get(v.meta, *keys) for _, keys, _ in FIGURES] for v in views]
    notes = [ledger_note(v, lb) for v, lb in zip(views, labels, strict=True)]
    rows: list[list[str]] = []
    experiments = any(v.experiment is not None for v in views)
    if experiments:
        rates = [get(v.experiment, "totals", "pass_rate") for v in views]
        row = ["pass rate", "#n:" + rate(rates[0])]
        for k in range(1, len(views)):
            mark = " id='pass-rate-delta'" if k == 1 else ""
            row += [
                "#n:" + rate(rates[k]),
                f"#n:<span{mark}>{delta(rates[0], rates[k], points=True, better='higher')}</span>",
            ]
        rows.append(row)
    for f, (label, _, better) in enumerate(FIGURES):
        if label == "cost (USD)":
            row = [escape(label), "#n:" + money(values[0][f], _tokens(run))]
        else:
            row = [escape(label), n_cell(values[0][f])]
        for k, view in enumerate(others, start=1):
            a, b = values[0][f], values[k][f]
            if label == "cost (USD)":
                row.append("#n:" + money(b, _tokens(view)))
                a, b = priced(a, _tokens(run)), priced(b, _tokens(view))
            else:
                row.append(n_cell(b))
            shown = delta(a, b, better=better)
            if label == "duration (s)" and (notes[0] or notes[k]):
                caveat = "; ".join(n for n in (notes[0], notes[k]) if n)
                shown += f'<span class="caveat" id="time-caveat-{k}" title="{escape(caveat)}">⚠ ledger: not comparable</span>'
            row.append("#n:" + shown)
        rows.append(row)
    head = ["", f"{labels[0]} (this run)"]
    for lb in labels[1:]:
        head += [lb, f"Δ this − {lb}"]
    html = (
        f"<p>This run (<code>{escape(labels[0])}</code>) against "
        + ", ".join(f"<code>{escape(str(v.path))}</code>" for v in others)
        + '. <span class="legend"><span class="better">green: this run is better</span>'
        '<span class="worse">red: worse</span><span class="neutral">grey: neither</span></span></p>'
        + table(head, rows, ' id="compare-figures"')
    )
    shown_notes = [n for n in notes if n]
    if shown_notes:
        html += '<p class="caveat" id="ledger-note">⚠ ' + escape("; ".join(shown_notes)) + ".</p>"
    html += _per_node(views, labels)
    if run.experiment is not None:
        for k, view in enumerate(others, start=1):
            if view.experiment is not None:
                html += changed_cases(run.experiment, view.experiment, labels[k], first=k == 1)
        if any(v.experiment is None for v in others):
            html += '<p class="muted">Some compared runs are not experiments: no cases to compare there.</p>'
    elif experiments:
        html += '<p class="muted">This run is not an experiment: no cases to compare.</p>'
    return html


def _per_node(views: list[RunView], labels: list[str]) -> str:
    metas = [v.meta.get("nodes") or {} for v in views]
    keys: list[tuple[str, str, Better]] = [
        ("records_out", "out", "higher"),
        ("failed", "failed", "lower"),
        ("requests", "requests", None),
        ("prompt_tokens", "prompt tok", "lower"),
        ("completion_tokens", "completion tok", "lower"),
    ]
    rows = []
    for node in dict.fromkeys(n for m in metas for n in m):
        cells = [f"<code>{escape(node)}</code>"]
        for key, _, better in keys:
            first = metas[0].get(node, {}).get(key)
            cells.append(n_cell(first))
            for m in metas[1:]:
                other = m.get(node, {}).get(key)
                cells += [n_cell(other), "#n:" + delta(first, other, better=better)]
        rows.append(cells)
    head = ["node"]
    for _, short, _ in keys:
        head.append(f"{short} ({labels[0]})")
        for lb in labels[1:]:
            head += [f"{short} ({lb})", "Δ"]
    return "<h3>Per node</h3>" + table(head, rows, ' id="compare-nodes" class="sortable"')


def changed_cases(a_exp: dict[str, Any], b_exp: dict[str, Any], label: str, *, first: bool = True) -> str:
    """The cases whose status or output differ between this run (``a_exp``) and ``label``'s."""
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

        def usd(c: dict[str, Any] | None) -> float | None:
            tokens = get(c, "tokens") or {}
            used = int(tokens.get("prompt") or 0) + int(tokens.get("completion") or 0)
            return priced(get(c, "cost", "usd"), used)

        rows.append(
            [
                f"<code>{escape(cid)}</code>",
                status(b),
                status(a),
                cut(None if b is None else b.get("output")),
                cut(None if a is None else a.get("output")),
                "#n:" + delta(get(a, "duration_s"), get(b, "duration_s"), better="lower"),
                "#n:" + delta(usd(a), usd(b), better="lower"),
            ]
        )
    mark = ' id="changed-cases"' if first else ""
    if not rows:
        none = ' id="no-changed-cases"' if first else ""
        return f'<p class="muted"{none}>No case changed status or output from {escape(label)}.</p>'
    heading = f'Cases that changed ({num(len(rows))}) <span class="muted">from {escape(label)}</span>'
    return f"<h3>{heading}</h3>" + table(
        [
            "case",
            f"status ({label})",
            "status (this)",
            f"output ({label})",
            "output (this)",
            "time Δ (s)",
            "cost Δ (USD)",
        ],
        rows[:CASES],
        f'{mark} class="sortable" data-against="{escape(label)}"',
    )
