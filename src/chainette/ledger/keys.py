"""Request keys: a stable hash of everything that changes an engine's answer, and nothing else.

In the key: the engine's model identity (back-end, model, output-affecting options), the
rendered messages, the output JSON schema, every sampling parameter (temperature, top_p,
max_tokens, seed, stop), the sample index and, for a request made in a loop's second or later
pass, the pass numbers (a salt; empty otherwise, so keys outside loops never change). Not in the key: throughput knobs (batch size,
concurrency, threads, rate limits, timeouts, server address), so tuning them never
invalidates the cache. Dicts are serialised with sorted keys, so key order never matters.
An option the ledger does not know counts as output-affecting: the safe side is a miss.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from typing import Any

import orjson

from ..engines.base import ChatRequest, Message, SamplingParams
from ..engines.registry import EngineConfig

__all__ = ["THROUGHPUT_OPTIONS", "engine_identity", "key_of", "key_prefix", "request_key"]

KEY_VERSION = 1
_SORTED = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
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
        "fast_grammar",
        "prompt_cache",
        "parallel",
        "lazy",
        # hardware placement
        "n_gpu_layers",
        "gpu_memory_utilization",
        "devices",
        "tensor_parallel_size",
        "serve",
        # the batch back-end: when and how a batch is polled, where it is journalled
        "completion_window",
        "poll_interval",
        "poll_max",
        "journal",
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
    return key_of(key_prefix(identity, request.json_schema, request.sampling), request.messages, sample)


def key_prefix(identity: dict[str, Any], json_schema: dict[str, Any] | None, sampling: SamplingParams) -> Any:
    """The hash state of what a step's requests share (engine, schema, sampling): computed once
    per chunk and copied per request, so a long schema is not serialised for every record."""
    shared = {"v": KEY_VERSION, "engine": identity, "schema": json_schema, "sampling": _sampling(sampling)}
    state = hashlib.blake2b(digest_size=20)
    state.update(orjson.dumps(shared, option=_SORTED, default=_stable))
    return state


def key_of(prefix: Any, messages: Sequence[Message], sample: int = 0, salt: str = "") -> str:
    """The key of one request: the step's :func:`key_prefix`, its messages, its sample index and
    the ``salt`` that tells apart identical requests of different loop passes (``""``: none).

    Example:
        >>> from chainette.engines.base import SamplingParams
        >>> prefix = key_prefix({"backend": "fake", "model": None, "options": {}}, None, SamplingParams())
        >>> messages = [{"role": "user", "content": "hi"}]
        >>> key_of(prefix, messages) == key_of(prefix, messages, 0, "") != key_of(prefix, messages, 0, "r.iteration=1")
        True
    """
    state = prefix.copy()
    state.update(orjson.dumps(messages, option=_SORTED))
    state.update(b"#%d" % sample)
    if salt:
        state.update(b"@" + salt.encode())
    return str(state.hexdigest())


def after_first(prefix: Any, first: Message) -> Any:
    """The hash state of :func:`key_prefix` followed by the opening of a message list whose first
    message is ``first``: for requests that all open with the same message (a step's fixed system
    prompt, schema instruction included), that message is serialised and hashed once; finish
    each key with :func:`key_of_rest`. The keys are :func:`key_of`'s, byte for byte."""
    state = prefix.copy()
    state.update(b"[" + orjson.dumps(first, option=_SORTED) + b",")
    return state


def key_of_rest(state: Any, rest: Sequence[Message], sample: int = 0, salt: str = "") -> str:
    """The key of a request whose first message went into ``state`` (:func:`after_first`) and
    whose other messages, one or more, are ``rest``.

    Example:
        >>> from chainette.engines.base import SamplingParams
        >>> prefix = key_prefix({"backend": "fake", "model": None, "options": {}}, None, SamplingParams())
        >>> system, user = {"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}
        >>> key_of_rest(after_first(prefix, system), [user], 1, "r.iteration=2") == key_of(prefix, [system, user], 1, "r.iteration=2")
        True
    """
    if not rest:
        raise ValueError("key_of_rest needs at least one message after the first")
    state = state.copy()
    state.update(orjson.dumps(rest, option=_SORTED)[1:])  # the list goes on after the first message
    state.update(b"#%d" % sample)
    if salt:
        state.update(b"@" + salt.encode())
    return str(state.hexdigest())


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
