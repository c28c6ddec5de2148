"""benchmarks/forced_bench.py: the raw llama.cpp side of issue 26's batching ceiling replays the
engine's own calls, as logged: the same decodes, row for row, and the same cache removals and
copies, in order. Nothing here loads a model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _benchmarks_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))


class Batch:
    def __init__(self, size: int) -> None:
        self.token, self.pos, self.n_seq_id = [0] * size, [0] * size, [0] * size
        self.seq_id = [[0] for _ in range(size)]
        self.logits = [False] * size
        self.n_tokens = 0


class Api:
    """What the replay calls, recorded as the engine's log writes it."""

    def __init__(self) -> None:
        self.calls: list[Any] = []

    def llama_memory_seq_rm(self, memory: Any, seq: int, p0: int, p1: int) -> bool:
        self.calls.append(["rm", seq, p0, p1])
        return True

    def llama_memory_seq_cp(self, memory: Any, source: int, target: int, p0: int, p1: int) -> None:
        self.calls.append(["cp", source, target, p0, p1])

    def llama_decode(self, ctx: Any, batch: Batch) -> int:
        rows = [
            [batch.token[i], batch.pos[i], batch.seq_id[i][0], batch.logits[i]] for i in range(batch.n_tokens)
        ]
        assert all(batch.n_seq_id[i] == 1 for i in range(batch.n_tokens))
        self.calls.append(["d", rows])
        return 0


def test_the_replay_makes_the_logged_calls_in_order() -> None:
    import forced_bench

    ops: list[Any] = [
        ["d", [[1, 0, 0, False], [2, 1, 0, True], [1, 0, 1, False], [3, 1, 1, True]]],  # two prompts
        ["rm", 4, -1, -1],
        ["cp", 0, 4, -1, -1],  # a prompt kept in the cache
        ["d", [[7, 2, 0, True]]],  # a shorter decode after a longer one: only its rows count
        ["rm", 1, 1, -1],
    ]
    api = Api()
    forced_bench.replay(ops, api, ctx=None, batch=Batch(8), memory=None)
    assert api.calls == ops


def test_a_failed_replayed_decode_is_an_error() -> None:
    import forced_bench

    api = Api()
    api.llama_decode = lambda ctx, batch: 1  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        forced_bench.replay([["d", [[1, 0, 0, True]]]], api, ctx=None, batch=Batch(2), memory=None)
