"""How a node treats one record's call: a time bound, retries with backoff, what it validates.

``NodePolicy`` is a value given to a node (``Step(..., policy=...)``, ``apply(fn, policy=...)``);
the runtime applies it (``runtime/step_runner.py``, ``runtime/apply_runner.py``). A node without
one behaves as a ``NodePolicy()``: no time bound, no retries, everything validated.

Three kinds of "try again" exist and stay apart:

- **policy retries** (``retries``): an engine call that raised, answered ``finish_reason="error"``
  or ran past ``timeout_s`` (a step), or a function that raised or ran past ``timeout_s`` (an
  apply), is tried again after a backoff;
- **re-asks** (``Step.max_reasks``): an answer that was invalid or cut off is asked again with the
  error fed back; they never count as retries, nor retries as re-asks;
- **transport retries** (the HTTP engine's ``max_retries``): 429, 5xx, timeouts and dropped
  connections retried inside one engine call, before the runtime sees the answer.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from .._errors import ChainDefinitionError

__all__ = ["Backoff", "NodePolicy", "Validate", "check_policy"]

Validate = Literal["both", "input", "output", "none"]
VALIDATE_MODES: tuple[str, ...] = get_args(Validate)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff between policy retries.

    The wait before retry ``k`` (1-based) is ``min(cap_s, base_s * multiplier ** (k - 1))``, times
    ``1 + u`` with ``u`` drawn uniformly from ``[-jitter, jitter]``. The draw is seeded by the
    node and record ids, so a rerun waits the same.

    Example:
        >>> Backoff(base_s=0.1, multiplier=2.0, jitter=0.0).delay(3)
        0.4
    """

    base_s: float = 0.5
    """Wait before the first retry, in seconds."""
    multiplier: float = 2.0
    """Each further retry waits this many times longer (1.0: a constant wait)."""
    cap_s: float = 30.0
    """No wait is longer than this (before jitter)."""
    jitter: float = 0.1
    """Relative spread of each wait (0.1: ±10 %); 0 waits exactly."""

    def delay(self, retry: int, seed: str = "") -> float:
        """Seconds to wait before retry ``retry`` (1-based); ``seed`` makes the jitter repeatable."""
        wait = min(self.cap_s, self.base_s * self.multiplier ** (retry - 1))
        if self.jitter:
            wait *= 1 + random.Random(f"{seed}#{retry}").uniform(-self.jitter, self.jitter)
        return max(0.0, wait)

    def problems(self) -> list[str]:
        out = []
        for name in ("base_s", "cap_s"):
            value = getattr(self, name)
            if not _number(value) or value < 0:
                out.append(f"backoff {name} must be a number >= 0 (seconds), got {value!r}")
        if not _number(self.multiplier) or self.multiplier < 1:
            out.append(f"backoff multiplier must be a number >= 1, got {self.multiplier!r}")
        if not _number(self.jitter) or not 0 <= self.jitter < 1:
            out.append(f"backoff jitter must be a number in [0, 1), got {self.jitter!r}")
        return out


@dataclass(frozen=True, slots=True)
class NodePolicy:
    """What a node does with each record's call: bound it in time, retry it, validate around it.

    Args:
        timeout_s: Seconds one call may take (None: no bound). A step's engine call past it is
            cancelled (the HTTP request closed, llama.cpp decoding stopped) and counts as an
            engine error; an apply's function past it is abandoned (a sync function runs in a
            worker thread for this: Python cannot stop a thread, so it runs on to its end, its
            result unused) and counts as a raise.
        retries: How many more times an engine error (a step: the call raised, answered
            ``finish_reason="error"``, or timed out) or a raise (an apply) is tried, waiting
            ``backoff`` in between. Invalid answers are re-asked under ``Step.max_reasks``
            instead, never retried here.
        backoff: The waits between retries (:class:`Backoff`).
        validate: What the node validates. ``"both"`` (default): the value going in is
            validated into the node's input model, the value coming out into its output model.
            ``"input"``: only the way in; ``"output"``: only the way out; ``"none"``: neither,
            values go through as they are. A step always parses its answer into its output
            model (that is what a step is); for a step ``"output"`` and ``"none"`` skip fitting
            the incoming value into ``input_model`` (templates then read it as it is).

    Example:
        >>> from chainette import NodePolicy, Backoff
        >>> NodePolicy(timeout_s=10, retries=2, backoff=Backoff(base_s=1.0)).retries
        2
    """

    timeout_s: float | None = None
    retries: int = 0
    backoff: Backoff = field(default_factory=Backoff)
    validate: Validate = "both"

    @property
    def validates_input(self) -> bool:
        return self.validate in ("both", "input")

    @property
    def validates_output(self) -> bool:
        return self.validate in ("both", "output")

    @property
    def tries(self) -> int:
        """Calls at most per record: the first one and the retries."""
        return self.retries + 1

    def describe(self) -> dict[str, Any]:
        """What ``graph.json`` records about the policy."""
        b = self.backoff
        return {
            "timeout_s": self.timeout_s,
            "retries": self.retries,
            "backoff": {"base_s": b.base_s, "multiplier": b.multiplier, "cap_s": b.cap_s, "jitter": b.jitter},
            "validate": self.validate,
        }


def check_policy(policy: Any, where: str) -> NodePolicy | None:
    """``policy`` checked for the node ``where`` names (``"Step 'qa'"``): it, or None for none.

    Raises:
        ChainDefinitionError: When it is not a :class:`NodePolicy` or holds a bad value.
    """
    if policy is None:
        return None
    if not isinstance(policy, NodePolicy):
        raise ChainDefinitionError(
            f"{where}: policy must be a NodePolicy (from chainette import NodePolicy), got {policy!r}."
        )
    problems = []
    timeout = policy.timeout_s
    if timeout is not None and (not _number(timeout) or not timeout > 0 or math.isinf(timeout)):
        problems.append(f"timeout_s must be a number of seconds > 0 (or None for no bound), got {timeout!r}")
    retries = policy.retries
    if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
        problems.append(f"retries must be an integer >= 0, got {retries!r}")
    if isinstance(policy.backoff, Backoff):
        problems.extend(policy.backoff.problems())
    else:
        problems.append(f"backoff must be a Backoff, got {policy.backoff!r}")
    if policy.validate not in VALIDATE_MODES:
        modes = ", ".join(repr(m) for m in VALIDATE_MODES)
        problems.append(f"validate must be one of {modes}, got {policy.validate!r}")
    if problems:
        raise ChainDefinitionError(f"{where}: policy {'; '.join(problems)}.")
    return policy


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
