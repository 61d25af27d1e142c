"""The LLM transport, through the real openai/anthropic SDKs against a local stand-in server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest
from standin_server import Fault, StandinServer, find_leaks

from autointerp.config import LLMConfig
from autointerp.errors import AutointerpError
from autointerp.llm.client import (
    Completion,
    MemoryCallStore,
    Secret,
    cache_key,
    load_keys,
    parse_retry_after,
)
from autointerp.llm.connect import make_client
from autointerp.llm.prices import read_prices

KEY = "sk-test-9f8e7d6c5b4a39281706"
WRONG_KEY = "sk-wrong-0a1b2c3d4e5f60718293"
OPENAI_MODEL = "gpt-4o-mini"
ANTHROPIC_MODEL = "claude-haiku-4-5"


@pytest.fixture(autouse=True)
def keys_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_COMPATIBLE_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)


@pytest.fixture
def server():
    with StandinServer(api_key=KEY) as s:
        yield s


def config(server: StandinServer, provider: str = "openai", **overrides) -> LLMConfig:
    """Fast settings: tiny backoff so retry tests take milliseconds, not seconds."""
    settings = dict(
        model=ANTHROPIC_MODEL if provider == "anthropic" else OPENAI_MODEL,
        base_url=server.anthropic_base_url if provider == "anthropic" else server.openai_base_url,
        max_tokens=64,
        timeout_s=2.0,
        max_retries=3,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
    )
    settings.update(overrides)
    return LLMConfig(provider=provider, **settings)


def run(cfg: LLMConfig, store: MemoryCallStore, prompts: list[tuple[str, str]], keys=None) -> list[Completion]:
    """Make a client, send all prompts concurrently, close the client."""

    async def go() -> list[Completion]:
        client = make_client(cfg, store, keys)
        try:
            return await asyncio.gather(
                *(client.complete(s, u, purpose="test", feature=i) for i, (s, u) in enumerate(prompts))
            )
        finally:
            await client.aclose()

    return asyncio.run(go())


def one(cfg: LLMConfig, store: MemoryCallStore | None = None, system: str = "sys", user: str = "hi") -> Completion:
    return run(cfg, store or MemoryCallStore(), [(system, user)])[0]


# --- wire format -------------------------------------------------------------------------


def test_openai_request_bytes_match_the_chat_completions_wire_format(server):
    one(config(server), system="You label features é", user="Tokens: «cat» → ?")

    (request,) = server.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    expected = (
        '{"model":"gpt-4o-mini","messages":[{"role":"system","content":"You label features é"},'
        '{"role":"user","content":"Tokens: «cat» → ?"}],"max_tokens":64,"temperature":0.0}'
    )
    assert request.body == expected.encode("utf-8")


def test_anthropic_request_has_top_level_system_and_no_sampling_params(server):
    one(config(server, "anthropic"), system="You label features", user="Tokens: cat")

    (request,) = server.requests
    assert request.path == "/v1/messages"
    assert request.headers["authorization"] == f"Bearer {KEY}"  # SDK 2.x sends Bearer, not x-api-key
    assert request.headers["anthropic-version"]
    # The system prompt goes as one text block marked for the prompt cache.
    expected = (
        '{"max_tokens":64,"messages":[{"role":"user","content":"Tokens: cat"}],'
        '"model":"claude-haiku-4-5","system":[{"type":"text","text":"You label features",'
        '"cache_control":{"type":"ephemeral"}}]}'
    )
    assert request.body == expected.encode("utf-8")


# --- success -----------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_success_returns_text_usage_cost_and_raw_body(server, provider):
    store = MemoryCallStore()
    c = one(config(server, provider), store, user="hello")

    assert c.ok and c.text == "echo: hello"
    assert (c.provider, c.cached, c.retries) == (provider, False, 0)
    assert c.prompt_tokens and c.completion_tokens
    assert c.cost_usd is not None and c.cost_usd > 0
    assert json.loads(c.raw)["model"] == c.model
    (call,) = store.calls
    assert (call.purpose, call.feature, call.response, call.error) == ("test", 0, "echo: hello", None)


def test_openai_compatible_runs_without_a_key_and_has_unknown_cost():
    with StandinServer(api_key=None, responder=lambda system, user: "LABEL: dogs") as server:
        c = one(config(server, "openai_compatible", model="llama-3.1-8b-instruct"))
        assert c.ok and c.text == "LABEL: dogs"
        assert c.cost_usd is None  # unknown price is None, never 0
        assert server.requests[0].headers["authorization"] == "Bearer no-key"


# --- retries -----------------------------------------------------------------------------


@pytest.mark.parametrize("header", [{"retry_after": "0.3"}, {"retry_after_ms": "300"}])
def test_429_waits_at_least_retry_after_then_succeeds(server, header):
    server.inject(Fault.rate_limit(**header))
    c = one(config(server))

    assert c.ok and c.retries == 1
    first, second = server.requests
    assert second.received_at - first.received_at >= 0.3


def test_retry_after_parsing():
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    in_ten = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=10), usegmt=True)
    assert 8 <= parse_retry_after({"retry-after": in_ten}) <= 10
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_5xx_and_overloaded_are_retried(server, provider):
    server.inject(Fault.server_error(500), Fault.server_error(503), Fault.server_error(529))
    c = one(config(server, provider))
    assert c.ok and c.retries == 3 and len(server.requests) == 4 and server.pending_faults == 0


def test_exhausted_retries_return_an_error_completion_that_is_logged_not_cached(server):
    server.inject(*[Fault.rate_limit(retry_after="0")] * 4)
    store = MemoryCallStore()

    async def go() -> tuple[Completion, object]:
        client = make_client(config(server, max_retries=3), store)
        completion = await client.complete("sys", "hi", purpose="explain", feature=7)
        await client.aclose()
        return completion, client.totals

    c, totals = asyncio.run(go())
    assert c.error == "429 after 3 retries" and c.text == "" and c.retries == 3
    (call,) = store.calls
    assert call.error == c.error and call.feature == 7
    assert store.lookup(call.cache_key) is None
    assert (totals.calls, totals.failures, totals.retries) == (1, 1, 3)

    # Not cached: the same call goes to the server again, and now succeeds.
    before = len(server.requests)
    assert one(config(server), store).ok
    assert len(server.requests) == before + 1


def test_timeout_is_retried_then_reported(server):
    server.inject(Fault.slow(1.0), Fault.slow(1.0))
    started = time.monotonic()
    c = one(config(server, timeout_s=0.3, max_retries=1))
    assert c.error == "timeout after 1 retries"
    assert len(server.requests) == 2
    assert time.monotonic() - started < 1.5


@pytest.mark.parametrize(
    "fault, reason",
    [
        (Fault.drop(), "connection error (RemoteProtocolError: Server disconnected"),
        (Fault.malformed(), "malformed response body (not JSON)"),
        (Fault.truncated(), "without sending complete message body"),
    ],
)
@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_broken_responses_become_recorded_errors(server, provider, fault, reason):
    server.inject(fault)
    store = MemoryCallStore()
    c = one(config(server, provider, max_retries=0), store)
    assert c.error is not None and reason in c.error
    assert store.calls[0].error == c.error


def test_well_formed_json_of_the_wrong_shape_is_not_retried(server):
    server.inject(Fault.malformed(b'{"choices": []}'))
    c = one(config(server, max_retries=3))
    assert c.error == "malformed response body (unexpected JSON shape)"
    assert c.raw == '{"choices": []}' and len(server.requests) == 1


def test_dropped_connection_is_retried(server):
    server.inject(Fault.drop())
    c = one(config(server))
    assert c.ok and c.retries == 1


# --- configuration errors: no retry, clear message, key redacted --------------------------


@pytest.mark.parametrize("provider, env", [("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY")])
def test_401_raises_at_once_naming_where_the_key_came_from(server, monkeypatch, provider, env):
    monkeypatch.setenv(env, WRONG_KEY)
    store = MemoryCallStore()
    with pytest.raises(AutointerpError) as info:
        one(config(server, provider), store)

    message = str(info.value)
    assert f"check the key in ${env}" in message and "401" in message
    assert WRONG_KEY not in message  # the server echoed it; we must not
    assert len(server.requests) == 1
    assert store.calls[0].error and WRONG_KEY not in store.calls[0].error


def test_404_raises_without_retry(server):
    with pytest.raises(AutointerpError, match="check --judge-model and --base-url"):
        one(config(server, base_url=server.url))  # missing /v1
    assert len(server.requests) == 1


def test_missing_key_is_a_clear_error(monkeypatch, server):
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(AutointerpError, match="export OPENAI_API_KEY"):
        make_client(config(server), MemoryCallStore())


def test_config_validation():
    with pytest.raises(AutointerpError, match="needs a base_url"):
        LLMConfig("openai_compatible", "llama")
    with pytest.raises(AutointerpError, match="leave temperature unset"):
        LLMConfig("anthropic", ANTHROPIC_MODEL, temperature=0.0)
    with pytest.raises(AutointerpError, match="unknown LLM provider"):
        LLMConfig("gemini", "x")
    assert LLMConfig("openai", OPENAI_MODEL).temperature == 0.0


def test_prices_cover_snapshots_and_unknown_models_cost_none():
    # [input, output, cache read, cache write]: OpenAI's cached input at half price, no write charge;
    # Anthropic's reads at a tenth and writes at 1.25 times the input price.
    assert LLMConfig("openai", "gpt-4o-mini-2024-07-18").price() == (0.15, 0.60, 0.075, 0.15)
    assert LLMConfig("openai", "gpt-4o").price() == (2.50, 10.00, 1.25, 2.50)
    assert LLMConfig("anthropic", "claude-3-5-haiku-20241022").price() == (0.80, 4.00, 0.08, 1.00)
    assert LLMConfig("openai", "my-finetune").price() is None
    # A user's table may leave the cache prices out: they are then the input price (no discount).
    assert read_prices('[models]\n"m" = [1.0, 4.0]\n', "t")["m"] == (1.0, 4.0, 1.0, 1.0)
    assert read_prices('[models]\n"m" = [1.0, 4.0, 0.5]\n', "t")["m"] == (1.0, 4.0, 0.5, 1.0)
    with pytest.raises(AutointerpError, match="cache read, cache write"):
        read_prices('[models]\n"m" = [1.0, 4.0, 0.5, 1.0, 9.0]\n', "t")


# --- prompt caching ----------------------------------------------------------------------

LONG_SYSTEM = "Shared instructions. " * 300  # 6,300 characters: 1,575 tokens at the stand-in's 4 a token


def test_openai_cached_prompt_tokens_are_counted_and_priced_at_the_cached_price(server, tmp_path):
    from autointerp.store import CallLog, Store

    cfg = config(server)  # gpt-4o-mini: $0.15 input, $0.075 cached input, $0.60 output per million
    users = ["first feature's snippets", "second feature's snippets"]
    with Store(tmp_path) as store:
        log = CallLog(store, flush_every=1)
        first, second = (one(cfg, log, system=LONG_SYSTEM, user=u) for u in users)
        log.close()
        stored = store.con.execute("SELECT cache_read_tokens FROM llm_calls ORDER BY call_id").fetchall()
    # The second request repeats the first's 6,300-character system prompt: 1,575 tokens shared, of
    # which OpenAI caches 1,024 and then whole steps of 128: 1,024 + 4 * 128 = 1,536.
    assert (first.cache_read_tokens, second.cache_read_tokens) == (0, 1536)
    assert stored == [(0,), (1536,)]
    prompt = (len(LONG_SYSTEM) + len(users[1])) // 4
    assert second.prompt_tokens == prompt  # the cached tokens are counted in prompt_tokens too
    expected = ((prompt - 1536) * 0.15 + 1536 * 0.075 + second.completion_tokens * 0.60) / 1e6
    assert second.cost_usd == pytest.approx(expected, rel=1e-12)
    assert first.cost_usd == pytest.approx((first.prompt_tokens * 0.15 + first.completion_tokens * 0.60) / 1e6)


def test_anthropic_prompt_cache_writes_then_reads_the_marked_system_prompt_each_at_its_price(server):
    store = MemoryCallStore()
    cfg = config(server, "anthropic")  # claude-haiku-4-5: $1 input, $1.25 written, $0.10 read, $5 output

    async def go():
        client = make_client(cfg, store)
        out = [await client.complete(LONG_SYSTEM, u, purpose="test", feature=i) for i, u in enumerate("ab")]
        await client.aclose()
        return out, client.totals

    (written, read), totals = asyncio.run(go())
    system = len(LONG_SYSTEM) // 4  # 1,575 tokens, above Anthropic's 1,024-token minimum
    total = (len(LONG_SYSTEM) + 1) // 4
    assert (written.cache_write_tokens, written.cache_read_tokens) == (system, 0)
    assert (read.cache_write_tokens, read.cache_read_tokens) == (0, system)
    assert written.prompt_tokens == read.prompt_tokens == total  # input_tokens plus both cache counts
    fresh = total - system
    assert written.cost_usd == pytest.approx((fresh * 1.0 + system * 1.25 + written.completion_tokens * 5) / 1e6)
    assert read.cost_usd == pytest.approx((fresh * 1.0 + system * 0.10 + read.completion_tokens * 5) / 1e6)
    assert [c.cache_read_tokens for c in store.calls] == [0, system]
    assert totals.cache_read_tokens == system
    assert f"{2 * total:,} prompt ({system:,} from the provider's prompt cache" in totals.line()


# --- keys file ---------------------------------------------------------------------------


def test_keys_file_supplies_the_key_when_the_env_has_none(server, monkeypatch, tmp_path):
    monkeypatch.delenv("OPENAI_API_KEY")
    path = tmp_path / "keys.toml"
    path.write_text(f'openai = "{KEY}"\nanthropic = "sk-ant-other"\n')
    keys = load_keys(path)
    assert repr(keys["openai"]) == f"Secret('***', source='{path} [openai]')" and str(keys["openai"]) == "***"

    c = run(config(server), MemoryCallStore(), [("sys", "hi")], keys=keys)[0]
    assert c.ok and server.requests[0].headers["authorization"] == f"Bearer {KEY}"


def test_bad_keys_file_errors_do_not_echo_its_content(tmp_path):
    path = tmp_path / "keys.toml"
    path.write_text(f"openai = {KEY}\n")  # unquoted: invalid TOML
    with pytest.raises(AutointerpError) as info:
        load_keys(path)
    assert KEY not in str(info.value)
    path.write_text(f'gemini = "{KEY}"\n')
    with pytest.raises(AutointerpError, match="unexpected entry 'gemini'") as info:
        load_keys(path)
    assert KEY not in str(info.value)
    path.write_bytes(b'openai = "' + KEY.encode() + b'"\n\x9e\xff\x00 binary')  # not text at all
    with pytest.raises(AutointerpError, match="is not UTF-8 text") as info:
        load_keys(path)
    assert KEY not in str(info.value)


# --- cache -------------------------------------------------------------------------------


def test_cache_hit_makes_no_request(server):
    store = MemoryCallStore()
    cfg = config(server)
    first = one(cfg, store)
    second = one(cfg, store)
    assert len(server.requests) == 1
    assert second.cached and not first.cached and second.text == first.text
    one(cfg, store, system="another system prompt")
    assert len(server.requests) == 2
    one(config(server, max_tokens=65), store)  # sampling params are part of the key
    assert len(server.requests) == 3


def test_database_cache_serves_earlier_sessions_and_answers_misses_without_a_query(server, tmp_path):
    from autointerp.store import CallLog, Store

    cfg = config(server)
    with Store(tmp_path) as store:
        log = CallLog(store, flush_every=1)
        first = one(cfg, log)
        server.inject(
            Fault.server_error(500), Fault.server_error(500), Fault.server_error(500), Fault.server_error(500)
        )
        failed = one(cfg, log, user="fails")  # an error is logged but never served
        assert first.error is None and failed.error is not None
    with Store(tmp_path) as store:
        queries = []

        class Spy:  # the connection, noting every statement
            def __init__(self, con):
                self.con = con

            def execute(self, sql, *args):
                queries.append(sql)
                return self.con.execute(sql, *args)

            def __getattr__(self, name):
                return getattr(self.con, name)

        store.con = Spy(store.con)
        log = CallLog(store)
        assert any("DISTINCT cache_key" in q for q in queries)  # the index, loaded once when the log is built
        built = len(queries)
        misses = run(cfg, log, [("sys", f"new {i}") for i in range(20)])
        assert len(queries) == built  # twenty misses, no lookup query
        again = run(cfg, log, [("sys", "hi"), ("sys", "fails"), ("sys", "new 3")])
        assert len(queries) == built + 1  # one query, for the answer stored by the earlier session
    assert again[0].cached and again[0].text == first.text
    assert not again[1].cached and again[1].error is None  # the failed call was asked again
    assert again[2].cached and all(not m.cached for m in misses)  # served from this session's buffer
    assert len(server.requests) == 1 + 4 + 20 + 1


def test_cache_key_follows_the_documented_recipe():
    params = {"max_tokens": 64, "temperature": 0.0}
    payload = {"model": "m", "params": params, "provider": "openai", "system": "s", "user": "ü"}
    expected = hashlib.sha256(
        json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    ).hexdigest()
    assert cache_key("openai", "m", "s", "ü", params) == expected


def test_totals_count_hits_tokens_and_cost(server):
    store = MemoryCallStore()

    async def go():
        client = make_client(config(server), store)
        for _ in range(2):
            await client.complete("sys", "hi", purpose="test", feature=1)
        await client.aclose()
        return client.totals

    totals = asyncio.run(go())
    assert (totals.calls, totals.cache_hits, totals.failures) == (2, 1, 0)
    assert totals.prompt_tokens == store.calls[0].prompt_tokens  # billed once
    assert totals.cost_usd == pytest.approx(store.calls[0].cost_usd)


# --- concurrency and rate limits ---------------------------------------------------------


def test_concurrency_is_bounded():
    with StandinServer(api_key=KEY, latency_s=0.1) as server:
        prompts = [("sys", f"prompt {i}") for i in range(20)]
        results = run(config(server, concurrency=3), MemoryCallStore(), prompts)
        assert all(c.ok for c in results)
        assert 1 < server.max_in_flight <= 3


def test_rpm_limiter_spaces_requests(server):
    # 300/min = 5/s with a one-second burst: 5 requests at once, then one every 0.2 s.
    prompts = [("sys", f"prompt {i}") for i in range(8)]
    started = time.monotonic()  # the server stamps arrivals with the same clock
    run(config(server, requests_per_minute=300), MemoryCallStore(), prompts)
    arrivals = sorted(r.received_at - started for r in server.requests)
    # The k-th request after the burst cannot leave before k refills; arrivals themselves
    # jitter with connection setup, so only these lower bounds are exact.
    for k, arrival in enumerate(arrivals[5:], start=1):
        assert arrival >= 0.2 * k - 0.01, arrivals
    assert arrivals[-1] < 1.35, arrivals  # with no burst the last would leave at 1.4 s


def test_tpm_limiter_charges_estimates_then_real_usage(server):
    # 6000/min = 100 tokens/s, bucket of 100. Each call: estimate 27 tokens, real usage 41.
    prompts = [("s" * 40, f"{i:03d}" + "u" * 57) for i in range(6)]
    started = time.monotonic()
    run(config(server, tokens_per_minute=6000), MemoryCallStore(), prompts)
    # Charging real usage, the sixth call waits for 5*41 + 27 - 100 = 132 tokens (1.3 s);
    # charging estimates only, for 6*27 - 100 = 62 (0.6 s).
    assert time.monotonic() - started >= 1.0


# --- the key never leaks -------------------------------------------------------------------


def test_key_never_appears_in_results_records_errors_or_logs(monkeypatch, caplog):
    caplog.set_level(logging.DEBUG)  # includes the SDKs' and httpx2's debug logs
    # A responder that repeats the key checks the scrub on texts and raw bodies, too.
    with StandinServer(api_key=KEY, responder=lambda system, user: f"the key is {KEY}") as server:
        store = MemoryCallStore()
        server.inject(Fault.rate_limit(retry_after="0"), Fault.server_error(500), Fault.drop())
        results = run(config(server, max_retries=0), store, [("sys", f"q{i}") for i in range(4)])
        results += run(config(server, "anthropic", max_retries=0), store, [("sys", "q")])
        monkeypatch.setenv("OPENAI_API_KEY", WRONG_KEY)
        with pytest.raises(AutointerpError) as info:
            one(config(server), store)
        cfg = config(server)

    assert sum(c.ok for c in results) == 2 and sum(not c.ok for c in results) == 3
    assert any("***" in c.text for c in results)
    secret = Secret(KEY, "$OPENAI_API_KEY")
    for key in (KEY, WRONG_KEY):
        assert not find_leaks(key, *results, *store.calls, info.value, cfg, secret)
        assert key not in caplog.text
        # Outside the auth header it was sent in, the key is nowhere in the traffic.
        assert not any(key.encode() in r.body for r in server.requests)


def test_a_cache_hit_from_the_database_leaves_the_log_writable(server, tmp_path):
    """0.1.0 read a hit with fetchone(), which leaves duckdb's result open: the next write of the
    log raised 'connection has an unfinished result', so an interrupted explain could never finish."""
    from autointerp.store import CallLog, Store

    cfg = config(server)
    with Store(tmp_path) as store:
        log = CallLog(store)
        one(cfg, log, user="first")
        log.close()
    with Store(tmp_path) as store:
        log = CallLog(store, flush_every=1)
        hit = one(cfg, log, user="first")  # answered from the database
        fresh = one(cfg, log, user="second")  # recorded and flushed at once
        log.close()
        rows = store.con.execute('SELECT call_id, "user" FROM llm_calls ORDER BY call_id').fetchall()
    assert hit.cached and hit.call_id == 1 and not fresh.cached and fresh.call_id == 2
    assert rows == [(1, "first"), (2, "second")]


# --- a password in the base URL never leaks --------------------------------------------------------


@pytest.mark.parametrize(
    "text, shown",
    [
        ("http://user:secret@host/v1", "http://***@host/v1"),
        ("see https://tok@h.example:8000/v1/models now", "see https://***@h.example:8000/v1/models now"),
        ("http://u:p@ss@host/v1", "http://***@host/v1"),  # an unencoded '@' in the password
        ("HTTP://U:P@HOST", "HTTP://***@HOST"),
        ("http://host/v1?api_key=abc&x=1", "http://host/v1?api_key=***&x=1"),
        ("http://localhost:8000/v1", "http://localhost:8000/v1"),  # nothing secret: unchanged
        ("mail me at a@b.example", "mail me at a@b.example"),  # not a URL
    ],
)
def test_redact_urls_hides_user_password_and_secret_query_values(text, shown):
    from autointerp.llm.redact import redact_urls, redacted

    assert redact_urls(text) == shown
    assert redacted({"judge": {"base_url": text, "n": 3}, "xs": (text,)}) == {
        "judge": {"base_url": shown, "n": 3},
        "xs": (shown,),
    }


def test_a_password_in_the_base_url_never_appears_in_errors_records_or_logs(server, monkeypatch, caplog):
    import socket

    caplog.set_level(logging.DEBUG)  # the HTTP library logs every request's full URL at INFO
    password = "pa55word-in-the-url"
    monkeypatch.setenv("OPENAI_COMPATIBLE_API_KEY", KEY)

    def cfg(url: str) -> LLMConfig:
        with_password = url.replace("http://", f"http://user:{password}@")
        return LLMConfig(
            provider="openai_compatible", model=OPENAI_MODEL, base_url=with_password, max_retries=0, timeout_s=2.0
        )

    def check(c: LLMConfig) -> None:
        async def go() -> None:
            client = make_client(c, store)
            try:
                await client.check()
            finally:
                await client.aclose()

        asyncio.run(go())

    store = MemoryCallStore()
    # The HTTP library sends the URL's user and password as Basic auth; the stand-in wants the key: 401.
    with pytest.raises(AutointerpError) as rejected:
        one(cfg(server.openai_base_url), store)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    with pytest.raises(AutointerpError) as unreachable:
        check(cfg(dead))
    assert unreachable.value.problem.startswith(f"cannot reach {dead.replace('http://', 'http://***@')}:")
    failed = one(cfg(dead), store)
    assert not failed.ok and "connection error" in failed.error
    assert "HTTP Request: POST http://***@127.0.0.1" in caplog.text  # the URL was logged, redacted
    assert not find_leaks(password, rejected.value, unreachable.value, failed, *store.calls)
    assert password not in caplog.text
    client = make_client(cfg(dead), store)
    basic = base64.b64encode(f"user:{password}".encode()).decode()
    said = client.scrub(f"at http://user:{password}@h/v1, sent Basic {basic}; {password}")
    assert said == "at http://***@h/v1, sent Basic ***; ***"
    asyncio.run(client.aclose())
