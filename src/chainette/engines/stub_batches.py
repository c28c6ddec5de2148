"""The stub server's files and batches endpoints (OpenAI's batch API), with fault injection.

:class:`~chainette.engines.stub_server.StubServer` hands every ``/files`` and ``/batches``
request to its :class:`BatchStub` (``server.batches``):

- ``POST /files`` (multipart: ``purpose``, ``file``), ``GET /files/{id}``, ``GET /files/{id}/content``;
- ``POST /batches``, ``GET /batches/{id}``, ``GET /batches``, ``POST /batches/{id}/cancel``.

A batch is ``validating`` when created, ``in_progress`` from its first poll, and ends at the
poll that comes once ``polls`` polls and ``delay`` seconds have passed (never while ``hold`` is
set, nor while its id is in ``held``; ``hold_new`` puts each batch created meanwhile there). Then each line is answered as ``POST /chat/completions`` would be (the stub's
schema-valid answer, or the ``upstream`` server's), except the lines that :class:`BatchFaults`
makes fail (HTTP 500 in the error file) or expire (``batch_expired`` in the error file, and the
batch ends ``expired``); ``fail_batch`` fails the whole batch. ``stats`` counts files, batches
created, lines received, polls, downloads; ``lines`` keeps every line received.
"""

from __future__ import annotations

import itertools
import json
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .stub_http import _raw, _response

Answerer = Callable[[dict[str, Any]], Awaitable[tuple[int, Any]]]
"""Answers one chat request body: ``(HTTP status, response body)``."""

__all__ = ["BatchFaults", "BatchStub"]


@dataclass
class BatchFaults:
    """What goes wrong in the stub's batches. Rates (0..1) are drawn per line from an RNG seeded by ``seed`` and the batch id."""

    expire_rate: float = 0.0
    """Lines not run before the window ended: ``batch_expired`` in the error file (the batch ends ``expired``)."""
    fail_rate: float = 0.0
    """Lines answered with HTTP 500 in the error file (the batch still ends ``completed``)."""
    fail_batch: str | None = None
    """Fail every batch with this message (``errors.data``, no output file)."""
    create_status: list[int] = field(default_factory=list)
    """Statuses answered to the next ``POST /batches`` calls, one each (e.g. ``[429, 500]``), before it works."""
    retry_after: str | None = None
    """``Retry-After`` sent with each injected 429 or 503."""
    poll_status: list[int] = field(default_factory=list)
    """Statuses answered to the next ``GET /batches/{id}`` calls, one each, before polls work again."""
    lose_create: int = 0
    """The next ``POST /batches`` calls that create their batch, then drop the connection unanswered."""
    malformed_lines: int = 0
    """Output lines replaced by text that is not JSON (the first ones of each batch)."""
    seed: int = 0


