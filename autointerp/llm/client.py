"""Transport layer under the LLM judges: send (system, user) text, get a `Completion` back.

One call goes: response cache → concurrency slot → rate limiters → official SDK request
(SDK retries off) → our tenacity retry loop → call log. Transient failures that outlive
the retries come back as a `Completion` with `error` set, so one bad feature never kills
a batch (a 400 too: it is about that request); problems every call would have (401/403/404)
raise `AutointerpError` at once, and so does a run of `max_consecutive_failures` failed calls.
`check()` reaches the endpoint before any work, so a wrong URL or key fails in seconds.

API keys live only inside `Secret` and the SDK client. Every string that leaves this
module (errors, logs, raw bodies, texts) is scrubbed of the key first, and of the user and
password of a base URL (http://user:pw@host/v1, see `url_secrets`); the HTTP libraries' own
request logs get `redact_urls` as a logging filter. Code that stores or prints a config uses
`redacted` (every URL's user, password and secret-looking query values as '***').

Keys file (`load_keys`): TOML, one top-level string per provider, e.g.

    openai = "sk-..."
    anthropic = "sk-ant-..."
    openai_compatible = "..."

An environment variable named by `LLMConfig.api_key_env` wins over the file.

Cache key (`cache_key`): hex SHA-256 of the UTF-8 bytes of

    json.dumps({"provider": ..., "model": ..., "system": ..., "user": ...,
                "params": {"max_tokens": ..., "temperature": ..., ["response_format": ...]}},
               sort_keys=True, separators=(",", ":"), ensure_ascii=False)

with temperature null where it is not sent (Anthropic). base_url is not part of it.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import email.utils
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

import tomllib
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt, wait_exponential_jitter

from autointerp.config import LLMConfig
from autointerp.errors import AutointerpError
from autointerp.llm.prices import SNAPSHOT_SUFFIX, Usage
from autointerp.llm.providers import PROVIDERS
from autointerp.llm.redact import redact_urls

log = logging.getLogger(__name__)


# Local servers (vLLM, Ollama) ignore the key, but the OpenAI SDK insists on one.
PLACEHOLDER_KEY = "no-key"


RETRY_STATUSES = frozenset({429, 500, 502, 503, 504, 529})
CONFIG_STATUSES = frozenset({401, 403, 404})  # the same for every call: stop the run
RETRY_AFTER_CAP_S = 120.0  # a server asking for longer than this is not worth waiting on


class Secret:
    """An API key that prints as '***' and can scrub itself out of text."""

    __slots__ = ("_value", "source")

    def __init__(self, value: str, source: str):
        self._value = value
        self.source = source  # where it came from, for messages: "$OPENAI_API_KEY"

    def reveal(self) -> str:
        return self._value

    def scrub(self, text: str) -> str:
        return text.replace(self._value, "***") if self._value else text

    def __repr__(self) -> str:
        return f"Secret('***', source={self.source!r})"

    def __str__(self) -> str:
        return "***"


def url_secrets(url: str | None) -> list[str]:
    """The secret parts of a URL as they may appear in text (its user:password followed by '@', and
    alone its user:password and password when 8 characters or longer; as written and
    percent-decoded; and base64-encoded as the HTTP library sends it in a Basic Authorization
    header), longest first, for scrubbing messages that quote them."""
    from urllib.parse import unquote, urlsplit

    if not url:
        return []
    userinfo = urlsplit(url).netloc.rpartition("@")[0]
    if not userinfo:
        return []
    parts = {f"{userinfo}@", f"{unquote(userinfo)}@"}  # as a URL quotes them
    # Alone too, unless short enough to be a common word (scrubbed from every answer, it would blank text).
    password = userinfo.partition(":")[2]
    parts |= {p for p in (userinfo, unquote(userinfo), password, unquote(password)) if len(p) >= 8}
    parts.add(base64.b64encode(unquote(userinfo).encode()).decode())  # as sent: Authorization: Basic <this>
    return sorted(parts, key=len, reverse=True)


class RedactURLs(logging.Filter):
    """Rewrites each record of the logger it is on with redact_urls: the HTTP libraries under the SDKs
    log every request's full URL (INFO), user and password included."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "@" in message or "=" in message:
            record.msg, record.args = redact_urls(message), None
        return True


