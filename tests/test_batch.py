"""The batch APIs through the official SDKs against the stand-in's batch endpoints: one batch for
what a stage hands over, half the price, a killed run collected instead of paid again, expired
and failed batches."""

from __future__ import annotations

import asyncio
import json

import pytest
from standin_server import BatchFault, Fault, StandinServer

from autointerp.config import LLMConfig
from autointerp.errors import AutointerpError
from autointerp.llm.client import MemoryCallStore, cache_key
from autointerp.llm.connect import make_client

KEY = "sk-batch-test"
PRICE = (2.0, 6.0)  # USD per million prompt, completion tokens


def config(server: StandinServer, provider: str, **overrides) -> LLMConfig:
    base = server.anthropic_base_url if provider == "anthropic" else server.openai_base_url
    return LLMConfig(
        provider=provider,
        model="standin-model",
        base_url=base,
        batch=True,
        batch_poll_s=0.02,
        batch_idle_s=0.05,
        backoff_initial_s=0.01,
        backoff_max_s=0.05,
        prices={"standin-model": PRICE},
        **overrides,
    )


def prompts(n: int) -> list[tuple[str, str]]:
    return [("You label features.", f"snippet {i}: the cat sat") for i in range(n)]


async def ask_all(client, asks, purpose="explanation"):
    try:
        return await asyncio.gather(
            *(client.complete(s, u, purpose=purpose, feature=i, max_tokens=64) for i, (s, u) in enumerate(asks))
        )
    finally:
        await client.aclose()


