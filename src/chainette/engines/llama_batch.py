"""Many sequences per decode: continuous batching on one llama.cpp context.

One :class:`BatchDecoder` owns a model, one context with ``parallel`` sequence slots, each with
its own KV cache stream of ``n_ctx`` cells, and one dedicated thread that runs the loop below. On a CPU this
turns the matrix-vector work of decoding one sequence into matrix-matrix work over many.

Each turn of the loop:

1. takes new jobs (from :meth:`submit`) and drops cancelled ones, freeing their sequences;
2. admits waiting jobs into free slots; a slot keeps the tokens of its last request, so a new
   prompt that starts the same way, such as a shared system prompt, only evaluates what
   differs, and when another sequence holds a longer start of the prompt, its cache stream is
   copied into the slot (``llama_memory_seq_cp``) instead: a system prompt shared by a step's
   requests is evaluated once, not once per slot; and earlier requests' prompts are kept
   beside the slots (:class:`.llama_cache.PromptCache`) for requests that come later;
3. decodes one batch: each generating sequence's last token, or its last token and the tokens
   its grammar forced after it, plus prompt tokens of the newly admitted ones up to ``n_batch``
   (:func:`.llama_passes.plan`), with logits only where a sequence has a choice to make;
4. picks each sequence's next token (:class:`~.llama_guidance.TokenChooser`: grammar, greedy or
   sampling), appends the tokens the grammar forces after it (fast-forward, ``fast_forward``)
   and finishes those that hit an end-of-generation token, a stop string, the end of
   their grammar or ``max_tokens``; their slots take the next waiting jobs on the next turn.

Fast-forward: in a JSON answer much of the text is the schema's (braces, quotes, keys,
``", "category": "``, the tail of an enum value). Those tokens are not chosen one decode each:
llguidance names them (``compute_ff_tokens``) and they enter the next decode as several
positions of their sequence, like a prompt chunk, under the same limits
(:mod:`.llama_passes`), so answers stay the same batched or alone. Once the grammar accepts
nothing but the end, the job finishes without another decode. ``fast_forward=False`` chooses
every token from logits as before.

A job's answer depends only on its own tokens: the batch size is a throughput knob. That is
why each sequence has its own stream rather than one cache shared by all (llama.cpp's
``kv_unified``): in a shared cache a sequence's cells end up out of position order once other
sequences free theirs, attention then adds the same terms in another order, and greedy answers
drift (measured: one answer in eight differed). In its own stream a sequence's cells stay in
order, and batched answers are the same token for token as one at a time. Each
finished or cancelled job is handed back to its event loop with ``anyio.from_thread``.

A streamed job (:meth:`BatchDecoder.stream`) also hands over its text as it grows, through a
:class:`~.thread_feed.Feed` (never blocking this thread): whole UTF-8 characters only, and
nothing that might be the start of a stop string until the next tokens tell.

The loop runs in one long-lived thread on purpose: llama.cpp's OpenMP thread team belongs to the
thread that calls it, and a second calling thread makes it stop spin-waiting (2x slower on 2
cores, see ENGINE_NOTES).

A job, its sequence slot and the text its tokens make are in :mod:`.llama_jobs`.

Imported only when the ``llama_cpp`` back-end starts.
"""

from __future__ import annotations

import contextlib
import ctypes
import queue
import threading
from collections import deque
from collections.abc import AsyncGenerator

import anyio
import anyio.from_thread
import anyio.lowlevel
import llama_cpp
import llama_cpp.llama  # registers llama-cpp-python's log callback (quiet unless verbose)
import numpy as np
from llama_cpp import _logger
from llama_cpp._internals import LlamaModel

from .base import ChatRequest, Completion
from .llama_cache import MIN_COPY, PromptCache, copy_stream
from .llama_chat import ChatPrompter
from .llama_guidance import Guidance, TokenChooser
from .llama_jobs import Job, Slot, common_prefix, completion_of, cut_at_stop, stream_piece
from .llama_passes import PROMPT_CHUNK, SPLIT_KV_CELLS, passes, plan
from .thread_feed import Feed

__all__ = ["PROMPT_CHUNK", "SPLIT_KV_CELLS", "BatchDecoder", "Job"]


