"""Where to set the triage bar (--triage): the token label's detection on the explain split's held-back
windows against its final detection on the score split, on a gathered run.

For each bar: how many features keep their token label (no LLM call), and how those labels score on
the score split (the offline explainer's detection there, which triage never reads): median, the
share called confident (p < 0.01), and the share scoring at least 0.9. The features below the bar
are shown beside them. A good bar keeps only labels that hold on data triage never saw.

    python bench/triage_bar.py --project project
Needs a `make demo` project (its offline labels scored by detection). Writes reports/triage_bar.{json,md}.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from common import cpu_model

from autointerp.config import ExplainConfig
from autointerp.judges.judge import OfflineJudge
from autointerp.stages.triage import ALPHA, triage
from autointerp.store import Store

BARS = (0.7, 0.8, 0.85, 0.9, 0.95, 1.0)


def describe(values: np.ndarray, p_values: np.ndarray) -> dict:
    if not len(values):
        return {"n": 0}
    return {
        "n": int(len(values)),
        "median": float(np.median(values)),
        "confident": float(np.mean(p_values < 0.01)),
        "at_least_0.9": float(np.mean(values >= 0.9)),
    }


def main(args) -> dict:
    with Store(args.project, read_only=True) as store:
        run_id = store.run()["run_id"]
        features = store.alive_features(run_id, include_dense=True)
        tests = triage(store, run_id, features, ExplainConfig(), write=False).tests
        scores = store.scores(run_id, OfflineJudge.name, "detection")
    final = scores[(scores.label_source == "true") & (scores.status == "ok")].set_index("feature")
    both = tests.merge(final[["value", "p_value"]], left_index=True, right_index=True, suffixes=("", "_score"))
    out = {
        "cpu": cpu_model(),
        "run": run_id,
        "alive": len(features),
        "tested": len(tests),
        "correlation": float(np.corrcoef(both.value, both.value_score)[0, 1]),
        "bars": {},
    }
    for bar in BARS:
        kept = (both.value >= bar) & (both.p_value < ALPHA)
        out["bars"][str(bar)] = {
            "token": describe(both.value_score[kept].to_numpy(), both.p_value_score[kept].to_numpy()),
            "llm": describe(both.value_score[~kept].to_numpy(), both.p_value_score[~kept].to_numpy()),
        }
        print(bar, json.dumps(out["bars"][str(bar)]), flush=True)
    return out


def write(result: dict, reports: Path) -> None:
    (reports / "triage_bar.json").write_text(json.dumps(result, indent=1))
    lines = [
        "# Triage bar",
        "",
        f"Run {result['run']} ({result['alive']:,} live features, {result['tested']:,} with a token label to test); "
        f"CPU {result['cpu']}. Correlation of the token label's detection on the explain split's held-back windows "
        f"with its detection on the score split: {result['correlation']:.3f}.",
        "",
        "Score-split detection of the offline token labels, for the features each bar keeps on the token route "
        "and for those it sends to the LLM:",
        "",
        "| bar | token route | median | confident | >= 0.9 | LLM route | median | confident | >= 0.9 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for bar, b in result["bars"].items():
        cells = []
        for route in ("token", "llm"):
            d = b[route]
            cells += (
                [f"{d['n']:,}", f"{d['median']:.3f}", f"{d['confident']:.0%}", f"{d['at_least_0.9']:.0%}"]
                if d["n"]
                else ["0", "—", "—", "—"]
            )
        lines.append(f"| {bar} | " + " | ".join(cells) + " |")
    (reports / "triage_bar.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default="project")
    parser.add_argument("--reports", default=str(Path(__file__).resolve().parent.parent / "reports"))
    args = parser.parse_args()
    write(main(args), Path(args.reports))
