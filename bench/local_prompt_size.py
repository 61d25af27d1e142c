"""Label quality against prompt size for the local judge (Qwen2.5-Coder-1.5B on this machine's CPU).

On a seeded sample of the demo's features, each prompt variant (number of snippets, tokens of
context kept around the marks, activation lists or not) is sent to the local judge; every label
is then scored two ways that do not depend on the variant: the embedding scorer's AUROC
(label vs held-out activating and verified-negative snippets) and detection by the same local
model on held-out snippets, each beside the same feature scored with another feature's label.

    python bench/local_prompt_size.py --project project --features 16
Writes reports/local_prompt_size.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import numpy as np

from autointerp.config import ExplainConfig, LLMConfig
from autointerp.judges.judge import make_judge
from autointerp.llm.client import MemoryCallStore
from autointerp.records import DetectionTask
from autointerp.stages.explain import explain_task, select_features
from autointerp.stats.embed import Embedder
from autointerp.stats.metrics import auroc
from autointerp.store import Store

VARIANTS = {
    # name: (n_top, n_quantile, context, activation lists)
    "full (10+10, whole windows, activation lists)": (10, 10, 0, True),
    "medium (8+4, ±8 tokens)": (8, 4, 8, False),
    "short (5+2, ±5 tokens)": (5, 2, 5, False),
}


async def main(args) -> dict:
    with Store(args.project, read_only=True) as store:
        run_id = store.run()["run_id"]
        features = select_features(store, run_id, ExplainConfig(sample=args.features, seed=args.seed))
        chunk = store.feature_snippets(run_id, features)
    judge = make_judge(
        LLMConfig(provider="local", timeout_s=600, concurrency=1),
        MemoryCallStore(),
        server_log=Path("/tmp/local_prompt_size.log"),
    )
    embedder = Embedder()
    out = {"features": features, "variants": {}}
    try:
        for name, (top, quantile, context, with_acts) in VARIANTS.items():
            views = ("activations",) if with_acts else ()
            cfg = ExplainConfig(n_top=top, n_quantile=quantile, context=context, views=views)
            rows = []
            for fs in chunk:
                t0 = time.perf_counter()
                a = await judge.explain(explain_task(fs, cfg))
                rows.append(
                    {
                        "feature": fs.feature,
                        "label": a.value,
                        "error": a.error,
                        "prompt_tokens": a.prompt_tokens,
                        "completion_tokens": a.completion_tokens,
                        "seconds": time.perf_counter() - t0,
                    }
                )
                print(
                    name,
                    fs.feature,
                    repr(a.value or a.error)[:90],
                    a.prompt_tokens,
                    f"{rows[-1]['seconds']:.1f}s",
                    flush=True,
                )
            labels = {r["feature"]: r["label"] for r in rows if r["label"]}
            order = [f for f in features if f in labels]
            wrong = {f: labels[order[(i + 1) % len(order)]] for i, f in enumerate(order)}  # another feature's label
            by_f = {fs.feature: fs for fs in chunk}
            emb, emb_wrong, det, det_wrong = [], [], [], []
            for f in order:
                act = [s for s in by_f[f].score if s.kind == "top"][:3] + [
                    s for s in by_f[f].score if s.kind == "quantile"
                ][:3]
                neg = by_f[f].score_negatives[:6]
                vec = embedder.encode([s.text for s in act + neg] + [labels[f], wrong[f]])
                truth = [True] * len(act) + [False] * len(neg)
                emb.append(auroc(list(vec[:-2] @ vec[-2]), truth, n_boot=10).value)
                emb_wrong.append(auroc(list(vec[:-2] @ vec[-1]), truth, n_boot=10).value)
                for label, sink in ((labels[f], det), (wrong[f], det_wrong)):
                    items = act[:4] + neg[:4]
                    perm = np.random.default_rng(f).permutation(len(items))
                    shown = [items[i] for i in perm]
                    d = await judge.detect(DetectionTask(f, label, shown))
                    if d.ok:
                        y = np.array([s.active for s in shown])
                        p = np.array(d.value)
                        sink.append(0.5 * ((p[y]).mean() + (~p[~y]).mean()))
            ok = [r for r in rows if r["label"]]
            out["variants"][name] = {
                "labels": rows,
                "parsed": f"{len(ok)}/{len(rows)}",
                "prompt_tokens_median": statistics.median(r["prompt_tokens"] for r in rows),
                "seconds_median": statistics.median(r["seconds"] for r in rows),
                "embedding_auroc_median": statistics.median(emb) if emb else None,
                "embedding_auroc_wrong_label_median": statistics.median(emb_wrong) if emb_wrong else None,
                "detection_median": statistics.median(det) if det else None,
                "detection_wrong_label_median": statistics.median(det_wrong) if det_wrong else None,
            }
            print(json.dumps({k: v for k, v in out["variants"][name].items() if k != "labels"}), flush=True)
    finally:
        await judge.aclose()
    return out


def write(out: dict, reports: Path) -> None:
    reports.mkdir(exist_ok=True)
    (reports / "local_prompt_size.json").write_text(json.dumps(out, indent=1))
    lines = [
        "# Local judge: label quality against prompt size",
        "",
        f"Qwen2.5-Coder-1.5B-Instruct Q4_K_M through llama-cpp-python on this machine's CPU; {len(out['features'])} "
        "features of the demo "
        "(seeded sample); scores on held-out snippets, each beside the same feature scored with another feature's "
        "label.",
        "",
        "| variant | parsed | prompt tokens (median) | seconds per label (median) | embedding AUROC own / wrong label "
        "| detection own / wrong label |",
        "|---|---|---|---|---|---|",
    ]
    fmt = lambda x: "—" if x is None else f"{x:.3f}"  # noqa: E731
    for name, v in out["variants"].items():
        lines.append(
            f"| {name} | {v['parsed']} | {v['prompt_tokens_median']:.0f} | {v['seconds_median']:.1f} | "
            f"{fmt(v['embedding_auroc_median'])} / {fmt(v['embedding_auroc_wrong_label_median'])} | "
            f"{fmt(v['detection_median'])} / {fmt(v['detection_wrong_label_median'])} |"
        )
    lines += ["", "Labels per variant:", ""]
    for name, v in out["variants"].items():
        lines += [f"- {name}:"] + [f"  - #{r['feature']}: {r['label'] or r['error']}" for r in v["labels"]]
    (reports / "local_prompt_size.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default="project")
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reports", default=str(Path(__file__).resolve().parent.parent / "reports"))
    args = parser.parse_args()
    write(asyncio.run(main(args)), Path(args.reports))
