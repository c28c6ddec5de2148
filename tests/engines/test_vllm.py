"""The vLLM back-end's translation, on a fake ``vllm`` module (the real wheel is CUDA-only).

Both API generations: ``StructuredOutputsParams`` (vLLM >= 0.10.2) and ``GuidedDecodingParams``.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import pytest

from chainette import ChatRequest, EngineConfigError, MissingDependencyError, SamplingParams, register_engine
from chainette.engines import registry
from chainette.engines.vllm import VLLMEngine

SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}}}


@dataclass
class Params:
    json: Any


@dataclass
class FakeSampling:
    kwargs: dict[str, Any]


@dataclass
class FakeLLM:
    args: dict[str, Any]
    calls: list[tuple[Any, Any]] = field(default_factory=list)

    def chat(self, conversations: Any, sampling_params: Any, use_tqdm: bool) -> list[Any]:
        self.calls.append((conversations, sampling_params))
        out = types.SimpleNamespace(
            text='<think>hmm</think>{"a": "x"}', finish_reason="length", token_ids=[1, 2, 3]
        )
        return [types.SimpleNamespace(outputs=[out], prompt_token_ids=[9] * 7) for _ in conversations]


def fake_vllm(api: str) -> dict[str, types.ModuleType]:
    vllm = types.ModuleType("vllm")
    vllm.__version__ = "0.test"  # type: ignore[attr-defined]
    vllm.LLM = lambda **kw: FakeLLM(kw)  # type: ignore[attr-defined]
    vllm.SamplingParams = lambda **kw: FakeSampling(kw)  # type: ignore[attr-defined]
    sampling = types.ModuleType("vllm.sampling_params")
    if api:
        setattr(sampling, api, Params)
    return {"vllm": vllm, "vllm.sampling_params": sampling}


@pytest.fixture(params=["StructuredOutputsParams", "GuidedDecodingParams"])
def api(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name, module in fake_vllm(request.param).items():
        monkeypatch.setitem(sys.modules, name, module)
    yield request.param


def test_requests_translate_to_vllm_sampling_params_of_either_generation(api: str) -> None:
    engine = VLLMEngine("org/model", max_model_len=4096, reasoning=True)
    request = ChatRequest(
        messages=({"role": "system", "content": "s"}, {"role": "user", "content": "u"}),
        json_schema=SCHEMA,
        sampling=SamplingParams(temperature=0.3, top_p=0.9, max_tokens=64, seed=5, stop=("END",)),
    )

    async def main() -> Any:
        await engine.start()
        completions = await engine.generate([request, request])
        llm = engine._llm
        await engine.close()
        return completions, llm

    completions, llm = anyio.run(main)
    assert llm.args == {
        "model": "org/model",
        "dtype": "auto",
        "gpu_memory_utilization": 0.9,
        "tensor_parallel_size": 1,
        "trust_remote_code": False,
        "max_model_len": 4096,
    }
    conversations, params = llm.calls[0]
    assert conversations == [[{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]] * 2
    kwargs = params[0].kwargs
    key = "structured_outputs" if api == "StructuredOutputsParams" else "guided_decoding"
    assert engine.api == key and kwargs[key] == Params(json=SCHEMA)
    assert {k: kwargs[k] for k in ("temperature", "top_p", "max_tokens", "seed", "stop")} == {
        "temperature": 0.3,
        "top_p": 0.9,
        "max_tokens": 64,
        "seed": 5,
        "stop": ["END"],
    }
    first = completions[0]
    assert (first.text, first.reasoning, first.finish_reason) == ('{"a": "x"}', "hmm", "length")
    assert (first.prompt_tokens, first.completion_tokens) == (7, 3)
    assert engine._llm is None and engine.describe()["structured_api"] == key


def test_no_schema_means_no_constraint(api: str) -> None:
    engine = VLLMEngine("m")
    anyio.run(engine.start)
    params = engine.sampling_params(ChatRequest(messages=({"role": "user", "content": "u"},)))
    assert "structured_outputs" not in params.kwargs and "guided_decoding" not in params.kwargs


def test_vllm_without_either_api_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, module in fake_vllm("").items():
        monkeypatch.setitem(sys.modules, name, module)
    with pytest.raises(MissingDependencyError, match=r"vLLM >= 0.6"):
        anyio.run(VLLMEngine("m").start)


def test_missing_vllm_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(MissingDependencyError, match=r"pip install 'chainette\[vllm\]'"):
        anyio.run(VLLMEngine("m").start)


def test_vllm_is_exclusive_and_its_options_are_checked() -> None:
    config = register_engine("big", backend="vllm", model="org/model", gpu_memory_utilization=0.5)
    assert registry.create_engine(config).exclusive
    with pytest.raises(
        EngineConfigError, match=r"'gpu_memory_utilisation' .*did you mean 'gpu_memory_utilization'"
    ):
        register_engine("bad", backend="vllm", model="m", gpu_memory_utilisation=0.5)
