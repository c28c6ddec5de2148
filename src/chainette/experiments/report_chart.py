"""The report's groups (``--group-by KEY``): the cases grouped by a metadata key, each group's pass
rate and mean score per run, as a table and as inline SVG bar charts (one bar per run in each
group, a colour per run). No script, no network; every label is escaped."""

from __future__ import annotations

from html import escape
from typing import Any

from .report_cases import MISSING, group_of
from .report_html import get, num, rate, table
from .report_view import RunView

__all__ = ["group_figures", "groups_section"]

_COLOURS = ("#1a73e8", "#e37400", "#188038", "#a142f4", "#d93025", "#12b5cb")
_BAR, _GAP, _PLOT_H, _LEFT, _BOTTOM = 18, 22, 140, 44, 36


def group_figures(exp: dict[str, Any] | None, key: str) -> dict[str, dict[str, Any]]:
    """Group value → ``{"cases", "pass", "judged", "pass_rate", "score"}`` (``score``: the mean of
    the cases' scores, None when none has one)."""
    out: dict[str, dict[str, Any]] = {}
    for case in get(exp, "cases") or []:
        row = out.setdefault(group_of(case, key), {"cases": 0, "pass": 0, "judged": 0, "scores": []})
        row["cases"] += 1
        status = case.get("status")
        row["pass"] += status == "pass"
        row["judged"] += status in ("pass", "fail", "error")
        if isinstance(case.get("score"), int | float):
            row["scores"].append(float(case["score"]))
    for row in out.values():
        scores = row.pop("scores")
        row["pass_rate"] = round(row["pass"] / row["judged"], 4) if row["judged"] else None
        row["score"] = round(sum(scores) / len(scores), 4) if scores else None
    return out


def groups_section(views: list[RunView], labels: list[str], key: str) -> str:
    """The table (``#groups``) and two charts (``#group-chart-pass-rate``, ``#group-chart-score``)."""
    runs = [(v, lb) for v, lb in zip(views, labels, strict=True) if v.experiment is not None]
    figures = [group_figures(v.experiment, key) for v, _ in runs]
    groups = list(dict.fromkeys(g for f in figures for g in f))
    if groups == [MISSING]:
        return (
            f'<p class="muted" id="no-groups">No case has a metadata value for {escape(key)!s}: '
            "add it under each case's <code>metadata</code>.</p>"
        )
    rows = []
    for group in groups:
        cells = [escape(group)]
        for f in figures:
            row = f.get(group) or {}
            cells += [
                "#n:" + num(row.get("cases")),
                "#n:" + rate(row.get("pass_rate")),
                "#n:" + num(row.get("score")),
            ]
        rows.append(cells)
    head = [key] + [f"{w} ({lb})" for _, lb in runs for w in ("cases", "pass rate", "mean score")]
    legend = "".join(
        f'<span><svg width="10" height="10"><rect width="10" height="10" fill="{_COLOURS[k % len(_COLOURS)]}"/></svg> '
        f"{escape(lb)}</span>"
        for k, (_, lb) in enumerate(runs)
    )
    charts = "".join(
        _chart(groups, figures, metric, title)
        for metric, title in (("pass_rate", "pass rate"), ("score", "mean score"))
    )
    return (
        f"<p>Cases grouped by metadata <code>{escape(key)}</code>.</p>"
        f'<p class="legend">{legend}</p><div class="charts">{charts}</div>'
        + table(head, rows, ' id="groups" class="sortable"')
    )


def _chart(groups: list[str], figures: list[dict[str, dict[str, Any]]], metric: str, title: str) -> str:
    runs = len(figures)
    cluster = runs * _BAR + _GAP
    width = _LEFT + len(groups) * cluster + 10
    height = _PLOT_H + _BOTTOM + 20
    top = 16
    values = [v for f in figures for row in f.values() if isinstance(v := row.get(metric), int | float)]
    peak = 1.0 if metric == "pass_rate" else max([1.0, *values])
    parts = [
        f'<svg id="group-chart-{metric.replace("_", "-")}" xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height}" role="img" aria-label="{escape(title)} per group">',
        f'<text x="{_LEFT}" y="11" font-size="12" font-weight="600">{escape(title)}</text>',
    ]
    for tick in (0.0, 0.5, 1.0):
        y = top + _PLOT_H * (1 - tick)
        parts.append(
            f'<line x1="{_LEFT}" y1="{y:.0f}" x2="{width - 6}" y2="{y:.0f}" stroke="#e0e0e0"/>'
            f'<text x="{_LEFT - 4}" y="{y + 4:.0f}" text-anchor="end" font-size="10">{tick * 100:.0f}%</text>'
            if metric == "pass_rate"
            else f'<line x1="{_LEFT}" y1="{y:.0f}" x2="{width - 6}" y2="{y:.0f}" stroke="#e0e0e0"/>'
            f'<text x="{_LEFT - 4}" y="{y + 4:.0f}" text-anchor="end" font-size="10">{tick * peak:g}</text>'
        )
    for g, group in enumerate(groups):
        x0 = _LEFT + g * cluster + _GAP / 2
        for k, f in enumerate(figures):
            value = (f.get(group) or {}).get(metric)
            x = x0 + k * _BAR
            if not isinstance(value, int | float):
                parts.append(
                    f'<text x="{x + _BAR / 2:.0f}" y="{top + _PLOT_H - 3}" text-anchor="middle" font-size="10">—</text>'
                )
                continue
            h = max(1.0, _PLOT_H * min(max(float(value) / peak, 0.0), 1.0))
            shown = rate(value) if metric == "pass_rate" else num(value)
            parts.append(
                f'<rect class="bar" data-group="{escape(group)}" data-run="{k}" x="{x:.0f}" '
                f'y="{top + _PLOT_H - h:.1f}" width="{_BAR - 3}" height="{h:.1f}" '
                f'fill="{_COLOURS[k % len(_COLOURS)]}"><title>{escape(group)}: {escape(shown)}</title></rect>'
            )
        label = group if len(group) <= 14 else group[:13] + "…"
        parts.append(
            f'<text x="{x0 + runs * _BAR / 2:.0f}" y="{top + _PLOT_H + 14}" text-anchor="middle" '
            f'font-size="11">{escape(label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)