class BatchStub:
    """State and handlers of the batch endpoints, for one :class:`~.stub_server.StubServer`."""

    def __init__(
        self, answer: Answerer, faults: BatchFaults | None = None, *, polls: int = 1, delay: float = 0.0
    ) -> None:
        self.answer = answer
        """How each line is answered (the server's ``/chat/completions`` logic)."""
        self.faults = faults or BatchFaults()
        self.polls = polls
        """Polls a batch needs before it ends (at the next one after these)."""
        self.delay = delay
        """Seconds after creation before a batch may end."""
        self.hold = False
        """While True no batch ends (a test kills or cancels the client meanwhile)."""
        self.held: set[str] = set()
        """Ids of the batches that do not end while listed here (one batch held, another ending)."""
        self.hold_new = False
        """While True each batch created is added to ``held``."""
        self.stats: Counter[str] = Counter()
        """``files``, ``batches_created``, ``lines``, ``polls``, ``downloads``, ``cancels``, ``create_refused``."""
        self.create_times: list[float] = []
        """``time.monotonic()`` of every ``POST /batches`` received."""
        self.lines: list[dict[str, Any]] = []
        """Every request line received, in order (their ``body`` is the chat request)."""
        self.files: dict[str, tuple[str, bytes]] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self._polled: Counter[str] = Counter()
        self._ids = itertools.count(1)

    async def handle(self, method: str, route: str, headers: dict[str, str], body: bytes) -> bytes | None:
        """The answer to one request (``None``: drop the connection)."""
        parts = [p for p in route.split("/") if p][1:]  # after the API root (v1)
        if parts[:1] == ["files"]:
            if method == "POST" and len(parts) == 1:
                return _response(200, self._upload(headers, body))
            if method == "GET" and len(parts) >= 2 and parts[1] in self.files:
                purpose, content = self.files[parts[1]]
                if parts[2:] == ["content"]:
                    self.stats["downloads"] += 1
                    return _raw(200, content)
                return _response(200, self._file(parts[1], purpose, content))
        elif parts[:1] == ["batches"]:
            if method == "POST" and len(parts) == 1:
                return self._create(body)
            if method == "GET" and len(parts) == 1:
                return _response(200, {"object": "list", "data": list(self.batches.values())})
            if len(parts) >= 2 and parts[1] in self.batches:
                batch = self.batches[parts[1]]
                if method == "GET" and len(parts) == 2:
                    if self.faults.poll_status:
                        status = self.faults.poll_status.pop(0)
                        return _response(
                            status, {"error": {"message": f"injected HTTP {status} on batch poll"}}
                        )
                    return _response(200, await self._poll(batch))
                if method == "POST" and parts[2:] == ["cancel"]:
                    self.stats["cancels"] += 1
                    if batch["status"] not in ("completed", "failed", "expired", "cancelled"):
                        batch["status"] = "cancelling"
                    return _response(200, batch)
        return _response(404, {"error": {"message": f"no such object or route: {method} {route}"}})

    def _upload(self, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        fields = _multipart(headers.get("content-type", ""), body)
        file_id = f"file-{next(self._ids)}"
        content = fields.get("file", b"")
        self.files[file_id] = (fields.get("purpose", b"").decode(), content)
        self.stats["files"] += 1
        return self._file(file_id, self.files[file_id][0], content)

    def _file(self, file_id: str, purpose: str, content: bytes) -> dict[str, Any]:
        return {"id": file_id, "object": "file", "bytes": len(content), "purpose": purpose, "created_at": 0}

    def _create(self, body: bytes) -> bytes | None:
        self.create_times.append(time.monotonic())
        if self.faults.create_status:
            status = self.faults.create_status.pop(0)
            self.stats["create_refused"] += 1
            wait = (
                {"Retry-After": self.faults.retry_after}
                if self.faults.retry_after and status in (429, 503)
                else None
            )
            return _response(status, {"error": {"message": f"injected HTTP {status} on batch create"}}, wait)
        spec = json.loads(body or b"{}")
        file_id = spec.get("input_file_id")
        if file_id not in self.files:
            return _response(400, {"error": {"message": f"input_file_id {file_id!r} does not exist"}})
        lines = [json.loads(line) for line in self.files[file_id][1].splitlines() if line.strip()]
        self.lines.extend(lines)
        self.stats["batches_created"] += 1
        self.stats["lines"] += len(lines)
        batch_id = f"batch_{next(self._ids)}"
        if self.hold_new:
            self.held.add(batch_id)
        self.batches[batch_id] = {
            "id": batch_id,
            "object": "batch",
            "endpoint": spec.get("endpoint"),
            "input_file_id": file_id,
            "completion_window": spec.get("completion_window"),
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "errors": None,
            "created_at": time.time(),
            "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            "metadata": spec.get("metadata"),
        }
        if self.faults.lose_create > 0:
            self.faults.lose_create -= 1
            return None
        return _response(200, self.batches[batch_id])

    async def _poll(self, batch: dict[str, Any]) -> dict[str, Any]:
        self.stats["polls"] += 1
        self._polled[batch["id"]] += 1
        if batch["status"] == "cancelling":
            await self._finish(batch, cancelled=True)
        elif batch["status"] in ("validating", "in_progress"):
            due = self._polled[batch["id"]] > self.polls and time.time() - batch["created_at"] >= self.delay
            if due and not self.hold and batch["id"] not in self.held:
                await self._finish(batch)
            else:
                batch["status"] = "in_progress"
        return batch

    async def _finish(self, batch: dict[str, Any], *, cancelled: bool = False) -> None:
        faults = self.faults
        if faults.fail_batch is not None:
            batch["status"] = "failed"
            batch["failed_at"] = time.time()
            batch["errors"] = {
                "object": "list",
                "data": [{"code": "batch_failed", "message": faults.fail_batch}],
            }
            return
        lines = [
            json.loads(line) for line in self.files[batch["input_file_id"]][1].splitlines() if line.strip()
        ]
        out: list[bytes] = []
        errors: list[bytes] = []
        expired = False
        rng = random.Random(f"{faults.seed}:{batch['id']}")  # repeatable per batch, whenever faults were set
        for n, line in enumerate(lines):
            cid = line["custom_id"]
            draw = rng.random()
            if cancelled or draw < faults.expire_rate:
                expired = expired or not cancelled
                code, message = ("batch_cancelled", "cancelled") if cancelled else ("batch_expired", _EXPIRED)
                errors.append(_line(cid, None, {"code": code, "message": message}))
            elif draw < faults.expire_rate + faults.fail_rate:
                body = {"error": {"message": "injected fault", "type": "server_error"}}
                errors.append(_line(cid, {"status_code": 500, "body": body}, None))
            elif n < faults.malformed_lines:
                out.append(b"{not json: " + cid.encode())
            else:
                status, answer = await self.answer(line["body"])
                target = out if status == 200 else errors
                target.append(_line(cid, {"status_code": status, "body": answer}, None))
        for kind, content in (("output", out), ("error", errors)):
            if content:
                file_id = f"file-{next(self._ids)}"
                self.files[file_id] = (f"batch_{kind}", b"\n".join(content) + b"\n")
                batch[f"{kind}_file_id"] = file_id
        batch["status"] = "cancelled" if cancelled else "expired" if expired else "completed"
        batch[f"{batch['status']}_at"] = time.time()
        batch["request_counts"] = {"total": len(lines), "completed": len(out), "failed": len(errors)}


_EXPIRED = "This request could not be executed before the completion window expired."


def _line(custom_id: str, response: dict[str, Any] | None, error: dict[str, Any] | None) -> bytes:
    return json.dumps(
        {"id": f"batch_req_{custom_id}", "custom_id": custom_id, "response": response, "error": error}
    ).encode()


def _multipart(content_type: str, body: bytes) -> dict[str, bytes]:
    """The fields of a ``multipart/form-data`` body, by name (enough for the files endpoint)."""
    boundary = content_type.partition("boundary=")[2].strip('"')
    if not boundary:
        return {}
    fields: dict[str, bytes] = {}
    for part in body.split(b"--" + boundary.encode()):
        head, sep, value = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        for token in head.decode("latin-1").split(";"):
            key, _, name = token.strip().partition("=")
            if key == "name":
                fields[name.strip('"')] = value.removesuffix(b"\r\n")
                break
    return fields
