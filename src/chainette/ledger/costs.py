"""Token prices, and what a run spent and saved.

Prices are US dollars per million tokens, looked up by engine name first, then by model name.
Embedded and self-hosted back-ends (``llama_cpp``, ``vllm``, ``fake``) cost nothing unless a
price is set for them. Extend the table with :func:`set_price`.

Example:
    >>> set_price("my-finetune", prompt=0.30, completion=1.20)
    >>> price_for("any-engine", "my-finetune", "openai")
    Price(prompt=0.3, completion=1.2)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PRICES", "Price", "cost_usd", "price_for", "set_price"]


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

_FREE_BACKENDS = frozenset({"llama_cpp", "vllm", "fake"})


def set_price(name: str, *, prompt: float, completion: float) -> None:
    """Set the price of an engine (by engine name) or a model (by model name), per 1M tokens."""
    if prompt < 0 or completion < 0:
        raise ValueError("prices are dollars per million tokens and cannot be negative")
    PRICES[name] = Price(float(prompt), float(completion))


def price_for(engine: str, model: str | None, backend: str) -> Price | None:
    """The price of an engine's tokens; ``None`` when unknown (cost is then not reported)."""
    for name in (engine, model):
        if name and name in PRICES:
            return PRICES[name]
    if backend in _FREE_BACKENDS:
        return Price(0.0, 0.0)
    return None


def cost_usd(price: Price | None, prompt_tokens: int, completion_tokens: int) -> float | None:
    if price is None:
        return None
    return round((prompt_tokens * price.prompt + completion_tokens * price.completion) / 1e6, 6)
