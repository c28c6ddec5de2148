"""Client-side limits for HTTP engines: request/token rate buckets, server cool-downs, backoff.

Kept apart from the HTTP code so each rule can be tested on its own with a fake clock:

- :class:`TokenBucket`: at most ``per_minute`` units per minute, refilled continuously, so a
  burst of at most one minute's budget goes out at once and the rest is paced.
- :class:`RateLimits`: one bucket for requests (``rpm``), one for tokens (``tpm``), and a shared
  cool-down: when the server answers 429 with ``Retry-After``, *every* request waits, not only
  the one that was refused (the limit is the server's, not the request's).
- :func:`backoff_delay`: exponential backoff with full jitter for transport retries.
- :func:`parse_retry_after`: ``Retry-After`` as seconds or an HTTP date.
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import random
import time
from collections.abc import Callable, Mapping

import anyio

__all__ = ["RateLimits", "TokenBucket", "backoff_delay", "estimate_tokens", "parse_retry_after"]

Clock = Callable[[], float]


class TokenBucket:
    """A bucket holding up to ``per_minute`` units, refilled at ``per_minute / 60`` units a second.

    Example:
        >>> bucket = TokenBucket(60, clock=lambda: 0.0)
        >>> bucket.take(60), bucket.wait_time(1)
        (0.0, 1.0)
    """

    def __init__(self, per_minute: float, *, clock: Clock = time.monotonic) -> None:
        if per_minute <= 0:
            raise ValueError(f"a rate limit must be > 0 per minute, got {per_minute}")
        self.capacity = float(per_minute)
        self.rate = self.capacity / 60.0
        self._clock = clock
        self._level = self.capacity
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now

    def wait_time(self, amount: float) -> float:
        """Seconds until ``amount`` units are available (0 when they are now)."""
        self._refill()
        amount = min(amount, self.capacity)  # a request bigger than the budget waits for a full bucket
        return 0.0 if self._level >= amount else (amount - self._level) / self.rate

    def take(self, amount: float) -> float:
        """Take ``amount`` units if available (returns 0.0) or return the seconds to wait first."""
        wait = self.wait_time(amount)
        if wait == 0.0:
            self._level -= min(amount, self.capacity)
        return wait

    def adjust(self, delta: float) -> None:
        """Charge (``delta > 0``) or refund (``delta < 0``) units after the fact, e.g. real token usage."""
        self._refill()
        self._level = min(self.capacity, self._level - delta)


class RateLimits:
    """Requests-per-minute and tokens-per-minute budgets plus a shared server cool-down.

    Args:
        rpm: Requests per minute, or ``None`` for no limit.
        tpm: Tokens (prompt + completion) per minute, or ``None``. Prompt tokens are estimated
            before sending and corrected with the usage the server reports.
    """

    def __init__(self, rpm: float | None = None, tpm: float | None = None, *, clock: Clock = time.monotonic):
        self.requests = TokenBucket(rpm, clock=clock) if rpm else None
        self.tokens = TokenBucket(tpm, clock=clock) if tpm else None
        self._clock = clock
        self._cool_until = 0.0

    def cool_down(self, seconds: float) -> None:
        """Hold every request for ``seconds`` (the server said so with ``Retry-After``)."""
        self._cool_until = max(self._cool_until, self._clock() + max(0.0, seconds))

    def delay(self, tokens: float) -> float:
        """Seconds to wait before a request of ``tokens`` may go; 0 means it was admitted (and charged)."""
        pause = self._cool_until - self._clock()
        if pause > 0:
            return pause
        waits = [b.wait_time(n) for b, n in ((self.requests, 1.0), (self.tokens, tokens)) if b is not None]
        wait = max(waits, default=0.0)
        if wait == 0.0:
            if self.requests is not None:
                self.requests.take(1.0)
            if self.tokens is not None:
                self.tokens.take(tokens)
        return wait

    async def acquire(self, tokens: float) -> None:
        """Wait until a request of ``tokens`` estimated tokens may go, and charge it."""
        while (wait := self.delay(tokens)) > 0:  # noqa: ASYNC110 - the wait is computed, not signalled
            await anyio.sleep(wait)

    def settle(self, estimated: float, actual: float) -> None:
        """Correct the token budget once the server reported the real usage."""
        if self.tokens is not None and actual > 0:
            self.tokens.adjust(actual - estimated)


def estimate_tokens(text_chars: int, max_tokens: int) -> float:
    """A pre-flight token estimate: about 4 characters per prompt token, plus the completion budget."""
    return text_chars / 4.0 + max_tokens


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (1-based): full jitter over ``base * 2**(attempt-1)``.

    Full jitter spreads retries of many concurrent requests, so they do not hit a recovering
    server in lockstep.

    Example:
        >>> 0 <= backoff_delay(3, base=0.5, cap=10) <= 2.0
        True
    """
    ceiling = min(cap, base * 2 ** max(0, attempt - 1))
    return (rng or random).uniform(0, ceiling)


def parse_retry_after(headers: Mapping[str, str], *, now: _dt.datetime | None = None) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, ``Retry-After`` seconds or HTTP date."""
    lowered = {k.lower(): v for k, v in headers.items()}
    millis = lowered.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000.0)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.UTC)
    now = now or _dt.datetime.now(_dt.UTC)
    return max(0.0, (when - now).total_seconds())
