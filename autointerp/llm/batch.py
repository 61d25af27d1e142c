"""Batch APIs: OpenAI's Batch API and Anthropic's Message Batches, at half the price of live calls.

A BatchClient is an LLMClient like the live ones, so the stages do not know which one they talk
to. Each complete() call joins a queue; once the stage has handed over everything it can (no new
request for `batch_idle_s`), the queue goes out as one batch (split at the provider's limits),
and each call is answered when its batch ends. Answers go into the same call log and cache as
live ones, priced at the batch rate.

Nothing paid for is asked twice. A batch's requests are written to the ledger (the store's
llm_batches) before the provider is asked to run them, and the provider's id right after; a
re-run, after a kill or a lost connection, finds the batches not yet collected, waits for them
and collects their answers instead of submitting those requests again. A batch that expires or
is cancelled answers its unfinished requests with an error, logged as a failed call: the stage
stores what it got, and the next run asks for the rest.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import TypeVar

from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt

from autointerp.errors import AutointerpError
from autointerp.llm.client import (
    AnthropicClient,
    BatchRecord,
    BatchRequest,
    CallFailed,
    Completion,
    LLMCall,
    LLMClient,
    OpenAIChatClient,
    SDKClient,
    cache_key,
    canonical_json,
    server_message,
)
from autointerp.llm.prices import Usage
from autointerp.llm.redact import redact_urls

log = logging.getLogger(__name__)
T = TypeVar("T")

BATCH_DISCOUNT = 0.5  # both providers bill batch tokens at half the live price
# Tasks whose every call depends on the answer before it (the saturation codebook): one batch
# round per call would take hours, so they stay live.
LIVE_PURPOSES = frozenset({"codebook"})
MAX_BATCH_BYTES = 100 * 2**20  # below both providers' file limits (OpenAI 200 MB, Anthropic 256 MB)


@dataclass
class BatchStatus:
    running: bool
    failed: str | None = None  # why the provider refused the whole batch
    ended_how: str = ""  # completed, expired, cancelled, ...
    files: tuple[str, ...] = ()  # OpenAI: the output and error files


# custom_id → (response body, error); exactly one of them set.
Results = dict[str, tuple[dict | None, str | None]]


class BatchEndpoint(abc.ABC):
    """One provider's batch protocol, through its official SDK client."""

    max_requests: int

    @abc.abstractmethod
    async def submit(self, record: BatchRecord) -> str:
        """Create the batch; return the provider's id."""

    async def find(self, record: BatchRecord) -> str | None:
        """The id of a batch whose creation was interrupted before its id was stored, if the provider has it."""
        return None

    @abc.abstractmethod
    async def poll(self, batch_id: str) -> BatchStatus: ...

    @abc.abstractmethod
    async def results(self, batch_id: str, status: BatchStatus) -> Results: ...


class OpenAIBatches(BatchEndpoint):
    """POST /v1/files (a JSONL of requests), POST /v1/batches, GET /v1/batches/{id}, GET /v1/files/{id}/content."""

    max_requests = 50_000
    running = frozenset({"validating", "in_progress", "finalizing", "cancelling"})

    def __init__(self, live: OpenAIChatClient):
        self.live, self.sdk = live, live.sdk

    async def submit(self, record: BatchRecord) -> str:
        lines = (
            json.dumps(
                {
                    "custom_id": r.cache_key,
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": self.live.body(r.system, r.user, r.params),
                },
                ensure_ascii=False,
            )
            for r in record.requests
        )
        data = ("\n".join(lines) + "\n").encode()
        uploaded = await self.sdk.files.create(
            file=(f"autointerp-{record.local_id}.jsonl", data, "application/jsonl"), purpose="batch"
        )
        batch = await self.sdk.batches.create(
            input_file_id=uploaded.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
            metadata={"autointerp_batch": record.local_id},
        )
        return batch.id

    async def find(self, record: BatchRecord) -> str | None:
        seen = 0
        async for batch in self.sdk.batches.list(limit=100):
            if (batch.metadata or {}).get("autointerp_batch") == record.local_id:
                return batch.id
            seen += 1
            if seen >= 1000 or batch.created_at < record.submitted_at.replace(tzinfo=timezone.utc).timestamp() - 3600:
                return None  # listed newest first: older ones cannot be it
        return None

    async def poll(self, batch_id: str) -> BatchStatus:
        batch = await self.sdk.batches.retrieve(batch_id)
        if batch.status in self.running:
            return BatchStatus(running=True)
        if batch.status == "failed":
            errors = (
                [f"{e.code}: {e.message}" + (f" (line {e.line})" if e.line else "") for e in (batch.errors.data or [])]
                if batch.errors
                else []
            )
            return BatchStatus(running=False, failed="; ".join(errors[:3]) or "failed", ended_how="failed")
        return BatchStatus(
            running=False,
            ended_how=batch.status,
            files=tuple(f for f in (batch.output_file_id, batch.error_file_id) if f),
        )

    async def results(self, batch_id: str, status: BatchStatus) -> Results:
        out: Results = {}
        for file_id in status.files:
            content = await self.sdk.files.content(file_id)
            for line in content.text.splitlines():
                if not line.strip():
                    continue
                row = json.loads(line)
                response, error = row.get("response") or {}, row.get("error")
                if response.get("status_code") == 200 and not error:
                    out[row["custom_id"]] = (response["body"], None)
                elif error:
                    out[row["custom_id"]] = (None, f"{error.get('code')}: {error.get('message')}")
                else:
                    out[row["custom_id"]] = (
                        None,
                        f"{response.get('status_code')}: {server_message(json.dumps(response.get('body')))}",
                    )
        return out


