"""Grammar-constrained greedy decoding that checks the best token first.

llama-cpp-python applies the grammar to the whole vocabulary before picking a token: about
8 ms per token for SmolLM2's 49k tokens, single-threaded, which dominates small models. With
greedy decoding only the best token matters: if the grammar accepts it, it is the answer; if
not, the grammar masks the whole vocabulary as before and greedy takes the best allowed
token. The output is identical (the best allowed token is the same either way); only the
work differs. Sampling at temperature > 0 keeps llama-cpp-python's own sampler.

``StoppableLlama`` (the base of both) stops a decode at the next token when its ``stop`` event
is set, so a cancelled request (Ctrl-C, a cancelled trace) frees the model at once instead of
decoding up to ``max_tokens``.

Everything here is imported only when the ``llama_cpp`` back-end starts.
"""

from __future__ import annotations

import ctypes
import math
import threading
from typing import Any

import llama_cpp
import numpy as np
from llama_cpp._internals import LlamaSampler

__all__ = ["DecodeStopped", "GrammarFirstLlama", "StoppableLlama"]

_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


class _GrammarFirst:
    """A llama.cpp sampler: the grammar, tried on the best candidate before the whole array."""

    def __init__(self, vocab: Any, grammar: Any) -> None:
        self.grammar = llama_cpp.llama_sampler_init_grammar(
            vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
        )
        if not self.grammar:
            raise ValueError("llama.cpp could not build the grammar sampler")
        self._one = llama_cpp.llama_token_data()
        self._one_array = llama_cpp.llama_token_data_array(
            data=ctypes.pointer(self._one), size=1, selected=-1, sorted=False
        )
        # the callbacks must outlive the sampler: keep references on self
        self._apply_cb = llama_cpp.llama_sampler_i_apply(self._apply)
        self._accept_cb = llama_cpp.llama_sampler_i_accept(self._accept)
        iface = llama_cpp.llama_sampler_i()
        iface.apply = self._apply_cb
        iface.accept = self._accept_cb
        iface.name = llama_cpp.llama_sampler_i_name(0)
        iface.reset = llama_cpp.llama_sampler_i_reset(0)
        iface.clone = llama_cpp.llama_sampler_i_clone(0)
        iface.free = llama_cpp.llama_sampler_i_free(0)
        self._iface = iface
        self.sampler = llama_cpp.llama_sampler()
        self.sampler.iface = ctypes.pointer(iface)
        self.sampler.ctx = None

    def _apply(self, _sampler: Any, cur_p: Any) -> None:
        array = cur_p.contents
        raw = (ctypes.c_char * (array.size * _TOKEN_DATA.itemsize)).from_address(
            ctypes.addressof(array.data.contents)
        )
        candidates = np.frombuffer(raw, dtype=_TOKEN_DATA)
        best = int(np.argmax(candidates["logit"]))
        self._one.id = int(candidates["id"][best])  # type: ignore[assignment]
        self._one.logit = float(candidates["logit"][best])
        self._one_array.size = 1
        self._one_array.selected = -1
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(self._one_array))
        if self._one.logit != -math.inf:
            return  # allowed: greedy picks it from the untouched array
        llama_cpp.llama_sampler_apply(self.grammar, cur_p)  # not allowed: mask everything, as usual

    def _accept(self, _sampler: Any, token: int) -> None:
        llama_cpp.llama_sampler_accept(self.grammar, token)

    def close(self) -> None:
        if self.grammar:
            llama_cpp.llama_sampler_free(self.grammar)
            self.grammar = None


class DecodeStopped(Exception):
    """Raised inside a decode whose ``stop`` event was set (caught by the engine)."""


class StoppableLlama(llama_cpp.Llama):
    """``llama_cpp.Llama`` that checks ``self.stop`` before evaluating each batch of tokens."""

    stop: threading.Event | None = None

    def eval(self, tokens: Any) -> None:
        # checked before the decode, so the model's token count stays consistent for the next request
        if self.stop is not None and self.stop.is_set():
            raise DecodeStopped
        super().eval(tokens)


class GrammarFirstLlama(StoppableLlama):
    """``llama_cpp.Llama`` whose greedy, grammar-constrained sampling checks the best token first."""

    def _init_sampler(self, **kwargs: Any) -> Any:  # type: ignore[override]  # always called with keywords
        grammar = kwargs.get("grammar")
        if grammar is None or kwargs.get("temp", 0.8) != 0.0 or kwargs.get("logits_processor") is not None:
            return super()._init_sampler(**kwargs)
        sampler = LlamaSampler()  # type: ignore[no-untyped-call]
        sampler.add_penalties(
            n_vocab=self._n_vocab,
            penalty_last_n=self.last_n_tokens_size,
            penalty_repeat=kwargs.get("repeat_penalty", 1.0),
            penalty_freq=kwargs.get("frequency_penalty", 0.0),
            penalty_present=kwargs.get("presence_penalty", 0.0),
        )
        first = _GrammarFirst(self._model.vocab, grammar)
        llama_cpp.llama_sampler_chain_add(sampler.sampler, ctypes.pointer(first.sampler))
        # llama.cpp must not free a sampler it did not allocate: LlamaSampler removes these first
        sampler.custom_samplers.append((llama_cpp.llama_sampler_chain_n(sampler.sampler) - 1, first))  # type: ignore[arg-type]
        sampler._exit_stack.callback(first.close)
        sampler.add_greedy()  # type: ignore[no-untyped-call]
        return sampler
