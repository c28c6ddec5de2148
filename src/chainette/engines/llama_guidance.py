"""Choosing each next token: the JSON schema's grammar (llguidance) and greedy or sampled decoding.

llguidance compiles a JSON schema into a grammar it can check token by token against the
model's own vocabulary (a tokenizer built once from the llama.cpp vocabulary). Unlike the GBNF
that llama-cpp-python converts schemas to, it enforces numeric ``minimum`` / ``maximum``
(exclusive too), string ``pattern``, lengths, ``minItems`` / ``maxItems``, enums, ``$defs`` and
optional fields, and keeps the schema's property order. Keywords it does not implement are
ignored (``lenient``): the runtime still validates every answer and re-asks.

Greedy decoding checks the best token first (about 2 µs) and computes the full allowed-token
mask (about 60 µs on SmolLM2's 49k vocabulary) only when the grammar rejects it: the best
allowed token is the same either way. Sampling at temperature > 0 always masks first, then
applies temperature and top-p, drawing from a generator seeded per request.

Objects accept only their declared properties unless the schema says otherwise (JSON Schema
allows any extra key by default; a small model given that freedom invents keys until
``max_tokens``, and llama-cpp-python's GBNF never allowed them either).

Numbers have no length limit in JSON Schema, and a small model asked for a confidence writes
``0.99999...`` until ``max_tokens``. Outside strings a run of digits is therefore capped at
:data:`MAX_DIGITS` (llama-cpp-python's GBNF caps both parts of a number at 16 digits too): from
there only what ends the number is allowed, unless the grammar allows nothing but another digit
(``gt=0`` cannot end on a ``0``).

JSON is written the way models usually write it (``", "`` and ``": "`` between items, no other
whitespace), so a small model cannot wander into whitespace until ``max_tokens``.

Tokens the grammar forces (braces, quotes, keys, ``", "category": "``, the rest of an enum value)
are not chosen one decode pass at a time: :meth:`TokenChooser.forced` asks llguidance for its
fast-forward tokens, and the decoder feeds them in one multi-token pass with logits only for the
last one. Their tokenization is llguidance's (``compute_ff_tokens``): the forced bytes tokenized
canonically, minus the last tokens, which a longer token starting with the same bytes could
still replace (the grammar forces ``{"answer": "`` and fast-forward gives ``{"`` ``answer``
``":``; the model itself picks how `` "`` continues).

Imported only when the ``llama_cpp`` back-end starts.
"""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

import numpy as np

__all__ = ["GrammarError", "Guidance", "TokenChooser"]

MAX_DIGITS = 16
"""Longest run of digits outside a JSON string (so ``max_tokens`` is not spent on one number)."""

_JSON_OPTIONS: Any = {
    "item_separator": ", ",
    "key_separator": ": ",
    "whitespace_flexible": False,
    "lenient": True,
}


class GrammarError(ValueError):
    """The JSON schema could not be compiled into a grammar."""


class Guidance:
    """llguidance for one model: its tokenizer (built once, ~0.5 s) and compiled grammars per schema."""

    def __init__(self, vocab: Any, n_vocab: int, pieces: list[bytes]) -> None:
        from llguidance import LLMatcher
        from llguidance.llamacpp import lltokenizer_from_vocab

        self._matcher_class = LLMatcher
        with warnings.catch_warnings():  # its bridge calls llama.cpp functions deprecated upstream
            warnings.simplefilter("ignore", DeprecationWarning)
            self.tokenizer = lltokenizer_from_vocab(vocab)
        self.n_vocab = n_vocab
        self.pieces = pieces
        self.starts_with_digit = np.array([p[:1].isdigit() for p in pieces], dtype=bool)
        self._templates: dict[str, Any] = {}

    def matcher(self, schema: dict[str, Any]) -> Any:
        """A fresh matcher for ``schema`` (a copy of one compiled per schema)."""
        key = json.dumps(schema, sort_keys=True)
        template = self._templates.get(key)
        if template is None:
            grammar = self._matcher_class.grammar_from_json_schema(
                closed_objects(schema), defaults=_JSON_OPTIONS
            )
            template = self._matcher_class(self.tokenizer, grammar, log_level=0)
            if template.is_error():
                raise GrammarError(f"llguidance could not compile the output schema: {template.get_error()}")
            self._templates[key] = template
        return template.deep_copy()


