"""Typed config: dotted overrides coerced by pydantic, refusals that name the key, markers."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from pydantic import BaseModel

from chainette import ExperimentError, Internal, Required, merge_overrides
from chainette.experiments import describe_config, public_config


class Sampling(BaseModel):
    temperature: float = 0.7
    max_tokens: int = 800


class Engine(BaseModel):
    model: Annotated[str, Required("model name for the infer stage")]
    options: dict[str, Any] = {}


class Config(BaseModel):
    engine: Engine
    sampling: Sampling = Sampling()
    verbose: bool = False
    stops: list[str] = []
    name: str = "demo"
    template_text: Annotated[str, Internal()] = ""


def test_overrides_are_coerced_to_each_fields_type() -> None:
    config = merge_overrides(
        Config,
        {},
        [
            "engine.model=qwen",
            "sampling.temperature=0.2",
            "sampling.max_tokens=64",
            "verbose=true",
            'stops=["\\n", "END"]',
            "name=42",  # a str field takes the text as it is
            "engine.options.n_ctx=2048",  # below a dict field any key goes
        ],
    )
    assert isinstance(config, Config)
    assert config.engine.model == "qwen" and config.engine.options == {"n_ctx": 2048}
    assert config.sampling == Sampling(temperature=0.2, max_tokens=64)
    assert config.verbose is True and config.stops == ["\n", "END"] and config.name == "42"


def test_overrides_apply_over_a_base_and_keep_what_they_do_not_name() -> None:
    base = Config(engine=Engine(model="a"), sampling=Sampling(temperature=0.1, max_tokens=5))
    config = merge_overrides(Config, base, ["sampling.max_tokens=9"])
    assert isinstance(config, Config)
    assert config.sampling == Sampling(temperature=0.1, max_tokens=9) and config.engine.model == "a"


def test_an_unknown_key_is_refused_with_a_did_you_mean() -> None:
    with pytest.raises(ExperimentError) as info:
        merge_overrides(Config, {"engine": {"model": "a"}}, ["sampling.temprature=0.2"])
    assert "Unknown config key 'sampling.temprature'" in str(info.value)
    assert "Did you mean 'sampling.temperature'?" in str(info.value)


def test_a_bad_value_is_refused_naming_the_field_and_its_type() -> None:
    with pytest.raises(ExperimentError) as info:
        merge_overrides(Config, {"engine": {"model": "a"}}, ["sampling.max_tokens=lots"])
    assert "'sampling.max_tokens'" in str(info.value) and "expected int" in str(info.value)
    assert "'lots'" in str(info.value)


def test_a_malformed_override_is_refused() -> None:
    with pytest.raises(ExperimentError, match="is not key=value"):
        merge_overrides(Config, {}, ["sampling.temperature"])


def test_a_required_field_not_given_is_refused_naming_it() -> None:
    with pytest.raises(ExperimentError) as info:
        merge_overrides(Config, {}, ["sampling.temperature=0"])
    assert "engine.model (model name for the infer stage)" in str(info.value)
    assert "-c engine.model=VALUE" in str(info.value)


def test_internal_fields_are_hidden_not_overridable_and_not_stored() -> None:
    with pytest.raises(ExperimentError, match="'template_text' is internal"):
        merge_overrides(Config, {"engine": {"model": "a"}}, ["template_text=x"])
    config = Config(engine=Engine(model="a"), template_text="You are a calculator.")
    stored = public_config(config)
    assert "template_text" not in stored and stored["engine"] == {"model": "a", "options": {}}
    listed = {row["path"]: row for row in describe_config(Config)}
    assert "template_text" not in listed
    assert listed["engine.model"]["required"] is True and listed["sampling.temperature"]["default"] == 0.7
