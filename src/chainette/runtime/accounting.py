"""What a run sent, reused and spent: the ``cache`` and ``cost`` sections of ``metadata.json``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..engines.registry import get_engine_config
from ..graph.chain import ChainGraph
from ..ledger.costs import cost_usd, price_for
from .context import RunContext

__all__ = ["cache_summary", "cost_summary", "total_usd"]


def cache_summary(ctx: RunContext) -> dict[str, Any]:
    """Requests sent (that reached a server), failed to send (``unsent``: connection refused...),
    answered from the ledger, and shared between identical requests."""
    stats = ctx.stats.values()
    return {
        "ledger": str(ctx.cache.path) if ctx.cache.path is not None else None,
        "mode": ctx.cache.mode,
        "sent": sum(s.requests for s in stats),
        "unsent": sum(s.unsent for s in stats),
        "hits": sum(s.cache_hits for s in stats),
        "deduped": sum(s.deduped for s in stats),
        "saved_tokens": {
            "prompt": sum(s.saved_prompt_tokens for s in stats),
            "completion": sum(s.saved_completion_tokens for s in stats),
        },
    }


def cost_summary(chain: ChainGraph, ctx: RunContext) -> dict[str, Any]:
    """Tokens and dollars per step and per engine; ``usd`` is None where no price is known."""
    by_step: dict[str, dict[str, Any]] = {}
    by_engine: dict[str, dict[str, Any]] = {}
    for node in chain.iter_nodes():
        if node.engine_name is None or node.id not in ctx.stats:
            continue
        s = ctx.stats[node.id]
        config = get_engine_config(node.engine_name)
        price = price_for(node.engine_name, config.model, config.backend)
        row = {
            "engine": node.engine_name,
            "requests": s.requests,
            "cached": s.cache_hits + s.deduped,
            "prompt_tokens": s.prompt_tokens,
            "completion_tokens": s.completion_tokens,
            "usd": cost_usd(price, s.prompt_tokens, s.completion_tokens),
            "saved_prompt_tokens": s.saved_prompt_tokens,
            "saved_completion_tokens": s.saved_completion_tokens,
            "saved_usd": cost_usd(price, s.saved_prompt_tokens, s.saved_completion_tokens),
        }
        by_step[node.id] = row
        total = by_engine.setdefault(node.engine_name, {k: 0 for k in row if k != "engine"})
        for key, value in row.items():
            if key == "engine":
                continue
            total[key] = None if value is None or total[key] is None else round(total[key] + value, 6)
    return {
        "by_step": by_step,
        "by_engine": by_engine,
        "usd": total_usd(r["usd"] for r in by_engine.values()),
        "saved_usd": total_usd(r["saved_usd"] for r in by_engine.values()),
    }


def total_usd(values: Iterable[float | None]) -> float | None:
    """The sum of dollar amounts, rounded to 6 places; None when any is unknown (no price)."""
    total = 0.0
    for value in values:
        if value is None:
            return None
        total += value
    return round(total, 6)
