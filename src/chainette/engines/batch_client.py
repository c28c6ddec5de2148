"""The HTTP exchanges of a provider's batch API, for :mod:`.openai_batch`: each with retries.

:class:`BatchClient` is the ``openai`` back-end's connection (base URL, credentials, scrubbing,
the reading of a refusal: 401/403 stop the engine, ``Retry-After`` cools every exchange down)
plus ``_http``, one files or batches call retried on 429, 5xx, timeouts and dropped connections,
and ``_existing_batch``, the batch already made from an input file (a create whose answer was lost).
"""

from __future__ import annotations

from typing import Any

import anyio
import httpx
import orjson

from .base import Completion
from .limits import backoff_delay
from .openai_http import OpenAIEngine

__all__ = ["BatchClient"]


class _Refused(Exception):
    """An HTTP exchange that did not succeed after its retries (the message says why)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


class BatchClient(OpenAIEngine):
    """An ``openai`` engine's connection, used for the files and batches endpoints."""

    _uses_httpx = True

    async def _http(
        self,
        what: str,
        method: str,
        path: str,
        *,
        raw: bool = False,
        adopt: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """One API exchange with retries; the JSON answer (``raw``: the text). ``adopt``: the input
        file of a batch being created, looked for among existing batches before a retry."""
        assert self._client is not None
        url = f"{self._root}{path}{self._query}"
        attempt = 0
        while True:
            await self.limits.acquire(0.0)  # a Retry-After cool-down holds every exchange of this engine
            attempt += 1
            self.stats["requests"] += 1
            backoff = backoff_delay(attempt, base=self.backoff_base, cap=self.backoff_max, rng=self._rng)
            if adopt is not None and attempt > 1 and (found := await self._existing_batch(adopt)) is not None:
                return found
            problem: Any
            wait: float | None
            try:
                response = await self._client.request(method, url, **kwargs)
            except httpx.TransportError as exc:
                problem, wait, status = self._transport_problem(exc), backoff, None
            else:
                status = response.status_code
                if status == 200:
                    if raw:
                        return response.text
                    try:
                        return orjson.loads(response.content)
                    except orjson.JSONDecodeError as exc:
                        message = f"could not {what}: the answer is not JSON ({exc})"
                        raise _Refused(self._scrub(message)) from None
                # the openai back-end's reading of a refusal: 401/403 stop the engine, Retry-After cools it down
                problem, wait = self._refused(response, self.dialect, attempt, backoff)
                if isinstance(problem, Completion):
                    raise _Refused(problem.text, status)
            if wait is None or attempt > self.max_retries:
                self.stats["errors"] += 1
                tries = f"after {attempt} attempt(s)" if wait is not None else "(not retried)"
                raise _Refused(self._scrub(f"could not {what}: {problem} {tries}"), status)
            self.stats["retries"] += 1
            await anyio.sleep(wait)

    async def _existing_batch(self, file_id: str, *, strict: bool = False) -> dict[str, Any] | None:
        """A batch created from ``file_id`` already (a create whose answer was lost), if any.
        ``strict``: a listing that fails raises (``_Refused``) rather than answering None."""
        assert self._client is not None
        what = f"list batches to find the one made from input file {file_id}"
        if strict:
            listing = await self._http(what, "GET", "/batches", params={"limit": 100})
        else:
            try:
                response = await self._client.get(f"{self._root}/batches{self._query}", params={"limit": 100})
                listing = orjson.loads(response.content) if response.status_code == 200 else {}
            except (httpx.TransportError, orjson.JSONDecodeError):
                return None
        for batch in (listing.get("data") if isinstance(listing, dict) else None) or []:
            if isinstance(batch, dict) and batch.get("input_file_id") == file_id:
                return batch
        return None
