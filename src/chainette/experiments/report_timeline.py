"""The report's per-case timeline: for each case, one inline SVG with a lane per node and a bar per
span (when the node worked on that case's record), all cases on one time scale with a seconds axis
on top. Records go through a chain each on their own, so each case has its own bars: a slow case
stands out. A ``<title>`` on each bar says the node, the run (turn, judge), the times and, where
a node still took several records at once (a whole-stream node), how many shared the span."""

from __future__ import annotations

from html import escape
from typing import Any

from .report_html import num

__all__ = ["TIMELINE_CASES", "timeline_section"]

TIMELINE_CASES = 100
"""Cases drawn at most (the rest are counted)."""
_WIDTH, _LABEL, _LANE = 760, 150, 16
_COLOURS = ("#1a73e8", "#188038", "#e37400", "#a142f4", "#d93025", "#12b5cb", "#5f6368")


def timeline_section(exp: dict[str, Any]) -> str:
    """The HTML: a legend line, then one row per case (its id, status, duration and SVG)."""
    cases = [c for c in exp.get("cases") or [] if c.get("timeline")]
    if not cases:
        return '<p class="muted" id="no-timeline">This run recorded no per-case timeline.</p>'
    end = max(float(s["end_s"]) for c in cases for s in c["timeline"]) or 1e-9
    nodes = list(dict.fromkeys(s["node"] for c in cases for s in c["timeline"]))
    colour = {n: _COLOURS[k % len(_COLOURS)] for k, n in enumerate(nodes)}
    rows = "".join(_case_row(c, end, colour) for c in cases[:TIMELINE_CASES])
    more = (
        f'<p class="muted">{len(cases) - TIMELINE_CASES:,} more cases are not drawn.</p>'
        if len(cases) > TIMELINE_CASES
        else ""
    )
    started = exp.get("timeline_started_at")
    legend = "".join(
        f'<span><svg width="10" height="10"><rect width="10" height="10" fill="{colour[n]}"/></svg> '
        f"{escape(str(n))}</span>"
        for n in nodes
    )
    return (
        f'<p class="muted">Seconds from the experiment\'s start ({escape(str(started))}), 0 to '
        f"{num(round(end, 4))} s for every case: each bar is when a node worked on that case "
        "(hover it for the times).</p>"
        f'<p class="legend">{legend}</p>{_axis(end)}<div id="timeline">{rows}</div>{more}'
    )


def _axis(end: float) -> str:
    """A seconds scale over the lanes (five ticks)."""
    scale = (_WIDTH - _LABEL - 10) / end
    ticks = "".join(
        f'<line x1="{_LABEL + t * end * scale:.1f}" y1="12" x2="{_LABEL + t * end * scale:.1f}" y2="18" '
        f'stroke="#5f6368"/><text x="{_LABEL + t * end * scale:.1f}" y="10" text-anchor="middle" '
        f'font-size="10">{num(round(t * end, 3))} s</text>'
        for t in (0, 0.25, 0.5, 0.75, 1)
    )
    return (
        f'<svg id="timeline-axis" width="{_WIDTH}" height="20" role="img" aria-label="seconds">{ticks}</svg>'
    )


def _case_row(case: dict[str, Any], end: float, colour: dict[str, str]) -> str:
    spans = case["timeline"]
    lanes = list(dict.fromkeys(f"{s['node']}@{s.get('run', 'run')}" for s in spans))
    height = _LANE * len(lanes) + 4
    scale = (_WIDTH - _LABEL - 10) / end
    parts = []
    for k, lane in enumerate(lanes):
        node, run = lane.split("@", 1)
        label = node if run == "run" else f"{node} ({run})"
        parts.append(
            f'<text x="{_LABEL - 6}" y="{k * _LANE + 12}" text-anchor="end" font-size="11">{escape(label)}</text>'
        )
    for s in spans:
        k = lanes.index(f"{s['node']}@{s.get('run', 'run')}")
        x = _LABEL + float(s["start_s"]) * scale
        w = max(1.5, (float(s["end_s"]) - float(s["start_s"])) * scale)
        took = float(s["end_s"]) - float(s["start_s"])
        shared = int(s.get("chunk") or 1)
        tip = (
            f"{s['node']} ({s.get('run', 'run')}): {float(s['start_s']):.4f}s → {float(s['end_s']):.4f}s "
            f"({took:.4f} s)" + (f", with {shared - 1} other record(s) at once" if shared > 1 else "")
        )
        parts.append(
            f'<rect class="span" data-node="{escape(str(s["node"]))}" x="{x:.1f}" y="{k * _LANE + 2}" '
            f'width="{w:.1f}" height="{_LANE - 4}" rx="2" fill="{colour[s["node"]]}">'
            f"<title>{escape(tip)}</title></rect>"
        )
    status = escape(str(case.get("status")))
    duration = case.get("duration_s")
    head = (
        f'<div class="tl-head"><code>{escape(str(case.get("id")))}</code> '
        f'<span class="{status}">{status}</span> '
        f'<span class="muted">{"" if duration is None else num(duration) + " s"}</span></div>'
    )
    return (
        f'<div class="case-timeline" data-case="{escape(str(case.get("id")))}">{head}'
        f'<svg width="{_WIDTH}" height="{height}" role="img" '
        f'aria-label="timeline of case {escape(str(case.get("id")))}">'
        f'<line x1="{_LABEL}" y1="0" x2="{_LABEL}" y2="{height}" stroke="#dadce0"/>'
        f"{''.join(parts)}</svg></div>"
    )