class AnthropicBatches(BatchEndpoint):
    """POST /v1/messages/batches, GET /v1/messages/batches/{id}, GET its results_url (JSONL)."""

    max_requests = 100_000

    def __init__(self, live: AnthropicClient):
        self.live, self.sdk = live, live.sdk

    async def submit(self, record: BatchRecord) -> str:
        # Message Batches carry no metadata, so an interrupted creation cannot be found again (find: None).
        batch = await self.sdk.messages.batches.create(
            requests=[
                {"custom_id": r.cache_key, "params": self.live.body(r.system, r.user, r.params)}
                for r in record.requests
            ]
        )
        return batch.id

    async def poll(self, batch_id: str) -> BatchStatus:
        batch = await self.sdk.messages.batches.retrieve(batch_id)
        return BatchStatus(running=batch.processing_status != "ended", ended_how="ended")

    async def results(self, batch_id: str, status: BatchStatus) -> Results:
        out: Results = {}
        async for item in await self.sdk.messages.batches.results(batch_id):
            row = item.to_dict()
            result = row["result"]
            if result["type"] == "succeeded":
                out[row["custom_id"]] = (result["message"], None)
            elif result["type"] == "errored":
                error = result.get("error", {}).get("error", {})
                out[row["custom_id"]] = (None, f"{error.get('type', 'error')}: {error.get('message', '')}")
            else:  # expired, canceled
                out[row["custom_id"]] = (None, f"{result['type']}: the batch ended before this request ran")
        return out


class _BatchGone(Exception):
    """The provider answers 404 for a batch id the ledger holds."""


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


