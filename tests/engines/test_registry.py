"""Engines by name: register_engine, engines.yml with errors that name the field, lazy back-ends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from chainette import (
    EngineConfigError,
    MissingDependencyError,
    UnknownEngineError,
    get_engine_config,
    list_engines,
    load_engines,
    register_engine,
)
from chainette.engines import registry, server_state
from chainette.engines.registry import is_registered

SRC = str(Path(registry.__file__).parents[2])


def test_register_and_lookup() -> None:
    register_engine("local", backend="fake", latency=0.0)
    config = get_engine_config("local")
    assert config.backend == "fake" and config.options == {"latency": 0.0}
    assert [c.name for c in list_engines()] == ["local"]


def test_unknown_engine_names_the_registered_ones() -> None:
    register_engine("llama3", backend="fake")
    with pytest.raises(
        UnknownEngineError, match=r"'llama4'.*did you mean 'llama3'.*Registered engines: 'llama3'"
    ):
        get_engine_config("llama4")


def test_unknown_backend_is_rejected_with_the_known_ones() -> None:
    with pytest.raises(
        EngineConfigError, match=r"engine 'x': field 'backend': .*known backends: fake, llama_cpp"
    ):
        register_engine("x", backend="vllm-typo")


def test_yaml_engines_are_loaded(tmp_path: Path) -> None:
    path = tmp_path / "engines.yml"
    path.write_text(
        "engines:\n"
        "  - name: small\n    backend: llama_cpp\n    n_ctx: 2048\n    lazy: true\n"
        "  - name: test\n    backend: fake\n"
    )
    configs = load_engines(path)
    assert [c.name for c in configs] == ["small", "test"]
    assert get_engine_config("small").options == {"n_ctx": 2048}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("engines:\n  - backend: fake\n", r"engines\[0\]: field 'name': Field required"),
        ("engines:\n  - name: a\n    backend: nope\n", r"engine 'a': field 'backend'"),
        ("engines:\n  - name: a\n    lazy: [1]\n", r"engine 'a': field 'lazy'"),
        ("engines: {name: a}\n", r"expected a top-level 'engines:' list"),
        ("engines:\n  - name: [unclosed\n", r"not valid YAML"),
    ],
)
def test_yaml_errors_name_the_field(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "engines.yml"
    path.write_text(text)
    with pytest.raises(EngineConfigError, match=message):
        load_engines(path)


def test_bad_backend_option_is_named_when_registered() -> None:
    with pytest.raises(
        EngineConfigError, match=r"engine 'f': unknown option 'temperature_typo' for backend 'fake'"
    ):
        register_engine("f", backend="fake", temperature_typo=1)


def test_unknown_yaml_option_names_file_engine_and_suggests(tmp_path: Path) -> None:
    path = tmp_path / "engines.yml"
    path.write_text("engines:\n  - name: a\n    backend: llama_cpp\n    n_ctxx: 2048\n")
    with pytest.raises(
        EngineConfigError,
        match=r"engines.yml: engine 'a': unknown option 'n_ctxx' for backend 'llama_cpp' \(did you mean 'n_ctx'\?\)",
    ):
        load_engines(path)


@pytest.mark.parametrize("option", ["api_key", "openai_api_key", "token"])
def test_a_key_passed_as_an_option_is_refused_with_the_fix(option: str) -> None:
    with pytest.raises(EngineConfigError, match=rf"option '{option}' looks like a secret.*api_key_env"):
        register_engine("remote", backend="openai", model="m", base_url="http://x/v1", **{option: "sk-1"})


def test_api_key_env_names_a_variable_and_is_shown() -> None:
    config = register_engine(
        "remote", backend="openai", model="m", base_url="http://x/v1", api_key_env="MY_KEY"
    )
    assert config.public_options()["api_key_env"] == "MY_KEY"


def test_bad_option_value_is_explained_at_creation() -> None:
    config = register_engine(
        "remote", backend="openai", model="m", base_url="http://x/v1", dialect="jsonschema"
    )
    with pytest.raises(EngineConfigError, match=r"dialect 'jsonschema' is not one of auto, json_schema"):
        registry.create_engine(config)


def test_served_engine_without_a_running_server_says_to_warm_it_up() -> None:
    config = register_engine("small", backend="openai", model="m", serve={"kind": "llama_cpp"})
    with pytest.raises(EngineConfigError, match=r"chainette warmup -f engines.yml -e small"):
        registry.create_engine(config)


def test_missing_backend_dependency_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.BACKENDS, "llama_cpp", "chainette_missing_module:Nope")
    config = register_engine("x", backend="llama_cpp")
    with pytest.raises(MissingDependencyError, match=r"pip install 'chainette\[llama\]'"):
        registry.create_engine(config)


@pytest.mark.llama  # start() imports llama_cpp before it looks at the path
def test_llama_model_path_that_does_not_exist_is_explained() -> None:
    from chainette.engines.llama_cpp import LlamaCppEngine

    engine = LlamaCppEngine(model="/nowhere/model.gguf")
    with pytest.raises(EngineConfigError, match=r"model file '/nowhere/model.gguf' does not exist"):
        anyio.run(engine.start)


def _record_of_this_process(name: str) -> server_state.ServerRecord:
    """A servers.json record that counts as running: it names this very process."""
    cmdline = server_state.process_cmdline(os.getpid())
    assert cmdline is not None
    return server_state.ServerRecord(
        name=name,
        kind="llama_cpp",
        pid=os.getpid(),
        port=9,
        base_url="http://127.0.0.1:9/v1",
        model=name,
        cmdline=cmdline,
        started_at="2026-01-01T00:00:00+00:00",
        log="/dev/null",
    )


def test_is_registered_answers_from_this_process_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A running server named in ./.chainette/servers.json makes get_engine_config resolve the name,
    but not is_registered: the static answer does not depend on the working folder."""
    monkeypatch.delenv(server_state.STATE_ENV)
    monkeypatch.chdir(tmp_path)
    server_state.write_state({"served": _record_of_this_process("served")})
    assert server_state.state_file() == tmp_path / ".chainette" / "servers.json"
    register_engine("local", backend="fake")

    assert get_engine_config("served").backend == "openai"  # the file is there and live...
    assert not is_registered("served")  # ...and is_registered does not look at it
    assert is_registered("local") and not is_registered("other")

    server_state.state_file().write_text("{not json")  # unreadable: only a file read would notice
    with pytest.raises(EngineConfigError, match="unreadable server state"):
        get_engine_config("local")
    assert is_registered("local") and not is_registered("served")


