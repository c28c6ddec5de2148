"""Token prices, and what a run spent and saved.

Prices are US dollars per million tokens, looked up by engine name first, then by model name.
Embedded and self-hosted back-ends (``llama_cpp``, ``vllm``, ``fake``) cost nothing unless a
price is set for them. Extend the table with :func:`set_price`.

A model's list price is multiplied by the discount of the engine's back-end (or of the engine's
name, which wins): hosted batch APIs charge half, so ``openai_batch`` pays 0.5 of it. A price set
under the engine's own name is taken as given. Change discounts with :func:`set_discount`.

Example:
    >>> set_price("my-finetune", prompt=0.30, completion=1.20)
    >>> price_for("any-engine", "my-finetune", "openai")
    Price(prompt=0.3, completion=1.2)
    >>> price_for("any-engine", "my-finetune", "openai_batch")
    Price(prompt=0.15, completion=0.6)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DISCOUNTS", "PRICES", "Price", "cost_usd", "price_for", "set_discount", "set_price"]


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million prompt / completion tokens."""

    prompt: float
    completion: float


PRICES: dict[str, Price] = {
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "o4-mini": Price(1.10, 4.40),
}
"""The built-in table (list prices at the time of writing); :func:`set_price` adds or replaces."""

DISCOUNTS: dict[str, float] = {"openai_batch": 0.5}
"""Share of a model's list price paid, by back-end or engine name (OpenAI's batch API: half)."""

_FREE_BACKENDS = frozenset({"llama_cpp", "vllm", "fake"})


def set_price(name: str, *, prompt: float, completion: float) -> None:
    """Set the price of an engine (by engine name) or a model (by model name), per 1M tokens."""
    if prompt < 0 or completion < 0:
        raise ValueError("prices are dollars per million tokens and cannot be negative")
    PRICES[name] = Price(float(prompt), float(completion))


def set_discount(name: str, factor: float) -> None:
    """Pay ``factor`` (0..1) of the model's list price on a back-end or an engine (by name), e.g.
    ``set_discount("openai_batch", 0.5)``; 1 removes the discount."""
    if not 0.0 <= factor <= 1.0:
        raise ValueError(f"a discount is the share of the list price paid, between 0 and 1; got {factor}")
    DISCOUNTS[name] = float(factor)


def price_for(engine: str, model: str | None, backend: str) -> Price | None:
    """The price of an engine's tokens; ``None`` when unknown (cost is then not reported)."""
    if engine in PRICES:
        return PRICES[engine]
    if model and model in PRICES:
        factor = DISCOUNTS.get(engine, DISCOUNTS.get(backend, 1.0))
        listed = PRICES[model]
        return listed if factor == 1.0 else Price(listed.prompt * factor, listed.completion * factor)
    if backend in _FREE_BACKENDS:
        return Price(0.0, 0.0)
    return None


def cost_usd(price: Price | None, prompt_tokens: int, completion_tokens: int) -> float | None:
    if price is None:
        return None
    return round((prompt_tokens * price.prompt + completion_tokens * price.completion) / 1e6, 6)