class BatchDecoder:
    """A llama.cpp model decoding up to ``parallel`` requests together, in its own thread."""

    def __init__(
        self,
        model_path: str,
        *,
        parallel: int,
        n_ctx: int,
        n_threads: int,
        n_gpu_layers: int = 0,
        chat_format: str | None = None,
        n_batch: int = 2048,
        fast_forward: bool = True,
        prompt_cache: int = 0,
        verbose: bool = False,
    ) -> None:
        _logger.set_verbose(verbose)
        n_batch = max(n_batch, parallel)  # room for one token of every sequence
        llama_cpp.llama_backend_init()
        model_params = llama_cpp.llama_model_default_params()
        model_params.n_gpu_layers = n_gpu_layers
        self.model = LlamaModel(path_model=model_path, params=model_params, verbose=verbose)
        self.vocab = self.model.vocab
        self.n_vocab = int(llama_cpp.llama_vocab_n_tokens(self.vocab))
        params = llama_cpp.llama_context_default_params()
        streams = parallel + prompt_cache  # the slots, then the cached prompts
        params.n_ctx = n_ctx * streams
        params.n_batch = params.n_ubatch = n_batch
        params.n_seq_max = streams
        params.n_threads = params.n_threads_batch = n_threads
        params.kv_unified = False
        params.flash_attn_type = 1  # enabled (measured 1.3x faster than without at 32 sequences)
        self.ctx = llama_cpp.llama_init_from_model(self.model.model, params)
        if not self.ctx:
            raise RuntimeError(f"llama.cpp could not create a context (n_ctx={n_ctx}, parallel={parallel})")
        self.n_ctx = int(llama_cpp.llama_n_ctx(self.ctx)) // streams
        """Cells per sequence: the longest prompt + answer of one request."""
        self.n_batch = n_batch
        self.fast_forward = fast_forward
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(n_batch, 0, parallel)
        self._piece = ctypes.create_string_buffer(256)
        self.prompter = ChatPrompter(self.model, chat_format, verbose)
        self.pieces = [self._piece_of(token) for token in range(self.n_vocab)]
        self.guidance = Guidance(self.vocab, self.n_vocab, self.pieces)
        self.slots = [Slot(seq) for seq in range(parallel)]
        self.cache = PromptCache(self.memory, parallel, prompt_cache)
        self.metadata: dict[str, str] = self.model.metadata()
        self._inbox: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._waiting: deque[Job] = deque()
        self._closed = False
        self.decodes = 0
        """Batches decoded so far (for tests and benchmarks)."""
        self.prefix_copies = 0
        """Prompt prefixes copied from another sequence's cache instead of evaluated."""
        self.moves = 0
        """Running jobs moved to a lower slot (see :meth:`_compact`)."""
        self.throwaways = 0
        """Decodes given a throw-away token (see :data:`SPLIT_KV_CELLS`)."""
        self.passes = 0
        """Passes over the weights llama.cpp cut the decodes into (:func:`.llama_passes.passes`)."""
        self.forced_tokens = 0
        """Answer tokens the grammar forced (fast-forward): each one a decode with logits saved."""
        self.generated_tokens = 0
        """Answer tokens, forced or chosen."""
        self.prompt_tokens = 0
        """Prompt tokens decoded (the rest of the prompts came from a slot's or the cache's cells)."""
        self._thread = threading.Thread(target=self._run, name="chainette-llama-decode", daemon=True)
        self._thread.start()

    # ---- event-loop side -------------------------------------------------------------------

    async def complete(self, request: ChatRequest) -> Completion:
        """Decode ``request`` with whatever else is running; cancelling this frees its sequence."""
        job = Job(request=request, token=anyio.lowlevel.current_token())
        self._inbox.put(job)
        try:
            await job.done.wait()
        except BaseException:
            job.cancelled = True  # the loop drops it at its next turn
            raise
        assert job.completion is not None
        return job.completion

    async def stream(self, request: ChatRequest) -> AsyncGenerator[str | Completion, None]:
        """Text deltas as ``request`` is decoded, then its completion; closing this frees its sequence."""
        feed: Feed[str | Completion] = Feed()
        job = Job(request=request, token=anyio.lowlevel.current_token(), feed=feed)
        self._inbox.put(job)
        try:
            while True:
                item = await feed.get()
                yield item
                if isinstance(item, Completion):
                    return
        finally:
            job.cancelled = True  # the loop drops it at its next turn (nothing, once it has finished)

    def busy_sequences(self) -> int:
        """Sequences holding a job right now."""
        return sum(1 for slot in self.slots if slot.job is not None)

    def load(self) -> int:
        """Jobs running or submitted and not yet admitted (to pick the least busy decoder)."""
        return self.busy_sequences() + len(self._waiting) + self._inbox.qsize()

    def cached_cells(self, seq: int) -> int:
        """KV cells held by sequence ``seq`` (from llama.cpp itself)."""
        return int(llama_cpp.llama_memory_seq_pos_max(self.memory, seq)) + 1

    def close(self) -> None:
        """Stop the loop (jobs still inside are answered as cancelled) and free llama.cpp's memory."""
        if self._closed:
            return
        self._closed = True
        self._inbox.put(None)
        self._thread.join()
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)
        self.model.close()  # type: ignore[no-untyped-call]

    # ---- loop thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            idle = not self._waiting and all(slot.job is None for slot in self.slots)
            if not self._take(block=idle):
                break
            try:
                self._drop_cancelled()
                self._admit()
                self._compact()
                if any(slot.job is not None for slot in self.slots):
                    self._step()
            except Exception as exc:  # a bug here must not leave anyone waiting forever
                self._fail_all(f"llama_cpp: the decode loop failed: {exc!r}")
        self._fail_all("cancelled: the engine was closed")

    def _take(self, *, block: bool) -> bool:
        """Move submitted jobs to the waiting queue; False once :meth:`close` was called."""
        try:
            job = self._inbox.get(block=block)
            while True:
                if job is None:
                    return False
                self._waiting.append(job)
                job = self._inbox.get_nowait()
        except queue.Empty:
            return True

    def _drop_cancelled(self) -> None:
        if any(job.cancelled for job in self._waiting):
            self._waiting = deque(job for job in self._waiting if not job.cancelled)
        for slot in self.slots:
            if slot.job is not None and slot.job.cancelled:
                slot.job = None
                self._forget(slot, 0)

    def _forget(self, slot: Slot, keep: int) -> None:
        """Free the slot's cells from position ``keep`` on."""
        if keep < len(slot.tokens):
            llama_cpp.llama_memory_seq_rm(self.memory, slot.seq, keep, -1)
            del slot.tokens[keep:]

    def _admit(self) -> None:
        while self._waiting:
            free = [slot for slot in self.slots if slot.job is None]
            if not free:
                return
            job = self._waiting[0]
            if not job.seq and not self._prepare(job):
                self._waiting.popleft()
                continue
            cached = {s.seq: common_prefix(s.tokens, job.seq) for s in self.slots}
            slot = free[0]  # the lowest free slot: running sequences stay in one run of ids
            own = cached[slot.seq]
            # another sequence (running or idle) may hold a longer start of this prompt: copy its cache
            source = max(self.slots, key=lambda s: cached[s.seq])
            shared = cached[source.seq]
            entry, stored = self.cache.best(job.seq)
            feeding = max(
                (
                    common_prefix(s.job.seq, job.seq)
                    for s in self.slots
                    if s.job is not None and s.fed < len(s.job.prompt)
                ),
                default=0,
            )
            if feeding >= own + MIN_COPY and feeding > max(shared, stored):
                # a prompt being evaluated starts the same way: copy that start once it is all
                # cached, not the part cached so far (every copy would evaluate the rest again)
                return
            keep = min(own, len(job.seq) - 1)
            if entry is not None and stored > shared and stored >= own + MIN_COPY:
                self.cache.offer(slot.seq, slot.tokens, keep, exclude=entry)  # before it is replaced
                slot.tokens = self.cache.take(entry, slot.seq)
                keep = min(stored, len(job.seq) - 1)
            elif source is not slot and shared >= own + MIN_COPY:
                self.cache.offer(slot.seq, slot.tokens, keep)
                self._copy(source, slot)
                keep = min(shared, len(job.seq) - 1)
                self.prefix_copies += 1
            else:
                self.cache.offer(slot.seq, slot.tokens, keep)
            self._forget(slot, keep)
            self._waiting.popleft()
            slot.job, slot.fed = job, keep

    def _copy(self, source: Slot, target: Slot) -> None:
        """Give ``target`` a copy of ``source``'s cache stream (llama.cpp copies it before the next decode)."""
        copy_stream(self.memory, source.seq, target.seq)
        target.tokens = list(source.tokens)

    def _compact(self) -> None:
        """Move the highest running jobs into lower free slots, so that running sequences have
        consecutive ids.

        With one cache stream per sequence, llama.cpp decodes a batch in one pass over the
        weights only for a run of consecutive sequence ids (``split_equal(sequential=True)``):
        every gap costs another pass. Moving a job copies its stream (a few ms) and leaves its
        tokens, and so its answer, unchanged.
        """
        while True:
            busy = [slot for slot in self.slots if slot.job is not None]
            free = [slot for slot in self.slots if slot.job is None]
            if not busy or not free or free[0].seq > busy[-1].seq:
                return
            source, target = busy[-1], free[0]
            self.cache.offer(target.seq, target.tokens, common_prefix(target.tokens, source.tokens))
            self._copy(source, target)
            target.job, target.fed = source.job, source.fed
            source.job = None
            self._forget(source, 0)
            self.moves += 1

    def _prepare(self, job: Job) -> bool:
        """Tokens, stop strings, limits and grammar of a new job; False if it was answered at once."""
        request = job.request
        try:
            prompt = self.prompter(request.messages)
        except Exception as exc:  # a template that rejects these messages
            self._answer(
                job, Completion(text=f"llama_cpp: the chat template failed: {exc}", finish_reason="error")
            )
            return False
        if len(prompt.tokens) >= self.n_ctx:
            self._answer(
                job,
                Completion(
                    text=f"llama_cpp: the prompt has {len(prompt.tokens)} tokens and the context window "
                    f"n_ctx is {self.n_ctx}: shorten the prompt or raise n_ctx.",
                    finish_reason="error",
                ),
            )
            return False
        sampling = request.sampling
        matcher = None
        if request.json_schema is not None:
            try:
                matcher = self.guidance.matcher(request.json_schema)
            except Exception as exc:
                self._answer(job, Completion(text=str(exc), finish_reason="error"))
                return False
        job.prompt = prompt.tokens
        job.stops = tuple(sampling.stop or ()) + prompt.stop
        job.max_new = min(sampling.max_tokens, self.n_ctx - len(prompt.tokens))
        job.chooser = TokenChooser(
            self.guidance, matcher, sampling.temperature, sampling.top_p, sampling.seed
        )
        job.seq = list(prompt.tokens)
        try:
            forced = job.chooser.forced() if self.fast_forward else []  # '{"' 'answer' '":' ...
        except Exception as exc:  # the grammar engine failed on this request only
            self._answer(
                job, Completion(text=f"llama_cpp: token choice failed: {exc}", finish_reason="error")
            )
            return False
        self.forced_tokens += len(forced)
        for token in forced:
            finish = self._append(job, token, grammar_done=False)
            if finish:
                self._answer(job, completion_of(job, finish))
                return False
        return True

    def _append(self, job: Job, token: int, *, grammar_done: bool) -> str | None:
        """Add ``token`` to the answer; the finish reason if the answer ends with it, else stream it on."""
        job.out.append(token)
        job.seq.append(token)
        job.text += self.pieces[token]
        self.generated_tokens += 1
        if (job.stops and cut_at_stop(job)) or grammar_done:
            return "stop"
        if len(job.out) >= job.max_new:
            return "length"
        if job.feed is not None:
            stream_piece(job, self.pieces[token])
        return None

    def _step(self) -> None:
        batch = self.batch
        batch.n_tokens = 0
        busy = [slot for slot in self.slots if slot.job is not None]
        counts = plan(
            [slot.seq for slot in busy],
            [len(slot.job.seq) - slot.fed for slot in busy if slot.job is not None],
            self.n_batch,
            forced=[i for i, slot in enumerate(busy) if slot.job and slot.fed >= len(slot.job.prompt)],
        )
        self.passes += passes([slot.seq for slot in busy], counts)
        rows: list[Slot] = []
        for slot in self.slots:
            slot.row = -1
        # in sequence order: llama.cpp decodes one token of each of consecutive sequences in one pass
        for slot, count in zip(busy, counts, strict=True):
            job = slot.job
            assert job is not None
            end = slot.fed + count
            for position in range(slot.fed, end):  # logits only where the sequence has a choice
                self._add(slot, job.seq[position], logits=position == len(job.seq) - 1)
            self.prompt_tokens += max(0, min(end, len(job.prompt)) - slot.fed)
            slot.fed = end
            if end == len(job.seq):
                rows.append(slot)
        lone = None  # one token in all, of a long sequence: a throw-away one follows (SPLIT_KV_CELLS)
        if batch.n_tokens == 1 and len(busy[0].tokens) > SPLIT_KV_CELLS:
            lone = busy[0]
            self._add(lone, batch.token[0], logits=False, keep=False)
        status = llama_cpp.llama_decode(self.ctx, batch)
        self.decodes += 1
        if lone is not None:  # free the throw-away token's cell
            llama_cpp.llama_memory_seq_rm(self.memory, lone.seq, len(lone.tokens), -1)
            self.throwaways += 1
        if status != 0:
            self._fail_running(f"llama_cpp: llama_decode returned {status}")
            return
        for slot in rows:
            self._advance(slot)

    def _add(self, slot: Slot, token: int, *, logits: bool, keep: bool = True) -> None:
        """Put ``token`` in the batch after ``slot``'s cached tokens (``keep``: and count it as one)."""
        batch, i = self.batch, self.batch.n_tokens
        batch.token[i] = token
        batch.pos[i] = len(slot.tokens)
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = slot.seq
        batch.logits[i] = logits
        if logits:
            slot.row = i
        batch.n_tokens = i + 1
        if keep:
            slot.tokens.append(token)

    def _advance(self, slot: Slot) -> None:
        job = slot.job
        assert job is not None and job.chooser is not None
        logits = np.ctypeslib.as_array(
            llama_cpp.llama_get_logits_ith(self.ctx, slot.row), shape=(self.n_vocab,)
        )
        try:
            token = job.chooser.choose(logits)
            eog = llama_cpp.llama_vocab_is_eog(self.vocab, token)
            forced = job.chooser.forced() if self.fast_forward and not eog else []
        except Exception as exc:  # the grammar engine failed on this sequence only
            self._finish(
                slot, Completion(text=f"llama_cpp: token choice failed: {exc}", finish_reason="error")
            )
            return
        if eog:
            self._finish(slot, completion_of(job, "stop"))
            return
        self.forced_tokens += len(forced)
        for i, next_token in enumerate([token, *forced]):
            # the grammar's end is known once the forced tokens are all in (the matcher has them)
            finish = self._append(job, next_token, grammar_done=i == len(forced) and job.chooser.finished)
            if finish:
                self._finish(slot, completion_of(job, finish))
                return

    def _piece_of(self, token: int) -> bytes:
        n = llama_cpp.llama_token_to_piece(self.vocab, token, self._piece, len(self._piece), 0, False)
        return self._piece.raw[:n] if n > 0 else b""

    def _finish(self, slot: Slot, completion: Completion) -> None:
        job = slot.job
        assert job is not None
        slot.job = None
        # its cells stay: the next prompt may start the same way
        self._answer(job, completion)

    def _fail_running(self, text: str) -> None:
        """Answer every running job with ``text`` and clear their sequences (their cache is unknown)."""
        self.cache.clear()
        for slot in self.slots:
            llama_cpp.llama_memory_seq_rm(self.memory, slot.seq, 0, -1)
            slot.tokens.clear()
            if slot.job is not None:
                self._finish(slot, Completion(text=text, finish_reason="error"))

    def _fail_all(self, text: str) -> None:
        """Answer every running and waiting job with ``text``."""
        self._fail_running(text)
        for job in self._waiting:
            self._answer(job, Completion(text=text, finish_reason="error"))
        self._waiting.clear()

    def _answer(self, job: Job, completion: Completion) -> None:
        job.completion = completion
        if job.cancelled:
            return
        if job.feed is not None:
            if completion.finish_reason != "error" and len(completion.text) > job.streamed:
                job.feed.put(completion.text[job.streamed :])  # what was held back, cut at a stop string
            job.feed.put(completion)
            return
        with contextlib.suppress(RuntimeError):  # its event loop is gone: nobody is waiting any more
            anyio.from_thread.run_sync(job.done.set, token=job.token)
