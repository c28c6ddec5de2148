"""Keeping credentials out of everything Chainette writes or prints.

Engines need credentials: a password in ``base_url`` (``https://user:pw@host/v1``), a key in
its query string (``?api-key=...``), a token somewhere in ``extra_body``, the API key read from
``api_key_env``. The engine sends them; run artefacts (``graph.json``, ``metadata.json``,
``failures.jsonl``), the ledger, events, log lines, error texts and ``servers.json`` must never
hold them. Every one of those goes through this module:

- :func:`scrub` masks the values of secret-looking keys at any depth of dicts and lists, and
  cleans every string with :func:`scrub_text` (engine options, ``serve.client``);
- :func:`scrub_text` masks URL passwords (``user:***@host``), query parameters with a secret-looking
  name (``?api-key=***``, Azure Functions' ``?code=***``) or a secret-looking value whatever the
  name (:func:`looks_like_token`: ``sk-...``, a JWT, a long random string), ``Bearer``/``Basic``
  credentials, and every credential value seen so far (:func:`remember_secrets`), wherever it
  appears in the text (a server that echoes the key). Ordinary values stay readable
  (``api-version=2024-02-01``, ``page=2``, ``model=gpt-4o-mini``);
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
import math
import re
from collections import Counter
from collections.abc import Iterable
from typing import Any
from urllib.parse import unquote

__all__ = [
    "MASK",
    "looks_like_token",
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
_SECRET_QUERY_NAMES = frozenset({"code"})
"""Names secret only as a URL's query parameter: Azure Functions' key (``?code=``), an OAuth
authorization code. As a key of a structure ``code`` is ordinary (``status_code``, a step's ``code``)."""
_TOKEN_PREFIX = re.compile(
    r"^(?:sk-|sk_|rk_|pk_live_|ghp_|gho_|ghu_|ghs_|github_pat_|glpat-|xox[abposr]-|hf_|AKIA|ASIA|AIza|ya29\.)"
    r"[A-Za-z0-9_\-.]{8,}$"
)
"""Credentials by their published prefix: OpenAI / Stripe (``sk-``, ``sk_``), GitHub, GitLab,
Slack, Hugging Face, AWS access key ids, Google API keys and OAuth tokens."""
_JWT = re.compile(r"^eyJ[A-Za-z0-9_\-]{5,}\.eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*$")
_TOKEN_CHARS = re.compile(r"^[A-Za-z0-9+/_\-.~]+=*$")
_HEX = re.compile(r"^[0-9a-fA-F]+$")
_LOWER_RUN = re.compile(r"[a-z]+")
_CASE_TURN = re.compile(r"[a-z][A-Z]")
_SEPARATORS = re.compile(r"[-._/~+]")
_MIN_TOKEN = 20
"""A random-looking value shorter than this is left readable (dates, versions, small ids)."""
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


def looks_like_token(value: str) -> bool:
    """Does a value look like a credential, whatever its name? A published key prefix
    (``sk-...``, ``ghp_...``, ``hf_...``), a JWT, or a long random string: at least
    :data:`_MIN_TOKEN` characters of a token alphabet, either 32+ hex digits (dashes allowed: a
    UUID-shaped key) or upper and lower case interleaved as in base64 / base62 keys (Azure
    Functions keys): lower-case runs of under 3.5 letters on average, where names and camelCase
    words (``Meta-Llama-3.1-8B-Instruct``, ``createdAtTimestamp``) have longer ones. Words joined by dashes, dates and versions stay readable.

    Example:
        >>> [looks_like_token(v) for v in ("sk-proj-abc123def456", "Zm9vYmFyQmF6cXV4MTIzNDU2Nzg5MA==")]
        [True, True]
        >>> [looks_like_token(v) for v in ("2024-02-01", "2", "gpt-4o-mini-2024-07-18", "json")]
        [False, False, False, False]
    """
    value = value.strip()
    if _TOKEN_PREFIX.match(value) or _JWT.match(value):
        return True
    if len(value) < _MIN_TOKEN or not _TOKEN_CHARS.match(value):
        return False
    hex_digits = value.replace("-", "")
    if len(hex_digits) >= 32 and _HEX.match(hex_digits):
        return True
    body = value.rstrip("=")
    runs = _LOWER_RUN.findall(body)  # random base62 changes case every other letter; names do not
    upper, lower = sum(c.isupper() for c in body), sum(map(len, runs))
    if upper < 2 or lower < 2 or lower / len(runs) >= 3.5 or _entropy(body) < 3.5:
        return False
    parts = _SEPARATORS.split(body)  # a name in parts (``TheBloke/Llama-2-7B-Chat-GGUF``): each a word
    return len(parts) < 3 or any(len(_CASE_TURN.findall(part)) > 1 for part in parts)


def _entropy(text: str) -> float:
    """Shannon entropy in bits per character (random base62: about 5; English words: about 4)."""
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def _secret_param(name: str, value: str) -> bool:
    """Is a URL query parameter a credential, by its name or by its value's shape?"""
    name = unquote(name)
    return (
        looks_secret(name)
        or name.strip().lower() in _SECRET_QUERY_NAMES
        or (bool(value) and looks_like_token(unquote(value)))
    )


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
            lambda m: (
                f"{m.group(1)}{m.group(2)}={MASK}" if _secret_param(m.group(2), m.group(3)) else m.group(0)
            ),
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
        if match.group(3) and _secret_param(match.group(2), match.group(3)):
            yield match.group(3)
