"""Models and helpers shared by the tests (a plain module, so there is one copy of each class)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, Field

from chainette.engines.fake import FakeEngine


class Question(BaseModel):
    text: str


class Answer(BaseModel):
    answer: str = Field(max_length=80)
    confidence: float


class Translation(BaseModel):
    translated: str = Field(max_length=80)


class Summary(BaseModel):
    summary: str = Field(max_length=120)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    files = sorted(path.glob("*.jsonl")) if path.is_dir() else [path]
    return [json.loads(line) for f in files for line in f.read_text().splitlines() if line.strip()]


class RecordingEngine(FakeEngine):
    """A fake back-end that remembers its instances and accepts any option (e.g. an api_key)."""

    instances: ClassVar[list[RecordingEngine]] = []

    def __init__(self, model: str | None = None, *, api_key: str | None = None, **options: Any) -> None:
        super().__init__(model, **options)
        self.api_key = api_key
        RecordingEngine.instances.append(self)


class ExplodingEngine(FakeEngine):
    """A back-end whose generate() raises: the whole batch fails with the cause kept."""

    async def generate(self, requests: Any) -> Any:
        raise TimeoutError("no answer within 30 s")


class CountingEngine(FakeEngine):
    """A fake back-end that logs the step of every request any instance receives."""

    sent: ClassVar[list[str]] = []

    async def generate(self, requests: Any) -> Any:
        CountingEngine.sent.extend(r.tag.split("/")[0] for r in requests)
        return await super().generate(requests)