def posts(server: StandinServer, path: str) -> list:
    return [r for r in server.requests if r.path == path and r.body]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_stage_s_calls_go_out_as_one_batch_billed_at_half_price(provider, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY" if provider == "openai" else "ANTHROPIC_API_KEY", KEY)
    with StandinServer(api_key=KEY) as server:
        cfg = config(server, provider)
        store = MemoryCallStore()
        asks = prompts(12)
        answers = asyncio.run(ask_all(make_client(cfg, store), asks))

        params = {
            "max_tokens": 64,
            "temperature": None if provider == "anthropic" else 0.0,
        }  # null: not sent to Anthropic
        keys = [cache_key(provider, "standin-model", s, u, params) for s, u in asks]
        if provider == "openai":
            (upload,) = posts(server, "/v1/files")
            (create,) = posts(server, "/v1/batches")
            jsonl = upload.body.split(b"\r\n\r\n", 2)[-1]  # the file part of the multipart body
            lines = [json.loads(x) for x in jsonl.split(b"\n") if x.startswith(b"{")]
            assert lines == [
                {
                    "custom_id": k,
                    "method": "POST",
                    "url": "/v1/chat/completions",
                    "body": {
                        "model": "standin-model",
                        "max_tokens": 64,
                        "temperature": 0.0,
                        "messages": [{"role": "system", "content": s}, {"role": "user", "content": u}],
                    },
                }
                for k, (s, u) in zip(keys, asks)
            ]
            assert create.json()["endpoint"] == "/v1/chat/completions" and create.json()["completion_window"] == "24h"
        else:
            (create,) = posts(server, "/v1/messages/batches")
            assert create.json() == {
                "requests": [
                    {
                        "custom_id": k,
                        "params": {
                            "model": "standin-model",
                            "system": [{"type": "text", "text": s, "cache_control": {"type": "ephemeral"}}],
                            "max_tokens": 64,
                            "messages": [{"role": "user", "content": u}],
                        },
                    }
                    for k, (s, u) in zip(keys, asks)
                ]
            }
        assert (
            server.calls and not posts(server, "/v1/chat/completions") and not posts(server, "/v1/messages")
        )  # nothing live
        assert sorted(server.batch_runs) == sorted(keys)
        for (s, u), answer in zip(asks, answers):
            assert answer.ok and answer.text == f"echo: {u}" and not answer.cached
            prompt_tokens, completion_tokens = (
                max(1, len(s + u) // 4),
                max(1, len(f"echo: {u}") // 4),
            )  # the stand-in's count
            assert (answer.prompt_tokens, answer.completion_tokens) == (prompt_tokens, completion_tokens)
            assert answer.cost_usd == pytest.approx(
                0.5 * (prompt_tokens * PRICE[0] + completion_tokens * PRICE[1]) / 1e6
            )
        assert [c.cache_key for c in store.calls] == keys and all(c.error is None for c in store.calls)
        # A second run asks nothing: every answer is in the cache.
        again = asyncio.run(ask_all(make_client(cfg, store), asks))
        assert (
            all(a.cached for a in again)
            and len(posts(server, "/v1/batches") + posts(server, "/v1/messages/batches")) == 1
        )


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_run_stopped_while_its_batch_runs_is_collected_by_the_next_not_paid_again(provider, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY" if provider == "openai" else "ANTHROPIC_API_KEY", KEY)
    with StandinServer(api_key=KEY) as server:
        server.batch_polls = 10**9  # the batch keeps running
        cfg = config(server, provider)
        store = MemoryCallStore()
        asks = prompts(8)

        async def stopped():
            client = make_client(cfg, store)
            task = asyncio.ensure_future(ask_all(client, asks))
            while not any(r.path.startswith(("/v1/batches/", "/v1/messages/batches/")) for r in server.requests):
                await asyncio.sleep(0.01)  # it has been polled once: submitted and in the ledger
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(stopped())
        assert server.batch_runs == [] and not store.calls
        server.batch_polls = 1
        answers = asyncio.run(
            ask_all(make_client(cfg, store), asks + prompts(10)[8:])
        )  # the same prompts and two new ones
        assert all(a.ok for a in answers)
        created = posts(server, "/v1/batches") + posts(server, "/v1/messages/batches")
        assert len(created) == 2  # the first run's batch, and one for the two new prompts
        assert len(server.batch_billed) == len(set(server.batch_billed)) == 10  # no request paid twice
        assert [r.status for _, r in store.batches.values()] == ["ended", "ended"]


def test_a_batch_the_provider_no_longer_knows_is_marked_lost_and_its_requests_sent_again(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with StandinServer(api_key=KEY) as server:
        server.batch_polls = 10**9
        cfg = config(server, "openai")
        store = MemoryCallStore()

        async def stopped():
            task = asyncio.ensure_future(ask_all(make_client(cfg, store), prompts(4)))
            while not any(r.path.startswith("/v1/batches/") for r in server.requests):
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(stopped())
        server._batches.clear()  # deleted at the provider (or another account's key)
        server.batch_polls = 1
        answers = asyncio.run(ask_all(make_client(cfg, store), prompts(4)))
        assert all(a.ok for a in answers)
        assert sorted(r.status for _, r in store.batches.values()) == ["ended", "lost"]


def test_an_expired_batch_keeps_what_ran_and_the_next_run_asks_only_for_the_rest(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with StandinServer(api_key=KEY) as server:
        server.inject_batch(BatchFault.expire(answered=3))
        cfg = config(server, "openai")
        store = MemoryCallStore()
        asks = prompts(7)
        first = asyncio.run(ask_all(make_client(cfg, store), asks))
        assert [a.ok for a in first] == [True] * 3 + [False] * 4
        assert all("batch_expired" in a.error for a in first[3:])
        assert [c.error is None for c in store.calls] == [True] * 3 + [False] * 4  # failures are logged, never served
        second = asyncio.run(ask_all(make_client(cfg, store), asks))
        assert all(a.ok for a in second) and [a.cached for a in second] == [True] * 3 + [False] * 4
        assert len(server.batch_runs) == len(set(server.batch_runs)) == 7  # expired requests never ran (nor are billed)


def test_a_failed_batch_stops_the_stage_naming_the_fix_and_transient_errors_are_retried(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with StandinServer(api_key=KEY) as server:
        server.inject_batch(BatchFault.fail("model_not_found: The model 'standin-model' does not exist"))
        with pytest.raises(AutointerpError, match="failed: model_not_found") as failed:
            asyncio.run(ask_all(make_client(config(server, "openai"), MemoryCallStore()), prompts(3)))
        assert "--judge-model" in failed.value.fix
        # 500 on the upload, 429 on the create, a dropped poll: each retried, the batch still collected.
        server.inject(Fault.server_error(500), Fault.rate_limit(retry_after="0"), Fault.drop())
        answers = asyncio.run(ask_all(make_client(config(server, "openai"), MemoryCallStore()), prompts(3)))
        assert all(a.ok for a in answers) and server.pending_faults == 0


def test_codebook_calls_stay_live_and_the_local_judge_refuses_batches(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with StandinServer(api_key=KEY) as server:
        answers = asyncio.run(
            ask_all(make_client(config(server, "openai"), MemoryCallStore()), prompts(2), purpose="codebook")
        )
        assert (
            all(a.ok for a in answers)
            and len(posts(server, "/v1/chat/completions")) == 2
            and not posts(server, "/v1/batches")
        )
    with pytest.raises(AutointerpError, match="no batch API"):
        LLMConfig(provider="local", batch=True)


@pytest.mark.slow
def test_a_batch_run_through_the_cli_survives_a_kill_and_a_resubmit_with_no_request_paid_twice(
    pipeline_setup, tmp_path
):
    """`autointerp run --batch`, killed with SIGKILL while its first batch runs at the provider;
    the same command again collects that batch (not resubmitted), scores, saturates and reports."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import duckdb
    from standin_responder import CodebookResponder
    from test_llm_path import gather_args

    project = tmp_path / "p"
    prices = tmp_path / "prices.toml"
    prices.write_text('[models]\n"standin-model" = [2.0, 6.0]\n')
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OPENAI_API_KEY": KEY}
    with StandinServer(api_key=KEY, responder=CodebookResponder()) as server:
        server.batch_polls = 10**9  # the first batch keeps running until the kill
        args = [
            sys.executable,
            "-m",
            "autointerp",
            "run",
            *gather_args(pipeline_setup, project),
            "--judge",
            "openai",
            "--judge-model",
            "standin-model",
            "--base-url",
            server.openai_base_url,
            "--batch",
            "--batch-poll",
            "0.05",
            "--prices",
            str(prices),
            "--scorers",
            "detection,embedding",
            "--sample-judge",
            "none",
        ]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 300
        while not any(
            r.path.startswith("/v1/batches/") for r in server.requests
        ):  # polled: submitted, and in the ledger
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "no batch was submitted"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with duckdb.connect(str(project / "autointerp.duckdb"), read_only=True) as db:
            assert db.execute("SELECT status, n_requests > 0 FROM llm_batches").fetchall() == [("submitted", True)]
            assert db.execute("SELECT count(*) FROM explanations").fetchone()[0] == 0
        submitted = list(server.batch_billed)

        server.batch_polls = 1
        rerun = subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)
        assert rerun.returncode == 0, rerun.stdout + rerun.stderr
        assert "report:" in rerun.stdout
        assert (
            server.batch_billed[: len(submitted)] == submitted
        )  # the killed run's batch was collected, not sent again
        assert (
            len(server.batch_billed) == len(set(server.batch_billed)) > len(submitted)
        )  # score batches; no request paid twice
        assert not any(r.path == "/v1/chat/completions" for r in server.requests)  # nothing went live
    with duckdb.connect(str(project / "autointerp.duckdb"), read_only=True) as db:
        statuses = db.execute("SELECT status, count(*) FROM llm_batches GROUP BY 1").fetchall()
        n_calls, n_keys, cost, expected = db.execute(
            "SELECT count(*), count(DISTINCT cache_key), sum(cost_usd), sum(0.5 * (prompt_tokens * 2.0 + "
            "completion_tokens * 6.0) / 1e6) "
            "FROM llm_calls WHERE error IS NULL"
        ).fetchone()
        labelled = db.execute("SELECT count(*) FROM explanations WHERE status = 'ok'").fetchone()[0]
        alive = db.execute("SELECT count(*) FROM features WHERE NOT dead").fetchone()[0]
        scored = db.execute(
            "SELECT count(DISTINCT feature) FROM scores WHERE scorer = 'detection' AND status = 'ok'"
        ).fetchone()[0]
    assert statuses == [("ended", len(statuses) and statuses[0][1])] and n_calls == n_keys == len(server.batch_runs)
    assert cost == pytest.approx(expected) and cost > 0
    assert labelled == alive > 0 and scored > 0
