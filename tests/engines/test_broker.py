"""The broker: lazy start, sharing, idle eviction with restart, exclusive engines never loaded together."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, ClassVar

import anyio
import pytest

from chainette import ChatRequest, Completion, FakeEngine, register_engine
from chainette.engines.broker import EngineBroker
from chainette.engines.registry import EngineConfig

pytestmark = pytest.mark.anyio

REQUEST = ChatRequest(messages=({"role": "user", "content": "hi"},))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Tracked(FakeEngine):
    """Records what is loaded at any moment, and can hold a generate() call open (``entered`` is
    set once a call is in ``generate()``)."""

    loaded: ClassVar[list[str]] = []
    peak_exclusive: ClassVar[int] = 0
    log: ClassVar[list[str]] = []

    def __init__(self, name: str, exclusive: bool, gate: anyio.Event | None = None) -> None:
        super().__init__()
        self.name, self.exclusive, self.gate = name, exclusive, gate
        self.entered = anyio.Event()

    async def start(self) -> None:
        Tracked.loaded.append(self.name)
        Tracked.log.append(f"start {self.name}")
        exclusive = sum(1 for n in Tracked.loaded if n.startswith("gpu"))
        Tracked.peak_exclusive = max(Tracked.peak_exclusive, exclusive)

    async def close(self) -> None:
        Tracked.loaded.remove(self.name)
        Tracked.log.append(f"close {self.name}")

    async def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        Tracked.log.append(f"done {self.name}")
        return await super().generate(requests)


@pytest.fixture
def tracked() -> type[Tracked]:
    Tracked.loaded, Tracked.log, Tracked.peak_exclusive = [], [], 0
    return Tracked


def factory(gates: dict[str, anyio.Event] | None = None) -> Any:
    def make(config: EngineConfig) -> Tracked:
        return Tracked(config.name, config.name.startswith("gpu"), (gates or {}).get(config.name))

    return make


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_started_once_shared_and_released_when_the_last_user_is_done(tracked: type[Tracked]) -> None:
    register_engine("a", backend="fake")
    broker = EngineBroker(Counter({"a": 2}), factory=factory())
    first, second = await broker.get("a"), await broker.get("a")
    assert first.engine is second.engine and tracked.loaded == ["a"]
    await broker.node_done("a")
    assert broker.running == ["a"]
    await broker.node_done("a")
    assert broker.running == [] and tracked.loaded == []


async def test_idle_engine_is_evicted_and_restarts_on_next_use(tracked: type[Tracked]) -> None:
    register_engine("a", backend="fake")
    clock = Clock()
    events: list[tuple[str, dict[str, Any]]] = []
    broker = EngineBroker(
        Counter({"a": 1}),
        factory=factory(),
        idle_timeout=60,
        clock=clock,
        on_event=lambda k, d: events.append((k, d)),
    )
    handle = await broker.get("a")
    assert await broker.evict_idle() == []
    clock.now += 61
    assert await broker.evict_idle() == ["a"] and tracked.loaded == []
    assert ("engine_released", {"engine": "a", "reason": "idle"}) in events
    (completion,) = await handle.generate([REQUEST])  # the old handle still works: the engine restarts
    assert completion.finish_reason == "stop" and tracked.loaded == ["a"]
    assert tracked.log == ["start a", "close a", "start a", "done a"]
    await broker.aclose()


async def test_an_engine_with_a_call_in_flight_is_never_evicted(tracked: type[Tracked]) -> None:
    register_engine("a", backend="fake")
    clock, gate = Clock(), anyio.Event()
    broker = EngineBroker(Counter({"a": 1}), factory=factory({"a": gate}), idle_timeout=1, clock=clock)
    handle = await broker.get("a")
    async with anyio.create_task_group() as tg:
        tg.start_soon(handle.generate, [REQUEST])
        with anyio.fail_after(10):
            await handle.engine.entered.wait()  # type: ignore[attr-defined]
        clock.now += 100
        assert await broker.evict_idle() == []
        gate.set()
    clock.now += 100
    assert await broker.evict_idle() == ["a"]


async def test_per_engine_idle_timeout_option(tracked: type[Tracked]) -> None:
    register_engine("short", backend="fake", idle_timeout=5)
    register_engine("long", backend="fake")
    clock = Clock()
    broker = EngineBroker(Counter({"short": 1, "long": 1}), factory=factory(), idle_timeout=600, clock=clock)
    await broker.get("short")
    await broker.get("long")
    clock.now += 10
    assert await broker.evict_idle() == ["short"]
    await broker.aclose()


async def test_background_eviction_while_entered(tracked: type[Tracked]) -> None:
    register_engine("a", backend="fake")
    released = anyio.Event()

    def on_event(kind: str, data: dict[str, Any]) -> None:
        if kind == "engine_released":
            released.set()

    # the broker's own timeout: the evictor's first sleep is sized by it (an engine's option
    # only counts once the engine has started)
    broker = EngineBroker(Counter({"a": 1}), factory=factory(), idle_timeout=0.05, on_event=on_event)
    async with broker:
        await broker.get("a")  # nothing else uses it: only the background task can evict it
        with anyio.fail_after(10):
            await released.wait()
        assert broker.running == []
    assert tracked.log == ["start a", "close a"]


async def test_exclusive_engines_are_never_loaded_together(tracked: type[Tracked]) -> None:
    for name in ("gpu1", "gpu2", "cpu"):
        register_engine(name, backend="fake")
    gate = anyio.Event()
    broker = EngineBroker(Counter({"gpu1": 1, "gpu2": 1, "cpu": 1}), factory=factory({"gpu1": gate}))
    gpu1 = await broker.get("gpu1")
    await broker.get("cpu")
    async with anyio.create_task_group() as tg:
        tg.start_soon(gpu1.generate, [REQUEST])  # in flight on gpu1
        tg.start_soon(broker.get, "gpu2")  # must wait for gpu1's call, then release gpu1
        with anyio.fail_after(10):
            await gpu1.engine.entered.wait()  # type: ignore[attr-defined]
            await anyio.wait_all_tasks_blocked()  # gpu2's start is as far as it can get
        assert tracked.loaded == ["gpu1", "cpu"]
        gate.set()
    assert tracked.log == ["start gpu1", "start cpu", "done gpu1", "close gpu1", "start gpu2"]
    assert tracked.peak_exclusive == 1 and sorted(broker.running) == ["cpu", "gpu2"]
    (completion,) = await gpu1.generate([REQUEST])  # switching back works too
    assert completion.finish_reason == "stop" and sorted(tracked.loaded) == ["cpu", "gpu1"]
    await broker.aclose()
    assert tracked.loaded == []


async def test_parallel_use_of_two_exclusive_engines_completes(tracked: type[Tracked]) -> None:
    for name in ("gpu1", "gpu2"):
        register_engine(name, backend="fake")
    broker = EngineBroker(Counter({"gpu1": 1, "gpu2": 1}), factory=factory())
    results: list[str] = []

    async def use(name: str) -> None:
        handle = await broker.get(name)
        for _ in range(5):
            (completion,) = await handle.generate([REQUEST])
            results.append(completion.finish_reason)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(use, "gpu1")
            tg.start_soon(use, "gpu2")
    assert results == ["stop"] * 10 and tracked.peak_exclusive == 1
    await broker.aclose()


async def test_calls_that_wait_for_a_start_go_on_together_in_the_order_they_came() -> None:
    # A run's first records all ask for the engine while it starts. They must reach it in the
    # order they came and in the same moment: one per loop turn, records read later (that find it
    # running) got ahead of them at the engine's slots, and the first records went out last.
    started = anyio.Event()
    reached: list[tuple[int, int]] = []  # (caller, loop turn it reached generate() in)
    turns = 0

    class SlowStart(FakeEngine):
        async def start(self) -> None:
            await started.wait()

        async def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
            reached.append((int(requests[0].tag), turns))
            return await super().generate(requests)

    async def tick() -> None:
        nonlocal turns
        while True:
            turns += 1
            await anyio.lowlevel.checkpoint()

    async def call(i: int) -> None:
        handle = await broker.get("slow")
        await handle.generate([REQUEST.model_copy(update={"tag": str(i)})])

    register_engine("slow", backend="fake")
    broker = EngineBroker(Counter({"slow": 1}), factory=lambda config: SlowStart())
    async with anyio.create_task_group() as tg:
        for i in range(20):
            tg.start_soon(call, i)
        await anyio.wait_all_tasks_blocked()  # every call came in and waits for the start
        tg.start_soon(tick)
        started.set()
        while len(reached) < 20:
            await anyio.lowlevel.checkpoint()
        tg.cancel_scope.cancel()
    await broker.aclose()
    assert [i for i, _ in reached] == list(range(20))
    assert max(t for _, t in reached) - min(t for _, t in reached) <= 1, reached
