"""The calc engine: a fake back-end answering arithmetic right (see ``shared.calculator``)."""

from __future__ import annotations

import pytest
from tests.experiments.shared import calculator

from chainette import register_engine


@pytest.fixture
def calc_engine() -> str:
    register_engine("calc", backend="fake", responder=calculator)
    return "calc"