URL_LOGGERS = ("httpx", "httpx2", "httpcore", "openai", "anthropic")  # the libraries that log request URLs


def redact_url_logs() -> None:
    """Put a RedactURLs filter on the loggers of the HTTP libraries and SDKs (once)."""
    for name in URL_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactURLs) for f in logger.filters):
            logger.addFilter(RedactURLs())


def load_keys(path: str | Path) -> dict[str, Secret]:
    """Read a TOML keys file (see module docstring) into provider → Secret."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise AutointerpError(f"cannot read keys file {path}: {exc.strerror}", "check the path") from None
    except UnicodeDecodeError:  # a binary file, or one in another encoding; its bytes are not echoed
        raise AutointerpError(
            f"keys file {path} is not UTF-8 text", 'write a UTF-8 TOML file with lines like openai = "sk-..."'
        ) from None
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message gives only line and column, never the file's content.
        raise AutointerpError(
            f"keys file {path} is not valid TOML: {exc}",
            'write one line per provider, e.g. openai = "sk-..."',
        ) from None
    keys = {}
    for provider, value in data.items():
        if provider not in PROVIDERS or PROVIDERS[provider].key_env is None or not isinstance(value, str):
            raise AutointerpError(
                f"keys file {path} has an unexpected entry {provider!r}",
                f"use only string entries named {', '.join(n for n, p in PROVIDERS.items() if p.key_env)}, e.g. openai "
                '= "sk-..."',
            )
        keys[provider] = Secret(value, f"{path} [{provider}]")
    return keys


def canonical_json(value: object) -> str:
    """Sorted keys, no spaces, UTF-8 kept: the form hashed into cache keys and stored as a call's params."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def cache_key(provider: str, model: str, system: str, user: str, params: Mapping[str, object]) -> str:
    payload = {"provider": provider, "model": model, "system": system, "user": user, "params": dict(params)}
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


@dataclass
class Completion:
    text: str
    provider: str
    model: str
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float  # wall time of the whole call, backoff included
    retries: int
    cost_usd: float | None  # None when the model has no price (or usage was not reported)
    cached: bool
    raw: str  # the raw response body; for a failure, the last one received ("" if none)
    error: str | None = None
    call_id: int | None = None  # the logged call that produced this answer (for a cache hit, the original)
    cache_read_tokens: int = 0  # of prompt_tokens, served from the provider's prompt cache
    cache_write_tokens: int = 0  # of prompt_tokens, written to it

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class LLMCall:
    """One row of the call log."""

    cache_key: str
    provider: str
    model: str
    purpose: str
    feature: int | None
    system: str
    user: str
    params: str  # canonical JSON of LLMConfig.params
    response: str
    raw: str
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_s: float
    retries: int
    cost_usd: float | None
    error: str | None
    timestamp: datetime
    call_id: int | None = None  # given by the CallStore when recorded
    run_id: str | None = None
    cache_read_tokens: int = 0  # of prompt_tokens, served from the provider's prompt cache
    cache_write_tokens: int = 0  # of prompt_tokens, written to it

    def as_completion(self, cached: bool = True) -> Completion:
        return Completion(
            text=self.response,
            provider=self.provider,
            model=self.model,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            latency_s=self.latency_s,
            retries=self.retries,
            cost_usd=self.cost_usd,
            cached=cached,
            raw=self.raw,
            call_id=self.call_id,
            cache_read_tokens=self.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens,
        )


@dataclass
class BatchRequest:
    """One request for a provider's batch API; its custom_id there is its cache key."""

    cache_key: str
    purpose: str
    feature: int | None
    system: str
    user: str
    params: dict


