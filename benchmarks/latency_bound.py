"""The best makespan a client can reach against the stub server's own latency draws (``latency.py``).

The stub server draws each chat request's fault from a seeded RNG in the order the requests
arrive (``StubServer._draw``: one ``random()`` per request, slow when below ``rate_slow``), so the
latency of the k-th request to arrive is known before the run. Against that sequence a client
with ``concurrency`` slots and one CPU can do no better than a greedy list schedule:

- a request holds the CPU for ``cost`` seconds (its share of the client's work, measured as
  1 / the same side's zero-latency rate) and a slot for ``cost`` + its latency; the k-th request
  started gets the k-th draw;
- each request starts as soon as a slot and the CPU are both free and a request is ready; starting
  one later only delays the ones after it, so for one step this is the shortest makespan;
- for three steps (``draft`` -> ``pro`` and ``con`` -> ``final`` per record) a request is ready when
  its record's previous step has answered; which ready request goes first changes which record
  gets which draw, so the bound is the better of two orders: first come first served (every
  ``draft`` is ready at 0, so all go first, as the hand loop's semaphore does) and records in
  flight first (a ready ``pro`` / ``con`` / ``final`` before any new ``draft``).

Only the standard library: the Curator side imports ``latency.py`` (and so this) in its own venv.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Sequence

FIFO = "fifo"  # ready requests go in the order they became ready (drafts are all ready at 0)
IN_FLIGHT_FIRST = "in-flight first"  # a record's later steps before any new record's first step
DEEPEST_FIRST = "deepest first"  # the step with the most steps after it first (critical path)
POLICIES = (FIFO, IN_FLIGHT_FIRST, DEEPEST_FIRST)
RANKS = {  # rank of each stage under each policy: a lower rank goes first, then the earlier ready
    FIFO: {"draft": 0, "pro": 0, "con": 0, "final": 0},
    IN_FLIGHT_FIRST: {"draft": 1, "pro": 0, "con": 0, "final": 0},
    DEEPEST_FIRST: {"draft": 0, "pro": 1, "con": 1, "final": 2},
}


def drawn_latencies(
    count: int, rate_slow: float, slow_seconds: float, seed: int = 0, skip: int = 0
) -> list[float]:
    """The latency of each of ``count`` chat requests in arrival order, after ``skip`` earlier ones.

    The stub's ``_draw`` with only ``rate_slow`` set: one ``random()`` per request, slow below it."""
    rng = random.Random(seed)
    draws = [rng.random() for _ in range(skip + count)][skip:]
    return [slow_seconds if r < rate_slow else 0.0 for r in draws]


def makespan(
    latencies: Sequence[float],
    *,
    records: int,
    steps: int,
    concurrency: int,
    cost: float = 0.0,
    policy: str = IN_FLIGHT_FIRST,
) -> float:
    """Seconds from the first request out to the last answer in, under the greedy list schedule.

    ``steps``: 1 (one request per record) or 3 (four: draft, pro, con, final); ``latencies[k]`` is
    the latency of the k-th request started."""
    if steps not in (1, 3) or policy not in POLICIES:
        raise ValueError(f"steps 1 or 3 and a policy of {POLICIES}, not {steps}, {policy!r}")
    total = records * (1 if steps == 1 else 4)
    if len(latencies) < total:
        raise ValueError(f"{total} requests need as many latencies, got {len(latencies)}")
    rank = RANKS[policy]
    # ready requests: (rank, ready at, order it became ready, record, stage)
    ready = [(rank["draft"], 0.0, r, r, "draft") for r in range(records)]
    heapq.heapify(ready)
    order = records
    answered: list[tuple[float, int, int, str]] = []  # (answer time, order started, record, stage)
    joined = [0] * records
    slots = [0.0] * min(concurrency, total)
    cpu = end = 0.0

    def release(now: float) -> None:
        nonlocal order
        while answered and answered[0][0] <= now:
            at, _, record, stage = heapq.heappop(answered)
            nexts: tuple[str, ...] = ()
            if steps == 3 and stage == "draft":
                nexts = ("pro", "con")
            elif stage in ("pro", "con"):
                joined[record] += 1
                nexts = ("final",) if joined[record] == 2 else ()
            for name in nexts:
                heapq.heappush(ready, (rank[name], at, order, record, name))
                order += 1

    for k in range(total):
        now = max(cpu, heapq.heappop(slots))
        release(now)
        while not ready:  # every request left waits on an answer: take the next ones to come in
            now = answered[0][0]
            release(now)
        _, _, _, record, stage = heapq.heappop(ready)
        cpu = now + cost
        done = cpu + latencies[k]
        heapq.heappush(slots, done)
        heapq.heappush(answered, (done, k, record, stage))
        end = max(end, done)
    return end


def best_rate(
    latencies: Sequence[float], *, records: int, steps: int, concurrency: int, cost: float = 0.0
) -> tuple[float, str]:
    """(requests/s, policy) of the shorter of the two schedules: the bound a side is judged against."""
    total = records * (1 if steps == 1 else 4)
    policies = POLICIES if steps == 3 else (FIFO,)
    spans = {
        p: makespan(latencies, records=records, steps=steps, concurrency=concurrency, cost=cost, policy=p)
        for p in policies
    }
    policy = min(spans, key=lambda p: spans[p])
    return (total / spans[policy] if spans[policy] > 0 else float("inf")), policy
