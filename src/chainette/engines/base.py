"""The engine contract: where prompts go.

An engine turns a batch of chat requests into completions. That is the whole contract:
``start()``, ``generate(requests)``, ``close()``, plus two numbers telling the runtime how much
work to hand it at once. ``stream(request)`` is the one optional capability: text deltas as they
are produced, then the completion (by default, the completion alone). Everything else (templates, schema validation, re-asks, failures,
writing) lives in the runtime, so a new back-end is one small class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncGenerator, Sequence
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ChatRequest", "Completion", "Engine", "Message", "SamplingParams"]

Message = dict[str, str]
"""One chat message: ``{"role": "system" | "user" | "assistant", "content": "..."}``."""


class SamplingParams(BaseModel):
    """How the engine samples tokens. Every field here can change the answer.

    Example:
        >>> SamplingParams(temperature=0.2, max_tokens=128)
        SamplingParams(temperature=0.2, top_p=1.0, max_tokens=128, seed=0, stop=None)
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(default=0.0, ge=0.0)
    """0 means greedy decoding (reproducible)."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass."""
    max_tokens: int = Field(default=512, gt=0)
    """Upper bound on generated tokens. Output cut at this limit is re-asked, never kept."""
    seed: int | None = 0
    """Sampling seed, so runs with temperature > 0 are reproducible too."""
    stop: tuple[str, ...] | None = None
    """Stop sequences."""


class ChatRequest(BaseModel):
    """One request to an engine: messages, the JSON schema the output must follow, sampling."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    messages: tuple[Message, ...]
    json_schema: dict[str, Any] | None = None
    """When set, the engine must constrain decoding to this schema."""
    sampling: SamplingParams = SamplingParams()
    tag: str = ""
    """Free-form label for logs (the runtime puts ``step_id/record_id`` here)."""


class Completion(BaseModel):
    """What an engine answered for one request."""

    text: str
    finish_reason: Literal["stop", "length", "error"] | str = "stop"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning: str | None = None
    """Reasoning text the server returned separately from the answer, kept as ``_reasoning``."""
    attempts: int = 1
    """How many times the engine sent this request, transport retries included; 0 when it
    answered without sending (an error: e.g. the engine had stopped after an authentication
    failure). Not stored in the ledger."""


class Engine(ABC):
    """Base class of every back-end.

    Subclasses are constructed with the engine's ``EngineConfig`` options as keyword
    arguments, must not load anything heavy in ``__init__`` (engines start lazily), and
    implement :meth:`generate`.

    Attributes:
        max_batch_size: How many requests one ``generate`` call should receive.
        max_concurrency: How many ``generate`` calls the runtime may keep in flight.
        gather_s: With ``max_batch_size > 1``: seconds a call waits, once it has a slot, for
            more requests to join it (the runtime gathers whatever records have pending, see
            ``runtime/coalesce.py``). 0 for most engines; a provider batch, slow and paid per
            batch, waits a little so that records read together go in one batch.
        exclusive: The engine holds a scarce device (a GPU): the broker never runs two
            exclusive engines at once, and releases one before starting another.
        name: The name it was registered under (set by ``create_engine``), for messages.
        fatal_error: Set by the engine when no further request can succeed in this run (the
            server refused the credentials): the reason, said once. From then on the engine
            answers every request with it, without sending, and the runtime stops calling it.
        supports_streaming: :meth:`stream` yields text deltas as they are produced (``False``:
            it yields only the final completion, once the whole answer is there). An engine whose
            streaming depends on its options sets it per instance.
    """

    backend: ClassVar[str] = ""
    max_batch_size: int = 1
    max_concurrency: int = 1
    gather_s: float = 0.0
    exclusive: bool = False
    name: str = ""
    fatal_error: str | None = None
    supports_streaming: bool = False

    async def start(self) -> None:  # noqa: B027 - optional hook, nothing to do by default
        """Load the model / open connections. Called once, on first use."""

    @abstractmethod
    async def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        """Answer each request, in order.

        A request that failed on its own gets ``Completion(text=<reason>, finish_reason="error")``;
        raising fails every request of the batch. Either way the records go to failures.

        Blocking work must run off the event loop (``anyio.to_thread.run_sync``).
        """

    async def stream(self, request: ChatRequest) -> AsyncGenerator[str | Completion, None]:
        """Answer one request piece by piece: text deltas (``str``) as the engine produces them,
        then exactly one :class:`Completion`, last.

        The deltas joined are the completion's text, and the completion is the one
        :meth:`generate` returns for the same request (for a greedy request: the same answer, so
        the ledger can keep it), except that ``finish_reason="error"`` carries the reason as its
        text, whatever deltas came before. Closing the iterator early (``aclose()``, or cancelling
        the task iterating it) stops the work: the HTTP connection is closed, a local decode stops
        at its next token.

        The default yields ``generate([request])``'s completion alone (``supports_streaming`` False).

        Example:
            >>> async def show(engine: Engine, request: ChatRequest) -> Completion:  # doctest: +SKIP
            ...     async for item in engine.stream(request):
            ...         if isinstance(item, str):
            ...             print(item, end="", flush=True)
            ...     return item
        """
        (completion,) = await self.generate([request])
        yield completion

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Free the model / connections. Called once; the engine is not used afterwards."""

    def describe(self) -> dict[str, Any]:
        """Public facts for ``metadata.json`` (model identity, versions). Never secrets."""
        return {"backend": self.backend}
