"""Answer quality against prompt length on the local judge (issue 26): how many snippets one
detection or fuzzing prompt may hold before the 1.5B judge's answers get worse.

The features are those the default run's triage kept on the token route (their free token label
is right: detection >= 0.9 on explain-split windows no score reads), so a good judge scores them
high; each is also scored with another chosen feature's label (a wrong label: chance). Every
feature is scored on the same 20 score-split windows (5 top, 5 strata, 10 negatives, as the run
scores the whole dictionary) with 5, 10 and 20 snippets a prompt. Per setting: mean balanced
accuracy over features with a bootstrap 95% interval, the paired difference against 20 (one
prompt a feature), seconds and prompt tokens a feature.

    python bench/packed_prompts.py --project project
Writes reports/packed_prompts.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from common import cpu_model
from explain_views import boot, judge_on

from autointerp.config import ScoreConfig
from autointerp.llm.local import LOCAL_MODEL, LocalServer, model_path
from autointerp.stages.score.sampling import held_out
from autointerp.stages.score.scorers import SCORERS, Item
from autointerp.store import Store

SIZES = (5, 10, 20)


async def measure(server, store, run_id, features, labels, scorers) -> list[dict]:
    judge = judge_on(server)
    cfg = ScoreConfig()
    held = {
        fs.feature: held_out(fs, cfg.n_top, cfg.n_strata, cfg.n_negative, cfg.seed)
        for fs in store.feature_snippets(run_id, features, split="score")
    }
    wrong = dict(zip(features, labels[1:] + labels[:1]))  # each feature gets its neighbour's label
    rows = []
    for feature, label in zip(features, labels):
        for kind, text in (("right", label), ("wrong", wrong[feature])):
            for size in SIZES:
                row = {"feature": feature, "label": text, "kind": kind, "per_prompt": size}
                for name in scorers:
                    t0 = time.perf_counter()
                    (o,) = await SCORERS[name].score(
                        [Item(feature, text, held[feature], feature)], judge, replace(cfg, per_prompt=size)
                    )
                    row[name] = o.estimate.value if o.status == "ok" else None
                    row[f"{name}_s"] = time.perf_counter() - t0
                    row[f"{name}_status"] = o.status
                rows.append(row)
                print(json.dumps(row), flush=True)
    await judge.aclose()
    return rows


def summarise(rows: list[dict], scorers) -> dict:
    out = {}
    for kind in ("right", "wrong"):
        for size in SIZES:
            these = [r for r in rows if r["kind"] == kind and r["per_prompt"] == size]
            entry = {}
            for name in scorers:
                v = np.array([r[name] for r in these if r[name] is not None], dtype=float)
                ref = {r["feature"]: r[name] for r in rows if r["kind"] == kind and r["per_prompt"] == SIZES[-1]}
                d = np.array(
                    [
                        r[name] - ref[r["feature"]]
                        for r in these
                        if r[name] is not None and ref.get(r["feature"]) is not None
                    ],
                    dtype=float,
                )
                entry[name] = {
                    "mean": float(v.mean()) if len(v) else None,
                    "ci": boot(v) if len(v) > 1 else None,
                    "answered": f"{len(v)}/{len(these)}",
                    "vs_one_prompt": float(d.mean()) if len(d) else None,
                    "vs_ci": boot(d) if len(d) > 1 else None,
                    "seconds": float(np.mean([r[f"{name}_s"] for r in these])),
                }
            out[f"{kind} {size}"] = entry
    return out


async def main(args) -> dict:
    with Store(args.project, read_only=True) as store:
        run_id = store.run()["run_id"]
        routes = store.triage(run_id)
        token = routes[routes.route == "token"].sort_values("feature")
        pick = np.random.default_rng(args.seed).choice(len(token), args.features, replace=False)
        chosen = token.iloc[sorted(pick)]
        features = [int(f) for f in chosen.feature]
        labels = [str(x) for x in chosen.label]
        result = {"cpu": cpu_model(), "model": LOCAL_MODEL.description, "run": run_id}
        result["features"] = dict(zip(map(str, features), labels))
        with LocalServer(model_path(), alias=LOCAL_MODEL.name, log_path=Path("/tmp/bench-packed.log")) as s:
            result["rows"] = await measure(s, store, run_id, features, labels, args.scorers)
    result["summary"] = summarise(result["rows"], args.scorers)
    result["scored"] = list(args.scorers)
    return result


def write(result: dict, reports: Path) -> None:
    (reports / "packed_prompts.json").write_text(json.dumps(result, indent=1))

    def f(x, ci=None, signed=False):
        if x is None:
            return "—"
        fmt = "+.3f" if signed else ".3f"
        return f"{x:{fmt}}" + (f" [{ci[0]:{fmt}}, {ci[1]:{fmt}}]" if ci else "")

    lines = [
        "# Snippets a prompt against answer quality (local judge)",
        "",
        f"{result['model']} on {result['cpu']}, 2 cores; run {result['run']}; {len(result['features'])} features "
        "of the token route of its triage, each scored with its own free token label (right) and with another "
        "chosen feature's (wrong) on the same 20 score-split windows (5 top + 5 strata against 10 negatives), "
        "5, 10 or 20 snippets a prompt. Mean balanced accuracy over features with a bootstrap 95% interval, the "
        "paired difference against 20 a prompt (one prompt a feature), mean seconds a feature.",
        "",
        "| label | snippets a prompt | "
        + " | ".join(f"{s} | vs one prompt | answered | s" for s in result["scored"])
        + " |",
        "|---|---|" + "---|---|---|---|" * len(result["scored"]),
    ]
    for key, e in result["summary"].items():
        kind, size = key.split()
        cells = [kind, size]
        for name in result["scored"]:
            d = e[name]
            cells += [
                f(d["mean"], d["ci"]),
                f(d["vs_one_prompt"], d["vs_ci"], True),
                d["answered"],
                f"{d['seconds']:.1f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Features and labels: " + ", ".join(f"{k} {v!r}" for k, v in result["features"].items()) + "."]
    (reports / "packed_prompts.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", default="project")
    parser.add_argument("--features", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scorers", type=lambda t: tuple(t.split(",")), default=("detection", "fuzzing"))
    parser.add_argument("--reports", default=str(Path(__file__).resolve().parent.parent / "reports"))
    args = parser.parse_args()
    write(asyncio.run(main(args)), Path(args.reports))
