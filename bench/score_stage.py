"""The offline score stage against the gather (issue 26): wall time of each scorer on a whole run,
from scratch, with a profile of where the time goes, beside the run's own gather time.

The project's database is copied and its scores dropped, then `autointerp score`'s code scores every
labelled feature with the offline judge: all default scorers together as a run does (the headline,
against the run's corpus pass), then each scorer alone from scratch (where the time goes; the shuffle
control as the run samples it), and one whole pass under cProfile when --profile is given.

The ratio to the gather is read in one session: with --regather the run's corpus pass is repeated
first (`autointerp gather` on its stored config and trained SAE, into a scratch project) and timed here,
since this machine's speed drifts by up to two times over an hour; without it, the run's stored time.

    python bench/score_stage.py --project project --regather
Writes reports/score_stage.{json,md}.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from common import REPORTS, cpu_model

from autointerp.config import RunConfig, ScoreConfig
from autointerp.pipeline import label_and_score
from autointerp.stages.score.scorers import INPUT_SCORERS
from autointerp.stages.score.scorers.embedding import Embedded
from autointerp.store import Store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", default="project")
    ap.add_argument("--profile", action="store_true", help="profile one whole pass of every scorer (slower)")
    ap.add_argument("--regather", action="store_true", help="repeat the run's corpus pass here to time it now")
    a = ap.parse_args()
    with Store(a.project, read_only=True) as store:
        run = store.run()
        run_id = run["run_id"]
        n_features = len(store.alive_features(run_id, include_dense=True))
        explainer = store.default_explainer(run_id)
    gather_seconds, gathered_when = float(run["gather_seconds"]), "when the run gathered"
    if a.regather:
        gather_seconds, gathered_when = regather(Path(a.project), run_id), "repeated in this session"
        print("corpus pass", f"{gather_seconds:.1f} s", flush=True)
    seconds, profile = {}, ""
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(Path(a.project) / "autointerp.duckdb", Path(tmp) / "autointerp.duckdb")
        with Store(tmp) as store:
            store.con.execute("DELETE FROM scores")
            store.con.execute("DELETE FROM score_summaries")
        cfg = RunConfig(project=tmp, run_id=run_id, explainer=explainer, progress=False)

        def from_scratch(config: RunConfig) -> float:
            with Store(tmp) as store:
                store.con.execute("DELETE FROM scores")
            Embedded.forget()
            t0 = time.perf_counter()
            label_and_score(config, run_id, explain_stage=False)
            return time.perf_counter() - t0

        together = from_scratch(cfg)
        print("all scorers together", f"{together:.1f} s", flush=True)
        for scorer in INPUT_SCORERS:
            seconds[scorer] = from_scratch(replace(cfg, score=replace(ScoreConfig(), scorers=(scorer,))))
            print(scorer, f"{seconds[scorer]:.1f} s", flush=True)
        if a.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            from_scratch(cfg)
            profiler.disable()
            text = io.StringIO()
            pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(15)
            profile = text.getvalue()
    result = {
        "cpu": cpu_model(),
        "run": run_id,
        "explainer": explainer,
        "features": n_features,
        "gather_seconds": gather_seconds,
        "gather_timed": gathered_when,
        "score_together": together,
        "score_seconds_alone": seconds,
        "ratio": together / gather_seconds,
    }
    (REPORTS / "score_stage.json").write_text(json.dumps(result, indent=1))
    lines = [
        "# The offline score stage against the gather",
        "",
        f"Run {run_id} ({n_features:,} alive features) on {result['cpu']}, 2 cores. Every feature {explainer} "
        "labelled, scored from scratch with the offline judge by the default scorers, the shuffle control sampled "
        "as the run samples it.",
        "",
        f"All scorers together, as a run scores: {together:.1f} s. The run's corpus pass (the corpus through the "
        f"model and SAE, stored; SAE training not counted; {gathered_when}): {gather_seconds:.1f} s. The score "
        f"stage takes {result['ratio']:.2f} of it (target: at most 0.5).",
        "",
        "Each scorer alone (the window-embedding cache emptied before each):",
        "",
        "| scorer | seconds |",
        "|---|---|",
        *[f"| {k} | {v:.1f} |" for k, v in seconds.items()],
        f"| sum | {sum(seconds.values()):.1f} |",
    ]
    if profile:
        lines += ["", "Where one whole pass spends its time (cProfile, own time):", "", "```", profile.strip(), "```"]
    (REPORTS / "score_stage.md").write_text("\n".join(lines) + "\n")


def regather(project: Path, run_id: str) -> float:
    """The run's corpus pass once more, by the CLI from its stored config with its trained SAE, into a
    scratch project: the pass's seconds as that gather stores them."""
    with tempfile.TemporaryDirectory() as scratch:
        command = [
            *(sys.executable, "-m", "autointerp", "gather", "--project", scratch, "--run-id", run_id),
            *("--config", str(project / "configs" / f"{run_id}.toml"), "--sae", str(project / "saes" / run_id)),
        ]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        with Store(scratch, read_only=True) as store:
            return float(store.run(run_id)["gather_seconds"])


if __name__ == "__main__":
    main()
