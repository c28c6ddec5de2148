"""Node policies against real HTTP: the stub server on 127.0.0.1 and the ``openai`` engine.

The engine's own transport retries (``max_retries``) and the step's policy retries are two
loops; these tests turn the engine's off (``max_retries=0``) to see the policy's alone, and
check that with only the engine's on the policy counts nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import Question, assert_every_record_accounted_for, qa_step, read_jsonl

from chainette import Backoff, Chain, NodePolicy, register_engine
from chainette.engines.stub_server import Faults, StubServer

FAST = Backoff(base_s=0.01, multiplier=1.0, jitter=0.0)


class FailsFirst(StubServer):
    """Answers 500 to the first ``n`` chat requests, then normally."""

    def __init__(self, n: int, **options: Any) -> None:
        super().__init__(**options)
        self.n = n

    def _draw(self) -> str:
        return "500" if self.stats["requests"] <= self.n else ""


@pytest.fixture
def slow_stub() -> Iterator[StubServer]:
    with StubServer(faults=Faults(rate_slow=1.0, slow_seconds=3.0)) as server:
        yield server


def node_stats(run_dir: Path) -> dict[str, Any]:
    nodes: dict[str, Any] = json.loads((run_dir / "metadata.json").read_text())["nodes"]["qa"]
    return nodes


@pytest.mark.timeout(30)
def test_a_timeout_shorter_than_the_servers_latency_fails_and_each_retry_is_a_request(
    slow_stub: StubServer, run_dir: Path
) -> None:
    register_engine("remote", backend="openai", model="m", base_url=slow_stub.base_url, max_retries=0)
    policy = NodePolicy(timeout_s=0.3, retries=2, backoff=FAST)
    started = time.monotonic()
    Chain("c", [qa_step("remote", policy=policy)]).run([Question(text="q")], output_dir=run_dir)
    elapsed = time.monotonic() - started
    _, [failure] = assert_every_record_accounted_for(run_dir, 1)
    assert failure["error_type"] == "engine_error" and failure["attempts"] == 3
    assert "after 3 attempts" in failure["message"] and "timed out after 0.3 s" in failure["message"]
    assert slow_stub.stats["requests"] == 3  # each try reached the server; each was closed at 0.3 s
    assert elapsed < 2.5, f"a cut call kept the run waiting ({elapsed:.2f} s)"


@pytest.mark.timeout(30)
def test_a_500_then_ok_is_retried_by_the_policy_when_the_engine_does_not(run_dir: Path) -> None:
    with FailsFirst(1) as stub:
        register_engine("remote", backend="openai", model="m", base_url=stub.base_url, max_retries=0)
        policy = NodePolicy(retries=1, backoff=FAST)
        Chain("c", [qa_step("remote", policy=policy)]).run([Question(text="q")], output_dir=run_dir)
        assert stub.stats["requests"] == 2 and stub.stats["500"] == 1
    flat, failures = assert_every_record_accounted_for(run_dir, 1)
    assert failures == [] and len(flat) == 1
    assert node_stats(run_dir)["retries"] == 1


@pytest.mark.timeout(30)
def test_without_either_retry_a_500_fails_the_record(run_dir: Path) -> None:
    with FailsFirst(1) as stub:
        register_engine("remote", backend="openai", model="m", base_url=stub.base_url, max_retries=0)
        Chain("c", [qa_step("remote")]).run([Question(text="q")], output_dir=run_dir)
        assert stub.stats["requests"] == 1
    [failure] = read_jsonl(run_dir / "failures.jsonl")
    assert failure["error_type"] == "engine_error" and "HTTP 500" in failure["message"]


@pytest.mark.timeout(30)
def test_the_engines_transport_retry_is_not_a_policy_retry(run_dir: Path) -> None:
    with FailsFirst(1) as stub:
        register_engine(
            "remote", backend="openai", model="m", base_url=stub.base_url, max_retries=1, backoff_base=0.01
        )
        policy = NodePolicy(retries=3, backoff=FAST)
        Chain("c", [qa_step("remote", policy=policy)]).run([Question(text="q")], output_dir=run_dir)
        assert stub.stats["requests"] == 2  # the engine's second try answered: the policy saw no error
    assert read_jsonl(run_dir / "failures.jsonl") == []
    assert node_stats(run_dir)["retries"] == 0
