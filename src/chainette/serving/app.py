"""A served chain over HTTP: an ASGI app (Starlette) around one :class:`ChainService`.

Routes (the service starts with the app, engines warm, and closes with it):

- ``GET /``: a small page to type an input and watch the steps and tokens arrive.
- ``GET /health``: ``{"status": "ok", "chain", "open_traces"}`` (never needs the token).
- ``GET /schema``: the chain's input and output JSON schemas, and ``examples`` (inputs the page
  offers: ``create_app(examples=...)`` first, then the input model's own schema examples).
- ``GET /graph``: the chain's graph before any run (``graph.json``'s ``nodes`` and ``edges``, and
  ``tree``: each item with its ``children``, for the page to draw branches and routes nested).
- ``POST /runs``: the body is one input record (JSON); the answer is a Server-Sent Events stream
  of the trace's events (``event: <kind>``, ``data: <json>``), ending with ``output``,
  ``filtered``, ``failed`` or ``cancelled``; a streamed answer comes as ``chunk`` events with
  the new text only (``seq``, ``delta``, ``final`` on the piece that ends it; an ``apply`` calling
  ``emit_chunk`` sends the same). ``?trace_id=`` names the trace (1 to 128 of
  ``A-Z a-z 0-9 . _ : -``; default: new, sent in the ``X-Trace-Id`` header), ``?deadline_s=``
  bounds it. 415 unless ``Content-Type: application/json``; 400 when the body is not JSON or is
  nested deeper than 64 levels; 422 with the field errors when it does not fit the input model
  (or the trace id or deadline is not allowed); 413 when it is over ``max_body_bytes``; 503 when
  full. A client that goes away cancels its trace.
- ``POST /runs/{trace_id}/cancel``: 200 ``{"cancelled": true}``, or 404.
- ``WS /ws``: send ``{"input": {...}, "trace_id"?, "deadline_s"?}`` to start a trace, or
  ``{"cancel": "<trace id>"}``; every event of the connection's traces comes back as JSON, a bad
  message an ``error`` frame of one shape: ``{"kind": "error", "trace_id", "status", "error",
"message"}`` (``trace_id`` the one it named, else null; ``error`` the same code as the HTTP
answer's: ``invalid_input`` also has ``errors``, each field's ``field``, ``loc``, ``message``). A closed
  connection cancels its traces and drops what it sent that was not read yet.

Every request must come by this server's own address (``Host``: localhost, 127.0.0.1, [::1] or
the address it listens on; more with ``allowed_hosts``) and, from a browser, from its own page or
an origin in ``allowed_origins`` (``Origin``); otherwise 403 (see ``serving/checks.py``).

With ``token_env`` set, every route but ``/`` and ``/health`` needs ``Authorization: Bearer
<token>`` (a WebSocket may pass ``?token=`` instead: browsers cannot set its headers); the token
is read from that environment variable and is never logged or echoed: a filter on uvicorn's and
Chainette's loggers replaces it (and any ``token=`` query value) by ``[redacted]``.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, aclosing, asynccontextmanager
from importlib import resources
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError

from .._errors import ChainetteError, InputError, MissingDependencyError, ServiceError, ServiceFullError
from ..graph.chain import ChainGraph
from ..runtime.records import coerce, input_mismatch, type_label
from ..runtime.service import ChainService, TraceEvent, TraceHandle
from ..runtime.traces import check_deadline, check_trace_id
from .checks import LocalGuard, load_json, printable, redact_logs
from .page_data import check_examples, outline, schema_examples
from .ws import SocketSession

__all__ = ["DEFAULT_MAX_BODY", "create_app"]

DEFAULT_MAX_BODY = 1 << 20
"""Bytes a submission may have (1 MiB)."""

log = logging.getLogger("chainette.serving")


def create_app(
    chain: ChainGraph,
    *,
    token_env: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    allowed_origins: Sequence[str] = (),
    allowed_hosts: Sequence[str] = (),
    examples: Sequence[Any] = (),
    **service_options: Any,
) -> Any:
    """The ASGI app serving ``chain``; ``service_options`` go to :class:`ChainService`.

    ``allowed_origins``: web origins (``https://app.example``) whose pages may call it (CORS
    answers included); ``allowed_hosts``: names it may be reached by beyond localhost and the
    address it listens on. Both take ``"*"`` for any. ``examples``: inputs (dicts or input-model
    instances) the page offers to fill its form with, checked against the input model here.

    Raises:
        MissingDependencyError: Starlette is not installed (``pip install 'chainette[serve]'``).
        ServiceError: ``token_env`` names an environment variable that is not set.
        InputError: an example does not fit the chain's input model.
    """
    try:
        from starlette.applications import Starlette
        from starlette.middleware import Middleware
        from starlette.middleware.cors import CORSMiddleware
        from starlette.requests import Request
        from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
        from starlette.routing import Route, WebSocketRoute
        from starlette.websockets import WebSocket
    except ImportError as exc:  # pragma: no cover - the extra is part of dev installs
        raise MissingDependencyError(
            "Serving needs Starlette and uvicorn: pip install 'chainette[serve]'."
        ) from exc

    token = _read_token(token_env)
    redact_logs(token)
    offered = check_examples(chain, examples) + schema_examples(chain.input_model)
    graph = outline(chain)
    holder: dict[str, ChainService] = {}

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        redact_logs(token)  # again: the server configured its loggers after create_app
        async with AsyncExitStack() as stack:
            try:
                holder["service"] = await stack.enter_async_context(ChainService(chain, **service_options))
            except ChainetteError as exc:  # a folder it cannot write, an engine that cannot start
                app.state.startup_error = exc  # `chainette serve` prints it as one line
                raise
            yield
        holder.clear()

    def service() -> ChainService:
        return holder["service"]

    def authorized(headers: Any, query: Any = None) -> bool:
        if token is None:
            return True
        given = ""
        header = headers.get("authorization", "")
        if header.lower().startswith("bearer "):
            given = header[7:].strip()
        elif query is not None:
            given = query.get("token", "")
        return hmac.compare_digest(given.encode(), token.encode())

    def refused() -> Response:
        return JSONResponse(
            {
                "error": "unauthorized",
                "message": f"Send the token from ${token_env} as 'Authorization: Bearer ...'.",
            },
            status_code=401,
            headers={"WWW-Authenticate": "Bearer"},
        )

    async def page(request: Request) -> Response:
        html = resources.files("chainette.serving").joinpath("page.html").read_text(encoding="utf-8")
        return HTMLResponse(html.replace("__CHAIN_NAME__", _html_escape(chain.name)))

    async def health(request: Request) -> Response:
        svc = holder.get("service")
        return JSONResponse(
            {
                "status": "ok" if svc else "starting",
                "chain": chain.name,
                "open_traces": svc.open_traces if svc else 0,
            }
        )

    async def schema(request: Request) -> Response:
        if not authorized(request.headers):
            return refused()
        return JSONResponse(
            {
                "chain": chain.name,
                "input": _schema(chain.input_type),  # a union: anyOf (oneOf with a discriminator)
                "output": _schema(chain.items[-1].output_model),
                "examples": offered,
                "token_required": token is not None,
            }
        )

    async def graph_route(request: Request) -> Response:
        if not authorized(request.headers):
            return refused()
        return JSONResponse(graph)

    def bad(status: int, error: str, message: str) -> Response:
        return JSONResponse({"error": error, "message": message}, status_code=status)

    async def runs(request: Request) -> Response:
        if not authorized(request.headers):
            return refused()
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            return bad(
                415, "unsupported_media_type", "Send the input as JSON: Content-Type: application/json."
            )
        query = request.query_params
        try:
            trace_id = check_trace_id(query["trace_id"]) if query.get("trace_id") else None
            deadline = check_deadline(_number(query["deadline_s"])) if "deadline_s" in query else None
        except InputError as exc:
            return bad(422, "invalid_query", str(exc))
        body = await _read_body(request, max_body_bytes)
        if body is None:
            return bad(413, "too_large", f"The body is over {max_body_bytes} bytes.")
        try:
            value = load_json(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return bad(400, "invalid_json", f"The body is not usable JSON: {exc}")
        problem = _validate(chain, value)
        if problem is not None:
            return JSONResponse(problem, status_code=422)
        try:
            handle = await service().submit(value, trace_id=trace_id, deadline_s=deadline)
        except ServiceFullError as exc:
            return JSONResponse(
                {"error": "full", "message": str(exc)}, status_code=503, headers={"Retry-After": "1"}
            )
        except InputError as exc:
            return bad(422, "invalid_input", str(exc))
        except ServiceError as exc:
            return bad(409, "refused", str(exc))
        return StreamingResponse(
            _sse(handle),
            media_type="text/event-stream",
            headers={"X-Trace-Id": handle.trace_id, "Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def cancel(request: Request) -> Response:
        if not authorized(request.headers):
            return refused()
        trace_id = request.path_params["trace_id"]
        if service().cancel(trace_id, "cancelled by request"):
            return JSONResponse({"cancelled": True, "trace_id": trace_id})
        return JSONResponse(
            {"cancelled": False, "trace_id": trace_id, "message": "No open trace has this id."},
            status_code=404,
        )

    async def websocket(ws: WebSocket) -> None:
        if not authorized(ws.headers, ws.query_params):
            await ws.close(code=4401, reason="unauthorized")
            return
        await ws.accept()
        await SocketSession(ws, service(), lambda value: _validate(chain, value), max_body_bytes).run()

    def guarded(
        endpoint: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def call(request: Request) -> Response:
            response = await endpoint(request)
            # no query (no token), the path escaped (a %0a in it cannot start a forged line)
            log.info("%s %s %s", request.method, printable(request.url.path), response.status_code)
            return response

        return call

    middleware = [Middleware(LocalGuard, allowed_origins=allowed_origins, allowed_hosts=allowed_hosts)]
    if allowed_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(allowed_origins),
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "Content-Type"],
                expose_headers=["X-Trace-Id"],
            )
        )
    return Starlette(
        middleware=middleware,
        routes=[
            Route("/", guarded(page)),
            Route("/health", guarded(health)),
            Route("/schema", guarded(schema)),
            Route("/graph", guarded(graph_route)),
            Route("/runs", guarded(runs), methods=["POST"]),
            Route("/runs/{trace_id}/cancel", guarded(cancel), methods=["POST"]),
            WebSocketRoute("/ws", websocket),
        ],
        lifespan=lifespan,
    )


async def _sse(handle: TraceHandle) -> AsyncIterator[str]:
    """The trace's events as Server-Sent Events; the client going away cancels the trace."""
    try:
        async with aclosing(handle.events()) as events:
            async for event in events:
                yield _sse_event(event)
    finally:
        if not handle.done.is_set():
            handle.cancel("the client went away")


