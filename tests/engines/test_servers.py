"""How engines are served: the command lines, and serve: errors that name the field."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from chainette import EngineConfigError, load_engines, register_engine
from chainette.engines import servers


def test_llama_cpp_server_command_binds_localhost_and_keeps_the_engine_options() -> None:
    config = register_engine(
        "small", backend="llama_cpp", model="/m.gguf", n_ctx=2048, serve={"args": ["--x", "1"]}
    )
    cmd = servers.server_command(config, servers.serve_spec(config), 8011)
    assert cmd[:3] == [sys.executable, "-m", "llama_cpp.server"]
    joined = " ".join(cmd)
    assert (
        "--model /m.gguf --model_alias small --host 127.0.0.1 --port 8011 --interrupt_requests False"
        in joined
    )
    assert "--n_ctx 2048" in joined and joined.endswith("--x 1")


def test_vllm_serve_command() -> None:
    config = register_engine(
        "qwen", backend="vllm", model="Qwen/Qwen2.5-7B", gpu_memory_utilization=0.6, serve={}
    )
    cmd = servers.server_command(config, servers.serve_spec(config), 9000)
    assert cmd == [
        "vllm", "serve", "Qwen/Qwen2.5-7B", "--host", "127.0.0.1", "--port", "9000",
        "--served-model-name", "qwen", "--gpu-memory-utilization", "0.6",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("serve", "message"),
    [
        ("{kind: tgi}", r"engine 'a': serve: field 'kind': Input should be 'llama_cpp' or 'vllm'"),
        ("{kind: vllm, prot: 1}", r"engine 'a': serve: field 'prot': Extra inputs are not permitted"),
        ("{}", r"engine 'a': field 'serve.kind' is required"),
    ],
)
def test_serve_errors_name_the_field(tmp_path: Path, serve: str, message: str) -> None:
    path = tmp_path / "engines.yml"
    path.write_text(f"engines:\n  - name: a\n    backend: openai\n    model: m\n    serve: {serve}\n")
    (config,) = load_engines(path)
    with pytest.raises(EngineConfigError, match=message):
        servers.serve_spec(config)


def test_an_engine_without_serve_cannot_be_warmed_up() -> None:
    config = register_engine("plain", backend="fake")
    with pytest.raises(EngineConfigError, match=r"no 'serve:' section"):
        servers.warmup(config)


def test_no_state_file_means_no_served_engines() -> None:
    assert not servers.state_file().exists()
    assert servers.running_engine_config("anything") is None and servers.list_servers() == []