class BatchClient(LLMClient):
    """complete() through a provider's batch API; the live client beside it serves LIVE_PURPOSES,
    check(), the request bodies and the parsing of answers."""

    def __init__(self, live: SDKClient, endpoint: BatchEndpoint):
        self.live, self.endpoint = live, endpoint
        self.config, self.store = live.config, live.store
        self.totals = live.totals  # one bill for live and batch calls
        self._queue: list[BatchRequest] = []
        self._waiting: dict[str, asyncio.Future] = {}  # cache key → its answer, once its batch ends
        self._handed_out: set[str] = set()  # answers already given to a caller: a second asker reads them as cached
        self._last_enqueued = 0.0
        self._flusher: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._resumed = False

    def __repr__(self) -> str:
        return f"BatchClient({self.live!r})"

    async def check(self) -> None:
        await self.live.check()

    async def aclose(self) -> None:
        for task in [*self._tasks, *([self._flusher] if self._flusher else [])]:
            task.cancel()  # a batch still running stays in the ledger: the next run collects it
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.live.aclose()

    async def complete(
        self,
        system: str,
        user: str,
        *,
        purpose: str,
        feature: int | None,
        max_tokens: int | None = None,
        schema: Mapping | None = None,
    ) -> Completion:
        if purpose in LIVE_PURPOSES:
            return await self.live.complete(
                system, user, purpose=purpose, feature=feature, max_tokens=max_tokens, schema=schema
            )
        cfg = self.config
        params = cfg.request_params(max_tokens, schema)
        key = cache_key(cfg.provider, cfg.model, system, user, params)
        started = time.monotonic()
        self._resume()
        if key not in self._waiting and (hit := self.store.lookup(key)) is not None:
            return self._hand_out(key, replace(hit, cached=True, retries=0, latency_s=time.monotonic() - started))
        if key not in self._waiting:
            self._waiting[key] = asyncio.get_running_loop().create_future()
            self._queue.append(BatchRequest(key, purpose, feature, system, user, params))
            self._last_enqueued = time.monotonic()
            if self._flusher is None:
                self._flusher = asyncio.create_task(self._flush_when_idle())
        return self._hand_out(key, await asyncio.shield(self._waiting[key]))

    def _hand_out(self, key: str, completion: Completion) -> Completion:
        if key in self._handed_out:
            completion = replace(completion, cached=True)
        self._handed_out.add(key)
        self.totals.add(completion)
        return completion

    # ------------------------------------------------------------ submitting

    async def _flush_when_idle(self) -> None:
        """Send the queue as batches once no request has joined it for batch_idle_s (or it is full)."""
        cfg = self.config
        limit = min(cfg.batch_max_requests, self.endpoint.max_requests)
        while self._queue:
            await asyncio.sleep(cfg.batch_idle_s)
            if time.monotonic() - self._last_enqueued < cfg.batch_idle_s and len(self._queue) < limit:
                continue
            while self._queue:
                take, size = 0, 0
                while take < min(limit, len(self._queue)) and (take == 0 or size < MAX_BATCH_BYTES):
                    r = self._queue[take]
                    size += len(r.system.encode()) + len(r.user.encode()) + 512
                    take += 1
                record = BatchRecord(uuid.uuid4().hex, self._queue[:take], _utcnow())
                del self._queue[:take]
                self._spawn(self._submit_and_collect(record))
        self._flusher = None

    def _spawn(self, coro: Awaitable) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _submit_and_collect(self, record: BatchRecord) -> None:
        cfg = self.config
        try:
            self.store.batch_opened(record, cfg.provider, cfg.model, redact_urls(cfg.base_url or "") or None)
            try:
                record.batch_id = await self._retrying("create a batch", lambda: self.endpoint.submit(record))
            except AutointerpError as exc:
                if getattr(exc, "definitive", True):  # the provider refused it: nothing runs there
                    self.store.batch_update(record.local_id, "failed", detail=exc.problem)
                raise
            self.store.batch_update(record.local_id, "submitted", batch_id=record.batch_id)
            log.info("%s batch %s submitted: %d requests", cfg.provider, record.batch_id, len(record.requests))
            await self._collect_when_ended(record)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._fail(record, exc)

    # ------------------------------------------------------------ resuming

    def _resume(self) -> None:
        """Once per client: wait on the batches an earlier run left at the provider instead of asking again."""
        if self._resumed:
            return
        self._resumed = True
        cfg = self.config
        for record in self.store.open_batches(cfg.provider, cfg.model, redact_urls(cfg.base_url or "") or None):
            for r in record.requests:
                if r.cache_key not in self._waiting and self.store.lookup(r.cache_key) is None:
                    self._waiting[r.cache_key] = asyncio.get_running_loop().create_future()
            log.info(
                "%s batch %s (%d requests) from an earlier run: collecting it",
                cfg.provider,
                record.batch_id or record.local_id,
                len(record.requests),
            )
            self._spawn(self._resume_one(record))

    async def _resume_one(self, record: BatchRecord) -> None:
        try:
            if record.batch_id is None:  # killed while creating it: does the provider have it?
                record.batch_id = await self._retrying("list batches", lambda: self.endpoint.find(record))
                if record.batch_id is None:
                    self.store.batch_update(
                        record.local_id, "lost", detail="creation interrupted; the provider has no such batch"
                    )
                    self._requeue(record)
                    return
                self.store.batch_update(record.local_id, "submitted", batch_id=record.batch_id)
            await self._collect_when_ended(record)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self._fail(record, exc)

    def _requeue(self, record: BatchRecord) -> None:
        """Requests that never reached the provider go out again, in the next batch."""
        self._queue.extend(
            r for r in record.requests if r.cache_key in self._waiting and not self._waiting[r.cache_key].done()
        )
        self._last_enqueued = time.monotonic()
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_when_idle())

    # ------------------------------------------------------------ collecting

    async def _collect_when_ended(self, record: BatchRecord) -> None:
        cfg = self.config
        try:
            while (
                status := await self._retrying("poll a batch", lambda: self.endpoint.poll(record.batch_id), gone=True)
            ).running:
                await asyncio.sleep(cfg.batch_poll_s)
        except _BatchGone:  # another account or endpoint, or deleted: its requests were not run for us
            self.store.batch_update(
                record.local_id, "lost", detail=f"{cfg.provider} knows no batch {record.batch_id} (404)"
            )
            self._requeue(record)
            return
        if status.failed is not None:
            self.store.batch_update(record.local_id, "failed", detail=status.failed)
            raise AutointerpError(
                f"{cfg.provider} batch {record.batch_id} failed: {status.failed}",
                "check --judge-model and that your account may use the batch API; answers so far are stored",
            )
        results = await self._retrying(
            "fetch batch results",
            lambda: self.endpoint.results(record.batch_id, status),
            timeout_s=max(cfg.timeout_s, 600.0),
        )  # up to 100 MB of answers
        n_ok, first_error = self._record_results(record, results, status)
        self.store.batch_update(
            record.local_id, "ended", detail=f"{status.ended_how}: {n_ok} of {len(record.requests)} answered"
        )
        if (
            n_ok == 0
            and first_error
            and status.ended_how not in ("expired", "cancelled")
            and not first_error.startswith(("expired", "canceled"))
        ):
            raise AutointerpError(
                f"every request of {cfg.provider} batch {record.batch_id} failed (first: {first_error})",
                "check --judge-model and the request settings; answers so far are stored, and a re-run resumes",
            )

    def _record_results(self, record: BatchRecord, results: Results, status: BatchStatus) -> tuple[int, str | None]:
        """Log every request's answer or error as a call and answer whoever waits on it."""
        cfg = self.config
        price = cfg.price()
        now = _utcnow()
        latency = (now - record.submitted_at).total_seconds()
        n_ok, first_error = 0, None
        for r in record.requests:
            body, error = results.get(
                r.cache_key, (None, f"{status.ended_how}: the batch ended before this request ran; a re-run asks again")
            )
            text, usage, raw = "", Usage(), ""
            if body is not None:
                raw = json.dumps(body, ensure_ascii=False)
                try:
                    text, usage = self.live.parse(body)
                except (KeyError, IndexError, TypeError, ValueError, AttributeError):
                    error = "malformed response body (unexpected JSON shape)"
            if error is None and (known := self.store.lookup(r.cache_key)) is not None:
                completion = replace(
                    known, cached=False
                )  # collected by an earlier run that stopped before closing the batch
            else:
                cost = None if price is None else price.cost(usage)
                scrub = self.live.scrub
                call = LLMCall(
                    cache_key=r.cache_key,
                    provider=cfg.provider,
                    model=cfg.model,
                    purpose=r.purpose,
                    feature=r.feature,
                    system=r.system,
                    user=r.user,
                    params=canonical_json(r.params),
                    response=scrub(text),
                    raw=scrub(raw),
                    prompt_tokens=usage.prompt_tokens,
                    completion_tokens=usage.completion_tokens,
                    latency_s=latency,
                    retries=0,
                    cost_usd=None if cost is None else BATCH_DISCOUNT * cost,
                    error=scrub(error) if error else None,
                    timestamp=now.replace(tzinfo=timezone.utc),
                    cache_read_tokens=usage.cache_read_tokens,
                    cache_write_tokens=usage.cache_write_tokens,
                )
                call.call_id = self.store.record(call)
                completion = replace(call.as_completion(cached=False), error=call.error)
            n_ok += completion.error is None
            first_error = first_error or completion.error
            if (future := self._waiting.pop(r.cache_key, None)) is not None and not future.done():
                future.set_result(completion)
        return n_ok, first_error

    def _fail(self, record: BatchRecord, exc: BaseException) -> None:
        """Whoever waits on this batch gets the error (the ledger keeps the batch for a re-run where it
        may still end)."""
        for r in record.requests:
            if (future := self._waiting.pop(r.cache_key, None)) is not None and not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: a request nobody in this run asks for is not "lost"

    async def _retrying(
        self, what: str, call: Callable[[], Awaitable[T]], gone: bool = False, timeout_s: float | None = None
    ) -> T:
        """One batch API request with the live client's retry policy; a failure outlasting it stops the
        stage. gone: a 404 means the batch does not exist (raises _BatchGone)."""
        cfg = self.config

        async def attempt() -> T:
            try:
                async with asyncio.timeout(timeout_s or cfg.timeout_s):
                    return await call()
            except self.live.errors.transport as exc:
                if gone and getattr(exc, "status_code", None) == 404:
                    raise _BatchGone() from None
                raise self.live.classify(exc) from None

        retrying = AsyncRetrying(
            stop=stop_after_attempt(cfg.max_retries + 1),
            wait=self.live.retry_wait,
            reraise=True,
            retry=retry_if_exception(lambda e: isinstance(e, CallFailed) and e.retryable),
        )
        try:
            async for step in retrying:
                with step:
                    return await attempt()
        except CallFailed as exc:
            error = AutointerpError(
                f"could not {what} at {redact_urls(cfg.base_url or cfg.provider)}: {exc.reason}",
                "batches already submitted are in the project's ledger: re-run the command to collect them",
            )
            error.definitive = not exc.retryable
            raise error from None
        raise AssertionError("unreachable")


# The batch API of each wire protocol (Provider.protocol), for the providers whose batch_api is set.
BATCH_ENDPOINTS: dict[str, type[BatchEndpoint]] = {"openai": OpenAIBatches, "anthropic": AnthropicBatches}
