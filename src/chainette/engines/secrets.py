"""Keeping credentials out of everything Chainette writes or prints.

Engines need credentials: a password in ``base_url`` (``https://user:pw@host/v1``), a key in
its query string (``?api-key=...``), a token somewhere in ``extra_body``, the API key read from
``api_key_env``. The engine sends them; run artefacts (``graph.json``, ``metadata.json``,
``failures.jsonl``), the ledger, events, log lines, error texts and ``servers.json`` must never
hold them. Every one of those goes through this module:

- :func:`scrub` masks the values of secret-looking keys at any depth of dicts and lists, and
  cleans every string with :func:`scrub_text` (engine options, ``serve.client``);
- :func:`scrub_text` masks URL passwords (``user:***@host``), secret-looking query parameters
  (``?api-key=***``), ``Bearer``/``Basic`` credentials, and every credential value seen so far
  (:func:`remember_secrets`), wherever it appears in the text (a server that echoes the key);
- :func:`scrub_strings` applies :func:`scrub_text` to every string of a structure, keeping its
  keys (whole artefacts: a step may be called ``token_count``);
- :func:`scrub_argv` masks the value after a secret-looking flag (``--api-key VALUE``).

Masked values read ``***``. The module knows nothing of the rest of Chainette.

Example:
    >>> scrub_text("HTTP 401 from https://bob:hunter2!@api.example.com/v1?key=abc&v=1")
    'HTTP 401 from https://bob:***@api.example.com/v1?key=***&v=1'
    >>> scrub({"extra_body": {"api_key": "sk-1", "top_k": 20}, "max_tokens": 64})
    {'extra_body': {'api_key': '***', 'top_k': 20}, 'max_tokens': 64}
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

__all__ = [
    "MASK",
    "looks_secret",
    "remember_secrets",
    "scrub",
    "scrub_argv",
    "scrub_exception",
    "scrub_strings",
    "scrub_text",
]

MASK = "***"
"""What a hidden value reads as."""

_SECRET_WORDS = frozenset(
    {
        "key",
        "apikey",
        "token",
        "secret",
        "password",
        "passwd",
        "pwd",
        "pass",
        "passphrase",
        "authorization",
        "auth",
        "credential",
        "credentials",
        "sig",
        "signature",
        "cookie",
        "bearer",
    }
)
"""Words that make a name secret-looking (``api_key``, ``x-api-key``, ``access_token``, ``sig``)."""
_SECRET_ENDINGS = ("key", "token", "secret", "password", "passwd", "signature", "credential")
"""Glued forms: ``apikey``, ``accesstoken``, ``clientsecret``."""
_NOT_SECRET_LAST = frozenset({"env", "ids", "tokens", "count", "limit", "len", "length", "type"})
"""A last word that makes the name a count, a kind or a variable name: ``max_tokens``,
``api_key_env`` (it names a variable), ``stop_token_ids``, ``token_type``."""
_MIN_REMEMBERED = 6
"""Shorter values are masked where they stand (under a secret key, in a URL) but not searched
for in free text, where they would hit ordinary words."""

_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://[^\s\"'<>`]+")
_AUTH_HEADER = re.compile(
    r"(?i)\b(bearer\s+|authorization\s*[:=]\s*(?:basic\s+|bearer\s+|token\s+)?)[\w.~+/=\-]{6,}"
)
_QUERY_PARAM = re.compile(r"([?&;])([^=&#;?]+)=([^&#;]*)")
_WORD_SPLIT = re.compile(r"[^a-z0-9]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")

_known: set[str] = set()
"""Credential values seen in engine options or read from the environment (this process)."""


def looks_secret(name: str) -> bool:
    """Does a key, option or parameter name suggest a credential?

    Example:
        >>> [looks_secret(n) for n in ("api_key", "X-Api-Key", "sig", "max_tokens", "api_key_env", "top_k")]
        [True, True, True, False, False, False]
    """
    words = [w for w in _WORD_SPLIT.split(_CAMEL.sub("_", str(name)).lower()) if w]
    if not words or words[-1] in _NOT_SECRET_LAST:
        return False
    return any(w in _SECRET_WORDS or w.endswith(_SECRET_ENDINGS) for w in words)


def remember_secrets(value: Any) -> None:
    """Note the credentials inside ``value`` (options, a key), so :func:`scrub_text` masks them
    wherever they appear later, even in a server's error message."""
    for secret in _find_secrets(value):
        if len(secret) >= _MIN_REMEMBERED:
            _known.add(secret)
            decoded = unquote(secret)
            if len(decoded) >= _MIN_REMEMBERED:
                _known.add(decoded)


