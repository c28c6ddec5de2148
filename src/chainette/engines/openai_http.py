"""Any server that speaks the OpenAI chat-completions API: vLLM, llama.cpp, Ollama, SGLang, hosted APIs.

One HTTP request per chat request (aiohttp, :mod:`.http_transport`; the batch back-end's files and
batches calls use httpx), at most ``max_concurrency`` in flight, paced by optional
``rpm`` / ``tpm`` budgets. Transport failures (429, 5xx, timeouts, dropped connections) are
retried here with exponential backoff and jitter, honouring ``Retry-After``; that loop is
separate from the runtime's schema re-asks. A request that still fails gets
``Completion(finish_reason="error")`` naming the status and attempts, so only its record fails.
A 401 or 403 is different: the credentials are wrong for every request, so the engine stops
(``fatal_error``) and answers every later request with that reason, without sending it.

``stream(request)`` sends ``"stream": true`` (with ``stream_options.include_usage``) and yields
the content deltas of the server's events as they arrive (:mod:`.openai_sse`), under the same
limits, retries and error mapping: until the first delta a failure is retried as above; after it,
the stream ends with ``Completion(finish_reason="error")`` naming what broke. Closing the iterator
closes the connection.

Structured output is sent in the server's dialect (``dialect=``):

============================  ===============================================================
``json_schema``               ``response_format={"type": "json_schema", ...}`` (OpenAI, llama-server, vLLM, SGLang, Ollama /v1)
``json_object``               ``response_format={"type": "json_object", "schema": ...}`` (llama-cpp-python's server)
``structured_outputs``        ``structured_outputs={"json": ...}`` (vLLM >= 0.12)
``guided_json``               ``guided_json=...`` (older vLLM)
``ollama``                    Ollama's native ``/api/chat`` with ``format=<schema>``
``none``                      no constraint: the prompt's schema instruction and validation only
``auto`` (default)            ``json_schema``, then ``json_object``, then ``none``: the first the server accepts is kept
============================  ===============================================================

The API key is read from the environment variable named by ``api_key_env`` when the engine
starts; it is never stored in options, ``describe()``, errors or logs. Credentials written into
``base_url`` (``https://user:password@host/v1?api-key=...``) are sent as written (the user part as
HTTP Basic auth, the query string with every request) and shown masked everywhere else
(:mod:`chainette.engines.secrets`).
"""

from __future__ import annotations

import os
import random
from collections.abc import AsyncGenerator, Sequence
from typing import Any, ClassVar

import anyio
import httpx
import orjson

from .._errors import EngineConfigError, EngineError
from .base import ChatRequest, Completion, Engine
from .http_transport import HttpTransport, Reply, TransportFailure
from .limits import RateLimits, backoff_delay, estimate_tokens, parse_retry_after
from .openai_sse import StreamedAnswer, StreamError
from .openai_wire import chat_body, error_text, parse_chat_completion, parse_chat_reply, parse_ollama_reply
from .secrets import remember_secrets, scrub_text

__all__ = ["DIALECTS", "OpenAIEngine", "chat_body", "parse_chat_completion"]

DIALECTS = ("auto", "json_schema", "json_object", "structured_outputs", "guided_json", "ollama", "none")
_AUTO_ORDER = ("json_schema", "json_object", "none")
_RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_AUTH_STATUS = frozenset({401, 403})
_DIALECT_STATUS = frozenset({400, 404, 422, 500, 501})
_DIALECT_WORDS = ("response_format", "json_schema", "json_object", "structured_output", "guided", "schema")


