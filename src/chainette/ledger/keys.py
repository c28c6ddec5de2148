"""Request keys: a stable hash of everything that changes an engine's answer, and nothing else.

In the key: the engine's model identity (back-end, model, output-affecting options), the
rendered messages, the output JSON schema, every sampling parameter (temperature, top_p,
max_tokens, seed, stop) and the sample index. Not in the key: throughput knobs (batch size,
concurrency, threads, rate limits, timeouts, server address), so tuning them never
invalidates the cache. Dicts are serialised with sorted keys, so key order never matters.
An option the ledger does not know counts as output-affecting: the safe side is a miss.
"""

from __future__ import annotations

import functools
import hashlib
from typing import Any

import orjson

from ..engines.base import ChatRequest, SamplingParams
from ..engines.registry import EngineConfig

__all__ = ["THROUGHPUT_OPTIONS", "engine_identity", "request_key"]

KEY_VERSION = 1
"""Bumped when the key layout changes, so old entries are simply never hit again."""

THROUGHPUT_OPTIONS = frozenset(
    {
        # how much work runs at once
        "instances",
        "n_threads",
        "n_threads_batch",
        "max_concurrency",
        "max_batch_size",
        "batch_size",
        "concurrency",
        # where and how requests travel
        "base_url",
        "api_key_env",
        "timeout",
        "max_retries",
        "backoff_base",
        "backoff_max",
        "rpm",
        "tpm",
        "dialect",
        "idle_timeout",
        "latency",
        "verbose",
        "lazy",
        # hardware placement
        "n_gpu_layers",
        "gpu_memory_utilization",
        "devices",
        "tensor_parallel_size",
        "serve",
    }
)
"""Engine options that change speed or placement, never the answer."""


def engine_identity(config: EngineConfig) -> dict[str, Any]:
    """What identifies an engine's answers: back-end, model and output-affecting options."""
    return {
        "backend": config.backend,
        "model": config.model,
        "options": {k: v for k, v in config.options.items() if k not in THROUGHPUT_OPTIONS},
    }


def request_key(identity: dict[str, Any], request: ChatRequest, sample: int = 0) -> str:
    """The ledger key of ``request`` sent to the engine ``identity`` (see :func:`engine_identity`).

    Example:
        >>> from chainette.engines.base import ChatRequest
        >>> ident = {"backend": "fake", "model": None, "options": {}}
        >>> r = ChatRequest(messages=({"role": "user", "content": "hi"},))
        >>> request_key(ident, r) == request_key(ident, r, sample=0) != request_key(ident, r, sample=1)
        True
    """
    payload = {
        "v": KEY_VERSION,
        "engine": identity,
        "messages": request.messages,
        "schema": request.json_schema,
        "sampling": _sampling(request.sampling),
        "sample": sample,
    }
    blob = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS, default=_stable)
    return hashlib.blake2b(blob, digest_size=20).hexdigest()


@functools.lru_cache(maxsize=256)
def _sampling(sampling: SamplingParams) -> dict[str, Any]:
    """A step's sampling parameters are one frozen object shared by all its requests: dump it once."""
    return sampling.model_dump()


def _stable(value: Any) -> Any:
    """A stable stand-in for values JSON cannot hold (a scripted responder: its qualified name)."""
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    qualname = getattr(value, "__qualname__", None)
    if qualname is not None:
        return f"{getattr(value, '__module__', '?')}.{qualname}"
    return repr(value)
