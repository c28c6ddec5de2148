"""Chat messages to prompt tokens, exactly as ``llama_cpp.Llama.create_chat_completion`` does.

The batched decoder does not go through ``Llama``, but a prompt must be the same tokens either
way (same answers, same prefix reuse). llama-cpp-python keeps its chat templates inside
completion handlers, so :class:`ChatPrompter` picks the handler the way ``Llama.__init__`` does
(a named ``chat_format``, else the template in the GGUF, else ``llama-2``) and calls it with a
stand-in ``llama`` that tokenizes for real and captures the ``create_completion`` call instead
of running it: the prompt tokens and the template's stop strings.

Imported only when the ``llama_cpp`` back-end starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from llama_cpp import llama_chat_format

__all__ = ["ChatPrompt", "ChatPrompter"]


@dataclass(frozen=True, slots=True)
class ChatPrompt:
    tokens: list[int]
    stop: tuple[str, ...]
    """Stop strings of the chat template (the request's own come on top)."""


class _Captured(Exception):
    def __init__(self, kwargs: dict[str, Any]) -> None:
        self.kwargs = kwargs


class _StandIn:
    """What a chat handler touches on ``llama``: ``tokenize`` for real, ``create_completion`` captured."""

    def __init__(self, model: Any, verbose: bool) -> None:
        self._model = model
        self.verbose = verbose

    def tokenize(self, text: bytes, add_bos: bool = True, special: bool = False) -> list[int]:
        tokens: list[int] = self._model.tokenize(text, add_bos, special)
        return tokens

    def create_completion(self, **kwargs: Any) -> Any:
        raise _Captured(kwargs)


class ChatPrompter:
    """Turns chat messages into prompt tokens for one loaded model (``llama_cpp._internals.LlamaModel``)."""

    def __init__(self, model: Any, chat_format: str | None = None, verbose: bool = False) -> None:
        self._stand_in = _StandIn(model, verbose)
        self._handler = self._pick_handler(model, chat_format)

    @staticmethod
    def _pick_handler(model: Any, chat_format: str | None) -> Any:
        if chat_format is not None:
            return llama_chat_format.get_chat_completion_handler(chat_format)
        try:
            metadata: dict[str, str] = model.metadata()
        except Exception:  # llama-cpp-python treats unreadable metadata as none
            metadata = {}
        template = metadata.get("tokenizer.chat_template")
        if template is None:
            return llama_chat_format.get_chat_completion_handler("llama-2")
        guessed = llama_chat_format.guess_chat_format_from_gguf_metadata(metadata)
        if guessed is not None:
            return llama_chat_format.get_chat_completion_handler(guessed)
        eos_id, bos_id = model.token_eos(), model.token_bos()
        return llama_chat_format.Jinja2ChatFormatter(
            template=template,
            eos_token=model.token_get_text(eos_id) if eos_id != -1 else "",
            bos_token=model.token_get_text(bos_id) if bos_id != -1 else "",
            stop_token_ids=[eos_id],
        ).to_chat_handler()

    def __call__(self, messages: Sequence[dict[str, str]]) -> ChatPrompt:
        try:
            self._handler(llama=self._stand_in, messages=[dict(m) for m in messages], stop=[])
        except _Captured as captured:
            kwargs = captured.kwargs
        else:  # pragma: no cover - every handler ends in create_completion
            raise RuntimeError("the chat handler did not build a completion")
        stop = kwargs.get("stop") or []
        stops = (stop,) if isinstance(stop, str) else tuple(stop)
        return ChatPrompt(tokens=list(kwargs["prompt"]), stop=stops)