@dataclass
class BatchRecord:
    """A batch as the ledger keeps it: our id (written before the provider is asked), the
    provider's id once it answered, and the requests it holds."""

    local_id: str
    requests: list[BatchRequest]
    submitted_at: datetime  # naive UTC, as the store keeps timestamps
    batch_id: str | None = None
    status: str = "submitting"  # submitting | submitted | ended | failed | lost


class CallStore(Protocol):
    """Response cache + call log. `record` receives every call that reached the network,
    failed ones included, and returns the id it gave the call; an implementation must serve
    only error-free calls from `lookup`. Cache hits are not recorded again. The batch ledger
    (batch_opened, batch_update, open_batches) remembers requests sent through a batch API."""

    def lookup(self, cache_key: str) -> Completion | None: ...

    def record(self, call: LLMCall) -> int: ...

    def batch_opened(self, record: BatchRecord, provider: str, model: str, base_url: str | None) -> None: ...

    def batch_update(
        self, local_id: str, status: str, batch_id: str | None = None, detail: str | None = None
    ) -> None: ...

    def open_batches(self, provider: str, model: str, base_url: str | None) -> list[BatchRecord]: ...


class MemoryCallStore:
    """In-memory CallStore for tests and offline runs."""

    def __init__(self) -> None:
        self.calls: list[LLMCall] = []
        self._cache: dict[str, LLMCall] = {}
        self.batches: dict[str, tuple[tuple, BatchRecord]] = {}  # local id → ((provider, model, base_url), record)

    def batch_opened(self, record: BatchRecord, provider: str, model: str, base_url: str | None) -> None:
        self.batches[record.local_id] = ((provider, model, base_url), replace(record, status="submitting"))

    def batch_update(self, local_id: str, status: str, batch_id: str | None = None, detail: str | None = None) -> None:
        record = self.batches[local_id][1]
        record.status, record.batch_id = status, batch_id or record.batch_id

    def open_batches(self, provider: str, model: str, base_url: str | None) -> list[BatchRecord]:
        return [
            r
            for where, r in self.batches.values()
            if where == (provider, model, base_url) and r.status in ("submitting", "submitted")
        ]

    def lookup(self, cache_key: str) -> Completion | None:
        call = self._cache.get(cache_key)
        return call.as_completion(cached=True) if call else None

    def record(self, call: LLMCall) -> int:
        self.calls.append(call)
        call.call_id = len(self.calls)
        if call.error is None:
            self._cache[call.cache_key] = call
        return call.call_id


@dataclass
class RunTotals:
    """Running sums for progress bars and the run summary. Tokens and cost count only
    fresh (non-cached) calls, i.e. what this run was billed."""

    calls: int = 0
    cache_hits: int = 0
    failures: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cache_read_tokens: int = 0  # of prompt_tokens, served from the provider's prompt cache
    cost_usd: float = 0.0
    unpriced_calls: int = 0  # fresh successful calls whose cost is unknown

    def line(self) -> str:
        cost = f"${self.cost_usd:,.4f}" + (
            f" (+{self.unpriced_calls:,} calls of unknown price)" if self.unpriced_calls else ""
        )
        return (
            f"LLM calls: {self.calls:,} ({self.cache_hits:,} from cache, {self.failures:,} failed, {self.retries:,} "
            "retries); "
            f"tokens billed: {self.prompt_tokens:,} prompt{self._cached()} + {self.completion_tokens:,} completion; "
            f"cost {cost}"
        )

    def _cached(self) -> str:
        return (
            f" ({self.cache_read_tokens:,} from the provider's prompt cache, at its cached price)"
            if self.cache_read_tokens
            else ""
        )

    def add(self, completion: Completion) -> None:
        self.calls += 1
        if completion.cached:
            self.cache_hits += 1
            return
        self.retries += completion.retries
        if completion.error is not None:
            self.failures += 1
        self.prompt_tokens += completion.prompt_tokens or 0
        self.completion_tokens += completion.completion_tokens or 0
        self.cache_read_tokens += completion.cache_read_tokens
        if completion.cost_usd is not None:
            self.cost_usd += completion.cost_usd
        elif completion.error is None:
            self.unpriced_calls += 1


