"""Peak memory of a gather at two corpus sizes, 4× apart: it must not grow with the corpus.

Each size runs in a fresh process (peak RSS = ru_maxrss of that process) on the embedded
model with the same 4096-latent SAE; the gather keeps per feature a fixed number of
windows, so the two peaks should agree within 10%.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from common import embedded_model, machine, sae_for, write_report


def one_run(sae_dir: str, tokens: int, project: str) -> None:
    from autointerp.config import CorpusConfig, RunConfig
    from autointerp.pipeline import gather

    cfg = RunConfig(
        project=project,
        run_id=f"mem{tokens}",
        sae=sae_dir,
        corpus=CorpusConfig(max_tokens=tokens),
        eval_tokens=0,
        progress=False,
    )
    summary = gather(cfg)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "tokens": summary.n_tokens,
                "peak_rss_bytes": peak,
                "gather_s": summary.seconds["gather"],
                "examples": summary.n_examples,
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--small", type=int, default=120_000)
    ap.add_argument("--sae", help="SAE path (default: a 4096-latent TopK SAE trained quickly)")
    ap.add_argument("--child", nargs=3, metavar=("SAE", "TOKENS", "PROJECT"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        one_run(a.child[0], int(a.child[1]), a.child[2])
        return
    with tempfile.TemporaryDirectory() as tmp:
        sae_dir = a.sae
        if sae_dir is None:
            from autointerp.subject.sae import save_saelens

            model = embedded_model()
            sae_dir = str(Path(tmp) / "sae")
            save_saelens(sae_for(model, None), sae_dir, hook_name=model.hook.name, model_name="all-MiniLM-L6-v2")
        rows = []
        for tokens in (a.small, 4 * a.small):
            out = subprocess.run(
                [sys.executable, __file__, "--child", sae_dir, str(tokens), str(Path(tmp) / f"p{tokens}")],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    small, large = rows
    ratio = large["peak_rss_bytes"] / small["peak_rss_bytes"]
    md = (
        "# Gather memory at two corpus sizes\n\n"
        "| corpus tokens | peak RSS (MiB) | gather s | examples kept |\n|---|---|---|---|\n"
        + "".join(
            f"| {r['tokens']:,} | {r['peak_rss_bytes'] / 2**20:,.0f} | {r['gather_s']:.0f} | {r['examples']:,} |\n"
            for r in rows
        )
        + f"\n**peak RSS ratio {ratio:.3f}** for {large['tokens'] / small['tokens']:.1f}× the tokens (target: within "
        f"10%). Machine: {machine()}\n\n"
        "Why it is bounded: per feature and split the gather keeps fixed-size banks (top, quantile reservoir, "
        "negative reservoir) of windows, plus running sums; each batch is read through its nonzero activations only; "
        "the corpus is tokenised and packed a chunk at a time. Freed batch buffers stay in the process for reuse "
        "(`keep_freed_memory`), which adds a constant: at most one batch's working set.\n"
    )
    write_report("gather_memory", {"runs": rows, "ratio": ratio, "machine": machine()}, md)


if __name__ == "__main__":
    main()
