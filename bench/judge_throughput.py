"""Judge throughput and prompt cost, against the local stand-in server.

1. Features explained per minute through the real OpenAI client at concurrency 1, 8 and 32,
   with a fixed 200 ms server latency, against the ideal concurrency / latency
   (target: at least 90% of ideal at 32).
2. Prompts, prompt and completion tokens per feature for explain and for each scorer, from a
   real run of explain and score against the stand-in (no shuffle control, as delphi has
   none), read from the call log, and the implied cost per million features at gpt-4o-mini
   prices, beside delphi's published figures; once as scoring asked before issue 26 (10
   snippets a detection / fuzzing prompt) and once as it asks now (a feature's snippets in
   one prompt). Prompt tokens are counted by a real byte-level BPE tokenizer (Qwen2.5's,
   151k pieces, from the local judge's GGUF file), besides the stand-in's characters / 4
   and `autointerp estimate`'s rule, on the same prompts; the chat template's few tokens a
   message are left out. Completion lengths are the stand-in's, shorter than a real model's.

Snippets come from a real gathered project (default: ./project from `make demo`).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from common import machine, write_report  # noqa: E402
from standin_responder import TaskResponder  # noqa: E402
from standin_server import StandinServer  # noqa: E402

from autointerp.config import ExplainConfig, LLMConfig  # noqa: E402
from autointerp.judges.judge import make_judge, map_bounded  # noqa: E402
from autointerp.stages.estimate import DELPHI_PUBLISHED as DELPHI  # noqa: E402
from autointerp.stages.explain import explain_task, select_features  # noqa: E402
from autointerp.store import CallLog, Store  # noqa: E402

KEY = "sk-bench"
PRICE_IN, PRICE_OUT = 0.15, 0.60  # gpt-4o-mini, USD per million tokens


def config(server: StandinServer, concurrency: int) -> LLMConfig:
    return LLMConfig(
        provider="openai_compatible",
        model="gpt-4o-mini",
        base_url=server.openai_base_url,
        api_key_env="BENCH_KEY",
        concurrency=concurrency,
        timeout_s=30,
    )


def explain_many(cfg: LLMConfig, tasks) -> float:
    """Seconds to explain every task as the explain stage does: bounded workers, and every call
    checked against and logged to the response cache in a (fresh) project database."""
    import tempfile

    async def go(log: CallLog) -> float:
        judge = make_judge(cfg, log)
        start = time.perf_counter()
        answers = await map_bounded(judge.explain, tasks, judge.concurrency)
        elapsed = time.perf_counter() - start
        await judge.aclose()
        assert all(a.ok for a in answers), [a.error for a in answers if not a.ok][:3]
        return elapsed

    with tempfile.TemporaryDirectory() as tmp, Store(tmp) as store:
        log = CallLog(store)
        elapsed = asyncio.run(go(log))
        log.flush()
    return elapsed


def fixed_label(system: str, user: str) -> str:
    """A valid explain answer that costs the server nothing to compute: the throughput runs
    measure our side (prompt rendering, client, parsing), not the stand-in's judging."""
    return 'Label: token "def"'


def serve_in_child(latency: float, ready, stop) -> None:
    """The stand-in in its own process, so its threads do not share the client's GIL or core."""
    with StandinServer(api_key=KEY, responder=fixed_label, latency_s=latency) as server:
        ready.send(server.openai_base_url)
        stop.wait()
        ready.send(server.max_in_flight)


class ChildServer:
    def __init__(self, latency: float):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.stop = ctx.Event()
        self.proc = ctx.Process(target=serve_in_child, args=(latency, child, self.stop), daemon=True)

    def __enter__(self) -> ChildServer:
        self.proc.start()
        self.openai_base_url = self.conn.recv()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.max_in_flight = self.conn.recv()
        self.proc.join(10)