class _TokenBucket:
    """Refills at per_minute/60 per second and holds one second's worth, so a batch is
    smoothed over the minute instead of spending the whole quota in its first second.
    A request bigger than the bucket waits for a full bucket, then leaves it in debt."""

    def __init__(self, per_minute: float):
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.updated = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.updated) * self.rate)
        self.updated = now

    async def acquire(self, amount: float) -> None:
        async with self._lock:  # first come, first served
            self._refill()
            needed = min(amount, self.capacity)
            while self.level < needed:
                await asyncio.sleep((needed - self.level) / self.rate)
                self._refill()
            self.level -= amount

    def adjust(self, amount: float) -> None:
        """Charge (or refund, if negative) the gap between estimate and real usage."""
        self._refill()
        self.level = min(self.capacity, self.level - amount)


def _estimate_tokens(text: str) -> int:
    return len(text) // 4 + 1


class LLMClient(abc.ABC):
    """What a judge talks to."""

    totals: RunTotals

    @abc.abstractmethod
    async def complete(
        self,
        system: str,
        user: str,
        *,
        purpose: str,
        feature: int | None,
        max_tokens: int | None = None,
        schema: Mapping | None = None,
    ) -> Completion: ...

    async def check(self) -> None:
        """Raise AutointerpError when the endpoint cannot be used (before any work)."""

    async def aclose(self) -> None:
        """Release network resources."""


@dataclass
class _Reply:
    text: str
    usage: Usage
    raw: str


