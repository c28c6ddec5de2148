"""vLLM in-process (offline inference on a CUDA GPU): ``backend="vllm"``, ``pip install 'chainette[vllm]'``.

Structured output uses vLLM's structured-outputs API
(``SamplingParams(structured_outputs=StructuredOutputsParams(json=schema))``, vLLM >= 0.10.2) and
falls back to the older guided-decoding API (``guided_decoding=GuidedDecodingParams(json=schema)``)
on versions without it. ``vllm`` is imported when the engine starts, never before.

The engine is *exclusive*: it holds the GPU, so the broker releases any other exclusive engine
(waiting for its calls in flight) before loading this one, and ``close()`` frees the GPU memory.
For a vLLM server on another machine use the ``openai`` back-end instead.
"""

from __future__ import annotations

import contextlib
import gc
import re
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import anyio

from .._errors import EngineConfigError, MissingDependencyError
from .base import ChatRequest, Completion, Engine

__all__ = ["VLLMEngine"]

_THINK = re.compile(r"^\s*<think>(.*?)</think>\s*", re.S)


class VLLMEngine(Engine):
    """A ``vllm.LLM`` in this process.

    Args:
        model: Hugging Face model id or local path.
        dtype: ``"auto"``, ``"bfloat16"``, ``"float16"``...
        gpu_memory_utilization: Fraction of GPU memory vLLM may take.
        max_model_len: Context length (``None``: the model's).
        tensor_parallel_size: GPUs to shard the model over.
        max_batch_size: Requests handed to one ``LLM.chat`` call (vLLM batches them on the GPU).
        reasoning: Split a leading ``<think>...</think>`` from the answer into ``Completion.reasoning``.
        llm_kwargs: Further ``vllm.LLM`` arguments.
    """

    backend: ClassVar[str] = "vllm"
    exclusive = True
    max_concurrency = 1  # one LLM.chat at a time: vllm.LLM is not thread-safe

    def __init__(
        self,
        model: str | None = None,
        *,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        tensor_parallel_size: int = 1,
        max_batch_size: int = 256,
        reasoning: bool = False,
        trust_remote_code: bool = False,
        llm_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if not model:
            raise EngineConfigError("vllm: 'model' is required (a Hugging Face model id or a local path).")
        self.model = model
        self.llm_args: dict[str, Any] = {
            "model": model,
            "dtype": dtype,
            "gpu_memory_utilization": gpu_memory_utilization,
            "tensor_parallel_size": tensor_parallel_size,
            "trust_remote_code": trust_remote_code,
            **({"max_model_len": max_model_len} if max_model_len else {}),
            **(llm_kwargs or {}),
        }
        self.max_batch_size = max_batch_size
        self.reasoning = reasoning
        self.api = ""
        """``structured_outputs`` or ``guided_decoding``: which vLLM API is in use (after start)."""
        self._llm: Any = None
        self._sampling_cls: Any = None
        self._constraint: Callable[[dict[str, Any]], dict[str, Any]] | None = None
        self._version = ""

    async def start(self) -> None:
        try:
            import vllm
        except ImportError as exc:
            raise MissingDependencyError(
                f"The vllm backend needs vLLM ({exc}). Install it on a CUDA machine with: pip install 'chainette[vllm]'"
            ) from exc
        self._version = str(getattr(vllm, "__version__", "unknown"))
        self._sampling_cls = vllm.SamplingParams
        self.api, self._constraint = _structured_api()
        self._llm = await anyio.to_thread.run_sync(lambda: vllm.LLM(**self.llm_args))

    def sampling_params(self, request: ChatRequest) -> Any:
        """The ``vllm.SamplingParams`` for ``request`` (schema constraint included)."""
        if self._sampling_cls is None or self._constraint is None:
            raise EngineConfigError("vllm: sampling_params() needs a started engine.")
        s = request.sampling
        kwargs: dict[str, Any] = {"temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens}
        kwargs["seed"] = s.seed
        if s.stop:
            kwargs["stop"] = list(s.stop)
        if request.json_schema is not None:
            kwargs.update(self._constraint(request.json_schema))
        return self._sampling_cls(**kwargs)

    async def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        if self._llm is None:
            raise EngineConfigError("vllm: generate() called before start() (or after close()).")
        conversations = [[dict(m) for m in r.messages] for r in requests]
        params = [self.sampling_params(r) for r in requests]
        llm = self._llm
        outputs = await anyio.to_thread.run_sync(
            lambda: llm.chat(conversations, sampling_params=params, use_tqdm=False)
        )
        return [self._completion(out) for out in outputs]

    def _completion(self, output: Any) -> Completion:
        choice = output.outputs[0]
        text: str = choice.text
        reasoning = None
        if self.reasoning and (match := _THINK.match(text)):
            reasoning, text = match.group(1).strip(), text[match.end() :]
        return Completion(
            text=text,
            finish_reason=choice.finish_reason or "stop",
            prompt_tokens=len(output.prompt_token_ids or ()),
            completion_tokens=len(choice.token_ids or ()),
            reasoning=reasoning,
        )

    async def close(self) -> None:
        """Delete the model and give the GPU memory back (gc + ``torch.cuda.empty_cache()``)."""
        self._llm = None
        gc.collect()
        with contextlib.suppress(Exception):  # best effort: older/newer vLLMs differ here
            from vllm.distributed.parallel_state import (
                destroy_distributed_environment,
                destroy_model_parallel,
            )

            destroy_model_parallel()
            destroy_distributed_environment()
        with contextlib.suppress(ImportError):
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def describe(self) -> dict[str, Any]:
        info = {
            "backend": self.backend,
            "model": self.model,
            "vllm": self._version,
            "structured_api": self.api,
        }
        info.update({k: v for k, v in self.llm_args.items() if k != "model"})
        return info


def _structured_api() -> tuple[str, Callable[[dict[str, Any]], dict[str, Any]]]:
    """The structured-output API of the installed vLLM: new ``structured_outputs`` or old ``guided_decoding``."""
    try:
        from vllm.sampling_params import StructuredOutputsParams

        return "structured_outputs", lambda schema: {
            "structured_outputs": StructuredOutputsParams(json=schema)
        }
    except ImportError:
        pass
    try:
        from vllm.sampling_params import GuidedDecodingParams

        return "guided_decoding", lambda schema: {"guided_decoding": GuidedDecodingParams(json=schema)}
    except ImportError as exc:
        raise MissingDependencyError(
            "This vLLM has neither StructuredOutputsParams nor GuidedDecodingParams; "
            "install vLLM >= 0.6: pip install -U 'chainette[vllm]'"
        ) from exc
