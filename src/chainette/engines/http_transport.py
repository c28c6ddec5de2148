"""The ``openai`` back-end's chat requests on the wire: one aiohttp pool of ``max_connections``.

Why aiohttp and not httpx (which the batch back-end's files and batches calls, the stub server
and the tests keep using): per request, httpx 0.29 / httpcore 1.0 spent ~2.5 ms of CPU where
aiohttp spends ~0.4 ms (C parser, one write per request), and httpcore's pool scans every
connection for each idle one whenever a request comes or goes, so one client with 128
connections was CPU-bound at 20-30 req/s against a server answering every request after 1 s
(aiohttp: ~120 req/s; ``benchmarks/latency.py``, ``docs/decisions.md`` "The unit of waiting").

Failures are raised as :class:`TransportFailure`, named as httpx named them (``ConnectError``,
``ConnectTimeout``, ``ReadTimeout``, ``RemoteProtocolError``), so error texts stay what they were.
Runs on asyncio (aiohttp has no trio support); the session belongs to the loop that opened it.
"""

from __future__ import annotations

import contextlib
import ssl
import urllib.request
from collections.abc import AsyncIterator, Mapping

import aiohttp
import yarl

__all__ = ["HttpTransport", "Reply", "TransportFailure"]

_NAMES: tuple[tuple[type[BaseException], str], ...] = (
    (aiohttp.ConnectionTimeoutError, "ConnectTimeout"),
    (aiohttp.ServerTimeoutError, "ReadTimeout"),
    (TimeoutError, "ReadTimeout"),
    (aiohttp.ClientConnectorError, "ConnectError"),
    (aiohttp.ServerDisconnectedError, "RemoteProtocolError"),
    (aiohttp.ClientPayloadError, "RemoteProtocolError"),
)


class TransportFailure(Exception):
    """The exchange broke before a whole answer came: no connection, a timeout, a dropped connection."""

    def __init__(self, name: str, message: str, *, timed_out: bool) -> None:
        super().__init__(message)
        self.name = name
        self.timed_out = timed_out


def _failure(exc: BaseException) -> TransportFailure:
    name = next((n for kind, n in _NAMES if isinstance(exc, kind)), type(exc).__name__)
    timed_out = isinstance(exc, aiohttp.ServerTimeoutError | TimeoutError)
    return TransportFailure(name, str(exc) or type(exc).__name__, timed_out=timed_out)


class Reply:
    """A server's answer: status, headers and (once read) the body."""

    def __init__(self, response: aiohttp.ClientResponse, content: bytes = b"") -> None:
        self.status_code = response.status
        self.headers: Mapping[str, str] = response.headers
        self.content = content
        self._response = response

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")

    async def aread(self) -> bytes:
        try:
            self.content = await self._response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _failure(exc) from exc
        return self.content

    async def aiter_lines(self) -> AsyncIterator[str]:
        """The body's lines as they arrive, without their line ends (server-sent events, NDJSON)."""
        pending = b""
        try:
            async for chunk in self._response.content.iter_any():
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.rstrip(b"\r").decode("utf-8", errors="replace")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _failure(exc) from exc
        if pending:
            yield pending.rstrip(b"\r").decode("utf-8", errors="replace")


class HttpTransport:
    """POSTs of JSON bodies on keep-alive connections, at most ``max_connections`` open.

    Open it inside the event loop that uses it (``Engine.start``); ``timeout``: seconds to wait for
    the connection (at most 10) and for each read, as httpx's ``Timeout(timeout, connect=...)`` did.
    """

    def __init__(
        self, headers: Mapping[str, str], *, timeout: float, max_connections: int, verify: ssl.SSLContext
    ) -> None:
        connector = aiohttp.TCPConnector(limit=max_connections, limit_per_host=0, ssl=verify)
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers=dict(headers),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=min(timeout, 10.0), sock_read=timeout),
        )
        self._urls: dict[str, yarl.URL] = {}
        self._proxies: dict[str, str | None] = {}

    def _proxy(self, url: yarl.URL) -> str | None:
        """The proxy the environment names for ``url`` (``HTTP(S)_PROXY``, ``NO_PROXY``), as httpx
        honoured them; looked up once per host (aiohttp's ``trust_env`` does it for every request,
        reading ``.netrc`` in a thread each time)."""
        key = f"{url.scheme}://{url.host}"
        if key not in self._proxies:
            proxies = urllib.request.getproxies()
            bypass = url.host is None or urllib.request.proxy_bypass(url.host)
            self._proxies[key] = None if bypass else proxies.get(url.scheme)
        return self._proxies[key]

    def _url(self, url: str) -> yarl.URL:
        found = self._urls.get(url)
        if found is None:  # sent as written (a query string's secrets included)
            found = self._urls[url] = yarl.URL(url, encoded=True)
        return found

    async def post(self, url: str, body: bytes) -> Reply:
        """The whole answer to one POST."""
        try:
            target = self._url(url)
            async with self._session.post(target, data=body, proxy=self._proxy(target)) as response:
                return Reply(response, await response.read())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _failure(exc) from exc

    @contextlib.asynccontextmanager
    async def stream(self, url: str, body: bytes) -> AsyncIterator[Reply]:
        """One POST whose body is read as it comes (``Reply.aiter_lines``). Leaving before the end
        (a closed generator, a cancelled task) closes the connection, so the server stops."""
        try:
            target = self._url(url)
            response = await self._session.post(target, data=body, proxy=self._proxy(target))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _failure(exc) from exc
        try:
            yield Reply(response)
        finally:
            if response.content.at_eof():
                response.release()  # the connection is kept for the next request
            else:
                response.close()

    async def close(self) -> None:
        await self._session.close()
