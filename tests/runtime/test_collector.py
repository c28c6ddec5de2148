"""The cyclic collector is tuned for the length of a run and restored after it; a process that
manages its collector itself is left alone."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from chainette import Chain, apply
from chainette.runtime.collector import GEN0_THRESHOLD, run_collector


class Num(BaseModel):
    x: int


@pytest.fixture(autouse=True)
def restore_gc() -> Iterator[None]:
    threshold, enabled = gc.get_threshold(), gc.isenabled()
    yield
    gc.set_threshold(*threshold)
    gc.enable() if enabled else gc.disable()
    gc.unfreeze()


def test_a_run_raises_the_threshold_freezes_what_existed_and_restores_both(run_dir: Path) -> None:
    gc.set_threshold(700, 10, 10)
    seen: list[tuple[tuple[int, int, int], int]] = []

    def probe(n: Num) -> Num:
        seen.append((gc.get_threshold(), gc.get_freeze_count()))
        return n

    Chain("c", [apply(probe)]).run([Num(x=1)], output_dir=run_dir)
    [(threshold, frozen)] = seen
    assert threshold == (GEN0_THRESHOLD, 10, 10) and frozen > 0
    assert gc.get_threshold() == (700, 10, 10) and gc.get_freeze_count() == 0


def test_nested_runs_restore_once_and_a_managed_collector_is_left_alone() -> None:
    gc.set_threshold(700, 10, 10)
    with run_collector():
        with run_collector():
            assert gc.get_threshold()[0] == GEN0_THRESHOLD
        assert gc.get_threshold()[0] == GEN0_THRESHOLD  # the outer run still goes on
    assert gc.get_threshold() == (700, 10, 10) and gc.get_freeze_count() == 0
    gc.disable()
    with run_collector():
        assert gc.get_threshold() == (700, 10, 10) and gc.get_freeze_count() == 0
    gc.enable()
    gc.freeze()  # the process froze its own objects (e.g. before forking workers): keep them frozen
    with run_collector():
        assert gc.get_threshold()[0] == GEN0_THRESHOLD
    assert gc.get_freeze_count() > 0
