"""Judge throughput and prompt cost, against the local stand-in server.

1. Features explained per minute through the real OpenAI client at concurrency 1, 8 and 32,
   with a fixed 200 ms server latency, against the ideal concurrency / latency
   (target: at least 90% of ideal at 32).
2. Prompt and completion tokens per feature for explain and for each scorer, from the
   call log, and the implied cost per million features at gpt-4o-mini prices, beside
   delphi's published figures.

Snippets come from a real gathered project (default: ./project from `make demo`).
Tokens are counted by the stand-in as characters / 4, the usual rule of thumb for
GPT-4-class tokenizers; completion lengths are the stand-in's, shorter than a
real model's explanations.
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
from autointerp.stages.explain import explain_task, select_features  # noqa: E402
from autointerp.store import CallLog, Store  # noqa: E402

KEY = "sk-bench"
PRICE_IN, PRICE_OUT = 0.15, 0.60  # gpt-4o-mini, USD per million tokens
DELPHI = {"explain": 160, "detection": 125, "fuzzing": 125, "simulation": 4700}  # USD per million features, GPT-4o mini


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
        f"## Tokens and cost per feature ({a.cost_features} features, shuffle control included in scoring)\n",
        "| stage | prompts/feature | prompt tokens/feature | completion tokens/feature | $ per 1M features "
        "(gpt-4o-mini) | delphi published |",
        "|---|---|---|---|---|---|",
    ]
    md += [
        f"| {k} | {v['prompts']:.2f} | {v['prompt_tokens']:,.0f} | {v['completion_tokens']:,.0f} | "
        f"${v['usd_per_million']:,.0f} | "
        f"{'$' + format(DELPHI[k], ',') if k in DELPHI else '—'} |"
        for k, v in cost.items()
    ]
    md += [
        "",
        "Scoring rows include the shuffle control, run on a seeded sample of the features (all of them at this size); "
        "delphi has no control. Completion tokens are the stand-in's, not a real model's.",
        "",
        f"Machine: {machine()}",
    ]
    write_report(
        "judge_throughput",
        {"throughput": rows, "cost": cost, "latency_s": a.latency, "machine": machine()},
        "\n".join(md) + "\n",
    )


def measure_cost(project: str, run_id: str, n_features: int) -> dict:
    """Run explain + every judge scorer on n features through the stand-in (no latency) and read the call log."""
    import shutil
    import tempfile

    from autointerp.config import RunConfig, ScoreConfig
    from autointerp.pipeline import label_and_score

    with tempfile.TemporaryDirectory() as tmp, StandinServer(api_key=KEY, responder=TaskResponder()) as server:
        shutil.copy(Path(project) / "autointerp.duckdb", Path(tmp) / "autointerp.duckdb")
        with Store(tmp) as store:  # start from a clean log so only these calls count
            store.con.execute("DELETE FROM llm_calls")
        cfg = RunConfig(
            project=tmp,
            judge=config(server, 32),
            progress=False,
            score=ScoreConfig(scorers=("detection", "fuzzing", "simulation"), n_boot=50),
        )
        cfg.explain = replace(cfg.explain, max_features=n_features)
        label_and_score(cfg, run_id)
        with Store(tmp, read_only=True) as store:
            df = store.con.execute(
                "SELECT purpose, count(*) AS prompts, sum(prompt_tokens) AS p, sum(completion_tokens) AS c "
                "FROM llm_calls WHERE error IS NULL GROUP BY purpose"
            ).df()
    out = {}
    for r in df.itertuples():
        per_p, per_c = r.p / n_features, r.c / n_features
        out[r.purpose] = {
            "prompts": r.prompts / n_features,
            "prompt_tokens": per_p,
            "completion_tokens": per_c,
            "usd_per_million": (per_p * PRICE_IN + per_c * PRICE_OUT),
        }
    return out


if __name__ == "__main__":
    main()
