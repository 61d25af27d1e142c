"""The offline score stage against the gather (issue 26): wall time of each scorer on a whole run,
from scratch, with a profile of where the time goes, beside the run's own gather time.

The project's database is copied and its scores dropped, then `autointerp score`'s code scores every
labelled feature with the offline judge, one scorer at a time (the default scorers; the shuffle
control as the run samples it), under cProfile for the first pass only when --profile is given.

    python bench/score_stage.py --project project
Writes reports/score_stage.{json,md}.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from common import REPORTS, cpu_model

from autointerp.config import RunConfig, ScoreConfig
from autointerp.pipeline import label_and_score
from autointerp.stages.score.scorers import INPUT_SCORERS
from autointerp.store import Store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", default="project")
    ap.add_argument("--profile", action="store_true", help="profile one whole pass of every scorer (slower)")
    a = ap.parse_args()
    with Store(a.project, read_only=True) as store:
        run = store.run()
        run_id = run["run_id"]
        n_features = len(store.alive_features(run_id, include_dense=True))
        explainer = store.default_explainer(run_id)
    gather_seconds = float(run["gather_seconds"])
    seconds, profile = {}, ""
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(Path(a.project) / "autointerp.duckdb", Path(tmp) / "autointerp.duckdb")
        with Store(tmp) as store:
            store.con.execute("DELETE FROM scores")
            store.con.execute("DELETE FROM score_summaries")
        cfg = RunConfig(project=tmp, run_id=run_id, explainer=explainer, progress=False)
        for scorer in INPUT_SCORERS:
            one = replace(cfg, score=replace(ScoreConfig(), scorers=(scorer,)))
            t0 = time.perf_counter()
            label_and_score(one, run_id, explain_stage=False)
            seconds[scorer] = time.perf_counter() - t0
            print(scorer, f"{seconds[scorer]:.1f} s", flush=True)
        if a.profile:
            with Store(tmp) as store:
                store.con.execute("DELETE FROM scores")
            profiler = cProfile.Profile()
            profiler.enable()
            label_and_score(cfg, run_id, explain_stage=False)
            profiler.disable()
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
            profile = text.getvalue()
    total = sum(seconds.values())
    result = {
        "cpu": cpu_model(),
        "run": run_id,
        "explainer": explainer,
        "features": n_features,
        "gather_seconds": gather_seconds,
        "score_seconds": seconds,
        "score_total": total,
        "ratio": total / gather_seconds,
    }
    (REPORTS / "score_stage.json").write_text(json.dumps(result, indent=1))
    lines = [
        "# The offline score stage against the gather",
        "",
        f"Run {run_id} ({n_features:,} alive features) on {result['cpu']}, 2 cores. Each default scorer scored every "
        f"feature {explainer} labelled, from scratch, with the offline judge (the shuffle control sampled as the run "
        "samples it).",
        "",
        "| scorer | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in seconds.items()],
        f"| all | {total:.1f} |",
        "",
        f"The run's gather (the corpus through the model and SAE, stored): {gather_seconds:.1f} s. The score stage "
        f"takes {result['ratio']:.2f} of it (target: at most 0.5).",
    ]
    if profile:
        lines += ["", "Where one whole pass spends its time (cProfile, own time):", "", "```", profile.strip(), "```"]
    (REPORTS / "score_stage.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