class OpenAIEngine(Engine):
    """An OpenAI-compatible chat-completions server over HTTP.

    Args:
        model: The model name sent with every request.
        base_url: The API root, e.g. ``http://127.0.0.1:8000/v1``.
        api_key_env: Name of the environment variable holding the API key (sent as a bearer token).
        dialect: How to ask for structured output; see the module docstring.
        max_concurrency: Requests in flight at once.
        rpm: Requests per minute (``None``: no limit).
        tpm: Tokens per minute, prompt + completion (``None``: no limit).
        timeout: Seconds to wait for one answer before retrying.
        max_retries: Retries after the first attempt for 429, 5xx, timeouts and dropped connections.
        backoff_base: First backoff ceiling in seconds, doubled each retry (full jitter).
        backoff_max: Largest backoff ceiling in seconds.
        extra_body: Extra fields merged into every request body (e.g. ``{"top_k": 20}``).

    Example:
        >>> register_engine("vllm", backend="openai", model="Qwen/Qwen2.5-7B-Instruct",
        ...                 base_url="http://gpu-box:8000/v1", dialect="structured_outputs")  # doctest: +SKIP
    """

    backend: ClassVar[str] = "openai"
    max_batch_size = 1
    _uses_httpx: ClassVar[bool] = False
    supports_streaming = True

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str,
        api_key_env: str | None = None,
        dialect: str = "auto",
        max_concurrency: int = 16,
        rpm: float | None = None,
        tpm: float | None = None,
        timeout: float = 60.0,
        max_retries: int = 4,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        if not model:
            raise EngineConfigError("openai: 'model' is required (the model name the server expects).")
        if dialect not in DIALECTS:
            raise EngineConfigError(f"openai: dialect {dialect!r} is not one of {', '.join(DIALECTS)}.")
        if max_concurrency < 1 or max_retries < 0 or timeout <= 0:
            raise EngineConfigError(
                "openai: max_concurrency >= 1, max_retries >= 0 and timeout > 0 are required."
            )
        self.model = model
        root, _, query = base_url.partition("?")
        self._root = root.rstrip("/")
        self._query = f"?{query}" if query else ""
        self.base_url = self._root + self._query
        self.api_key_env = api_key_env
        self.dialect = dialect
        self.max_concurrency = max_concurrency
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.extra_body = dict(extra_body or {})
        self.limits = RateLimits(rpm, tpm)
        self.rpm, self.tpm = rpm, tpm
        self.stats: dict[str, int] = {"requests": 0, "retries": 0, "errors": 0}
        """HTTP attempts, retries and requests given up, for ``describe()``."""
        self._auto = 0  # index into _AUTO_ORDER while the dialect is not settled
        self._settled = dialect != "auto"
        self._secret: str | None = None
        self._client: httpx.AsyncClient | None = None
        """httpx, for the batch back-end's files and batches calls only (``_uses_httpx``)."""
        self._wire: HttpTransport | None = None
        self._slots = anyio.CapacityLimiter(max_concurrency)
        self._rng = random.Random()

    async def start(self) -> None:
        headers = {"content-type": "application/json"}
        if self.api_key_env:
            secret = os.environ.get(self.api_key_env)
            if not secret:
                raise EngineConfigError(
                    f"openai: the environment variable {self.api_key_env} (api_key_env) is not set or empty. "
                    f"Export it before running: export {self.api_key_env}=..."
                )
            self._secret = secret
            remember_secrets({"api_key": secret})
            headers["authorization"] = f"Bearer {secret}"
        verify = httpx.create_ssl_context()  # the CA bundle httpx trusts (certifi, SSL_CERT_FILE)
        self._wire = HttpTransport(
            headers, timeout=self.timeout, max_connections=self.max_concurrency, verify=verify
        )
        if self._uses_httpx:
            self._client = httpx.AsyncClient(
                headers=headers,
                timeout=httpx.Timeout(self.timeout, connect=min(self.timeout, 10.0)),
                limits=httpx.Limits(
                    max_connections=self.max_concurrency, max_keepalive_connections=self.max_concurrency
                ),
                verify=verify,
            )

    async def close(self) -> None:
        if self._wire is not None:
            await self._wire.close()
            self._wire = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        self._secret = None

    @property
    def current_dialect(self) -> str:
        """The dialect in use (in ``auto`` mode: the one being tried or the one that worked)."""
        return _AUTO_ORDER[self._auto] if self.dialect == "auto" else self.dialect

    async def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        if self._wire is None:
            raise EngineError("openai: generate() called before start() (or after close()).")
        out: list[Completion] = [Completion(text="", finish_reason="error")] * len(requests)

        async def one(i: int, request: ChatRequest) -> None:
            async with self._slots:
                out[i] = await self._complete(request)

        try:
            if len(requests) == 1:  # the usual call (a record's request): no task of its own
                await one(0, requests[0])
            else:
                async with anyio.create_task_group() as tg:
                    for i, request in enumerate(requests):
                        tg.start_soon(one, i, request)
        except Exception as exc:  # a bug or an unexpected library error: fail the batch, keep the cause
            raise EngineError(self._scrub(f"openai: {type(exc).__name__}: {exc}")) from exc
        return out

    async def _complete(self, request: ChatRequest) -> Completion:
        estimate = estimate_tokens(
            sum(len(m["content"]) for m in request.messages), request.sampling.max_tokens
        )
        attempt = 0
        reached = False  # did any attempt get to the server (else the request was never sent)
        while True:
            dialect = self.current_dialect
            await self.limits.acquire(estimate)
            if self.fatal_error is not None:  # the credentials were refused: sending again cannot help
                return Completion(text=self.fatal_error, finish_reason="error", attempts=attempt)
            attempt += 1
            self.stats["requests"] += 1
            problem, wait = await self._attempt(request, dialect, estimate, attempt)
            if isinstance(problem, Completion):
                return problem
            if problem is _NEXT_DIALECT:
                attempt -= 1  # trying another dialect is not a transport retry
                continue
            reached = reached or not isinstance(problem, _NotSent)
            if wait is None or attempt > self.max_retries:
                return self._give_up(problem, wait, attempt, sent=reached)
            self.stats["retries"] += 1
            await anyio.sleep(wait)

    async def stream(self, request: ChatRequest) -> AsyncGenerator[str | Completion, None]:
        """Content deltas as the server sends them, then the completion (see the module docstring)."""
        if self._wire is None:
            raise EngineError("openai: stream() called before start() (or after close()).")
        estimate = estimate_tokens(
            sum(len(m["content"]) for m in request.messages), request.sampling.max_tokens
        )
        borrower = object()  # the generator may be closed from another task than the one that opened it
        await self._slots.acquire_on_behalf_of(borrower)
        try:
            attempt = 0
            reached = False  # as in _complete
            while True:
                dialect = self.current_dialect
                await self.limits.acquire(estimate)
                if self.fatal_error is not None:
                    yield Completion(text=self.fatal_error, finish_reason="error", attempts=attempt)
                    return
                attempt += 1
                self.stats["requests"] += 1
                answer = StreamedAnswer(ollama=dialect == "ollama")
                problem: Any = None
                wait: float | None = None
                backoff = backoff_delay(attempt, base=self.backoff_base, cap=self.backoff_max, rng=self._rng)
                url, body = self._request(request, dialect)
                body["stream"] = True
                if dialect != "ollama":
                    body.setdefault("stream_options", {"include_usage": True})
                try:
                    async with self._wire.stream(url, orjson.dumps(body)) as response:
                        if response.status_code != 200:
                            await response.aread()
                            problem, wait = self._refused(response, dialect, attempt, backoff)
                        else:
                            self._settle_dialect(dialect)
                            # after [DONE] the rest is read (the server ends it), as openai-python does
                            async for line in response.aiter_lines():
                                delta = answer.feed(line)
                                if delta:
                                    yield delta
                            if not answer.complete:
                                problem, wait = "the stream ended before the answer did", backoff
                except TransportFailure as exc:  # timeouts included
                    problem, wait = self._transport_problem(exc), backoff
                except StreamError as exc:
                    problem, wait = f"the server ended the stream with an error: {exc}", backoff
                except (ValueError, KeyError, IndexError, TypeError) as exc:
                    problem = f"unreadable answer from the server ({type(exc).__name__}: {exc})"
                    wait = backoff
                if problem is None:
                    completion = answer.completion(attempt)
                    used = completion.prompt_tokens + completion.completion_tokens
                    self.limits.settle(estimate, used or estimate)  # some servers send no usage in streams
                    yield completion
                    return
                if isinstance(problem, Completion):
                    yield problem
                    return
                if problem is _NEXT_DIALECT:
                    attempt -= 1  # trying another dialect is not a transport retry
                    continue
                reached = reached or not isinstance(problem, _NotSent)
                if answer.parts:  # a retry would send the same deltas again: the stream ends here
                    streamed = sum(map(len, answer.parts))
                    yield self._give_up(problem, wait, attempt, f"{streamed} characters were streamed")
                    return
                if wait is None or attempt > self.max_retries:
                    yield self._give_up(problem, wait, attempt, sent=reached)
                    return
                self.stats["retries"] += 1
                await anyio.sleep(wait)
        finally:
            self._slots.release_on_behalf_of(borrower)

    async def _attempt(
        self, request: ChatRequest, dialect: str, estimate: float, attempt: int
    ) -> tuple[Any, float | None]:
        """One HTTP exchange: ``(Completion, None)``, ``(reason, seconds to wait or None if final)``."""
        assert self._wire is not None
        url, body = self._request(request, dialect)
        backoff = backoff_delay(attempt, base=self.backoff_base, cap=self.backoff_max, rng=self._rng)
        try:
            response = await self._wire.post(url, orjson.dumps(body))
        except TransportFailure as exc:  # timeouts included
            return self._transport_problem(exc), backoff
        status = response.status_code
        if status == 200:
            self._settle_dialect(dialect)
            try:
                completion = (
                    parse_ollama_reply(response) if dialect == "ollama" else parse_chat_reply(response)
                )
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                return f"unreadable answer from the server ({type(exc).__name__}: {exc})", backoff
            self.limits.settle(estimate, completion.prompt_tokens + completion.completion_tokens)
            completion.attempts = attempt
            return completion, None
        return self._refused(response, dialect, attempt, backoff)

    def _transport_problem(self, exc: TransportFailure | httpx.TransportError) -> str:
        if isinstance(exc, TransportFailure):
            name, timed_out = exc.name, exc.timed_out
        else:
            name, timed_out = type(exc).__name__, isinstance(exc, httpx.TimeoutException)
        if name in _NEVER_SENT:
            return _NotSent(f"connection failed ({name}: {exc}) to {self.public_url}")
        if timed_out:
            return f"timed out after {self.timeout:g} s ({name})"
        return f"connection failed ({name}: {exc}) to {self.public_url}"

    def _give_up(
        self, problem: Any, wait: float | None, attempt: int, streamed: str = "", *, sent: bool = True
    ) -> Completion:
        """The error completion of a request that is not sent again (``streamed``: what went out
        first). ``sent`` False: no attempt reached the server (connection refused, no such host),
        so ``attempts`` is 0 and the run counts the request as failed to send, not sent."""
        self.stats["errors"] += 1
        if streamed:
            tries = f"after {streamed} (not retried)"
        else:
            tries = f"after {attempt} attempt(s)" if wait is not None else "(not retried)"
        return Completion(
            text=self._scrub(f"{problem} {tries}"), finish_reason="error", attempts=attempt if sent else 0
        )

    def _refused(
        self, response: Reply | httpx.Response, dialect: str, attempt: int, backoff: float
    ) -> tuple[Any, float | None]:
        """A non-200 answer (its body read): ``(Completion or _NEXT_DIALECT, None)`` or ``(reason, wait)``."""
        status = response.status_code
        detail = error_text(response)
        if status in _AUTH_STATUS:
            self._stop(status, detail)
            assert self.fatal_error is not None
            return Completion(text=self.fatal_error, finish_reason="error", attempts=attempt), None
        if self._dialect_refused(dialect, status, detail):
            return _NEXT_DIALECT, None
        problem = f"HTTP {status} from {self.public_url}: {detail}"
        if status in (429, 503):
            retry_after = parse_retry_after(response.headers)
            if retry_after is not None:
                self.limits.cool_down(retry_after)
                return problem, 0.0  # the cool-down holds every request, this one included
        if status in _RETRY_STATUS or status >= 500:
            return problem, backoff
        return problem, None  # other 4xx: the request itself is wrong, retrying will not help

    def _stop(self, status: int, detail: str) -> None:
        """The server refused the credentials: say why once, and send nothing more."""
        if self.fatal_error is not None:
            return
        self.stats["errors"] += 1
        if self.api_key_env:
            hint = f"check the API key in ${self.api_key_env} (api_key_env)"
        elif "@" in self._root.partition("://")[2].partition("/")[0]:
            hint = "check the user and password in base_url"
        else:
            hint = "no API key was sent: put it in an environment variable and pass its name as api_key_env"
        self.fatal_error = self._scrub(
            f"authentication failed (HTTP {status}) for engine {self.name or self.model!r}: {hint}. "
            f"The server ({self.public_url}) said: {detail}. Nothing more is sent to this engine in this run."
        )

    def _settle_dialect(self, dialect: str) -> None:
        if not self._settled and dialect == self.current_dialect:
            self._settled = True

    def _dialect_refused(self, dialect: str, status: int, detail: str) -> bool:
        """In auto mode, does this error say the server does not understand the structured-output field?"""
        if self._settled or status not in _DIALECT_STATUS or dialect == "none":
            return False
        if not any(word in detail.lower() for word in _DIALECT_WORDS):
            return False
        if dialect == self.current_dialect:  # several requests may fail at once: advance only once
            self._auto += 1
        return True

    def _request(self, request: ChatRequest, dialect: str) -> tuple[str, dict[str, Any]]:
        sampling = request.sampling
        schema = request.json_schema
        if dialect == "ollama":
            options: dict[str, Any] = {"temperature": sampling.temperature, "top_p": sampling.top_p}
            options.update(num_predict=sampling.max_tokens, seed=sampling.seed)
            if sampling.stop:
                options["stop"] = list(sampling.stop)
            body: dict[str, Any] = {"model": self.model, "messages": list(request.messages), "stream": False}
            body["options"] = options
            if schema is not None:
                body["format"] = schema
            return f"{self._root.removesuffix('/v1')}/api/chat{self._query}", {**body, **self.extra_body}
        body = chat_body(self.model, request, dialect)
        return f"{self._root}/chat/completions{self._query}", {**body, **self.extra_body}

    @property
    def public_url(self) -> str:
        """``base_url`` as it may be shown: password and secret query parameters masked."""
        return scrub_text(self.base_url)

    def _scrub(self, text: str) -> str:
        text = text.replace(self._secret, "***") if self._secret else text
        return scrub_text(text)

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "model": self.model,
            "base_url": self.public_url,
            "dialect": self.current_dialect if self._settled or self.dialect != "auto" else "auto",
            "max_concurrency": self.max_concurrency,
            "rpm": self.rpm,
            "tpm": self.tpm,
            **{f"http_{k}": v for k, v in self.stats.items()},
        }


_NEXT_DIALECT = object()

_NEVER_SENT = frozenset({"ConnectError", "ConnectTimeout", "PoolTimeout", "UnsupportedProtocol"})
"""Names of the transport failures raised before the request left: no server received it."""


class _NotSent(str):
    """The reason of an attempt that never reached the server (see :data:`_NEVER_SENT`)."""