class CallFailed(Exception):
    """A failed attempt: retryable (transient) or final for this call only (also raised by batch.py)."""

    def __init__(self, reason: str, retryable: bool, retry_after: float | None = None, raw: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.retryable = retryable
        self.retry_after = retry_after
        self.raw = raw  # the response body, kept for debugging


@dataclass(frozen=True)
class SDKErrors:
    """The exceptions one SDK raises, taken from it when its client is made: loading autointerp
    imports neither SDK (seconds each) until a command talks to an API."""

    timeout: tuple[type[BaseException], ...]
    connection: tuple[type[BaseException], ...]
    status: tuple[type[BaseException], ...]

    @classmethod
    def of(cls, sdk) -> SDKErrors:
        return cls((sdk.APITimeoutError, TimeoutError), (sdk.APIConnectionError,), (sdk.APIStatusError,))

    @property
    def transport(self) -> tuple[type[BaseException], ...]:
        return self.timeout + self.connection + self.status


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait from retry-after-ms, or Retry-After in seconds or as an HTTP date."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def server_message(response_text: str) -> str:
    """error.message from either provider's error body, else the body itself."""
    try:
        return str(json.loads(response_text)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response_text[:300]


class SDKClient(LLMClient):
    """Cache, concurrency, rate limits, retries and the call log around one SDK request.

    Besides complete() and check(), a BatchClient (batch.py) uses the public rest: `sdk`, `errors`,
    `body`, `parse`, `scrub`, `classify` and `retry_wait`, so that batch answers are built, parsed,
    scrubbed and retried exactly as live ones."""

    errors: SDKErrors  # set by each SDK's client once it has imported its SDK
    sdk: Any  # the official SDK's async client (openai.AsyncOpenAI, anthropic.AsyncAnthropic), set likewise

    def __init__(
        self, config: LLMConfig, store: CallStore, key: Secret | None, fatal: Callable[[], str | None] | None = None
    ):
        self.config = config
        self.store = store
        self.totals = RunTotals()
        self._key = key
        self._url_secrets = url_secrets(config.base_url)
        if self._url_secrets:
            redact_url_logs()
        # Asked after a connection error: a reason to stop at once (the local server died), or None.
        self._fatal = fatal or (lambda: None)
        self._slots = asyncio.Semaphore(config.concurrency)
        self._rpm = _TokenBucket(config.requests_per_minute) if config.requests_per_minute else None
        self._tpm = _TokenBucket(config.tokens_per_minute) if config.tokens_per_minute else None
        self._failed_in_a_row = 0
        self._in_flight: dict[str, asyncio.Future] = {}  # cache key → the call asking it now
        self._backoff = wait_exponential_jitter(
            multiplier=config.backoff_initial_s, max=config.backoff_max_s, jitter=config.backoff_initial_s
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(provider={self.config.provider!r}, model={self.config.model!r})"

    @abc.abstractmethod
    async def _request(self, system: str, user: str, params: Mapping[str, object]) -> str:
        """Send one request through the SDK; return the raw response body."""

    @abc.abstractmethod
    def parse(self, body: dict) -> tuple[str, int | None, int | None]:
        """(text, prompt tokens, completion tokens) from a decoded response body."""

    @abc.abstractmethod
    async def _list_models(self) -> list[str]:
        """The model ids the endpoint lists (raises the SDK's errors)."""

    def scrub(self, text: str) -> str:
        """The text with this client's API key, and the user and password of its base URL, replaced by '***'."""
        text = self._key.scrub(text) if self._key else text
        for secret in self._url_secrets:
            text = text.replace(secret, "***@" if secret.endswith("@") else "***")
        return text

    async def check(self) -> None:
        """Reach the endpoint with this key before any work: a wrong base URL, a dead server or a
        rejected key raises AutointerpError naming the fix. Costs one model-list request, no tokens."""
        cfg = self.config
        where = redact_urls(cfg.base_url) if cfg.base_url else f"the {cfg.provider} API"
        try:
            async with asyncio.timeout(cfg.timeout_s):
                models = await self._list_models()
        except self.errors.transport as exc:
            if isinstance(exc, self.errors.status) and exc.status_code in (404, 405):
                return  # a server without a model list; the first call will tell
            failure = self.classify(exc)
            if isinstance(failure, AutointerpError):
                raise failure from None
            raise AutointerpError(
                f"cannot reach {where}: {failure.reason}",
                "check --base-url and that the server is running and reachable"
                if cfg.base_url
                else "check your network connection",
            ) from None
        if (
            cfg.base_url is None
            and models
            and cfg.model not in models
            and SNAPSHOT_SUFFIX.sub("", cfg.model) not in models
        ):
            close = [m for m in models if cfg.model.split("-")[0] in m][:8]
            raise AutointerpError(
                f"{cfg.provider} lists no model {cfg.model!r}",
                "pass --judge-model " + (f"one of: {', '.join(close)}" if close else "a model your key can use"),
            )

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
        """One call. max_tokens bounds this task's answer (never above the configured bound); schema is
        the answer's JSON schema, sent when structured output is on. Both are part of the cache key."""
        cfg = self.config
        params = cfg.request_params(max_tokens, schema)
        key = cache_key(cfg.provider, cfg.model, system, user, params)
        started = time.monotonic()
        if (hit := self.store.lookup(key)) is None and key in self._in_flight:
            # The same prompt is being asked right now (a shuffled label equal to the own one): wait for
            # that answer instead of paying twice; a failed one is asked again below.
            first = await asyncio.shield(self._in_flight[key])
            hit = first if first.error is None else self.store.lookup(key)
        if hit is not None:
            # Describe this call, not the original one; tokens and cost stay as what the answer cost.
            hit = replace(hit, cached=True, retries=0, latency_s=time.monotonic() - started)
            self.totals.add(hit)
            return hit
        future = self._in_flight.setdefault(key, asyncio.get_running_loop().create_future())
        try:
            completion = await self._ask(key, system, user, params, purpose, feature)
        except BaseException as exc:
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved: waiters re-raise it, nobody logs it as lost
            raise
        finally:
            self._in_flight.pop(key, None)
        if not future.done():
            future.set_result(completion)
        return completion

    async def _ask(
        self, key: str, system: str, user: str, params: Mapping[str, object], purpose: str, feature: int | None
    ) -> Completion:
        cfg = self.config

        # The slot is held through backoff too: a rate-limited run should slow down, not
        # let waiting calls' slots go to fresh ones that would hit the same limit.
        async with self._slots:
            started = time.monotonic()  # latency counts from here: queueing for a slot is not the API's
            retrying = AsyncRetrying(
                stop=stop_after_attempt(cfg.max_retries + 1),
                wait=self.retry_wait,
                retry=retry_if_exception(lambda exc: isinstance(exc, CallFailed) and exc.retryable),
                before_sleep=lambda state: self._log_retry(state, purpose, feature),
                reraise=True,
            )
            reply: _Reply | None = None
            error: str | None = None
            call = (key, purpose, feature, system, user, params)
            try:
                async for attempt in retrying:
                    with attempt:
                        reply = await self._attempt(system, user, params)
            except CallFailed as exc:
                error = exc.reason
                reply = _Reply("", Usage(), exc.raw)
            except AutointerpError as exc:
                self._finish(*call, None, exc.problem, started, retrying.statistics["attempt_number"] - 1)
                raise
            retries = retrying.statistics["attempt_number"] - 1
            if error is not None and retries:
                error = f"{error} after {retries} retries"
            completion = self._finish(*call, reply, error, started, retries)
        if completion.error is None:
            self._failed_in_a_row = 0
            return completion
        log.warning("%s call failed (purpose=%s, feature=%s): %s", cfg.provider, purpose, feature, completion.error)
        self._failed_in_a_row += 1
        if self._failed_in_a_row >= cfg.max_consecutive_failures:
            raise AutointerpError(
                f"{self._failed_in_a_row} {cfg.provider} calls failed in a row, none answered between them (last: "
                f"{completion.error})",
                "check the server, base URL and key; answers so far are stored, so re-running the command resumes",
            )
        return completion

    def _finish(
        self,
        key: str,
        purpose: str,
        feature: int | None,
        system: str,
        user: str,
        params: Mapping[str, object],
        reply: _Reply | None,
        error: str | None,
        started: float,
        retries: int,
    ) -> Completion:
        """Build the Completion, log the call to the store, update totals."""
        cfg = self.config
        reply = reply or _Reply("", Usage(), "")
        price = cfg.price()
        usage = reply.usage
        completion = Completion(
            text=self.scrub(reply.text),
            provider=cfg.provider,
            model=cfg.model,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            latency_s=time.monotonic() - started,
            retries=retries,
            cost_usd=price.cost(usage) if price is not None else None,
            cached=False,
            raw=self.scrub(reply.raw),
            error=self.scrub(error) if error is not None else None,
            cache_read_tokens=usage.cache_read_tokens,
            cache_write_tokens=usage.cache_write_tokens,
        )
        completion.call_id = self.store.record(
            LLMCall(
                cache_key=key,
                provider=cfg.provider,
                model=cfg.model,
                purpose=purpose,
                feature=feature,
                system=system,
                user=user,
                params=canonical_json(params),
                response=completion.text,
                raw=completion.raw,
                prompt_tokens=completion.prompt_tokens,
                completion_tokens=completion.completion_tokens,
                latency_s=completion.latency_s,
                retries=completion.retries,
                cost_usd=completion.cost_usd,
                error=completion.error,
                timestamp=datetime.now(timezone.utc),
                cache_read_tokens=usage.cache_read_tokens,
                cache_write_tokens=usage.cache_write_tokens,
            )
        )
        self.totals.add(completion)
        return completion

    def retry_wait(self, state: RetryCallState) -> float:
        """Exponential backoff with jitter, but never shorter than the server's Retry-After."""
        backoff = self._backoff(state)
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, CallFailed) and exc.retry_after is not None:
            return max(backoff, min(exc.retry_after, RETRY_AFTER_CAP_S))
        return backoff

    def _log_retry(self, state: RetryCallState, purpose: str, feature: int | None) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.info(
            "%s %s: %s; retry %d in %.2fs (purpose=%s, feature=%s)",
            self.config.provider,
            self.config.model,
            self.scrub(str(exc)),
            state.attempt_number,
            wait,
            purpose,
            feature,
        )

    async def _attempt(self, system: str, user: str, params: Mapping[str, object]) -> _Reply:
        estimate = _estimate_tokens(system) + _estimate_tokens(user)
        if self._rpm:
            await self._rpm.acquire(1)
        if self._tpm:
            await self._tpm.acquire(estimate)
        try:
            # The SDK's timeout is per network phase; this bounds the whole attempt.
            async with asyncio.timeout(self.config.timeout_s):
                body = await self._request(system, user, params)
        except self.errors.transport as exc:
            failure = self.classify(exc)
            if (
                isinstance(failure, CallFailed)
                and isinstance(exc, self.errors.connection)
                and (reason := self._fatal())
            ):
                failure = AutointerpError(
                    reason, "answers so far are stored; fix the cause and re-run the command to resume"
                )
            raise failure from None
        # Garbled bytes are likely transient (a proxy, a cut stream): retry. Well-formed JSON
        # of the wrong shape will come back the same: do not.
        try:
            decoded = json.loads(body)
        except ValueError:
            raise CallFailed("malformed response body (not JSON)", retryable=True, raw=body) from None
        try:
            text, usage = self.parse(decoded)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError):
            raise CallFailed("malformed response body (unexpected JSON shape)", retryable=False, raw=body) from None
        if self._tpm and usage.prompt_tokens is not None and usage.completion_tokens is not None:
            self._tpm.adjust(usage.prompt_tokens + usage.completion_tokens - estimate)
        return _Reply(text, usage, body)

    def classify(self, exc: Exception) -> Exception:
        """Map an SDK/transport exception to CallFailed, or AutointerpError for errors every call would get."""
        if isinstance(exc, self.errors.timeout):
            return CallFailed("timeout", retryable=True)
        if isinstance(exc, self.errors.connection):
            cause = exc.__cause__
            detail = f"{type(cause).__name__}: {cause}" if cause else str(exc)
            return CallFailed(self.scrub(f"connection error ({detail})"), retryable=True)
        assert isinstance(exc, self.errors.status)
        status, body = exc.status_code, exc.response.text
        if status in RETRY_STATUSES:
            return CallFailed(str(status), True, parse_retry_after(exc.response.headers), raw=body)
        message = self.scrub(server_message(body))
        if status in CONFIG_STATUSES:
            return self._config_error(status, message)
        # A 400 is about this request (too long a prompt, content the server will not take): fail
        # this call only. If every call gets it, the consecutive-failure bound stops the stage.
        return CallFailed(f"{status}: {message}", retryable=False, raw=self.scrub(body))

    def _config_error(self, status: int, message: str) -> AutointerpError:
        cfg = self.config
        source = self._key.source if self._key else f"${cfg.api_key_env}"
        if status == 401:
            # The server's text is left out: real APIs echo part of the key in it.
            return AutointerpError(f"{cfg.provider} rejected the API key (401)", f"check the key in {source}")
        if status == 403:
            return AutointerpError(
                f"{cfg.provider} denied access to model {cfg.model!r} (403): {message}",
                f"use a key with access to {cfg.model!r} (key from {source}) or another model",
            )
        return AutointerpError(
            f"{cfg.provider} found no model {cfg.model!r} or endpoint (404): {message}",
            "check --judge-model and --base-url",
        )


class OpenAIChatClient(SDKClient):
    """OpenAI Chat Completions; also any OpenAI-compatible server (vLLM, Ollama, llama.cpp) via base_url."""

    def __init__(
        self, config: LLMConfig, store: CallStore, key: Secret | None, fatal: Callable[[], str | None] | None = None
    ):
        super().__init__(config, store, key, fatal)
        import openai

        self.errors = SDKErrors.of(openai)
        self.sdk = openai.AsyncOpenAI(
            api_key=key.reveal() if key else PLACEHOLDER_KEY,
            base_url=config.base_url,
            timeout=config.timeout_s,
            max_retries=0,  # tenacity owns retrying
        )

    def body(self, system: str, user: str, params: Mapping[str, object]) -> dict:
        """The request body, live or as one line of a batch."""
        return {
            "model": self.config.model,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            **params,
        }

    async def _request(self, system: str, user: str, params: Mapping[str, object]) -> str:
        # The SDK's generic post (same auth, base URL and transport as chat.completions.create)
        # skips create()'s typed-parameter transform, ~1 ms of CPU per call: at 32 calls in
        # flight that is the difference between keeping up with the server and not.
        return await self.sdk.post(
            "/chat/completions", body=self.body(system, user, params), cast_to=str
        )  # str: the raw body

    def parse(self, body: dict) -> tuple[str, Usage]:
        text = body["choices"][0]["message"]["content"]
        if not isinstance(text, str):
            raise ValueError("choices[0].message.content")
        usage = body.get("usage") or {}
        # prompt_tokens counts the cached ones too; OpenAI bills those at its cached-input price.
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        return text, Usage(usage.get("prompt_tokens"), usage.get("completion_tokens"), cached)

    async def _list_models(self) -> list[str]:
        return [m["id"] for m in json.loads(await self.sdk.get("/models", cast_to=str)).get("data", [])]

    async def aclose(self) -> None:
        await self.sdk.close()


class AnthropicClient(SDKClient):
    """Anthropic Messages API, system prompt as the top-level `system` field."""

    def __init__(
        self, config: LLMConfig, store: CallStore, key: Secret | None, fatal: Callable[[], str | None] | None = None
    ):
        super().__init__(config, store, key, fatal)
        import anthropic

        self.errors = SDKErrors.of(anthropic)
        self.sdk = anthropic.AsyncAnthropic(
            api_key=key.reveal() if key else PLACEHOLDER_KEY,  # never let the SDK go hunting for one
            base_url=config.base_url,
            timeout=config.timeout_s,
            max_retries=0,  # tenacity owns retrying
        )

    def body(self, system: str, user: str, params: Mapping[str, object]) -> dict:
        """The request's parameters, live or as one request of a message batch."""
        # The system prompt (the shared instructions) is marked for Anthropic's prompt cache; below
        # the model's minimum (1,024 tokens; 2,048 on Haiku) it is not cached and costs nothing extra.
        return {
            "model": self.config.model,
            "system": [{"type": "text", "text": system, "cache_control": {"type": "ephemeral"}}] if system else "",
            "messages": [{"role": "user", "content": user}],
            "max_tokens": params["max_tokens"],
        }

    async def _request(self, system: str, user: str, params: Mapping[str, object]) -> str:
        response = await self.sdk.messages.with_raw_response.create(**self.body(system, user, params))
        return response.http_response.text

    def parse(self, body: dict) -> tuple[str, Usage]:
        blocks = [block["text"] for block in body["content"] if block.get("type") == "text"]
        if not blocks:
            raise ValueError("content[].text")
        usage = body.get("usage") or {}
        # input_tokens leaves out the tokens read from and written to the prompt cache.
        read = usage.get("cache_read_input_tokens") or 0
        written = usage.get("cache_creation_input_tokens") or 0
        fresh = usage.get("input_tokens")
        return "".join(blocks), Usage(
            None if fresh is None else fresh + read + written, usage.get("output_tokens"), read, written
        )

    async def _list_models(self) -> list[str]:
        return [m["id"] for m in json.loads(await self.sdk.get("/v1/models", cast_to=str)).get("data", [])]

    async def aclose(self) -> None:
        await self.sdk.close()


# The live client of each wire protocol (Provider.protocol). A provider speaking one of these is one
# entry in providers.py; a new protocol is a new SDKClient subclass registered here (and, for batch
# support, a BatchEndpoint in batch.py's BATCH_ENDPOINTS).
CLIENTS: dict[str, type[SDKClient]] = {"openai": OpenAIChatClient, "anthropic": AnthropicClient}