def scrub(value: Any) -> Any:
    """A copy of ``value`` safe to write: secret-looking keys masked at any depth, strings scrubbed."""
    if isinstance(value, dict):
        return {k: MASK if looks_secret(str(k)) and v is not None else scrub(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(scrub(v) for v in value)
    if isinstance(value, str):
        return scrub_text(value)
    return value


def scrub_strings(value: Any) -> Any:
    """A copy of ``value`` with :func:`scrub_text` applied to every string (keys kept as they are)."""
    if isinstance(value, dict):
        return {k: scrub_strings(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(scrub_strings(v) for v in value)
    if isinstance(value, str):
        return scrub_text(value)
    return value


def scrub_text(text: str) -> str:
    """``text`` with URL passwords, secret query parameters, bearer tokens and known secrets masked."""
    if not text:
        return text
    if "://" in text:
        text = _URL.sub(lambda m: _scrub_url(m.group(0)), text)
    text = _AUTH_HEADER.sub(lambda m: f"{m.group(1)}{MASK}", text)
    for secret in sorted(_known, key=len, reverse=True):  # longest first: one secret may contain another
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def scrub_argv(argv: Iterable[str]) -> list[str]:
    """A command line with the value of every secret-looking flag masked (``--api-key X``, ``--token=X``)."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(MASK)
            hide_next = False
            continue
        flag, eq, _ = arg.partition("=")
        if flag.startswith("-") and looks_secret(flag.lstrip("-")):
            if eq:
                out.append(f"{flag}={MASK}")
            else:
                out.append(arg)
                hide_next = True
            continue
        out.append(scrub_text(arg))
    return out


def scrub_exception(exc: BaseException) -> BaseException:
    """Scrub an exception's text in place (its ``args`` and a ``message`` attribute); returns it."""
    args = tuple(scrub_text(a) if isinstance(a, str) else a for a in exc.args)
    if args != exc.args:
        exc.args = args
    message = getattr(exc, "message", None)
    if isinstance(message, str):
        with contextlib.suppress(AttributeError):  # a read-only attribute: args already carry the text
            exc.message = scrub_text(message)  # type: ignore[attr-defined]
    return exc


def _scrub_url(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        userinfo, _, host = authority.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        authority = f"{user}:{MASK}@{host}" if colon else f"{MASK}@{host}"  # a lone user part is a token
    if "?" in tail or ";" in tail:
        tail = _QUERY_PARAM.sub(
            lambda m: f"{m.group(1)}{m.group(2)}={MASK}" if looks_secret(unquote(m.group(2))) else m.group(0),
            tail,
        )
    return f"{scheme}{sep}{authority}{tail}"


def _find_secrets(value: Any, under_secret_key: bool = False) -> Iterable[str]:
    """Credential values in ``value``: strings under secret-looking keys, URL passwords, secret query values."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _find_secrets(v, under_secret_key or looks_secret(str(k)))
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _find_secrets(v, under_secret_key)
    elif isinstance(value, str):
        if under_secret_key:
            yield value
        for match in _URL.finditer(value):
            yield from _url_secrets(match.group(0))
    elif under_secret_key and isinstance(value, (int, float)) and not isinstance(value, bool):
        yield str(value)


def _url_secrets(url: str) -> Iterable[str]:
    rest = url.partition("://")[2]
    end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" in authority:
        userinfo = authority.rpartition("@")[0]
        user, colon, password = userinfo.partition(":")
        yield password if colon else user
    for match in _QUERY_PARAM.finditer(tail):
        if looks_secret(unquote(match.group(2))) and match.group(3):
            yield match.group(3)
