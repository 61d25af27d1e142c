"""The explainer's views and the local judge's prompt cache, on the default run (issue 25).

1. Views: the same features (the LLM route of the run's triage, a seeded sample) labelled by the
   local judge with each view of ExplainConfig.views (none, each alone, all), every label scored by
   detection and fuzzing on the score split by the offline judge reading the label's words, as the
   run scores its LLM sample (the local judge's own detection is at chance even for right labels:
   reports/local_detection.md), at the run's score sizes. Per view: mean score with a bootstrap 95%
   interval over features, and the paired difference against "none".
2. Prompt cache: explain and detection prompts at concurrency 1, as shipped (the shared
   instructions first, so llama-cpp-python reuses the previous prompt's KV cache for that prefix)
   and with a unique first line in each system message, which defeats that reuse. Features a
   minute each way, and the shared prefix in tokens (the judge's own tokenizer): OpenAI caches
   prefixes of 1,024 tokens or more, Anthropic of 1,024 (2,048 on Haiku).

    python bench/explain_views.py --project project
Needs a `make demo` project (a causal LM: the outputs view reads its output effects) and the local
judge. Writes reports/explain_views.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import cpu_model

from autointerp.config import ExplainConfig, LLMConfig, RunConfig
from autointerp.judges.judge import LLMJudge, OfflineJudge
from autointerp.judges.prompts import TASKS, load_prompts
from autointerp.llm.client import MemoryCallStore
from autointerp.llm.connect import make_client
from autointerp.llm.local import LOCAL_MODEL, LocalServer, model_path
from autointerp.records import DetectionTask
from autointerp.stages.explain import explain_tasks
from autointerp.stages.score.sampling import held_out
from autointerp.stages.score.scorers import SCORERS, Item
from autointerp.store import Store

VIEWS = {
    "none": (),
    "activations": ("activations",),
    "contrast": ("contrast",),
    "outputs": ("outputs",),
    "all": ("activations", "contrast", "outputs"),
}
SCORED = ("detection", "fuzzing")  # --scorers picks a subset


class Uncached:
    """A client whose every system message starts with a new line of its own: no prompt shares a
    prefix with the one before, so the server's prefix reuse never applies."""

    def __init__(self, client):
        self.client = client

    async def complete(self, system: str, user: str, **kwargs):
        return await self.client.complete(f"Request {uuid.uuid4()}.\n{system}", user, **kwargs)

    def __getattr__(self, name):
        return getattr(self.client, name)


def judge_on(server: LocalServer, cached: bool = True) -> LLMJudge:
    cfg = LLMConfig(provider="local", concurrency=1, timeout_s=900)
    served = replace(cfg, base_url=None)
    served.base_url = server.base_url
    client = make_client(served, MemoryCallStore())
    return LLMJudge(client if cached else Uncached(client), cfg, load_prompts())