def _number(text: str) -> object:
    """``text`` as a float when it reads as one (checked for range by the service), else as is."""
    try:
        return float(text)
    except ValueError:
        return text


def _sse_event(event: TraceEvent) -> str:
    return f"event: {event.kind}\ndata: {json.dumps(event.as_dict())}\n\n"


async def _read_body(request: Any, limit: int) -> bytes | None:
    """The body, or None once it is over ``limit`` bytes (read no further)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return None
    body = bytearray()
    async for part in request.stream():
        body.extend(part)
        if len(body) > limit:
            return None
    return bytes(body)


def _validate(chain: ChainGraph, value: Any) -> dict[str, Any] | None:
    """None if ``value`` fits the chain's input model, else the 422 body naming each field."""
    model = chain.input_type  # a model, a union of models (validated into its variant), or None
    if model is None:  # the first node takes any value
        return None
    try:
        coerce(model, value)
    except ValidationError as exc:
        return {
            "error": "invalid_input",
            "message": f"The body does not fit {type_label(model)}: {input_mismatch(model, exc)}",
            "errors": [
                {
                    "field": ".".join(str(p) for p in e["loc"]),
                    "loc": list(e["loc"]),
                    "message": e["msg"],
                    "type": e["type"],
                }
                for e in exc.errors(include_url=False)
            ],
        }
    return None


def _schema(model: Any) -> dict[str, Any] | None:
    if model is None:
        return None
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model.model_json_schema()
    try:
        schema: dict[str, Any] = TypeAdapter(model).json_schema()
        return schema
    except Exception:  # an output that has no schema (a dict from a Python node)
        return None


def _read_token(env: str | None) -> str | None:
    if env is None:
        return None
    value = os.environ.get(env)
    if not value:
        raise ServiceError(
            f"--token-env {env}: the environment variable {env} is not set (or empty); set it to the "
            "token clients must send, or serve without --token-env."
        )
    return value


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
