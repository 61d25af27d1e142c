"""Gather time over the compute floor (truncated forward pass + bare SAE encode on the same tokens).

The floor encodes with `SAE.encode_sparse`, the cheapest encode there is (for a TopK SAE:
matmul, top-k, ReLU, no dense tensor), so every cost the gather adds is counted against it.
Both are timed in the same process on the same pre-tokenised batches, alternating floor
and gather passes so drift in machine speed hits both alike; the ratio of the medians and
the median of the per-repeat ratios are reported. The gather pass includes allocating its
banks and `finish`. Target: at most 1.15.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import embedded_model, machine, sae_for, write_report

from autointerp.config import CorpusConfig, GatherConfig
from autointerp.gather.collect import Gatherer, auto_batch_size
from autointerp.gather.corpus import iter_contexts, iter_documents
from autointerp.subject.model import keep_freed_memory


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--tokens",
        type=int,
        default=CorpusConfig().max_tokens,
        help="corpus tokens (default: the whole embedded corpus)",
    )
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--sae", help="SAE path (default: a 4096-latent TopK SAE trained quickly)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--name", default=None, help="report name (default: gather_overhead_<device>)")
    a = ap.parse_args()

    keep_freed_memory()  # as `autointerp gather` does; it speeds floor and gather passes alike
    model = embedded_model(a.device)
    sae = sae_for(model, a.sae)
    cfg = CorpusConfig(max_tokens=a.tokens)
    batch_size = auto_batch_size(cfg.context_length, sae.d_sae, model.device)
    batches = list(iter_contexts(iter_documents(cfg), model.tokenizer, cfg, batch_size))
    n_tokens = int(sum(b.valid.sum() for b in batches))

    def floor_pass() -> float:
        sync(model.device)
        t = time.perf_counter()
        with torch.inference_mode():
            for b in batches:
                x = model.activations(torch.from_numpy(b.input_ids), torch.from_numpy(b.attention_mask))
                sae.encode_sparse(x)
        sync(model.device)
        return time.perf_counter() - t

    def gather_pass() -> float:
        sync(model.device)
        t = time.perf_counter()
        g = Gatherer(
            sae.d_sae, GatherConfig(), model.device, model.is_causal
        )  # allocating the banks is part of the cost
        with torch.inference_mode():
            for b in batches:
                x = model.activations(torch.from_numpy(b.input_ids), torch.from_numpy(b.attention_mask))
                g.update(b, sae.encode_sparse(x))
            g.finish()
        sync(model.device)
        return time.perf_counter() - t

    floor_pass()  # warm-up
    floors, gathers = [], []
    for _ in range(a.repeats):
        floors.append(floor_pass())
        gathers.append(gather_pass())
    ratio = statistics.median(gathers) / statistics.median(floors)
    paired = statistics.median(g / f for g, f in zip(gathers, floors))
    device = model.device.type
    payload = {
        "tokens": n_tokens,
        "batch_size": batch_size,
        "d_sae": sae.d_sae,
        "architecture": sae.architecture,
        "floor_s": floors,
        "gather_s": gathers,
        "ratio_of_medians": ratio,
        "median_paired_ratio": paired,
        "target": 1.15,
        "machine": machine(),
        "gather_tokens_per_s": n_tokens / statistics.median(gathers),
    }
    md = (
        f"# Gather overhead ({device})\n\n"
        f"{n_tokens:,} tokens of the embedded corpus, all-MiniLM-L6-v2 read at encoder.layer.2, "
        f"{sae.architecture} SAE with {sae.d_sae} latents, batches of {batch_size} contexts × {cfg.context_length} "
        "tokens.\n\n"
        f"| pass | median s | runs |\n|---|---|---|\n"
        f"| floor (forward to hookpoint + sparse SAE encode) | {statistics.median(floors):.2f} | "
        f"{', '.join(f'{x:.2f}' for x in floors)} |\n"
        f"| gather (floor + all bookkeeping + finish) | {statistics.median(gathers):.2f} | "
        f"{', '.join(f'{x:.2f}' for x in gathers)} |\n\n"
        f"**ratio of medians {ratio:.3f}**, median of per-repeat ratios {paired:.3f} (target ≤ 1.15); gather "
        f"throughput {payload['gather_tokens_per_s']:,.0f} tokens/s. "
        f"Machine: {machine()}\n"
    )
    write_report(a.name or f"gather_overhead_{device}", payload, md)


if __name__ == "__main__":
    main()
