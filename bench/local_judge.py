"""The local judge on this machine: throughput, token speeds, and parse failures per prompt.

1. Features explained per minute at concurrency 1, 2 and 4 (llama-cpp-python's server, the
   demo's explain prompts, no cache), against the same features each time.
2. Prompt and generation speed: prompts answered with one token (prompt processing), and one
   long generation (minus its prompt time).
3. Parse failures per prompt (explain, detection, fuzzing, simulation, codebook), with answers
   constrained to each task's JSON schema and without.

    python bench/local_judge.py --project project
Needs a gathered project (`make demo`) and the local judge (pip install '.[local]').
Writes reports/local_judge.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from autointerp.config import ExplainConfig, LLMConfig, ScoreConfig
from autointerp.judges.judge import LLMJudge, map_bounded
from autointerp.judges.prompts import load_prompts
from autointerp.llm.client import MemoryCallStore
from autointerp.llm.connect import make_client
from autointerp.llm.local import LOCAL_MODEL, LocalServer, default_threads, model_path
from autointerp.records import DetectionTask, FuzzTask, SimulationTask
from autointerp.stages.explain import explain_task, select_features
from autointerp.stages.score.stage import fuzz_snippets, held_out
from autointerp.store import Store


def judge_on(server: LocalServer, concurrency: int, structured: str = "json_object") -> LLMJudge:
    cfg = LLMConfig(provider="local", concurrency=concurrency, timeout_s=900, structured_output=structured)
    served = replace(cfg, base_url=None)
    served.base_url = server.base_url
    return LLMJudge(make_client(served, MemoryCallStore()), cfg, load_prompts())


async def throughput(server, chunk, levels) -> dict:
    out = {}
    tasks = [explain_task(fs, ExplainConfig().for_judge("local")) for fs in chunk]
    for c in levels:
        judge = judge_on(server, c)
        t0 = time.perf_counter()
        answers = await map_bounded(judge.explain, tasks, c)
        seconds = time.perf_counter() - t0
        await judge.aclose()
        out[c] = {
            "features": len(tasks),
            "seconds": seconds,
            "features_per_minute": 60 * len(tasks) / seconds,
            "parsed": sum(a.ok for a in answers),
            "prompt_tokens": sum(a.prompt_tokens for a in answers),
            "completion_tokens": sum(a.completion_tokens for a in answers),
        }
        print("concurrency", c, json.dumps(out[c]), flush=True)
    return out


async def speeds(server, chunk) -> dict:
    client = judge_on(server, 1).client
    prompt_rates = []
    for fs in chunk[:3]:  # distinct prompts: nothing of them is in the server's prefix cache
        text = " ".join(s.text for s in fs.explain[:12])
        t0 = time.perf_counter()
        c = await client.complete("Summarise.", text, purpose="bench", feature=None, max_tokens=1)
        prompt_rates.append(c.prompt_tokens / (time.perf_counter() - t0))
    t0 = time.perf_counter()
    c = await client.complete(
        "You count.", "Count from 1 to 300, separated by commas.", purpose="bench", feature=None, max_tokens=160
    )
    total = time.perf_counter() - t0
    gen = c.completion_tokens / max(total - c.prompt_tokens / statistics.median(prompt_rates), 1e-3)
    await client.aclose()
    return {
        "prompt_tokens_per_s": statistics.median(prompt_rates),
        "generation_tokens_per_s": gen,
        "generated": c.completion_tokens,
    }


async def parse_rates(server, chunk, n: int) -> dict:
    out = {}
    cfg = ScoreConfig()
    for structured in ("json_object", "off"):
        judge = judge_on(server, 1, structured)
        labels = []
        for fs in chunk[:n]:
            a = await judge.explain(explain_task(fs, ExplainConfig().for_judge("local")))
            labels.append(a.value or "the marked tokens")
            held = held_out(fs, 3, 2, 5, cfg.seed)  # as the demo scores its sample: 10 snippets, one prompt
            rng = np.random.default_rng(fs.feature)
            await judge.detect(DetectionTask(fs.feature, labels[-1], held.active + held.negatives))
            await judge.fuzz(FuzzTask(fs.feature, labels[-1], fuzz_snippets(held, rng)))
        for fs, label in list(zip(chunk, labels))[: max(2, n // 4)]:  # simulation answers are long: fewer of them
            held = held_out(fs, cfg.n_top, cfg.n_strata, cfg.n_negative, cfg.seed).take(2, 2)
            await judge.simulate(SimulationTask(fs.feature, label, held.active + held.negatives))
        for start in range(0, len(labels), 4):
            await judge.codebook(labels[start : start + 4], labels[:start][:8])
        out[structured] = {
            task: {"answers": sum(c.values()), "unparsable": c["parse"], "failed_calls": c["api"]}
            for task, c in judge.outcomes.items()
        }
        await judge.aclose()
        print(structured, json.dumps(out[structured]), flush=True)
    return out


async def main(args) -> dict:
    with Store(args.project, read_only=True) as store:
        run_id = store.run()["run_id"]
        features = select_features(store, run_id, ExplainConfig(sample=args.features, seed=args.seed))
        chunk = store.feature_snippets(run_id, features)
    result = {
        "machine": f"{platform.machine()}, {default_threads()} cores, {platform.platform()}",
        "model": LOCAL_MODEL.description,
        "features": features,
    }
    with LocalServer(
        model_path(), alias=LOCAL_MODEL.name, log_path=Path(args.project) / "logs" / "bench-local-judge.log"
    ) as server:
        result["threads"] = server.threads
        result["speeds"] = await speeds(server, chunk)
        print(json.dumps(result["speeds"]), flush=True)
        result["throughput"] = await throughput(server, chunk, args.concurrency)
        result["parse"] = await parse_rates(server, chunk, args.parse_features)
    return result


def write(result: dict, reports: Path) -> None:
    reports.mkdir(exist_ok=True)
    (reports / "local_judge.json").write_text(json.dumps(result, indent=1))
    s = result["speeds"]
    lines = [
        "# Local judge benchmark",
        "",
        f"{result['model']}, llama-cpp-python server, {result['threads']} threads; {result['machine']}.",
        "",
        f"Prompt processing {s['prompt_tokens_per_s']:.0f} tokens/s; generation {s['generation_tokens_per_s']:.1f} "
        "tokens/s.",
        "",
        "| concurrency | features | seconds | features per minute | parsed | prompt tokens | completion tokens |",
        "|---|---|---|---|---|---|---|",
    ]
    for c, t in result["throughput"].items():
        lines.append(
            f"| {c} | {t['features']} | {t['seconds']:.1f} | {t['features_per_minute']:.1f} | "
            f"{t['parsed']}/{t['features']} | {t['prompt_tokens']:,} | {t['completion_tokens']:,} |"
        )
    lines += [
        "",
        "Parse failures per prompt (unparsable answers / answers):",
        "",
        "| task | constrained to the JSON schema | unconstrained |",
        "|---|---|---|",
    ]
    parse = result["parse"]
    for task in parse["json_object"]:
        cells = [
            f"{parse[m][task]['unparsable']}/{parse[m][task]['answers']}" if task in parse[m] else "—"
            for m in ("json_object", "off")
        ]
        lines.append(f"| {task} | {cells[0]} | {cells[1]} |")
    (reports / "local_judge.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default="project")
    parser.add_argument("--features", type=int, default=12)
    parser.add_argument("--parse-features", type=int, default=8)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--reports", default=str(Path(__file__).resolve().parent.parent / "reports"))
    args = parser.parse_args()
    write(asyncio.run(main(args)), Path(args.reports))
