"""A provider's batch API (OpenAI's ``/v1/batches`` and compatible ones): half the price, hours of latency.

One ``generate(requests)`` call is one batch: the requests' ``/v1/chat/completions`` bodies (built
by the ``openai`` back-end's :func:`~chainette.engines.openai_http.chat_body`, so guided JSON is
sent exactly as there) are written as JSONL lines with a ``custom_id`` each, uploaded
(``POST /files``, purpose ``batch``), and a batch is created (``POST /batches``). The engine then
polls ``GET /batches/{id}`` (every ``poll_interval`` seconds, growing 1.5x per poll up to
``poll_max``), downloads the output and error files (``GET /files/{id}/content``) and maps each
line back to its request by ``custom_id``. An item that failed, expired or has no line becomes
``Completion(finish_reason="error")`` with the provider's reason and the batch id, so its record
goes to ``failures.jsonl``; a batch that fails or expires as a whole gives every item its reason.

Never paying twice: the runtime sends only what the ledger does not hold; this engine keeps a
journal (:mod:`.batch_journal`) of the batches it creates, written before the create, so a
rerun after a crash or Ctrl-C between submit and download attaches its requests to the batch
already at the provider instead of creating another. A downloaded batch's answers go into the
journal (one transaction) before anything else happens to them, and stay there until the engine
closes after handing them over (by then the runtime has committed them to its ledger): a run
killed after the download, while the same call still waits for another batch, leaves them there,
and the next call asking for them gets them from the journal, with no batch at all. A cancelled
run leaves the batch running there (cancelling it would throw away work that is being paid for).

Transport failures (429 with ``Retry-After``, 5xx, timeouts) of each HTTP exchange are retried
with the ``openai`` back-end's backoff; a retried create first looks for a batch already made
from the same input file, so a lost answer does not create a second batch.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections import Counter
from collections.abc import AsyncGenerator, Sequence
from typing import Any, ClassVar

import anyio
import orjson

from .._errors import EngineConfigError, EngineError
from .base import ChatRequest, Completion
from .batch_client import BatchClient, _Refused
from .batch_journal import BatchJournal, default_journal_path
from .batch_results import error_completion as _error
from .batch_results import missing_reason, read_lines
from .openai_http import chat_body

__all__ = ["OpenAIBatchEngine"]

_log = logging.getLogger("chainette.engines.openai_batch")
_TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
_ENDPOINT = "/v1/chat/completions"
_UPLOADED = "upload:"
"""The journal's placeholder batch id (``upload:<input file id>``) until the create answers."""


