"""Request keys move with what changes the answer, and with nothing else."""

from __future__ import annotations

from typing import Any

import pytest

from chainette import ChatRequest, EngineConfig, SamplingParams
from chainette.ledger.keys import engine_identity, request_key

SCHEMA = {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "integer"}}}


def request(**changes: Any) -> ChatRequest:
    fields: dict[str, Any] = {
        "messages": ({"role": "system", "content": "s"}, {"role": "user", "content": "u"}),
        "json_schema": SCHEMA,
        "sampling": SamplingParams(),
        "tag": "qa/1",
    }
    fields.update(changes)
    return ChatRequest(**fields)


IDENTITY = engine_identity(
    EngineConfig(name="e", backend="llama_cpp", model="m.gguf", options={"n_ctx": 4096})
)
BASE = request_key(IDENTITY, request())


@pytest.mark.parametrize(
    "changed",
    [
        request(sampling=SamplingParams(temperature=0.7)),
        request(sampling=SamplingParams(top_p=0.9)),
        request(sampling=SamplingParams(max_tokens=100)),
        request(sampling=SamplingParams(seed=1)),
        request(sampling=SamplingParams(stop=("\n",))),
        request(messages=({"role": "user", "content": "u"},)),
        request(messages=({"role": "system", "content": "s"}, {"role": "user", "content": "u2"})),
        request(json_schema={**SCHEMA, "required": ["a"]}),
        request(json_schema=None),
    ],
)
def test_what_changes_the_answer_changes_the_key(changed: ChatRequest) -> None:
    assert request_key(IDENTITY, changed) != BASE


def test_the_sample_index_is_part_of_the_key() -> None:
    assert len({request_key(IDENTITY, request(), sample=k) for k in range(3)}) == 3


@pytest.mark.parametrize(
    "options",
    [
        {"n_ctx": 4096, "n_threads": 8, "instances": 3},
        {"n_ctx": 4096, "max_concurrency": 64, "max_batch_size": 32, "timeout": 5, "rpm": 100},
        {
            "n_ctx": 4096,
            "base_url": "http://127.0.0.1:9/v1",
            "api_key_env": "KEY",
            "gpu_memory_utilization": 0.5,
        },
    ],
)
def test_throughput_knobs_do_not_change_the_key(options: dict[str, Any]) -> None:
    identity = engine_identity(
        EngineConfig(name="other-name", backend="llama_cpp", model="m.gguf", options=options)
    )
    assert request_key(identity, request()) == BASE


def test_the_model_and_output_affecting_options_change_the_key() -> None:
    for config in (
        EngineConfig(name="e", backend="llama_cpp", model="other.gguf", options={"n_ctx": 4096}),
        EngineConfig(name="e", backend="llama_cpp", model="m.gguf", options={"n_ctx": 2048}),
        EngineConfig(name="e", backend="fake", model="m.gguf", options={"n_ctx": 4096}),
    ):
        assert request_key(engine_identity(config), request()) != BASE


def test_dict_key_order_and_the_tag_do_not_matter() -> None:
    reordered = {"properties": {"b": {"type": "integer"}, "a": {"type": "string"}}, "type": "object"}
    messages = ({"content": "s", "role": "system"}, {"content": "u", "role": "user"})
    assert request_key(IDENTITY, request(json_schema=reordered, messages=messages, tag="other/2")) == BASE


@pytest.mark.parametrize(
    "rest",
    [
        [{"role": "user", "content": "hi"}],
        [
            {"role": "user", "content": 'é " \\ \n 😀'},
            {"role": "assistant", "content": "{}"},
            {"role": "user", "content": "again"},
        ],
    ],
)
def test_hashing_a_fixed_first_message_once_gives_the_same_keys(rest: list[dict[str, str]]) -> None:
    from chainette.engines.base import SamplingParams
    from chainette.ledger.keys import after_first, key_of, key_of_rest, key_prefix

    prefix = key_prefix(
        {"backend": "fake", "model": "m", "options": {}}, {"type": "object"}, SamplingParams()
    )
    system = {"role": "system", "content": "Answer briefly.\n\nReply with only a JSON object" * 20}
    opening = after_first(prefix, system)
    for sample, salt in ((0, ""), (3, "loop.iteration=2")):
        assert key_of_rest(opening, rest, sample, salt) == key_of(prefix, [system, *rest], sample, salt)
    with pytest.raises(ValueError):
        key_of_rest(opening, [])