def test_registry_does_not_import_the_servers_module() -> None:
    """registry → server_state ← servers: the dependency points one way (no import cycle)."""
    code = (
        "import sys, chainette.engines.registry as r; r.register_engine('x', backend='fake'); "
        "r.get_engine_config('x'); "
        "assert 'chainette.engines.servers' not in sys.modules, 'registry imported servers'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": SRC})


def test_chain_check_reads_no_file_and_a_run_accepts_a_warmed_up_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chain.check() answers the same in any folder (an unreadable servers.json changes nothing);
    the run's own check also accepts a name a live warmup server answers to."""
    from pydantic import BaseModel

    from chainette import Chain, Step
    from chainette.engines.registry import is_available

    class Q(BaseModel):
        text: str

    monkeypatch.delenv(server_state.STATE_ENV)
    monkeypatch.chdir(tmp_path)
    register_engine("local", backend="fake")
    server_state.write_state({"served": _record_of_this_process("served")})

    def chain(engine: str) -> Chain:
        return Chain(
            "c", [Step(id="s", input_model=Q, output_model=Q, engine_name=engine, user_prompt="{{ text }}")]
        )

    assert chain("local").check().ok and not chain("served").check().ok
    assert chain("served").check(engine_known=is_available).ok
    server_state.state_file().write_text("{not json")
    assert chain("local").check().ok  # no file read: the broken file is not noticed
