"""Engine definitions written for the Chainette seed (vLLM options, no backend) load as vllm engines."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import pytest

from chainette import EngineConfigError, load_engines, register_engine
from chainette.engines import registry
from chainette.engines.seed_compat import SEED_VLLM_OPTIONS, VLLM_ONLY_OPTIONS
from chainette.engines.vllm import VLLMEngine

# Verbatim from the seed's README, "Engine Configuration".
SEED_ENGINES_YML = """\
engines:
  - name: llama3
    model: NousResearch/Meta-Llama-3-8B-Instruct
    dtype: bfloat16
    gpu_memory_utilization: 0.6
    enable_reasoning: false
    devices: [0]
    lazy: true
"""


@pytest.fixture
def no_vllm_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``vllm`` package that fails the test if anything imports it."""
    package = tmp_path / "poisoned" / "vllm"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise AssertionError('vllm was imported')\n")
    monkeypatch.delitem(sys.modules, "vllm", raising=False)
    monkeypatch.syspath_prepend(str(package.parent))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "engines.yml"
    path.write_text(text)
    return path


@pytest.mark.usefixtures("no_vllm_import")
def test_the_seed_engines_yml_loads_as_a_vllm_engine_without_importing_vllm(tmp_path: Path) -> None:
    (config,) = load_engines(write(tmp_path, SEED_ENGINES_YML))

    assert (config.name, config.backend, config.model, config.lazy) == (
        "llama3",
        "vllm",
        "NousResearch/Meta-Llama-3-8B-Instruct",
        True,
    )
    assert config.options == {
        "dtype": "bfloat16",
        "gpu_memory_utilization": 0.6,
        "reasoning": False,
        "tensor_parallel_size": 1,
    }
    assert registry.get_engine_config("llama3") == config
    engine = registry.create_engine(config)  # what the vllm back-end receives (start() would import vllm)
    assert isinstance(engine, VLLMEngine) and engine.reasoning is False
    assert engine.llm_args == {
        "model": "NousResearch/Meta-Llama-3-8B-Instruct",
        "dtype": "bfloat16",
        "gpu_memory_utilization": 0.6,
        "tensor_parallel_size": 1,
        "trust_remote_code": False,
    }
    assert "vllm" not in sys.modules


@pytest.mark.usefixtures("no_vllm_import")
def test_the_seed_register_engine_call_makes_a_vllm_engine() -> None:
    # The seed README's quick start, verbatim.
    register_engine(
        name="llama3",
        model="NousResearch/Meta-Llama-3-8B-Instruct",
        dtype="bfloat16",
        gpu_memory_utilization=0.6,
        lazy=True,  # only start when needed
    )
    config = registry.get_engine_config("llama3")
    assert config.backend == "vllm"
    assert config.options == {"dtype": "bfloat16", "gpu_memory_utilization": 0.6}


def test_seed_names_are_translated_with_an_explicit_backend_too(tmp_path: Path) -> None:
    text = "engines:\n  - name: q\n    backend: vllm\n    model: m\n    enable_reasoning: true\n    devices: [1, 0]\n"
    (config,) = load_engines(write(tmp_path, text))
    assert config.options == {"reasoning": True, "tensor_parallel_size": 2}


def test_without_backend_or_vllm_options_the_default_stays_llama_cpp(tmp_path: Path) -> None:
    (config,) = load_engines(write(tmp_path, "engines:\n  - name: small\n    n_ctx: 2048\n"))
    assert config.backend == "llama_cpp"


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (  # options of two back-ends and no backend: say which was assumed and what to add
            "dtype: bfloat16\n    n_ctx: 2048",
            r"engine 'e': unknown option 'n_ctx' for backend 'vllm'.*No 'backend:' was given, so 'vllm' was "
            r"assumed from option 'dtype': if this engine is of another kind, add 'backend:' \(fake, "
            r"llama_cpp, openai, openai_batch, vllm\) and keep only that back-end's options\.",
        ),
        (
            "n_ctxx: 2048",
            r"unknown option 'n_ctxx' for backend 'llama_cpp' \(did you mean 'n_ctx'\?\).*No 'backend:' was "
            r"given, so 'llama_cpp' was assumed \(the default\)",
        ),
        (  # GPUs other than the first ones: only the environment can choose them
            "dtype: bfloat16\n    devices: [2, 3]",
            r"engine 'e': 'devices: \[2, 3\]' cannot be honoured from inside the process.*"
            r"CUDA_VISIBLE_DEVICES=2,3 chainette run \.\.\.\) and replace 'devices:' with "
            r"'tensor_parallel_size: 2'",
        ),
        ("devices: 0", r"engine 'e': 'devices' must be a list of GPU numbers such as \[0\].*got 0"),
        ("devices: [0, 0]", r"'devices: \[0, 0\]' cannot be honoured"),
        (
            "devices: [0]\n    tensor_parallel_size: 2",
            r"'devices: \[0\]' means tensor_parallel_size 1, but 'tensor_parallel_size: 2' is given too\. "
            r"Keep only one of them\.",
        ),
        (
            "enable_reasoning: true\n    reasoning: false",
            r"'enable_reasoning: True' and 'reasoning: False' disagree.*Keep only 'reasoning:'",
        ),
        ("backend: openai\n    dtype: bfloat16", r"unknown option 'dtype' for backend 'openai'"),
    ],
)
def test_what_cannot_be_resolved_says_what_to_do(tmp_path: Path, entry: str, message: str) -> None:
    path = write(tmp_path, f"engines:\n  - name: e\n    model: m\n    {entry}\n")
    with pytest.raises(EngineConfigError, match=message):
        load_engines(path)


def test_vllm_only_options_are_exactly_those_no_other_backend_takes() -> None:
    """A definition without backend is vllm when it uses one of these: none may belong to another back-end."""

    def params(backend: str) -> set[str]:
        signature = inspect.signature(registry._load_backend_class(backend).__init__)
        return set(signature.parameters) - {"self", "model"}

    others = set().union(*(params(b) for b in registry.BACKENDS if b != "vllm"))
    assert params("vllm") - others == VLLM_ONLY_OPTIONS - SEED_VLLM_OPTIONS
