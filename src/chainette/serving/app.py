"""A served chain over HTTP: an ASGI app (Starlette) around one :class:`ChainService`.

Routes (the service starts with the app, engines warm, and closes with it):

- ``GET /``: a small page to type an input and watch the steps and tokens arrive.
- ``GET /health``: ``{"status": "ok", "chain", "open_traces"}`` (never needs the token).
- ``GET /schema``: the chain's input and output JSON schemas.
- ``POST /runs``: the body is one input record (JSON); the answer is a Server-Sent Events stream
  of the trace's events (``event: <kind>``, ``data: <json>``), ending with ``output``,
  ``filtered``, ``failed`` or ``cancelled``. ``?trace_id=`` names the trace (default: new, sent
  in the ``X-Trace-Id`` header), ``?deadline_s=`` bounds it. 422 with the field errors when the
  body does not fit the input model; 413 when it is over ``max_body_bytes``; 503 when full.
  A client that goes away cancels its trace.
- ``POST /runs/{trace_id}/cancel``: 200 ``{"cancelled": true}``, or 404.
- ``WS /ws``: send ``{"input": {...}, "trace_id"?, "deadline_s"?}`` to start a trace, or
  ``{"cancel": "<trace id>"}``; every event of the connection's traces comes back as JSON. A
  closed connection cancels its traces.

With ``token_env`` set, every route but ``/`` and ``/health`` needs ``Authorization: Bearer
<token>`` (a WebSocket may pass ``?token=`` instead: browsers cannot set its headers); the token
is read from that environment variable and is never logged or echoed.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any

import anyio
from pydantic import BaseModel, TypeAdapter, ValidationError

from .._errors import InputError, MissingDependencyError, ServiceError, ServiceFullError
from ..graph.chain import ChainGraph
from ..runtime.records import describe_validation
from ..runtime.service import ChainService, TraceEvent, TraceHandle

__all__ = ["DEFAULT_MAX_BODY", "create_app"]

DEFAULT_MAX_BODY = 1 << 20
"""Bytes a submission may have (1 MiB)."""

log = logging.getLogger("chainette.serving")


def create_app(
    chain: ChainGraph,
    *,
    token_env: str | None = None,
    max_body_bytes: int = DEFAULT_MAX_BODY,
    **service_options: Any,
) -> Any:
    """The ASGI app serving ``chain``; ``service_options`` go to :class:`ChainService`.

    Raises:
        MissingDependencyError: Starlette is not installed (``pip install 'chainette[serve]'``).
        ServiceError: ``token_env`` names an environment variable that is not set.
    """
    try:
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
        from starlette.routing import Route, WebSocketRoute
        from starlette.websockets import WebSocket, WebSocketDisconnect
    except ImportError as exc:  # pragma: no cover - the extra is part of dev installs
        raise MissingDependencyError(
            "Serving needs Starlette and uvicorn: pip install 'chainette[serve]'."
        ) from exc

    token = _read_token(token_env)
    holder: dict[str, ChainService] = {}

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        async with ChainService(chain, **service_options) as service:
            holder["service"] = service
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
                "input": _schema(chain.input_model),
                "output": _schema(chain.items[-1].output_model),
                "token_required": token is not None,
            }
        )

    async def runs(request: Request) -> Response:
        if not authorized(request.headers):
            return refused()
        body = await _read_body(request, max_body_bytes)
        if body is None:
            return JSONResponse(
                {"error": "too_large", "message": f"The body is over {max_body_bytes} bytes."},
                status_code=413,
            )
        try:
            value = json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            return JSONResponse(
                {"error": "invalid_json", "message": f"The body is not JSON: {exc}"}, status_code=400
            )
        problem = _validate(chain, value)
        if problem is not None:
            return JSONResponse(problem, status_code=422)
        try:
            deadline = (
                float(request.query_params["deadline_s"]) if "deadline_s" in request.query_params else None
            )
            handle = await service().submit(
                value, trace_id=request.query_params.get("trace_id") or None, deadline_s=deadline
            )
        except ValueError:
            return JSONResponse(
                {"error": "bad_request", "message": "deadline_s must be a number."}, status_code=400
            )
        except ServiceFullError as exc:
            return JSONResponse(
                {"error": "full", "message": str(exc)}, status_code=503, headers={"Retry-After": "1"}
            )
        except (InputError, ServiceError) as exc:
            return JSONResponse({"error": "refused", "message": str(exc)}, status_code=409)
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
        mine: dict[str, TraceHandle] = {}
        send_lock = anyio.Lock()

        async def send(data: dict[str, Any]) -> None:
            async with send_lock:
                await ws.send_text(json.dumps(data))

        async def forward(handle: TraceHandle) -> None:
            async for event in handle.events():
                await send(event.as_dict())
            mine.pop(handle.trace_id, None)

        try:
            async with anyio.create_task_group() as tg:
                while True:
                    try:
                        message = json.loads(await ws.receive_text())
                    except (ValueError, TypeError):
                        await send(
                            {"kind": "error", "message": 'Send JSON: {"input": {...}} or {"cancel": id}.'}
                        )
                        continue
                    if not isinstance(message, dict):
                        await send({"kind": "error", "message": "Send a JSON object."})
                    elif "cancel" in message:
                        ok = service().cancel(str(message["cancel"]), "cancelled by request")
                        await send({"kind": "cancel", "trace_id": message["cancel"], "cancelled": ok})
                    elif "input" in message:
                        problem = _validate(chain, message["input"])
                        if problem is not None:
                            await send({"kind": "error", "status": 422, **problem})
                            continue
                        try:
                            handle = await service().submit(
                                message["input"],
                                trace_id=message.get("trace_id"),
                                deadline_s=message.get("deadline_s"),
                            )
                        except (InputError, ServiceError) as exc:
                            await send({"kind": "error", "message": str(exc)})
                            continue
                        mine[handle.trace_id] = handle
                        tg.start_soon(forward, handle)
                    else:
                        await send({"kind": "error", "message": "Unknown message: send 'input' or 'cancel'."})
        except WebSocketDisconnect:
            pass
        finally:
            for handle in mine.values():
                handle.cancel("the client went away")

    def guarded(
        endpoint: Callable[[Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        async def call(request: Request) -> Response:
            response = await endpoint(request)
            log.info("%s %s %s", request.method, request.url.path, response.status_code)  # no query: no token
            return response

        return call

    return Starlette(
        routes=[
            Route("/", guarded(page)),
            Route("/health", guarded(health)),
            Route("/schema", guarded(schema)),
            Route("/runs", guarded(runs), methods=["POST"]),
            Route("/runs/{trace_id}/cancel", guarded(cancel), methods=["POST"]),
            WebSocketRoute("/ws", websocket),
        ],
        lifespan=lifespan,
    )


async def _sse(handle: TraceHandle) -> AsyncIterator[str]:
    """The trace's events as Server-Sent Events; the client going away cancels the trace."""
    try:
        async for event in handle.events():
            yield _sse_event(event)
    finally:
        if not handle.done.is_set():
            handle.cancel("the client went away")


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
    model = chain.input_model
    if model is None:  # the first node takes any value
        return None
    try:
        model.model_validate(value)
    except ValidationError as exc:
        return {
            "error": "invalid_input",
            "message": f"The body does not fit {getattr(model, '__name__', 'the input model')}: {describe_validation(exc)}",
            "errors": [
                {"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"], "type": e["type"]}
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