class OpenAIBatchEngine(BatchClient):
    """An OpenAI-compatible batch API: one ``generate`` call, one batch (see the module docstring).

    Args:
        model: The model name written into every request line.
        base_url: The API root, e.g. ``https://api.openai.com/v1``.
        api_key_env: Name of the environment variable holding the API key.
        dialect: How the schema is sent (``json_schema``, ``json_object``, ``structured_outputs``,
            ``guided_json``, ``none``): a batch cannot try dialects one after another, so there is no ``auto``.
        completion_window: Sent with the batch (``24h`` at OpenAI); past it the provider expires what is left.
        poll_interval: Seconds between the first polls of a batch's status.
        poll_max: Largest wait between two polls (the wait grows 1.5x per poll).
        journal: The SQLite file of submitted batches (default: :func:`default_journal_path`).
        max_batch_size: Most requests in one batch (OpenAI takes 50,000): the runtime's chunk
            (``batch_size``) goes in one batch when it is smaller.
        max_concurrency: Batches in flight at once.
        timeout: Seconds for one HTTP exchange (an upload of a large file included).
        max_retries: Retries of one HTTP exchange after 429, 5xx, timeouts and dropped connections.
        backoff_base: First backoff ceiling in seconds, doubled each retry.
        backoff_max: Largest backoff ceiling in seconds.
        extra_body: Extra fields merged into every request line's body.

    Example:
        >>> register_engine("cheap", backend="openai_batch", model="gpt-4o-mini",
        ...                 base_url="https://api.openai.com/v1", api_key_env="OPENAI_API_KEY")  # doctest: +SKIP
    """

    backend: ClassVar[str] = "openai_batch"
    supports_streaming = False
    gather_s = 0.25  # records read together go in one provider batch (their requests come one by one)

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str,
        api_key_env: str | None = None,
        dialect: str = "json_schema",
        completion_window: str = "24h",
        poll_interval: float = 15.0,
        poll_max: float = 300.0,
        journal: str | None = None,
        max_batch_size: int = 50_000,
        max_concurrency: int = 4,
        timeout: float = 300.0,
        max_retries: int = 4,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        if dialect in ("auto", "ollama"):
            raise EngineConfigError(
                f"openai_batch: dialect {dialect!r} cannot be used with a batch API; pick one of json_schema "
                "(OpenAI), json_object, structured_outputs, guided_json or none."
            )
        if poll_interval <= 0 or poll_max < poll_interval or max_batch_size < 1:
            raise EngineConfigError(
                "openai_batch: poll_interval > 0, poll_max >= poll_interval and max_batch_size >= 1 are required."
            )
        super().__init__(
            model,
            base_url=base_url,
            api_key_env=api_key_env,
            dialect=dialect,
            max_concurrency=max_concurrency,
            timeout=timeout,
            max_retries=max_retries,
            backoff_base=backoff_base,
            backoff_max=backoff_max,
            extra_body=extra_body,
        )
        self.max_batch_size = max_batch_size
        self.completion_window = completion_window
        self.poll_interval = poll_interval
        self.poll_max = poll_max
        self.journal_path = journal
        self.batch_stats: Counter[str] = Counter()
        """``created``, ``attached`` (batches a rerun picked up), ``from_journal`` (answers a rerun
        got from the journal: downloaded, never handed over), ``polls``, ``lines`` sent."""
        self._journal: BatchJournal | None = None
        self._handed: set[str] = set()
        """Fingerprints whose journalled answers a ``generate`` call returned: delivered at :meth:`close`."""

    async def start(self) -> None:
        await super().start()
        assert self._client is not None
        del self._client.headers["content-type"]  # JSON bodies set it themselves; the upload is multipart
        path = self.journal_path or default_journal_path()
        self._journal = await anyio.to_thread.run_sync(BatchJournal, path)

    async def close(self) -> None:
        await super().close()
        if self._journal is not None:
            # The runtime commits what a call returned before the engine closes (under a shield):
            # only now may the journal's copies go. A process that dies first keeps them here.
            journal, handed = self._journal, list(self._handed)
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(journal.delivered, handed)
            self._handed.clear()
            journal.close()
            self._journal = None

    async def stream(self, request: ChatRequest) -> AsyncGenerator[str | Completion, None]:
        """No deltas from a batch: the completion alone, once its batch is done."""
        (completion,) = await self.generate([request])
        yield completion

    async def generate(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        if self._client is None or self._journal is None:
            raise EngineError("openai_batch: generate() called before start() (or after close()).")
        if self.fatal_error is not None:
            return [Completion(text=self.fatal_error, finish_reason="error", attempts=0) for _ in requests]
        bodies: dict[str, dict[str, Any]] = {}  # fingerprint -> body, each distinct request once
        fingerprints: list[str] = []
        for request in requests:
            body = {**chat_body(self.model, request, self.dialect), **self.extra_body}
            fingerprint = self._fingerprint(body)
            bodies.setdefault(fingerprint, body)
            fingerprints.append(fingerprint)
        results = await self._kept(list(bodies))
        try:
            groups, attached = await self._attached([fp for fp in bodies if fp not in results])
        except _Refused as exc:  # cannot tell whether an earlier create made its batch: send nothing
            return [_error(f"{exc.message}; nothing was sent, run again") for _ in requests]
        self.batch_stats["attached"] += len(groups)
        for batch_id, items in groups.items():
            _log.info("attaching %d request(s) to batch %s, submitted earlier", len(items), batch_id)
        fresh = [fp for fp in bodies if fp not in attached and fp not in results]
        try:
            if fresh:
                try:
                    batch_id, items = await self._submit(fresh, bodies)
                    groups[batch_id] = items
                except _Refused as exc:
                    results.update((fp, _error(exc.message)) for fp in fresh)
            async with anyio.create_task_group() as tg:
                for batch_id, items in groups.items():
                    tg.start_soon(self._collect, batch_id, items, results)
        except Exception as exc:  # a bug or an unexpected library error: fail the call, keep the cause
            raise EngineError(self._scrub(f"openai_batch: {type(exc).__name__}: {exc}")) from exc
        self._handed.update(fp for fp, c in results.items() if c.finish_reason != "error")
        return [results[fp] for fp in fingerprints]

    async def _kept(self, fingerprints: list[str]) -> dict[str, Completion]:
        """The answers the journal keeps for ``fingerprints``: downloaded by an earlier call whose
        process did not live to hand them over (or to close). Paid for once; returned as they are."""
        assert self._journal is not None
        kept = await anyio.to_thread.run_sync(self._journal.answers, fingerprints)
        if kept:
            self.batch_stats["from_journal"] += len(kept)
            _log.info("%d answer(s) from the journal, downloaded earlier and never handed over", len(kept))
        return {fp: Completion.model_validate_json(answer) for fp, answer in kept.items()}

    async def _attached(self, fingerprints: list[str]) -> tuple[dict[str, dict[str, str]], set[str]]:
        """The requests already in a batch (the journal's pending items): ``{batch id: {custom_id:
        fingerprint}}`` and their fingerprints. A batch whose create was cut short (its placeholder)
        is looked for by its input file; if it was never made, its requests are not attached."""
        assert self._journal is not None
        journal = self._journal
        pending = await anyio.to_thread.run_sync(journal.pending, fingerprints)
        groups: dict[str, dict[str, str]] = {}
        for fingerprint, (batch_id, custom_id) in pending.items():
            groups.setdefault(batch_id, {})[custom_id] = fingerprint
        for placeholder in [b for b in groups if b.startswith(_UPLOADED)]:
            items = groups.pop(placeholder)
            found = await self._existing_batch(placeholder.removeprefix(_UPLOADED), strict=True)
            if found is not None:
                groups[str(found["id"])] = items
                await anyio.to_thread.run_sync(journal.created, placeholder, str(found["id"]))
                continue
            settle = functools.partial(journal.settle, placeholder, "never created", None)
            await anyio.to_thread.run_sync(
                functools.partial(settle, answered={}, failed=list(items.values()))
            )
        return groups, {fp for items in groups.values() for fp in items.values()}

    def _fingerprint(self, body: dict[str, Any]) -> str:
        """What identifies a request line: the provider (address without credentials) and its body."""
        state = hashlib.sha256(self.public_url.partition("?")[0].encode() + b"\n")
        state.update(orjson.dumps(body, option=orjson.OPT_SORT_KEYS))
        return state.hexdigest()

    async def _submit(
        self, fresh: list[str], bodies: dict[str, dict[str, Any]]
    ) -> tuple[str, dict[str, str]]:
        """Upload the lines and create their batch; journal it before anything else. Returns the
        batch id and ``{custom_id: fingerprint}``."""
        items = {f"r{i}-{fp[:16]}": fp for i, fp in enumerate(fresh)}
        lines = [
            orjson.dumps({"custom_id": cid, "method": "POST", "url": _ENDPOINT, "body": bodies[fp]})
            for cid, fp in items.items()
        ]
        content = b"\n".join(lines) + b"\n"
        upload = await self._http(
            "upload the batch input file",
            "POST",
            "/files",
            files={"file": ("chainette-batch.jsonl", content, "application/jsonl")},
            data={"purpose": "batch"},
        )
        file_id = str(upload["id"])
        assert self._journal is not None
        journal, placeholder = self._journal, f"{_UPLOADED}{file_id}"
        pairs = [(fp, cid) for cid, fp in items.items()]
        with anyio.CancelScope(
            shield=True
        ):  # from here a batch may exist: it must be findable, Ctrl-C or not
            await anyio.to_thread.run_sync(journal.record, placeholder, self.public_url, file_id, pairs)
        spec = {
            "input_file_id": file_id,
            "endpoint": _ENDPOINT,
            "completion_window": self.completion_window,
            "metadata": {"created_by": "chainette", "engine": self.name or str(self.model)},
        }
        batch = await self._http("create the batch", "POST", "/batches", json=spec, adopt=file_id)
        batch_id = str(batch["id"])
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(journal.created, placeholder, batch_id)
        self.batch_stats["created"] += 1
        self.batch_stats["lines"] += len(lines)
        _log.info("submitted batch %s: %d request(s), input file %s", batch_id, len(lines), file_id)
        return batch_id, items

    async def _collect(self, batch_id: str, items: dict[str, str], results: dict[str, Completion]) -> None:
        """Wait for the batch, download its files and put each item's completion in ``results``."""
        assert self._journal is not None
        journal = self._journal
        try:
            batch = await self._wait(batch_id)
            answers, notes = await self._results(batch_id, batch, items)
        except _Refused as exc:
            if exc.status == 404:  # not at this provider (deleted, another account): send them again
                reason = f"batch {batch_id} is unknown to {self.public_url}: {exc.message}"
                await anyio.to_thread.run_sync(
                    lambda: journal.settle(
                        batch_id, "unknown", reason, answered={}, failed=list(items.values())
                    )
                )
                results.update(
                    (fp, _error(f"{reason}. Run again to send it in a new batch.")) for fp in items.values()
                )
                return
            kept = f"the batch is still at the provider and in the journal {journal.path}: run again to pick it up"
            results.update((fp, _error(f"{exc.message}; {kept}")) for fp in items.values())
            return
        status = str(batch.get("status"))
        missing = missing_reason(batch_id, batch, self.completion_window, notes)
        answered: dict[str, str] = {}
        failed: list[str] = []
        got: dict[str, Completion] = {}
        for custom_id, fp in items.items():
            completion = got[fp] = answers.get(custom_id) or _error(f"{missing} (custom_id {custom_id})")
            if completion.finish_reason == "error":
                failed.append(fp)
            else:
                answered[fp] = completion.model_dump_json(exclude={"attempts"})
        ended = missing if status != "completed" else None
        with anyio.CancelScope(shield=True):  # paid for: kept before anything else can happen to them
            await anyio.to_thread.run_sync(
                lambda: journal.settle(batch_id, status, ended, answered=answered, failed=failed)
            )
        results.update(got)
        _log.info("batch %s %s: %d answered, %d failed", batch_id, status, len(answered), len(failed))

    async def _wait(self, batch_id: str) -> dict[str, Any]:
        """Poll the batch until it ends; its last state."""
        assert self._journal is not None
        interval, last = self.poll_interval, ""
        while True:
            batch: dict[str, Any] = await self._http(f"poll batch {batch_id}", "GET", f"/batches/{batch_id}")
            self.batch_stats["polls"] += 1
            status = str(batch.get("status"))
            if status in _TERMINAL:
                return batch
            if status != last:
                await anyio.to_thread.run_sync(self._journal.update, batch_id, status)
                last = status
            counts = batch.get("request_counts") or {}
            _log.info(
                "batch %s %s: %s of %s done, next poll in %.3g s",
                batch_id,
                status,
                counts.get("completed", "?"),
                counts.get("total", "?"),
                interval,
            )
            await anyio.sleep(interval)
            interval = min(self.poll_max, interval * 1.5)

    async def _results(
        self, batch_id: str, batch: dict[str, Any], items: dict[str, str]
    ) -> tuple[dict[str, Completion], list[str]]:
        """The completions found in the batch's output and error files, by custom_id, and notes on
        lines that could not be read."""
        answers: dict[str, Completion] = {}
        notes: list[str] = []
        for kind in ("output", "error"):
            file_id = batch.get(f"{kind}_file_id")
            if not file_id:
                continue
            text = await self._http(
                f"download the {kind} file {file_id} of batch {batch_id}",
                "GET",
                f"/files/{file_id}/content",
                raw=True,
            )
            read_lines(text, f"batch {batch_id}, {kind} file {file_id}", batch_id, items, answers, notes)
        return answers, notes

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "completion_window": self.completion_window,
            "max_batch_size": self.max_batch_size,
            "journal": str(self.journal_path or default_journal_path()),
            **{f"batches_{k}": v for k, v in self.batch_stats.items()},
        }
