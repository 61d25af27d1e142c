"""The planted benchmark with the local LLM judge and each explainer view (issue 25).

Builds the planted SAE of tests/planted.py on the embedded encoder (token concepts, role concepts
that are not a token, directions that mean nothing), runs `autointerp run` on it with the offline
judge (its labels, detection and intruder scores), then has the local LLM label a seeded sample of
each kind with each view of ExplainConfig.views that an encoder has (none, activations, contrast,
both; an encoder has no output effects) and scores each label by detection on the score split with
the offline judge, which predicts from the words a label names (the local judge's own detection is
at chance even for labels known to be right: reports/local_detection.md), at the run's score sizes.

A label names a token concept when it says the word; a role when it says the word the role follows
and a word of position ("after", "follow", "next", "preceded").

    python bench/planted_views.py
Writes reports/planted_views.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import cpu_model
from explain_views import boot, judge_on

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from planted import build  # noqa: E402

from autointerp.config import CorpusConfig, ExplainConfig, RunConfig  # noqa: E402
from autointerp.judges.judge import ANY, OfflineJudge, Term, label_terms, norm  # noqa: E402
from autointerp.llm.local import LOCAL_MODEL, LocalServer, model_path  # noqa: E402
from autointerp.stages.explain import explain_tasks  # noqa: E402
from autointerp.stages.score.sampling import held_out  # noqa: E402
from autointerp.stages.score.scorers import SCORERS, Item  # noqa: E402
from autointerp.store import Store  # noqa: E402

TOKENS = 200_000
VIEWS = {"none": (), "activations": ("activations",), "contrast": ("contrast",), "both": ("activations", "contrast")}
POSITION_WORDS = re.compile(r"\b(after|follow\w*|next|preceded|precede\w*|subsequent)\b")


def names(label: str | None, kind: str, word: str) -> bool:
    if not label:
        return False
    text = label.casefold()
    says = re.search(rf"(?<!\w){re.escape(word.casefold())}(?:s|es)?(?!\w)", text) is not None
    if kind == "token":
        return says or Term(norm(word)) in label_terms(label)
    if kind == "role":
        return Term(ANY, norm(word)) in label_terms(label) or (says and POSITION_WORDS.search(text) is not None)
    return False


def offline_run(root: Path) -> tuple:
    planted = build(root / "sae", CorpusConfig(max_tokens=TOKENS))
    project = root / "project"
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "autointerp.cli", "run", "--project", str(project), "--sae", str(planted.path)]
        + ["--max-tokens", str(TOKENS), "--n-top", "10", "--scorers", "detection,intruder", "--sample-judge", "none"]
        + ["--quiet"],
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    return planted, project, time.perf_counter() - t0


def kinds_of(planted) -> dict[int, tuple[str, str]]:
    out = {f: ("token", w) for f, w in planted.concepts.items()}
    out |= {f: ("role", w) for f, w in planted.roles.items()}
    return out | {f: ("random", "") for f in planted.random}


def offline_summary(store, run_id, planted) -> dict:
    labels = store.explanations(run_id).set_index("feature").label
    scores = store.scores(run_id)
    own = scores[scores.label_source == "true"]
    out = {}
    for kind, features in (("token", planted.concepts), ("role", planted.roles), ("random", planted.random)):
        feats = list(features)
        words = dict(features) if isinstance(features, dict) else {}
        named = [f for f in feats if names(str(labels.get(f, "")), kind, words.get(f, ""))]
        entry = {"features": len(feats), "named": len(named)}
        for scorer in ("detection", "intruder"):
            rows = own[(own.scorer == scorer) & own.feature.isin(named if kind != "random" else feats)]
            entry[scorer] = {
                "median": float(rows.value.median()) if len(rows) else None,
                "confident": float(np.mean(rows.p_value < 0.01)) if len(rows) else None,
            }
        out[kind] = entry
    return out


async def llm_views(server, store, run_id, sample: dict[int, tuple[str, str]]) -> dict:
    judge = judge_on(server)
    reader = OfflineJudge()
    score_cfg = RunConfig().score
    features = sorted(sample)
    snippets = {
        fs.feature: held_out(fs, score_cfg.n_top, score_cfg.n_strata, score_cfg.n_negative, score_cfg.seed)
        for fs in store.feature_snippets(run_id, features, split="score")
    }
    out = {}
    for view, shown in VIEWS.items():
        cfg = ExplainConfig(views=shown).for_judge("local")
        rows = []
        for task in [t for chunk in explain_tasks(store, run_id, features, cfg) for t in chunk]:
            kind, word = sample[task.feature]
            t0 = time.perf_counter()
            answer = await judge.explain(task)
            row = {"feature": task.feature, "kind": kind, "word": word, "label": answer.value}
            row["explain_s"] = time.perf_counter() - t0
            row["named"] = names(answer.value, kind, word)
            if answer.ok:
                item = Item(task.feature, answer.value, snippets[task.feature], task.feature)
                (o,) = await SCORERS["detection"].score([item], reader, score_cfg)
                if o.status == "ok":
                    row["detection"], row["p_value"] = o.estimate.value, o.estimate.p_value
            rows.append(row)
            print(view, json.dumps(row), flush=True)
        out[view] = rows
    await judge.aclose()
    return out


def summarise(rows_by_view: dict) -> dict:
    out = {}
    for view, rows in rows_by_view.items():
        out[view] = {}
        for kind in ("token", "role", "random"):
            mine = [r for r in rows if r["kind"] == kind]
            det = np.array([r["detection"] for r in mine if r.get("detection") is not None], float)
            out[view][kind] = {
                "features": len(mine),
                "named": sum(r["named"] for r in mine),
                "detection": float(det.mean()) if len(det) else None,
                "ci": boot(det) if len(det) > 1 else None,
                "confident": sum(r.get("p_value", 1.0) < 0.01 for r in mine),
                "explain_s": float(np.mean([r["explain_s"] for r in mine])) if mine else None,
            }
    return out


async def main(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        planted, project, seconds = offline_run(Path(tmp))
        rng = np.random.default_rng(args.seed)
        every = kinds_of(planted)
        sample = {}
        for kind, n in (("token", args.per_kind), ("role", args.per_kind), ("random", args.random)):
            pool = sorted(f for f, (k, _) in every.items() if k == kind)
            sample |= {int(f): every[int(f)] for f in rng.choice(pool, min(n, len(pool)), replace=False)}
        with Store(project, read_only=True) as store:
            run_id = store.run()["run_id"]
            result = {
                "cpu": cpu_model(),
                "model": LOCAL_MODEL.description,
                "offline_run_s": seconds,
                "role_recall": {str(f): r for f, r in planted.role_recall.items()},
                "offline": offline_summary(store, run_id, planted),
                "sample": {str(f): list(v) for f, v in sample.items()},
            }
            log = Path(tmp) / "server.log"
            with LocalServer(model_path(), alias=LOCAL_MODEL.name, log_path=log) as server:
                result["views"] = await llm_views(server, store, run_id, sample)
    result["summary"] = summarise(result["views"])
    return result


def write(result: dict, reports: Path) -> None:
    (reports / "planted_views.json").write_text(json.dumps(result, indent=1))

    def med(d):
        return "—" if d["median"] is None else f"{d['median']:.3f} ({d['confident']:.0%} confident)"

    off = result["offline"]
    recall = ", ".join(f"{r:.2f}" for r in result["role_recall"].values())
    lines = [
        "# The planted benchmark: token concepts, role concepts, meaningless directions",
        "",
        f"Embedded encoder (all-MiniLM-L6-v2, layer 2), {TOKENS:,} corpus tokens; local judge {result['model']} "
        f'on {result["cpu"]}, 2 cores. Role latents are probes for "the token right after <word>" (recall on '
        f"those positions: {recall}).",
        "",
        f"## Offline judge, every latent ({result['offline_run_s']:.0f} s for the whole `autointerp run`)",
        "",
        "| kind | latents | named | detection of the named (median) | intruder (median) |",
        "|---|---|---|---|---|",
    ]
    for kind, e in off.items():
        shown = "—" if kind == "random" else str(e["named"])
        lines.append(f"| {kind} | {e['features']} | {shown} | {med(e['detection'])} | {med(e['intruder'])} |")
    lines += [
        "",
        "For random directions the detection and intruder columns are over all of them (nothing to name).",
        "",
        "## Local LLM judge, by view",
        "",
        "Each LLM label scored by detection on the score split at the run's score sizes, read by the offline judge "
        "(it predicts a window active when it holds a word the label names; the local judge's own detection is at "
        "chance even for right labels, reports/local_detection.md): mean over latents with a bootstrap 95% "
        "interval; confident: p < 0.01.",
        "",
        "| view | kind | latents | named | detection | confident | explain s |",
        "|---|---|---|---|---|---|---|",
    ]
    for view, by_kind in result["summary"].items():
        for kind, e in by_kind.items():
            det = "—" if e["detection"] is None else f"{e['detection']:.3f}"
            if e["ci"]:
                det += f" [{e['ci'][0]:.3f}, {e['ci'][1]:.3f}]"
            named = "—" if kind == "random" else str(e["named"])
            lines.append(
                f"| {view} | {kind} | {e['features']} | {named} | {det} | {e['confident']} | {e['explain_s']:.1f} |"
            )
    lines += ["", "Labels (view none, then both):", ""]
    for view in ("none", "both"):
        for r in result["views"].get(view, []):
            lines.append(f"- {view}, {r['kind']} {r['word']!r} (#{r['feature']}): {r['label']!r}")
    (reports / "planted_views.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-kind", type=int, default=5, help="token and role latents the LLM labels")
    parser.add_argument("--random", type=int, default=3, help="meaningless directions the LLM labels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--reports", default=str(ROOT / "reports"))
    args = parser.parse_args()
    write(asyncio.run(main(args)), Path(args.reports))