def main() -> None:
    import os

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", default=str(ROOT / "project"))
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--seconds", type=float, default=6.0, help="ideal duration of each throughput run")
    ap.add_argument("--cost-features", type=int, default=100)
    a = ap.parse_args()
    os.environ["BENCH_KEY"] = KEY

    with Store(a.project, read_only=True) as store:
        run_id = store.run()["run_id"]
        features = select_features(store, run_id, ExplainConfig())
        snippets = store.feature_snippets(
            run_id, features[:1000], split="explain", max_per_kind={"top": 10, "negative": 10}
        )
    tasks = [explain_task(fs, ExplainConfig().for_judge("openai_compatible")) for fs in snippets if fs.explain]

    rows = []
    for c in (1, 8, 32):
        n = min(len(tasks), max(c, int(round(a.seconds * c / a.latency))))
        with ChildServer(a.latency) as server:
            elapsed = explain_many(config(server, c), tasks[:n])
        ideal = c / a.latency * 60
        rows.append(
            {
                "concurrency": c,
                "features": n,
                "seconds": elapsed,
                "per_min": n / elapsed * 60,
                "ideal_per_min": ideal,
                "fraction_of_ideal": n / elapsed * 60 / ideal,
                "max_in_flight": server.max_in_flight,
            }
        )

    cost = measure_cost(a.project, run_id, a.cost_features)
    md = [
        "# Judge throughput and cost (stand-in server)\n",
        f"Real OpenAI client against the local stand-in (its own process) with {a.latency * 1000:.0f} ms per request, "
        "every call "
        "checked against and logged to the DuckDB response cache as in the explain stage; explain prompts "
        f"built from `{a.project}` ({len(tasks)} features available).\n",
        "| concurrency | features | seconds | features/min | ideal/min | fraction of ideal | max in flight |",
        "|---|---|---|---|---|---|---|",
    ]
    md += [
        f"| {r['concurrency']} | {r['features']} | {r['seconds']:.2f} | {r['per_min']:,.0f} | "
        f"{r['ideal_per_min']:,.0f} | "
        f"{r['fraction_of_ideal']:.3f} | {r['max_in_flight']} |"
        for r in rows
    ]
    md += [
        "",
        f"Target: ≥ 0.90 of ideal at concurrency 32 — measured {rows[-1]['fraction_of_ideal']:.3f}.",
        "",
        f"## Calls, tokens and cost per feature ({a.cost_features} features, no shuffle control)\n",
        "Prompt tokens by a real BPE tokenizer (Qwen2.5's); the stand-in's characters / 4 and the estimate's rule "
        "on the same prompts beside them. Dollars from the BPE count at gpt-4o-mini's list price ($0.15 / $0.60 per "
        "million prompt / completion tokens).\n",
        "| stage | scoring | prompts/feature | prompt tokens/feature (BPE) | chars/4 | estimate rule | "
        "completion tokens/feature | $ per 1M features | delphi published |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for when, stages in cost.items():
        md += [
            f"| {k} | {when} | {v['prompts']:.2f} | {v['bpe_tokens']:,.0f} | {v['prompt_tokens']:,.0f} | "
            f"{v['rule_tokens']:,.0f} | {v['completion_tokens']:,.0f} | ${v['usd_per_million']:,.0f} | "
            f"{'$' + format(DELPHI[k], ',') if k in DELPHI else '—'} |"
            for k, v in stages.items()
            if k != "snippets" and (when == "now" or k in ("detection", "fuzzing"))
        ]
    md += [
        "",
        "The shuffle control (a sample of features scored again with another feature's label) adds its share of "
        "the scoring rows; delphi has none. Completion tokens are the stand-in's, not a real model's.",
        "",
        f"Machine: {machine()}",
    ]
    write_report(
        "judge_throughput",
        {"throughput": rows, "cost": cost, "latency_s": a.latency, "machine": machine()},
        "\n".join(md) + "\n",
    )


def measure_cost(project: str, run_id: str, n_features: int) -> dict:
    """Explain + every judge scorer on n features through the stand-in (no latency), as scoring asked
    before (10 snippets a prompt) and now (one prompt a feature), read from the call log."""
    import shutil
    import tempfile

    from llama_cpp import Llama

    from autointerp.config import RunConfig, ScoreConfig
    from autointerp.llm.local import model_path
    from autointerp.pipeline import label_and_score
    from autointerp.stages.estimate import count_tokens

    vocab = Llama(str(model_path()), vocab_only=True, verbose=False)
    out = {}
    # Before issue 26: 10 activating windows and 10 negatives in prompts of 10; now: the defaults.
    settings = {"before (10 a prompt)": dict(per_prompt=10, n_negative=10), "now": {}}
    for when, sizes in settings.items():
        with tempfile.TemporaryDirectory() as tmp, StandinServer(api_key=KEY, responder=TaskResponder()) as server:
            shutil.copy(Path(project) / "autointerp.duckdb", Path(tmp) / "autointerp.duckdb")
            with Store(tmp) as store:  # start from a clean log so only these calls count
                store.con.execute("DELETE FROM llm_calls")
                store.con.execute("DELETE FROM scores")
            cfg = RunConfig(
                project=tmp,
                judge=config(server, 32),
                progress=False,
                score=ScoreConfig(
                    scorers=("detection", "fuzzing", "simulation", "intruder"),
                    n_boot=50,
                    shuffle_control="none",
                    **sizes,
                ),
            )
            cfg.explain = replace(cfg.explain, max_features=n_features, triage=None)
            label_and_score(cfg, run_id)
            with Store(tmp, read_only=True) as store:
                calls = store.con.execute(
                    'SELECT purpose, system, "user", prompt_tokens, completion_tokens FROM llm_calls '
                    "WHERE error IS NULL"
                ).df()
        calls["bpe"] = [
            len(vocab.tokenize(t.encode(), add_bos=False, special=False)) for t in calls.system + calls.user
        ]
        calls["rule"] = [count_tokens(s) + count_tokens(u) for s, u in zip(calls.system, calls.user)]
        shown = ScoreConfig(**sizes)
        out[when] = {"snippets": shown.n_top + shown.n_strata + shown.n_negative}
        for purpose, g in calls.groupby("purpose"):
            bpe, completion = g.bpe.sum() / n_features, g.completion_tokens.sum() / n_features
            out[when][purpose] = {
                "prompts": len(g) / n_features,
                "bpe_tokens": bpe,
                "prompt_tokens": g.prompt_tokens.sum() / n_features,
                "rule_tokens": g.rule.sum() / n_features,
                "completion_tokens": completion,
                "usd_per_million": bpe * PRICE_IN + completion * PRICE_OUT,
            }
    return out


if __name__ == "__main__":
    main()
