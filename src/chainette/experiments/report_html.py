"""The report's HTML pieces: escaped text (long text folded), numbers, deltas, tables, the CSS.

Every function that takes a value from a run escapes it; ``table`` takes cells that are HTML already
(a cell starting ``#n:`` is a right-aligned number).
"""

from __future__ import annotations

import json
from html import escape
from typing import Any, Literal

__all__ = [
    "CASES",
    "CSS",
    "Better",
    "as_text",
    "cell",
    "cut",
    "delta",
    "get",
    "money",
    "n_cell",
    "num",
    "priced",
    "rate",
    "table",
]

Better = Literal["higher", "lower"] | None
"""Which way a figure is better: ``higher`` (pass rate, score), ``lower`` (time, tokens, cost), or
None (neither: records in, answers from the ledger)."""

CASES = 500
"""Experiment cases shown at most."""
CUT = 160
"""Characters shown before the rest is folded in a <details>."""
FULL = 20_000
"""Characters kept in the <details> at most."""

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0 auto;max-width:1200px;padding:16px 24px;color:#202124}
h1{font-size:22px;margin:8px 0}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #dadce0}
table{border-collapse:collapse;margin:6px 0;font-size:13px}th,td{border:1px solid #dadce0;padding:3px 7px;
text-align:left;vertical-align:top}th{background:#f1f3f4}td.n{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#5f6368}.cards{display:flex;flex-wrap:wrap;gap:8px}.card{border:1px solid #dadce0;
border-radius:6px;padding:6px 12px;min-width:90px}.card b{display:block;font-size:18px}
.pass{color:#188038}.fail{color:#c5221f}.error{color:#a142f4}.unscored{color:#5f6368}
code,pre{font:12px ui-monospace,monospace;white-space:pre-wrap;word-break:break-word;margin:0}
details summary{cursor:pointer;color:#1a73e8}.better{color:#188038;font-weight:600}
.worse{color:#c5221f;font-weight:600}.neutral{color:#5f6368}.caveat{color:#b06000;font-size:12px;display:block}
.case-timeline{margin:2px 0}.tl-head{font-size:12px}.case-timeline svg{display:block}
.scroll{overflow-x:auto}.controls{display:flex;gap:8px;align-items:center;margin:6px 0;flex-wrap:wrap}
.controls input,.controls select{font:inherit;padding:2px 6px}th.sortable{cursor:pointer;user-select:none}
th.sortable::after{content:" \\2195";color:#9aa0a6}th[data-dir=asc]::after{content:" \\25B2"}
th[data-dir=desc]::after{content:" \\25BC"}tr.changed td:first-child{border-left:3px solid #e37400}
th.run{text-align:center;background:#e8f0fe}.legend span{margin-right:12px}
#cases td:has(code){min-width:120px}#cases code{word-break:normal;overflow-wrap:anywhere}
.charts{display:flex;flex-wrap:wrap;gap:24px}
"""


def as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def cut(value: Any, limit: int = CUT) -> str:
    """Escaped text, cut at ``limit`` characters with the rest (up to ``FULL``) in a <details>."""
    if value is None:
        return '<span class="muted">—</span>'
    text = as_text(value)
    if len(text) <= limit:
        return f"<code>{escape(text)}</code>"
    more = " (cut)" if len(text) > FULL else ""
    return (
        f"<code>{escape(text[:limit])}…</code><details><summary>all {len(text):,} characters{more}</summary>"
        f"<pre>{escape(text[:FULL])}</pre></details>"
    )


def num(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return escape(str(value))
    if isinstance(value, float):
        return f"{value:,.4f}".rstrip("0").rstrip(".") if value else "0"
    return f"{value:,}"


def rate(value: Any) -> str:
    return f"{value * 100:.1f}%" if isinstance(value, int | float) else "—"


def delta(a: Any, b: Any, *, points: bool = False, better: Better = None) -> str:
    """``a − b`` with a sign (``pp`` for rates), or ``—`` when either is not a number; coloured
    by meaning, not by sign: ``better`` says which way is better (class ``better`` / ``worse``),
    None leaves it ``neutral``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return "—"
    if not (isinstance(a, int | float) and isinstance(b, int | float)):
        return "—"
    d = (a - b) * (100 if points else 1)
    if not round(d, 6):
        return '<span class="neutral">0</span>'
    shown = f"{d:+.1f} pp" if points else ("+" if d > 0 else "−") + num(abs(round(d, 6)))
    if better is None:
        return f'<span class="neutral">{escape(shown)}</span>'
    good = (d > 0) == (better == "higher")
    word = "better" if good else "worse"
    return f'<span class="{word}" title="{word}">{escape(shown)}</span>'


def money(usd: Any, tokens: Any = None) -> str:
    """Dollars (``$0.0012``), or *not priced* where the engine has no price: ``usd`` None, or 0
    for tokens that were used (a local model counts as free: its cost is unknown, not zero)."""
    unpriced = usd is None or (usd == 0 and isinstance(tokens, int) and tokens > 0)
    if unpriced or isinstance(usd, bool) or not isinstance(usd, int | float):
        return '<span class="muted" title="no price is set for this engine (set_price)">not priced</span>'
    return "$" + (f"{usd:,.6f}".rstrip("0").rstrip(".") if usd else "0")


def priced(usd: Any, tokens: Any = None) -> float | None:
    """``usd`` when it is a real price (see :func:`money`), else None (so no delta is drawn)."""
    if not isinstance(usd, int | float) or isinstance(usd, bool):
        return None
    return None if usd == 0 and isinstance(tokens, int) and tokens > 0 else float(usd)


def table(head: list[str], rows: list[list[str]], attrs: str = "") -> str:
    """A table; ``head`` is escaped here, each cell is HTML already."""
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(cell(c) for c in row) + "</tr>" for row in rows)
    return f"<table{attrs}><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def cell(cell: str) -> str:
    """A ``<td>``: ``#n:`` makes it a right-aligned number; ``#v=<value>#`` before it gives the
    value the page's sort uses (``data-v``)."""
    attrs = ""
    if cell.startswith("#v="):
        value, _, cell = cell[3:].partition("#")
        attrs = f' data-v="{escape(value)}"'
    if cell.startswith("#n:"):
        return f'<td class="n"{attrs}>{cell[3:]}</td>'
    return f"<td{attrs}>{cell}</td>"


def n_cell(value: Any) -> str:
    """A right-aligned number cell."""
    return "#n:" + num(value)


def get(data: dict[str, Any] | None, *keys: str) -> Any:
    for key in keys:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data
