"""What a request must pass before it reaches the service, and what the logs may say.

- :class:`LocalGuard` (ASGI middleware): the ``Host`` header must name this server (``localhost``,
  ``127.0.0.1``, ``[::1]`` or the address the connection came in on, at its port), so a page
  whose DNS name was rebound to 127.0.0.1 is refused; a browser's ``Origin``, when sent, must be
  this server's own or one of ``allowed_origins``, so another site's page can neither start a
  trace nor read one over a WebSocket. Clients that send no ``Origin`` (curl, SDKs) pass.
- :func:`load_json`: JSON nested at most :data:`MAX_JSON_DEPTH` levels, else a ValueError with
  the reason (never a RecursionError).
- :func:`redact_logs`: a filter on uvicorn's, websockets' and Chainette's loggers that replaces a
  ``token=`` query value and the server's token by ``[redacted]`` in every record, whatever its
  level, so uvicorn's WebSocket handshake line (``"WebSocket /ws?token=..." [accepted]``) does
  not carry it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, urlsplit

__all__ = ["MAX_JSON_DEPTH", "LocalGuard", "load_json", "printable", "redact_logs"]

MAX_JSON_DEPTH = 64
"""Levels of nesting a submitted JSON value may have."""

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})

_LOGGERS = (
    "uvicorn",
    "uvicorn.error",
    "uvicorn.access",
    "uvicorn.asgi",
    "websockets",
    "websockets.server",
    "websockets.protocol",
    "chainette.serving",
    "starlette",
)
_QUERY_TOKEN = re.compile(r"([?&;](?:access_)?token=)[^&\s\"']*", re.IGNORECASE)


class _Redact(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def scrub(self, text: str) -> str:
        text = _QUERY_TOKEN.sub(r"\1[redacted]", text)
        for secret in self.secrets:
            text = text.replace(secret, "[redacted]")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # a record that cannot format itself: let logging report it
            return True
        if self.scrub(text) == text:
            return True
        if isinstance(record.args, tuple):  # scrub the arguments, keeping their shape (formatters
            # such as uvicorn's access log unpack them)
            record.args = tuple(self.scrub(a) if isinstance(a, str) else a for a in record.args)
        if self.scrub(record.getMessage()) != record.getMessage():
            record.msg, record.args = self.scrub(record.getMessage()), ()
        return True


_REDACT = _Redact()


def redact_logs(secret: str | None) -> None:
    """Scrub ``token=`` query values (and ``secret``, raw or URL-encoded) from the server's logs."""
    if secret:
        _REDACT.secrets.update({secret, quote(secret, safe=""), quote(secret)})
    for name in _LOGGERS:
        logger = logging.getLogger(name)
        if _REDACT not in logger.filters:
            logger.addFilter(_REDACT)


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\\n`` as two characters): one log line, never two."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


def load_json(data: bytes | str) -> Any:
    """The JSON value in ``data``; ValueError (with the reason) if it is not JSON or too deep."""
    try:
        value = json.loads(data)
    except RecursionError:
        raise ValueError(f"it is nested deeper than {MAX_JSON_DEPTH} levels") from None
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"it is nested deeper than {MAX_JSON_DEPTH} levels")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return value


def _host_name(host: str) -> tuple[str, int | None]:
    """``("name", port)`` from a Host header or an origin's netloc (``[::1]:80`` → ``("[::1]", 80)``)."""
    host = host.strip().lower()
    name, sep, port = host.rpartition(":")
    if sep and port.isdigit() and (not name.startswith("[") or name.endswith("]")):
        return name, int(port)
    return host, None


class LocalGuard:
    """ASGI middleware: refuse (403) a request whose ``Host`` or ``Origin`` is not this server's.

    Args:
        app: The app behind it.
        allowed_origins: Origins (``scheme://host[:port]``) that may call it from a browser;
            ``"*"``: any.
        allowed_hosts: Further names clients may reach it by (a reverse proxy's, a LAN name);
            ``"*"``: any.
    """

    def __init__(
        self, app: Any, allowed_origins: Iterable[str] = (), allowed_hosts: Iterable[str] = ()
    ) -> None:
        self.app = app
        self.origins = {o.rstrip("/").lower() for o in allowed_origins}
        self.hosts = {h.lower() for h in allowed_hosts}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        problem = self.problem(scope)
        if problem is None:
            await self.app(scope, receive, send)
        elif scope["type"] == "websocket":  # closed before the handshake: the client gets a 403
            await send({"type": "websocket.close", "code": 4403, "reason": "forbidden"})
        else:
            body = json.dumps({"error": "forbidden", "message": problem}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 403,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})

    def problem(self, scope: Any) -> str | None:
        """Why this request is refused, or None."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        host = headers.get("host", "")
        if not self._host_ok(host, scope.get("server")):
            return (
                f"Host {printable(host)!r} is not this server's address; reach it as localhost or by the "
                "address it listens on, or start it with --allow-host NAME."
            )
        origin = headers.get("origin")
        if origin is None or "*" in self.origins or origin.rstrip("/").lower() in self.origins:
            return None
        parts = urlsplit(origin)
        if parts.scheme in ("http", "https") and parts.netloc.lower() == host.strip().lower():
            return None  # the page this server serves, or a same-origin script
        return (
            f"Origin {printable(origin)!r} may not call this server; start it with --allow-origin "
            f"{printable(origin)} (create_app(allowed_origins=[...])) to let that site call it."
        )

    def _host_ok(self, host: str, server: Any) -> bool:
        if "*" in self.hosts or host.strip().lower() in self.hosts:
            return True
        name, port = _host_name(host)
        if name in self.hosts:
            return True
        bound = None
        if server:
            address, bound = server[0], server[1]
            address = f"[{address}]" if ":" in str(address) else str(address)
            if name == address.lower():
                return port is None or port == bound
        return name in LOOPBACK_NAMES and (port is None or bound is None or port == bound)
