"""Peak memory and time of a gather against the dictionary size (4k to 131k features).

Each size runs in its own process: the embedded model (all-MiniLM-L6-v2) over the pydoc corpus,
a random TopK SAE (k = 32) of that width, the default banks (50 top, 10 × 5 quantile, 50 negative
windows of 32 tokens per split). The cost model: the banks take GatherConfig.bank_bytes(F)
(about 75 KiB a feature at the defaults), allocated once; a budget (--memory-gib, default half
the free memory) splits the features into shards gathered in passes, so memory stays near the
budget and time grows with the passes. Peak RSS is the process's ru_maxrss.

    python bench/gather_large.py                       # writes reports/gather_large.{json,md}
    python bench/gather_large.py --memory-gib 4        # force passes
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPORTS = Path(__file__).resolve().parent.parent / "reports"

CHILD = r"""
import json, resource, sys, time
import torch
from autointerp.config import CorpusConfig, GatherConfig
from autointerp.gather.corpus import iter_contexts, iter_documents
from autointerp.gather.collect import auto_batch_size, feature_shards, run_gather
from autointerp.config import EMBEDDED_MODEL, ModelConfig
from autointerp.subject.model import SubjectModel
from autointerp.subject.sae import SAE

n, tokens, budget = int(sys.argv[1]), int(sys.argv[2]), (float(sys.argv[3]) if sys.argv[3] != "none" else None)
torch.manual_seed(0)
model = SubjectModel(ModelConfig(name=EMBEDDED_MODEL, device="cpu"))
d = model.width
W_dec = torch.randn(n, d)
W_dec /= W_dec.norm(dim=1, keepdim=True)
sae = SAE(W_dec.T.contiguous(), torch.zeros(n), W_dec, torch.zeros(d), architecture="topk", k=32)
corpus = CorpusConfig(max_tokens=tokens)
cfg = GatherConfig(memory_gib=budget)
batch = auto_batch_size(corpus.context_length, n, model.device)
shards = feature_shards(cfg, n, model.device)
start = time.perf_counter()
result = run_gather(
    model, sae, lambda: iter_contexts(iter_documents(corpus), model.tokenizer, corpus, batch), cfg, progress=False
)
seconds = time.perf_counter() - start
print(json.dumps({"features": n, "tokens": result.n_tokens, "passes": len(shards),
                  "bank_gib": cfg.bank_bytes(n) / 2**30,
                  "shard_gib": cfg.bank_bytes(shards[0][1] - shards[0][0]) / 2**30, "batch_contexts": batch,
                  "seconds": round(seconds, 1), "tokens_per_s": round(result.n_tokens * len(shards) / seconds),
                  "examples": result.examples.num_rows, "alive": int((~result.features.dead).sum()),
                  "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def cost_model_lines(rows: list[dict]) -> list[str]:
    """The model the table checks: banks proportional to the features in a pass, the rest beside them."""
    from autointerp.config import GatherConfig

    cfg = GatherConfig()
    slots = cfg.n_top + cfg.n_bins * cfg.per_bin
    measured = [r for r in rows if "error" not in r]
    overhead = [r["peak_rss_gib"] - r["shard_gib"] for r in measured]
    return [
        "Cost model. Banks (allocated once per pass, two splits): "
        f"2 × F × (slots × (44 + 8·window) + negatives × (44 + 4·window)) bytes with {slots} slots, "
        f"{cfg.n_negative} negatives and window {cfg.window}: {cfg.bank_bytes(1) / 2**10:.1f} KiB a feature. "
        "A budget B gives ceil(F × bank_bytes(1) / B) passes, each reading the whole corpus, so memory is one "
        "pass's banks plus the rest below, and time is passes × (model forward + encode and bank update, "
        "both proportional to the features in the pass).",
        "",
        "The rest, peak RSS minus one pass's banks (the model; the SAE weights, 2 × F × d × 4 bytes; one batch's "
        "feature activations, batch tokens × F × 4 bytes, with batches that auto_batch_size shrinks as F grows; "
        "Python): " + ", ".join(f"{r['features']:,}: {o:.2f} GiB" for r, o in zip(measured, overhead)) + ".",
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="4096,16384,65536,131072")
    ap.add_argument("--tokens", type=int, default=20_000)
    ap.add_argument("--memory-gib", type=float)
    args = ap.parse_args()
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(n), str(args.tokens), str(args.memory_gib or "none")],
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            rows.append({"features": n, "error": out.stderr.strip().splitlines()[-1]})
        else:
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    REPORTS.mkdir(exist_ok=True)
    suffix = "" if args.memory_gib is None else f"_budget{args.memory_gib:g}"
    (REPORTS / f"gather_large{suffix}.json").write_text(
        json.dumps({"memory_gib": args.memory_gib, "rows": rows}, indent=2)
    )
    lines = [
        f"# Gather memory and time against dictionary size ({args.tokens:,} tokens, CPU, "
        + ("budget: half the free memory" if args.memory_gib is None else f"budget {args.memory_gib:g} GiB")
        + ")",
        "",
        "| features | passes | banks (GiB, all) | banks per pass (GiB) | peak RSS (GiB) | seconds | tokens/s per pass "
        "| examples |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['features']:,} | error: {r['error']} |||||||")
        else:
            lines.append(
                f"| {r['features']:,} | {r['passes']} | {r['bank_gib']:.2f} | {r['shard_gib']:.2f} | "
                f"{r['peak_rss_gib']:.2f} | "
                f"{r['seconds']} | {r['tokens_per_s']:,} | {r['examples']:,} |"
            )
    lines += ["", *cost_model_lines(rows)]
    (REPORTS / f"gather_large{suffix}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
