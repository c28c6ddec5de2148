"""One WebSocket connection of the served app: its messages in, its traces' events out.

A reader task takes the client's frames as they come (up to :data:`READ_AHEAD` ahead of the
submissions), so a close behind a backlog is seen at once: the backlog is dropped and the
connection's traces are cancelled, nothing is submitted for nobody. A bad frame (binary, not
JSON, nested too deep, too large, not an object, an input that does not fit) gets an error frame
of one shape, ``{"kind": "error", "trace_id", "status", "error", "message"}`` (``trace_id`` the
one it named, else null; ``error`` the HTTP answer's code; ``errors`` too for ``invalid_input``),
and the connection stays open. A close is quiet.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from contextlib import aclosing
from typing import Any

import anyio
from anyio.abc import TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._errors import InputError, ServiceError, ServiceFullError
from ..runtime.service import ChainService, TraceHandle
from .checks import load_json

__all__ = ["READ_AHEAD", "SocketSession"]

READ_AHEAD = 1024
"""Frames read ahead of the submissions; past it the client waits (TCP backpressure)."""

log = logging.getLogger("chainette.serving")


class SocketSession:
    """The traces of one accepted WebSocket ``ws``.

    Args:
        ws: A Starlette WebSocket, accepted.
        service: The running service.
        validate: ``validate(value)``: None if it fits the chain's input, else the 422 body.
        max_bytes: The largest frame taken.
    """

    def __init__(
        self,
        ws: Any,
        service: ChainService,
        validate: Callable[[Any], dict[str, Any] | None],
        max_bytes: int,
    ) -> None:
        self.ws = ws
        self.service = service
        self.validate = validate
        self.max_bytes = max_bytes
        self.mine: dict[str, TraceHandle] = {}
        self.gone = False
        self._lock = anyio.Lock()
        self._tg: TaskGroup | None = None

    async def run(self) -> None:
        """Serve the connection until the client leaves; its open traces are then cancelled."""
        frames_in, frames_out = anyio.create_memory_object_stream[dict[str, Any]](READ_AHEAD)
        try:
            async with anyio.create_task_group() as tg:
                self._tg = tg
                tg.start_soon(self._read, frames_in)
                await self._handle_all(frames_out)
                tg.cancel_scope.cancel()  # the client left: nothing more to forward
        finally:
            for handle in list(self.mine.values()):
                handle.cancel("the client went away")

    async def _read(self, frames: MemoryObjectSendStream[dict[str, Any]]) -> None:
        async with frames:
            while True:
                message = await self.ws.receive()
                if message["type"] == "websocket.disconnect":
                    self._leave()
                    return
                await frames.send(message)

    async def _handle_all(self, frames: MemoryObjectReceiveStream[dict[str, Any]]) -> None:
        async with frames:
            async for message in frames:
                await self._handle(message)
                await anyio.lowlevel.checkpoint()

    def _leave(self) -> None:
        """The client is gone: drop what it sent and stop its traces' forwarding."""
        self.gone = True
        if self._tg is not None:
            self._tg.cancel_scope.cancel()

    async def send(self, data: dict[str, Any]) -> None:
        if self.gone:
            return
        text = json.dumps(data)
        try:
            async with self._lock:
                await self.ws.send_text(text)
        except Exception as exc:  # the connection closed under us (the reader sees it too)
            log.debug("WebSocket send failed: %s", type(exc).__name__)
            self._leave()

    async def _error(self, status: int, error: str, message: str, trace_id: Any = None, **more: Any) -> None:
        """An error frame: always ``kind``, ``trace_id`` (null when none was named), ``status``,
        ``error`` and ``message``, so a client tells its submissions' errors apart."""
        named = trace_id if isinstance(trace_id, str) else None
        await self.send(
            {"kind": "error", "trace_id": named, "status": status, "error": error, "message": message, **more}
        )

    async def _handle(self, frame: dict[str, Any]) -> None:
        text = frame.get("text")
        if text is None:
            await self._error(
                400, "invalid_frame", 'Send text frames of JSON: {"input": {...}} or {"cancel": id}.'
            )
            return
        if len(text) > self.max_bytes or len(text.encode()) > self.max_bytes:
            await self._error(413, "too_large", f"The message is over {self.max_bytes} bytes.")
            return
        try:
            message = load_json(text)
        except ValueError as exc:
            await self._error(
                400,
                "invalid_json",
                f'The message is not usable JSON ({exc}): send {{"input": {{...}}}} or {{"cancel": id}}.',
            )
            return
        if not isinstance(message, dict):
            await self._error(400, "invalid_message", "Send a JSON object.")
        elif "cancel" in message:
            target = message["cancel"]
            ok = isinstance(target, str) and self.service.cancel(target, "cancelled by request")
            await self.send({"kind": "cancel", "trace_id": target, "cancelled": ok})
        elif "input" in message:
            await self._submit(message)
        else:
            await self._error(
                400, "invalid_message", "Unknown message: send 'input' or 'cancel'.", message.get("trace_id")
            )

    async def _submit(self, message: dict[str, Any]) -> None:
        named = message.get("trace_id")
        problem = self.validate(message["input"])
        if problem is not None:
            code, text = problem.pop("error"), problem.pop("message")
            await self._error(422, code, text, named, **problem)
            return
        try:
            handle = await self.service.submit(
                message["input"], trace_id=named, deadline_s=message.get("deadline_s")
            )
        except InputError as exc:
            await self._error(422, "invalid_input", str(exc), named)
            return
        except ServiceFullError as exc:
            await self._error(503, "full", str(exc), named)
            return
        except ServiceError as exc:
            await self._error(409, "refused", str(exc), named)
            return
        self.mine[handle.trace_id] = handle
        assert self._tg is not None
        self._tg.start_soon(self._forward, handle)

    async def _forward(self, handle: TraceHandle) -> None:
        async with aclosing(handle.events()) as events:
            async for event in events:
                await self.send(event.as_dict())
        self.mine.pop(handle.trace_id, None)  # ended; a forward cut short leaves it for run() to cancel
