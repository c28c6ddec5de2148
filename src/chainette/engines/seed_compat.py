"""Engine definitions written for the Chainette seed, which knew only vLLM.

The seed's README registers engines with vLLM options and no back-end::

    engines:
      - name: llama3
        model: NousResearch/Meta-Llama-3-8B-Instruct
        dtype: bfloat16
        gpu_memory_utilization: 0.6
        enable_reasoning: false
        devices: [0]
        lazy: true

Two rules make that a ``vllm`` engine here. A definition without ``backend`` that uses an
option only the ``vllm`` back-end takes (:data:`VLLM_ONLY_OPTIONS`) is a ``vllm`` engine. And the
seed's option names become the back-end's: ``enable_reasoning`` → ``reasoning``, ``devices: [0,
..., n-1]`` → ``tensor_parallel_size: n`` (vLLM shards over the first ``n`` GPUs the process
sees). Other GPU numbers cannot be chosen from inside the process; the error says to use
``CUDA_VISIBLE_DEVICES``. Nothing here imports vLLM.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .._errors import EngineConfigError

__all__ = ["SEED_VLLM_OPTIONS", "VLLM_ONLY_OPTIONS", "vllm_options"]

SEED_VLLM_OPTIONS = frozenset({"enable_reasoning", "devices"})
"""The seed's vLLM option names that :func:`vllm_options` translates."""

VLLM_ONLY_OPTIONS = SEED_VLLM_OPTIONS | {
    "dtype",
    "gpu_memory_utilization",
    "max_model_len",
    "tensor_parallel_size",
    "reasoning",
    "trust_remote_code",
    "llm_kwargs",
}
"""Options that only the ``vllm`` back-end takes: one of them in a definition without ``backend``
makes it a ``vllm`` engine. (A test pins this against the back-end signatures.)"""


def vllm_options(options: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``options`` with the seed's names replaced by the ``vllm`` back-end's.

    Example:
        >>> vllm_options({"dtype": "bfloat16", "enable_reasoning": True, "devices": [0, 1]}, "engine 'x'")
        {'dtype': 'bfloat16', 'reasoning': True, 'tensor_parallel_size': 2}
    """
    out = dict(options)
    if "enable_reasoning" in out:
        value = out.pop("enable_reasoning")
        if "reasoning" in out and out["reasoning"] != value:
            raise EngineConfigError(
                f"{where}: 'enable_reasoning: {value}' and 'reasoning: {out['reasoning']}' disagree; they are "
                "the same option. Keep only 'reasoning:'."
            )
        out["reasoning"] = value
    if "devices" in out:
        out["tensor_parallel_size"] = _tensor_parallel_size(out.pop("devices"), out, where)
    return out


def _tensor_parallel_size(devices: Any, options: Mapping[str, Any], where: str) -> int:
    if not (
        isinstance(devices, list)
        and devices
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in devices)
    ):
        raise EngineConfigError(
            f"{where}: 'devices' must be a list of GPU numbers such as [0] or [0, 1], got {devices!r}."
        )
    n = len(devices)
    if sorted(devices) != list(range(n)):
        visible = ",".join(str(d) for d in devices)
        raise EngineConfigError(
            f"{where}: 'devices: {devices}' cannot be honoured from inside the process: vLLM uses the first "
            f"tensor_parallel_size GPUs the process can see. Choose the GPUs when you start it instead "
            f"(CUDA_VISIBLE_DEVICES={visible} chainette run ...) and replace 'devices:' with "
            f"'tensor_parallel_size: {n}'."
        )
    if options.get("tensor_parallel_size", n) != n:
        raise EngineConfigError(
            f"{where}: 'devices: {devices}' means tensor_parallel_size {n}, but 'tensor_parallel_size: "
            f"{options['tensor_parallel_size']}' is given too. Keep only one of them."
        )
    return n
