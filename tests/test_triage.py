"""Triage before the LLM: the free token label, tested on explain-split windows the offline explainer
did not read, keeps the features it already predicts and sends the rest to the LLM."""

from __future__ import annotations

import asyncio
import shutil

import numpy as np
import pytest

from autointerp.config import ExplainConfig, GatherConfig
from autointerp.judges.judge import OfflineJudge
from autointerp.records import FeatureSnippets, JudgeAnswer, Snippet
from autointerp.stages.explain import explain
from autointerp.stages.triage import check_token_label, offline_config, split_windows
from autointerp.store import Store

WORDS = [" the", " a", " of", " river", " house", " green", " under", " seven", " paper", " quick"]


def _window(rng, kind: str, i: int, fires_on: str | None, quantile: int | None = None) -> Snippet:
    tokens = [str(w) for w in rng.choice(WORDS, 12)]
    acts = [0.0] * 12
    if fires_on is not None:
        at = int(rng.integers(12))
        tokens[at] = fires_on
        acts[at] = 5.0 if kind == "top" else 1.0
    return Snippet(
        feature=7,
        split="explain",
        kind=kind,
        context_id=i,
        tokens=tuple(tokens),
        activations=None if kind == "negative" else tuple(acts),
        max_activation=max(acts),
        quantile=quantile,
    )


def _feature(check_hits: int, seed: int = 0) -> FeatureSnippets:
    """A feature firing on " cat" in the 10 top and 10 quantile windows the offline explainer reads;
    of the 40 top and 40 quantile windows it does not read, the first `check_hits` of each kind fire
    on " cat" too, the others on a token that varies. Negatives never hold " cat"."""
    rng = np.random.default_rng(seed)
    top = [_window(rng, "top", i, " cat" if i < 10 or i - 10 < check_hits else f" w{i}") for i in range(50)]
    # Quantile windows are read one bin at a time (bins 0-9, five each): the first of each bin is read.
    quantile = [
        _window(
            rng, "quantile", 100 + 10 * j + b, " cat" if j == 0 or (j - 1) * 10 + b < check_hits else f" q{j}{b}", b
        )
        for b in range(10)
        for j in range(5)
    ]
    negatives = [_window(rng, "negative", 1000 + i, None) for i in range(50)]
    return FeatureSnippets(7, 5.0, 0.01, explain=top + quantile, explain_negatives=negatives)


def test_the_token_label_is_tested_on_the_windows_it_was_not_fitted_on():
    fs = _feature(check_hits=40)
    shown, shown_negatives, active, negatives = split_windows(fs, offline_config(ExplainConfig()))
    assert {s.context_id for s in shown} & {s.context_id for s in active} == set()
    assert {s.context_id for s in shown_negatives} & {s.context_id for s in negatives} == set()
    assert len(shown) == 20 and len(active) == 80 and len(negatives) == 40  # the offline judge reads 10 + 10 + 10
    row = check_token_label(fs, offline_config(ExplainConfig()))
    assert row["label"] == 'token "cat"'
    assert row["value"] == 1.0 and row["p_value"] < 1e-6


@pytest.mark.parametrize("hits", [0, 20, 36])
def test_its_detection_is_the_balanced_accuracy_of_the_held_back_windows(hits):
    row = check_token_label(_feature(check_hits=hits), offline_config(ExplainConfig()))
    # 80 held-back activating windows, `hits` of each kind hold " cat"; no negative does.
    expected = (2 * hits / 80 + 1.0) / 2
    assert row["label"] == 'token "cat"' and row["value"] == pytest.approx(expected)


class CountingLLM(OfflineJudge):
    """Stands in for an LLM judge (triage applies to any judge but the offline one): counts its calls."""

    name = "standin:llm"
    settings = {"provider": "openai_compatible", "model": "standin"}
    makes_calls = True
    reads_views = True

    def __init__(self):
        self.asked: list[int] = []

    async def explain(self, task):
        self.asked.append(task.feature)
        return JudgeAnswer("a label from the LLM", raw="a label from the LLM")


@pytest.fixture
def project(pipeline_setup, tmp_path_factory, tmp_path):
    from conftest import pipeline_config

    from autointerp.pipeline import gather

    base = tmp_path_factory.getbasetemp() / "triage-gathered"
    if not (base / "autointerp.duckdb").exists():  # windows enough to fit on half and test on the rest
        banks = GatherConfig(n_top=12, n_bins=4, per_bin=3, n_negative=12, window=8, batch_size=4)
        gather(pipeline_config(pipeline_setup, base, gather=banks))
    shutil.copy(base / "autointerp.duckdb", tmp_path / "autointerp.duckdb")
    return tmp_path


def _explain(project, cfg: ExplainConfig):
    judge = CountingLLM()
    with Store(project) as store:
        summary = asyncio.run(explain(store, "r1", judge, cfg, progress=False))
        return judge, summary, store.explanations("r1", judge.name), store.triage("r1")