def closed_objects(schema: Any) -> Any:
    """A copy of ``schema`` where every object schema without ``additionalProperties`` gets ``false``.

    Example:
        >>> closed_objects({"type": "object", "properties": {"a": {"type": "object"}}})
        {'type': 'object', 'properties': {'a': {'type': 'object', 'additionalProperties': False}}, 'additionalProperties': False}
    """
    if isinstance(schema, list):
        return [closed_objects(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: closed_objects(value) for key, value in schema.items()}
    if (out.get("type") == "object" or "properties" in out) and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


class TokenChooser:
    """Picks one sequence's tokens from its logits: grammar first, then greedy or sampling."""

    __slots__ = (
        "_digits",
        "_escaped",
        "_guidance",
        "_in_string",
        "_mask",
        "_rng",
        "matcher",
        "temperature",
        "top_p",
    )

    def __init__(
        self, guidance: Guidance, matcher: Any | None, temperature: float, top_p: float, seed: int | None
    ) -> None:
        self._guidance = guidance
        self.matcher = matcher
        self.temperature = temperature
        self.top_p = top_p
        self._rng = np.random.default_rng(seed) if temperature > 0 else None
        self._mask = np.zeros((guidance.n_vocab + 31) // 32, dtype=np.int32) if matcher is not None else None
        self._digits = 0  # digits in a row at the end of the text, outside strings
        self._in_string = False
        self._escaped = False

    def choose(self, logits: Any) -> int:
        """The next token; ``logits`` is the model's float32 array for this sequence (not modified)."""
        matcher = self.matcher
        capped = matcher is not None and self._digits >= MAX_DIGITS
        if self._rng is None:
            best = int(np.argmax(logits))
            if matcher is None or (
                not (capped and self._guidance.starts_with_digit[best])
                and matcher.validate_tokens([best]) == 1
            ):
                return self._consume(best)
            allowed = self._allowed(logits.shape[0], capped)
            return self._consume(int(np.argmax(np.where(allowed, logits, -np.inf))))
        scores = logits.astype(np.float64) / self.temperature
        if matcher is not None:
            scores = np.where(self._allowed(logits.shape[0], capped), scores, -np.inf)
        return self._consume(self._sample(scores))

    def forced(self) -> list[int]:
        """The tokens the grammar forces next (llguidance's fast-forward tokens), already consumed.

        Empty without a grammar, or when the model has a choice to make."""
        matcher = self.matcher
        if matcher is None or matcher.is_stopped():
            return []
        tokens = list(matcher.compute_ff_tokens())
        if not tokens:
            return []
        if not matcher.consume_tokens(tokens):
            raise GrammarError(f"the grammar rejected its own forced tokens ({matcher.get_error()})")
        pieces = self._guidance.pieces
        for token in tokens:
            if token < len(pieces):
                self._track(pieces[token])
        return tokens

    def _allowed(self, n: int, capped: bool) -> Any:
        assert self.matcher is not None and self._mask is not None
        self.matcher.unsafe_compute_mask_ptr(self._mask.ctypes.data, self._mask.nbytes)
        allowed = np.unpackbits(self._mask.view(np.uint8), bitorder="little")[:n].astype(bool)
        if capped:  # unless only a digit can follow (a bound such as "> 0" cannot end on "0")
            ending = allowed & ~self._guidance.starts_with_digit[:n]
            if ending.any():
                return ending
        if not allowed.any():
            raise GrammarError(f"the grammar allows no next token ({self.matcher.get_error() or 'dead end'})")
        return allowed

    def _track(self, piece: bytes) -> None:
        """Follow string and digit state over the text, byte by byte (pieces are a few bytes)."""
        for byte in piece:
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif byte == 0x5C:  # backslash
                    self._escaped = True
                elif byte == 0x22:  # quote
                    self._in_string = False
            elif byte == 0x22:
                self._in_string, self._digits = True, 0
            elif 0x30 <= byte <= 0x39:
                self._digits += 1
            else:
                self._digits = 0

    def _sample(self, scores: Any) -> int:
        assert self._rng is not None
        top = float(np.max(scores))
        if top == -math.inf:
            return int(np.argmax(scores))
        probs = np.exp(scores - top)
        probs /= probs.sum()
        if self.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            cumulative = np.cumsum(probs[order])
            keep = order[: int(np.searchsorted(cumulative, self.top_p)) + 1]
            kept = probs[keep] / probs[keep].sum()
            return int(keep[self._rng.choice(len(keep), p=kept)])
        return int(self._rng.choice(len(probs), p=probs))

    def _consume(self, token: int) -> int:
        if self.matcher is not None:
            self.matcher.consume_token(token)
            if token < len(self._guidance.pieces):
                self._track(self._guidance.pieces[token])
        return token

    @property
    def finished(self) -> bool:
        """The grammar is complete: nothing but the end of the text can follow."""
        return self.matcher is not None and bool(self.matcher.is_stopped())