def boot(values: np.ndarray, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = values[rng.integers(len(values), size=(5000, len(values)))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


async def views(server, store, run_id, features, scored) -> dict:
    judge = judge_on(server)
    reader = OfflineJudge()  # as the run scores its LLM sample: the label's words, at the run's score sizes
    score_cfg = RunConfig().score
    snippets = {
        fs.feature: held_out(fs, score_cfg.n_top, score_cfg.n_strata, score_cfg.n_negative, score_cfg.seed)
        for fs in store.feature_snippets(run_id, features, split="score")
    }
    out = {}
    for name, shown in VIEWS.items():
        cfg = ExplainConfig(views=shown).for_judge("local")
        tasks = [t for chunk in explain_tasks(store, run_id, features, cfg) for t in chunk]
        rows = []
        for task in tasks:
            t0 = time.perf_counter()
            answer = await judge.explain(task)
            row = {"feature": task.feature, "label": answer.value, "explain_s": time.perf_counter() - t0}
            row["prompt_tokens"] = answer.prompt_tokens
            if answer.ok:
                item = Item(task.feature, answer.value, snippets[task.feature], task.feature)
                for scorer in scored:
                    (o,) = await SCORERS[scorer].score([item], reader, score_cfg)
                    row[scorer] = o.estimate.value if o.status == "ok" else None
            rows.append(row)
            print(name, json.dumps(row), flush=True)
        out[name] = rows
    await judge.aclose()
    return out


async def cache(server, store, run_id, features) -> dict:
    cfg = ExplainConfig().for_judge("local")
    tasks = [t for chunk in explain_tasks(store, run_id, features, cfg) for t in chunk]
    held = {fs.feature: held_out(fs, 3, 2, 5, 0) for fs in store.feature_snippets(run_id, features, split="score")}
    # As the demo scores its sample: 10 windows, one prompt.
    detect = [DetectionTask(f, "a label for timing", h.active + h.negatives) for f, h in held.items()]
    out = {}
    for cached in (True, False):
        judge = judge_on(server, cached)
        for name, run, items in (("explain", judge.explain, tasks), ("detection", judge.detect, detect)):
            t0 = time.perf_counter()
            for item in items:
                await run(item)
            seconds = time.perf_counter() - t0
            key = f"{name} {'prefix reused' if cached else 'no reuse'}"
            out[key] = {"features": len(items), "seconds": seconds, "per_minute": 60 * len(items) / seconds}
            print(key, json.dumps(out[key]), flush=True)
        await judge.aclose()
    return out


def shared_prefix_tokens() -> dict:
    """Tokens (the judge's own vocabulary) of each prompt's system message and its user text before
    the first field: what a prefix cache can serve (the chat template adds a few more)."""
    from llama_cpp import Llama

    vocab = Llama(str(model_path()), vocab_only=True, verbose=False)
    prompts = load_prompts()
    out = {}
    for name in ("explain", "detection", "fuzzing"):
        p = prompts[name]
        first = min(p.user.index("{" + f + "}") for f in TASKS[name].placeholders if "{" + f + "}" in p.user)
        out[name] = len(vocab.tokenize((p.system + "\n" + p.user[:first]).encode(), add_bos=False))
    return out


def summarise(rows_by_view: dict, scored) -> dict:
    base = {r["feature"]: r for r in rows_by_view["none"]}
    out = {}
    for name, rows in rows_by_view.items():
        entry = {
            "labels": sum(r["label"] is not None for r in rows),
            "explain_s": np.mean([r["explain_s"] for r in rows]),
        }
        entry["prompt_tokens"] = float(np.mean([r["prompt_tokens"] for r in rows]))
        for scorer in scored:
            v = np.array([r[scorer] for r in rows if r.get(scorer) is not None], dtype=float)
            d = np.array(
                [
                    r[scorer] - base[r["feature"]][scorer]
                    for r in rows
                    if r.get(scorer) is not None and base.get(r["feature"], {}).get(scorer) is not None
                ],
                dtype=float,
            )
            entry[scorer] = {"mean": float(v.mean()) if len(v) else None, "ci": boot(v) if len(v) > 1 else None}
            entry[scorer]["vs_none"] = {
                "mean": float(d.mean()) if len(d) else None,
                "ci": boot(d) if len(d) > 1 else None,
            }
        out[name] = entry
    return out


async def main(args) -> dict:
    with Store(args.project, read_only=True) as store:
        run_id = store.run()["run_id"]
        routes = store.triage(run_id)
        pool = sorted(routes.feature[routes.route == "llm"].astype(int))
        features = sorted(int(f) for f in np.random.default_rng(args.seed).choice(pool, args.features, replace=False))
        result = {
            "cpu": cpu_model(),
            "model": LOCAL_MODEL.description,
            "run": run_id,
            "features": features,
            "triage": {"token": int((routes.route == "token").sum()), "llm": len(pool)},
            "shared_prefix_tokens": shared_prefix_tokens(),
        }
        with LocalServer(model_path(), alias=LOCAL_MODEL.name, log_path=Path("/tmp/bench-explain-views.log")) as s:
            result["cache"] = await cache(s, store, run_id, features[: args.cache_features])
            result["views"] = await views(s, store, run_id, features, args.scorers)
    result["summary"] = summarise(result["views"], args.scorers)
    result["scored"] = list(args.scorers)
    return result


def write(result: dict, reports: Path) -> None:
    (reports / "explain_views.json").write_text(json.dumps(result, indent=1))

    def f(x, ci=None):
        if x is None:
            return "—"
        return f"{x:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    lines = [
        "# Explainer views and the prompt cache (local judge)",
        "",
        f"{result['model']} on {result['cpu']}, 2 cores; run {result['run']}; {len(result['features'])} features "
        f"drawn from the LLM route of its triage ({result['triage']['llm']:,} LLM, {result['triage']['token']:,} "
        "token).",
        "",
        "## Views",
        "",
        f"Each feature labelled with each view; each label scored by {' and '.join(result['scored'])} on the score "
        "split at the run's score sizes by the offline judge, which reads the words the label names (as the run "
        "scores its LLM sample; the local judge's own answers are at chance, reports/local_detection.md). Mean over "
        "features with a bootstrap 95% interval; the paired difference against the examples alone.",
        "",
        "| view | labels | prompt tokens | explain s | "
        + " | ".join(f"{s} | vs none" for s in result["scored"])
        + " |",
        "|---|---|---|---|" + "---|---|" * len(result["scored"]),
    ]
    for name, e in result["summary"].items():
        cells = [f"{name}", f"{e['labels']}", f"{e['prompt_tokens']:.0f}", f"{e['explain_s']:.1f}"]
        for scorer in result["scored"]:
            d = e[scorer]
            cells += [f(d["mean"], d["ci"]), f(d["vs_none"]["mean"], d["vs_none"]["ci"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Labels (none, then all):", ""]
    for name in ("none", "all"):
        lines += [f"- {name}, #{r['feature']}: {r['label']!r}" for r in result["views"][name]]
    lines += ["", "## Prompt cache", "", "| prompts | features | seconds | per minute |", "|---|---|---|---|"]
    for key, c in result["cache"].items():
        lines.append(f"| {key} | {c['features']} | {c['seconds']:.1f} | {c['per_minute']:.1f} |")
    p = result["shared_prefix_tokens"]
    lines += [
        "",
        "Shared prefix (the system message and the instructions before the first field, in the judge's own tokens; "
        "the chat template adds a few): "
        + ", ".join(f"{k} {v} tokens" for k, v in p.items())
        + ". Provider prompt caching starts at 1,024 tokens (OpenAI; Anthropic 1,024, Haiku 2,048), so the "
        "shipped prompts' prefixes are too short for it; llama.cpp reuses any common prefix.",
    ]
    (reports / "explain_views.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default="project")
    parser.add_argument("--features", type=int, default=8)
    parser.add_argument("--cache-features", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scorers", type=lambda t: tuple(t.split(",")), default=SCORED)
    parser.add_argument("--reports", default=str(Path(__file__).resolve().parent.parent / "reports"))
    args = parser.parse_args()
    write(asyncio.run(main(args)), Path(args.reports))