def test_features_whose_token_label_holds_cost_no_call(project):
    judge, summary, labels, triage = _explain(project, ExplainConfig(triage=0.8))
    token = set(triage.feature[triage.route == "token"])
    assert token and set(triage.feature) - token, "the tiny run should have features of both routes"
    assert set(judge.asked) == set(triage.feature) - token
    kept = labels[labels.route == "token"].set_index("feature")
    assert set(kept.index) == token and kept.call_id.isna().all()
    assert (kept.label == triage.set_index("feature").label.reindex(kept.index)).all()
    assert (labels[labels.route == "llm"].label == "a label from the LLM").all()
    assert f"{len(token):,} explain calls saved" in "\n".join(summary.lines())
    # With triage off, the LLM labels every feature.
    judge, _, labels, _ = _explain(project, ExplainConfig(triage=None, redo=True))
    assert set(judge.asked) == set(triage.feature) and (labels.label == "a label from the LLM").all()


def test_an_llm_sample_is_drawn_from_the_features_triage_sends_to_it(project):
    judge, _, labels, triage = _explain(project, ExplainConfig(triage=0.8, sample=3))
    llm = set(triage.feature[triage.route == "llm"])
    assert len(judge.asked) == 3 and set(judge.asked) <= llm
    assert set(labels.feature) == set(judge.asked)  # a sample leaves the token route to the offline labels


def test_the_run_through_the_cli_prints_and_reports_the_routes(pipeline_setup, tmp_path):
    """`autointerp run` with an LLM judge (the stand-in): the routes and the calls saved in the summary,
    no explain call for a token-route feature, the routes in the report, and `estimate` counting them."""
    import os
    import subprocess
    import sys

    import duckdb
    from standin_responder import TaskResponder
    from standin_server import StandinServer
    from test_llm_path import gather_args

    key = "sk-triage-0123456789"
    project = tmp_path / "p"
    args = gather_args(pipeline_setup, project)
    for flag, value in (("--n-top", "12"), ("--n-bins", "4"), ("--per-bin", "3"), ("--n-negative", "12")):
        args[args.index(flag) + 1] = value
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OPENAI_API_KEY": key}
    with StandinServer(api_key=key, responder=TaskResponder()) as server:
        judge = ["--judge", "openai", "--judge-model", "standin-model", "--base-url", server.openai_base_url]
        common = [*args, *judge, "--triage", "0.8"]
        run = [*common, "--scorers", "detection", "--sample-judge", "none", "--intervention-sample", "0"]
        out = subprocess.run(
            [sys.executable, "-m", "autointerp", "run", *run], capture_output=True, text=True, env=env, timeout=600
        )
        assert out.returncode == 0, out.stdout + out.stderr
        estimate = subprocess.run(
            [sys.executable, "-m", "autointerp", "estimate", *common, "--redo"],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
    assert estimate.returncode == 0, estimate.stdout + estimate.stderr
    with duckdb.connect(str(project / "autointerp.duckdb"), read_only=True) as db:
        routes = dict(db.execute("SELECT feature, route FROM triage").fetchall())
        explained = {
            f for (f,) in db.execute("SELECT DISTINCT feature FROM llm_calls WHERE purpose = 'explain'").fetchall()
        }
        labels = dict(db.execute("SELECT feature, route FROM explanations WHERE explainer LIKE 'openai:%'").fetchall())
        scored = {
            f for (f,) in db.execute("SELECT DISTINCT feature FROM scores WHERE explainer LIKE 'openai:%'").fetchall()
        }
    token = {f for f, r in routes.items() if r == "token"}
    assert token and explained == set(routes) - token and labels == routes
    assert token <= scored  # both routes are scored alike
    assert f"triage: {len(token):,} of {len(routes):,} features keep their free token label" in out.stdout
    assert f"{len(token):,} explain calls saved" in out.stdout
    html = next((project / "reports").glob("*.html")).read_text()
    assert f"triage routes: {len(token):,} features keep their token label" in html
    assert f"triage: {len(token):,} of {len(routes):,} features keep their token label" in estimate.stdout


class LocalLLM(CountingLLM):
    """A judge of the local provider, whose prompts show fewer, trimmed windows (8 top, 4 quantile, 8 tokens)."""

    settings = {"provider": "local", "model": "standin"}


def test_triage_fits_on_the_offline_explainers_windows_whatever_the_judge_reads(project):
    from autointerp.stages.triage import triage

    with Store(project) as store:
        asyncio.run(explain(store, "r1", LocalLLM(), ExplainConfig(triage=0.8), progress=False))
        stored = store.triage("r1").set_index("feature").label.dropna()
        features = store.alive_features("r1", include_dense=True)
        offline = triage(store, "r1", features, ExplainConfig(triage=0.8), write=False).tests.label
    assert len(stored) and stored.to_dict() == offline.reindex(stored.index).to_dict()
