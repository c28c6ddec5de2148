"""Rate buckets, server cool-downs, backoff and Retry-After, on a fake clock (no sleeping)."""

from __future__ import annotations

import datetime as dt
import random

import pytest

from chainette.engines.limits import RateLimits, TokenBucket, backoff_delay, parse_retry_after


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_a_minute_of_budget_then_paces() -> None:
    clock = Clock()
    bucket = TokenBucket(120, clock=clock)  # 2 per second
    assert [bucket.take(1) for _ in range(120)] == [0.0] * 120
    assert bucket.take(1) == pytest.approx(0.5)
    clock.now += 0.5
    assert bucket.take(1) == 0.0


def test_request_larger_than_the_budget_waits_for_a_full_bucket_instead_of_forever() -> None:
    clock = Clock()
    bucket = TokenBucket(60, clock=clock)
    bucket.take(60)
    assert bucket.wait_time(1000) == pytest.approx(60.0)


def test_usage_corrections_charge_and_refund() -> None:
    clock = Clock()
    limits = RateLimits(tpm=1000, clock=clock)
    assert limits.delay(400) == 0.0
    limits.settle(estimated=400, actual=900)  # the server used more than estimated: charge the rest
    assert limits.delay(200) > 0
    limits.settle(estimated=900, actual=100)  # and less: refund
    assert limits.delay(200) == 0.0


def test_requests_and_tokens_both_bound() -> None:
    clock = Clock()
    limits = RateLimits(rpm=2, tpm=10_000, clock=clock)
    assert limits.delay(10) == 0.0 and limits.delay(10) == 0.0
    assert limits.delay(10) == pytest.approx(30.0)


def test_cool_down_holds_every_request_until_it_ends() -> None:
    clock = Clock()
    limits = RateLimits(clock=clock)
    assert limits.delay(1) == 0.0
    limits.cool_down(3.0)
    limits.cool_down(1.0)  # a shorter one does not shorten it
    assert limits.delay(1) == pytest.approx(3.0)
    clock.now += 3.0
    assert limits.delay(1) == 0.0


def test_backoff_grows_is_capped_and_jittered() -> None:
    rng = random.Random(1)
    firsts = [backoff_delay(1, base=0.5, cap=10, rng=rng) for _ in range(200)]
    lates = [backoff_delay(12, base=0.5, cap=10, rng=rng) for _ in range(200)]
    assert all(0 <= d <= 0.5 for d in firsts) and len(set(firsts)) > 100
    assert all(0 <= d <= 10 for d in lates) and max(lates) > 5


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"retry-after-ms": "250", "Retry-After": "9"}, 0.25),
        ({"Retry-After": "Wed, 21 Oct 2026 07:28:30 GMT"}, 30.0),
        ({"Retry-After": "Wed, 21 Oct 2026 07:27:00 GMT"}, 0.0),  # in the past
        ({"Retry-After": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_after_seconds_or_http_date(headers: dict[str, str], expected: float | None) -> None:
    now = dt.datetime(2026, 10, 21, 7, 28, 0, tzinfo=dt.UTC)
    assert parse_retry_after(headers, now=now) == expected
