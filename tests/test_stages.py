"""Explain and score stages over a gathered project: split discipline, shuffle control,
failures recorded and never counted, and the whole path through the real API clients."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest
from conftest import pipeline_config
from standin_responder import TaskResponder
from standin_server import Fault, StandinServer

from autointerp.config import ExplainConfig, LLMConfig, ScoreConfig
from autointerp.errors import AutointerpError
from autointerp.judges.judge import OfflineJudge
from autointerp.pipeline import gather, label_and_score
from autointerp.records import JudgeAnswer
from autointerp.stages.explain import explain
from autointerp.stages.score.stage import load_held_out, score
from autointerp.store import Store

KEY = "sk-stages-secret-0123456789"


@pytest.fixture(scope="module")
def project(pipeline_setup, tmp_path_factory):
    path = tmp_path_factory.mktemp("stages")
    gather(pipeline_config(pipeline_setup, path))
    return path


@pytest.fixture
def fresh_project(project, tmp_path):
    """A copy of the gathered project, so each test writes its own labels and scores."""
    import shutil

    shutil.copy(project / "autointerp.duckdb", tmp_path / "autointerp.duckdb")
    return tmp_path


class SpyJudge(OfflineJudge):
    """The offline judge, recording every task it is shown."""

    def __init__(self):
        self.seen: list[tuple[str, object]] = []

    async def explain(self, task):
        self.seen.append(("explain", task))
        return await super().explain(task)

    async def detect(self, task):
        self.seen.append(("detect", task))
        return await super().detect(task)

    async def fuzz(self, task):
        self.seen.append(("fuzz", task))
        return await super().fuzz(task)

    async def simulate(self, task):
        self.seen.append(("simulate", task))
        return await super().simulate(task)


def _contexts(task) -> set[int]:
    snippets = getattr(task, "snippets", [])
    out = {s.context_id for s in snippets if hasattr(s, "context_id")}
    out |= {m.snippet.context_id for m in snippets if hasattr(m, "snippet")}
    out |= {s.context_id for s in getattr(task, "negatives", [])}
    return out


def _run(store, judge, scorers=("detection", "fuzzing", "simulation")):
    async def go():
        e = await explain(store, "r1", judge, ExplainConfig(), progress=False)
        s = await score(store, "r1", e.explainer, judge, ScoreConfig(scorers=scorers, n_boot=50), progress=False)
        return e, s

    return asyncio.run(go())


def test_scorers_only_see_the_score_split(fresh_project):
    judge = SpyJudge()
    with Store(fresh_project) as store:
        _run(store, judge)
        split = store.contexts("r1").set_index("context_id").split
    explain_ctx = set(split[split == "explain"].index)
    score_ctx = set(split[split == "score"].index)
    shown = {"explain": set(), "score": set()}
    for kind, task in judge.seen:
        shown["explain" if kind == "explain" else "score"] |= _contexts(task)
    assert shown["explain"] and shown["score"]
    assert shown["explain"] <= explain_ctx
    assert shown["score"] <= score_ctx and not shown["score"] & explain_ctx


def test_shuffle_control_scores_each_feature_with_another_features_label(fresh_project):
    judge = SpyJudge()
    with Store(fresh_project) as store:
        _run(store, judge, scorers=("detection",))
        labels = store.explanations("r1").set_index("feature").label
        rows = store.scores("r1")
    shuffled = rows[(rows.label_source == "shuffled") & (rows.metric == "balanced_accuracy")]
    assert len(shuffled) == len(labels) >= 2
    assert (shuffled.label_feature != shuffled.feature).all()
    # The shuffled rows were scored with the other feature's stored label.
    asked = {(t.feature, t.label) for kind, t in judge.seen if kind == "detect"}
    for r in shuffled.itertuples():
        assert (r.feature, labels[r.label_feature]) in asked


class FlakyJudge(OfflineJudge):
    """Fails to explain even features, and fails every other detection prompt."""

    def __init__(self):
        self.calls = 0

    async def explain(self, task):
        if task.feature % 2 == 0:
            return JudgeAnswer(None, raw="I cannot say.", error="parse: no 'Label:' line")
        return await super().explain(task)

    async def detect(self, task):
        self.calls += 1
        if self.calls % 2 == 0:
            return JudgeAnswer(None, raw="", error="api: 503 after 5 retries")
        return await super().detect(task)


def test_failures_are_stored_with_their_reason_and_never_counted(fresh_project):
    with Store(fresh_project) as store:
        explained, _ = _run(store, FlakyJudge(), scorers=("detection",))
        ex = store.explanations("r1")
        rows = store.scores("r1")
    failed = ex[ex.feature % 2 == 0]
    assert (failed.status == "failed").all() and failed.label.isna().all()
    assert (failed.raw == "I cannot say.").all() and failed.error.str.startswith("parse:").all()
    assert explained.n_failed == len(failed) > 0
    assert set(rows.feature) == set(ex[ex.status == "ok"].feature)  # nothing scores a missing label
    ba = rows[(rows.metric == "balanced_accuracy") & (rows.label_source == "true")]
    partial = ba[ba.n_failed > 0]
    assert len(partial) > 0 and partial.error.str.contains("503").all()
    # A feature that lost one of its prompts is failed, not scored on the half that was answered.
    assert (partial.status == "failed").all() and partial.value.isna().all() and (partial.n == 0).all()
    assert (ba[ba.n_failed == 0].status != "failed").all()


@pytest.fixture
def keys(monkeypatch):
    monkeypatch.setenv("OPENAI_COMPATIBLE_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)


def _judge_config(server, provider):
    anthropic = provider == "anthropic"
    return LLMConfig(
        provider=provider,
        model="claude-haiku-4-5" if anthropic else "llama3.1",
        base_url=server.anthropic_base_url if anthropic else server.openai_base_url,
        timeout_s=5.0,
        max_retries=2,
        backoff_initial_s=0.01,
        backoff_max_s=0.02,
        concurrency=4,
    )


@pytest.mark.parametrize("provider", ["openai_compatible", "anthropic"])
def test_whole_pipeline_through_the_real_clients(pipeline_setup, fresh_project, keys, provider, capsys):
    with StandinServer(api_key=KEY, responder=TaskResponder()) as server:
        cfg = pipeline_config(
            pipeline_setup,
            fresh_project,
            judge=_judge_config(server, provider),
            score=ScoreConfig(scorers=("detection", "fuzzing", "simulation"), n_boot=50),
        )
        explained, scored = label_and_score(cfg, "r1")
        first = len(server.calls)
        assert explained.n_ok == explained.n_features > 0 and first > 0
        with Store(fresh_project, read_only=True) as store:
            calls = store.con.execute(
                "SELECT count(*), count(*) FILTER (WHERE error IS NULL) FROM llm_calls"
            ).fetchone()
            totals = store.llm_totals()
        assert calls == (first, first) and totals["prompt_tokens"] > 0
        assert all(s["n_features"] > 0 for s in scored.per_scorer.values())
        # A re-run is served from the cache in the database: no request reaches the server.
        label_and_score(cfg, "r1")
        assert len(server.calls) == first
    out = capsys.readouterr()
    assert KEY not in out.out + out.err
    assert KEY.encode() not in (fresh_project / "autointerp.duckdb").read_bytes()


def test_exhausted_retries_mark_the_feature_failed_and_the_run_completes(pipeline_setup, fresh_project, keys):
    with StandinServer(api_key=KEY, responder=TaskResponder()) as server:
        judge = replace(_judge_config(server, "openai_compatible"), concurrency=1)
        server.inject(*[Fault.server_error(500)] * 3)  # 1 try + 2 retries of the first feature
        cfg = pipeline_config(pipeline_setup, fresh_project, judge=judge, score=ScoreConfig(scorers=()))
        explained, _ = label_and_score(cfg, "r1", score_stage=False)
    with Store(fresh_project, read_only=True) as store:
        ex = store.explanations("r1")
    failed = ex[ex.status == "failed"]
    assert len(failed) == 1 and failed.error.iloc[0].startswith("api: 500 after 2 retries")
    assert (ex[ex.status == "ok"].label.notna()).all() and explained.n_ok == len(ex) - 1


class SameLabelJudge(OfflineJudge):
    """Gives every feature the same label: one category, so coverage is 1 from the second label on."""

    async def explain(self, task):
        return JudgeAnswer('token "the"', raw='Label: token "the"')


def test_stop_rule_stops_labelling_and_counts_saved_calls(fresh_project):
    with Store(fresh_project) as store:
        n_alive = len(store.alive_features("r1", include_dense=True))
        cfg = ExplainConfig(chunk=4, stop_coverage=0.9, stop_min_labels=4)
        summary = asyncio.run(explain(store, "r1", SameLabelJudge(), cfg, progress=False))
        stored = len(store.explanations("r1"))
    assert n_alive > 8
    assert summary.n_features == stored == 4  # stopped after the first chunk reached min_labels
    assert summary.saved_calls == n_alive - 4
    assert "judge calls saved" in "\n".join(summary.lines())


class OneLabelResponder(TaskResponder):
    """Labels every feature 'token "the"': a feature's shuffled-label prompt is then the very prompt
    of its own label, answered from the cache while the stage is writing (the duckdb crash of 0.1.0)."""

    def _explain(self, user):
        return '{"label": "token \\"the\\""}'


def test_shuffle_control_prompt_equal_to_the_own_prompt_is_a_cache_hit(pipeline_setup, fresh_project, keys):
    with StandinServer(api_key=KEY, responder=OneLabelResponder()) as server:
        cfg = pipeline_config(
            pipeline_setup,
            fresh_project,
            judge=_judge_config(server, "openai_compatible"),
            score=ScoreConfig(scorers=("detection",), n_boot=50),
        )
        explained, scored = label_and_score(cfg, "r1")
        detection = [
            r for r in server.calls if r.json()["messages"][0]["content"] == TaskResponder().system_of("detection")
        ]
    assert explained.n_ok == explained.n_features > 2
    with Store(fresh_project, read_only=True) as store:
        rows = store.scores("r1")
    shuffled = rows[(rows.label_source == "shuffled") & (rows.metric == "balanced_accuracy")]
    assert (shuffled.status == "ok").all() and len(shuffled) == explained.n_ok
    assert len(detection) == len({r.body for r in detection})  # the repeated prompts were served from the cache


def test_a_400_fails_that_feature_and_the_stage_goes_on(pipeline_setup, fresh_project, keys):
    with StandinServer(api_key=KEY, responder=TaskResponder()) as server:
        server.inject(Fault("status", status=400))
        judge = replace(_judge_config(server, "openai_compatible"), concurrency=1)
        cfg = pipeline_config(pipeline_setup, fresh_project, judge=judge, score=ScoreConfig(scorers=()))
        explained, _ = label_and_score(cfg, "r1", score_stage=False)
    with Store(fresh_project, read_only=True) as store:
        ex = store.explanations("r1")
    failed = ex[ex.status == "failed"]
    assert len(failed) == 1 and failed.error.iloc[0].startswith("api: 400: stand-in fault")
    assert explained.n_ok == len(ex) - 1 > 0


def test_a_run_of_failed_calls_stops_the_stage_keeping_what_was_answered(pipeline_setup, fresh_project, keys):
    with StandinServer(api_key=KEY, responder=TaskResponder()) as server:
        judge = replace(
            _judge_config(server, "openai_compatible"), concurrency=1, max_retries=0, max_consecutive_failures=3
        )
        cfg = pipeline_config(
            pipeline_setup, fresh_project, judge=judge, score=ScoreConfig(scorers=()), explain=ExplainConfig(chunk=2)
        )
        label_and_score(cfg, "r1", score_stage=False)  # every feature answered
        with Store(fresh_project) as store:
            store.con.execute("DELETE FROM explanations WHERE feature >= 4")
            store.con.execute("DELETE FROM llm_calls WHERE feature >= 4")  # else the re-run is served from the cache
        server.inject(*[Fault.server_error(503)] * 50)
        with pytest.raises(AutointerpError, match="3 openai_compatible calls failed in a row") as info:
            label_and_score(cfg, "r1", score_stage=False)
        assert "re-running the command resumes" in info.value.fix
        assert server.pending_faults == 50 - 3  # it stopped at the third failure, not at the last feature
    with Store(fresh_project, read_only=True) as store:
        assert len(store.explanations("r1")) >= 4  # the labels stored before are kept


def test_regathering_a_run_drops_labels_that_describe_the_old_examples(pipeline_setup, fresh_project):
    from autointerp.config import GatherConfig

    with Store(fresh_project) as store:
        _run(store, OfflineJudge(), scorers=("detection",))
        assert len(store.explanations("r1")) and len(store.scores("r1"))
    cfg = pipeline_config(pipeline_setup, fresh_project)
    kept = gather(cfg, reuse=True)  # same settings: the stored gather and its labels stay
    assert kept.reused
    with Store(fresh_project, read_only=True) as store:
        assert len(store.explanations("r1"))
    gather(
        replace(
            cfg, gather=GatherConfig(n_top=2, n_bins=2, per_bin=2, n_negative=3, window=8, batch_size=4), regather=True
        ),
        reuse=True,
    )
    with Store(fresh_project, read_only=True) as store:
        assert store.explanations("r1").empty and store.scores("r1").empty
        assert store.table_counts("r1")["examples"] > 0


def test_the_shuffle_control_samples_features_until_the_gap_is_known_well_enough(fresh_project):
    def run(**kw):
        async def go():
            await explain(store, "r1", OfflineJudge(), ExplainConfig(), progress=False)
            return await score(
                store,
                "r1",
                "offline:token-stats-v1",
                OfflineJudge(),
                ScoreConfig(scorers=("detection",), **kw),
                progress=False,
            )

        return asyncio.run(go()).per_scorer["detection"]

    with Store(fresh_project) as store:
        loose = run(control_start=4, control_half_width=0.5)
        controlled = store.scores("r1", scorer="detection")
        n_loose = int((controlled.label_source == "shuffled").sum())
        strict = run(control_start=4, control_half_width=0.001)
        everyone = run(shuffle_control="all")
        stored = store.score_summaries("r1").set_index("scorer").loc["detection"]
    n = loose["n_features"]
    assert n > 8 and loose["n_controls"] == n_loose == 4 < n  # the first batch already bounded the gap to ±0.5
    assert loose["calls_saved"] == n - 4  # 20 snippets in one prompt: one request per feature spared
    assert strict["n_controls"] == n and strict["calls_saved"] == 0  # ±0.001 needs every feature
    assert everyone["n_controls"] == n and everyone["control"] == "all"
    assert stored.n_controls == n and stored.verdict == everyone["verdict"]  # the summary is stored as computed
    # The lift over the floor: the mean own-label score less the constant answer's balanced accuracy, 0.5.
    own = controlled[(controlled.label_source == "true") & (controlled.status == "ok")].value.to_numpy()
    assert stored.lift == pytest.approx(own.mean() - 0.5) and stored.chance == 0.5
    assert stored.lift_low <= stored.lift <= stored.lift_high


def test_a_rerun_keeps_the_scores_of_the_same_label_judge_and_settings(fresh_project):
    """After Ctrl-C, or a finished stage, the re-run asks only what it lacks: a relabelled feature (and the
    control rows that show its label) is scored anew, a failed score is asked again, other settings re-score."""
    judge = SpyJudge()
    cfg = ScoreConfig(scorers=("detection", "fuzzing"), n_boot=50, shuffle_control="all")

    def scored(c=cfg):
        judge.seen.clear()
        summary = asyncio.run(score(store, "r1", explainer, judge, c, progress=False))
        return summary, {(kind, t.feature) for kind, t in judge.seen}

    with Store(fresh_project) as store:
        explainer = asyncio.run(explain(store, "r1", judge, ExplainConfig(), progress=False)).explainer
        first, asked = scored()
        rows = store.scores("r1").drop(columns="created_at")
        labels = store.explanations("r1", explainer)
        features = sorted(labels[labels.status == "ok"].feature)
        assert len(features) >= 3 and {f for _, f in asked} == set(features) and not first.reused

        again, asked = scored()
        assert asked == set() and again.reused == {"detection": len(features), "fuzzing": len(features)}
        assert rows.equals(store.scores("r1").drop(columns="created_at"))
        assert again.per_scorer["detection"]["median"] == first.per_scorer["detection"]["median"]

        f = features[0]
        relabel = labels[labels.feature == f].assign(label='token "zzz"')
        store.write_explanations(
            "r1", explainer, relabel.drop(columns=["run_id", "explainer", "position", "created_at"])
        )
        shown_f = rows[(rows.label_source == "shuffled") & (rows.label_feature == f)].feature.unique().tolist()
        _, asked = scored()
        assert {g for _, g in asked} == {f, *shown_f}  # its own score, and the control that shows its label

        broken = store.scores("r1")
        g = features[1]
        store.write_scores(
            "r1",
            explainer,
            "detection",
            broken[(broken.feature == g) & (broken.scorer == "detection") & (broken.label_source == "true")]
            .drop(columns=["run_id", "explainer", "scorer", "created_at"])
            .assign(status="failed"),
        )
        _, asked = scored()
        assert asked == {("detect", g)}

        _, asked = scored(replace(cfg, n_top=cfg.n_top - 1))
        assert {g for _, g in asked} == set(features)


@pytest.mark.parametrize("minutes", [0.0001, 1.0])
def test_the_llm_sample_is_sized_to_its_time_budget(pipeline_setup, fresh_project, keys, minutes):
    """The sample judge labels --sample-size features, timed; a budget that fits more grows the sample,
    asking only for the features it adds (the samples are nested); one that does not keeps the floor.
    A re-run asks for nothing and reports the sample it found stored."""
    from autointerp.pipeline import run

    with StandinServer(api_key=KEY, responder=TaskResponder(), latency_s=0.05) as server:
        judge = replace(_judge_config(server, "openai_compatible"), concurrency=1)
        cfg = pipeline_config(
            pipeline_setup,
            fresh_project,
            score=ScoreConfig(scorers=("detection",), n_boot=50),
            sample_judge=judge,
            sample_size=2,
            llm_minutes=minutes,
            sample_score=ScoreConfig(scorers=("detection",), n_boot=50),
            intervention_sample=0,
        )
        printed: list[str] = []
        run(cfg, echo=printed.append)
        line = next(x for x in "\n".join(printed).splitlines() if x.startswith("LLM sample:"))
        size = int(line.split()[2])
        with Store(fresh_project, read_only=True) as store:
            labelled = len(store.explanations("r1", "openai_compatible:llama3.1"))
            (explain_calls,) = store.con.execute("SELECT count(*) FROM llm_calls WHERE purpose = 'explain'").fetchone()
            alive = len(store.alive_features("r1", include_dense=True))
        if minutes < 0.01:
            assert size == 2 and "the floor" in line, line
        else:
            assert 2 < size <= alive and "fits" in line, line
        assert labelled == size == explain_calls, (labelled, size, explain_calls)
        asked = len(server.calls)
        printed.clear()
        run(cfg, echo=printed.append)
        again = next(x for x in "\n".join(printed).splitlines() if x.startswith("LLM sample:"))
        assert len(server.calls) == asked and again.startswith(f"LLM sample: {size} features, as stored"), again


@pytest.mark.parametrize("scorer", ["offline", "judge"])
def test_a_sample_judge_that_does_not_follow_labels_has_them_read_by_the_offline_judge(
    pipeline_setup, fresh_project, keys, scorer
):
    """--sample-scorer offline: the sample judge only labels (no detection prompt reaches it) and the
    offline judge scores its labels by the main run's scorers and sizes, as the token labels are; judge:
    the sample judge scores them itself, by the sample's scorers. "auto" picks offline from the registry
    for the embedded local model, whose answers do not follow a label, and judge for any other."""
    from autointerp.llm.providers import PROVIDERS
    from autointerp.pipeline import SAMPLE_READ_BY, run, sample_read_offline
    from autointerp.stages.score.sampling import held_out

    main = ScoreConfig(scorers=("detection",), n_top=4, n_strata=2, n_negative=6, n_boot=50)
    with StandinServer(api_key=KEY, responder=TaskResponder(), latency_s=0.0) as server:
        judge = replace(_judge_config(server, "openai_compatible"), concurrency=1)
        cfg = pipeline_config(
            pipeline_setup,
            fresh_project,
            score=main,
            sample_judge=judge,
            sample_size=3,
            llm_minutes=0,
            sample_score=ScoreConfig(scorers=("detection",), n_top=1, n_strata=1, n_negative=1, n_boot=50),
            sample_scorer=scorer,
            intervention_sample=0,
        )
        run(cfg, echo=lambda _: None)
    with Store(fresh_project, read_only=True) as store:
        scores = store.scores("r1", "openai_compatible:llama3.1")
        purposes = {p for (p,) in store.con.execute("SELECT DISTINCT purpose FROM llm_calls").fetchall()}
    own = scores[scores.label_source == "true"]
    assert own.feature.nunique() == 3
    if scorer == "offline":
        assert purposes == {"explain"}, purposes
        assert set(own.scorer) == set(SAMPLE_READ_BY)
        assert set(own[own.scorer != "embedding"].judge) == {"offline:token-stats-v1"}  # embedding: MiniLM
        detection = own[own.scorer == "detection"].set_index("feature").n
        with Store(fresh_project, read_only=True) as store:
            windows = store.feature_snippets("r1", list(detection.index), split="score")
        shown = {
            size: {fs.feature: len(h.active) + len(h.negatives) for fs in windows for h in [held_out(fs, *size, 0)]}
            for size in ((main.n_top, main.n_strata, main.n_negative), (1, 1, 1))
        }
        assert detection.to_dict() == shown[main.n_top, main.n_strata, main.n_negative] != shown[1, 1, 1]
    else:
        assert "detection" in purposes and set(own.scorer) == {"detection"}
        assert set(own.judge) == {"openai_compatible:llama3.1"}
    assert sample_read_offline(replace(cfg, sample_judge=LLMConfig(provider="local"), sample_scorer="auto"))
    assert not sample_read_offline(replace(cfg, sample_scorer="auto"))
    assert not PROVIDERS["local"].follows_labels and PROVIDERS["openai_compatible"].follows_labels


def test_seeded_samples_of_a_large_dictionary_are_nested():
    """A larger sample holds every feature of a smaller one with the same seed, at any dictionary size
    (numpy's choice without replacement draws by another algorithm past a few thousand)."""
    from types import SimpleNamespace

    from autointerp.stages.explain import select_features

    store = SimpleNamespace(run=lambda run_id: {"d_sae": 65_536})
    features = list(range(65_536))
    small, large = (
        set(select_features(store, "r", ExplainConfig(features=features, sample=n, seed=3))) for n in (8, 200)
    )
    assert len(small) == 8 and len(large) == 200 and small <= large


def _coherence_by_hand(vectors: np.ndarray, n_active: int) -> float:
    """Leave-one-out mean similarity to the activating rows, then P(activating row > negative row)."""
    n = len(vectors)
    score = [np.mean([vectors[i] @ vectors[j] for j in range(n_active) if j != i]) for i in range(n)]
    wins = [(score[a] > score[b]) + 0.5 * (score[a] == score[b]) for a in range(n_active) for b in range(n_active, n)]
    return float(np.mean(wins))


@pytest.mark.parametrize("spread", [0.3, 10.0])
def test_coherence_is_the_auroc_of_leave_one_out_similarity_with_a_permutation_null(spread):
    from autointerp.stages.score.scorers.coherence import coherence

    rng = np.random.default_rng(0)
    centre = rng.normal(size=32)
    active = centre + spread * rng.normal(size=(6, 32))  # spread 0.3: a tight cluster; 10: noise
    vectors = np.vstack([active, rng.normal(size=(6, 32)) * np.linalg.norm(centre)])
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    e = coherence(vectors, 6, 500, seed=1)
    assert e.value == pytest.approx(_coherence_by_hand(vectors, 6))
    if spread < 1:
        assert e.value == 1.0 and e.p_value < 0.01
    else:
        assert e.p_value > 0.05


def test_the_label_free_score_runs_without_a_shuffle_control_and_ignores_relabelling(fresh_project):
    with Store(fresh_project) as store:
        summary = _run(store, OfflineJudge(), scorers=("detection", "coherence"))[1]
        rows = store.scores("r1", scorer="coherence")
        first = rows.set_index("feature").value
        store.con.execute("UPDATE explanations SET label = label || ' (edited)'")
        again = asyncio.run(
            score(store, "r1", "offline:token-stats-v1", OfflineJudge(), ScoreConfig(scorers=("coherence",), n_boot=50))
        )
    assert set(rows.label_source) == {"true"} and len(rows) == summary.per_scorer["coherence"]["n_features"] > 0
    assert summary.per_scorer["coherence"]["verdict"] == "label-free: no shuffle control"
    assert summary.per_scorer["detection"]["n_controls"] > 0  # the label's scorers keep theirs
    assert again.reused == {"coherence": len(first)}  # a new label does not make it score again


def test_each_window_is_embedded_once_for_the_embedding_and_coherence_scorers_and_the_control(
    fresh_project, monkeypatch
):
    from autointerp.stages.score.scorers.embedding import Embedded
    from autointerp.stats.embed import Embedder

    encoded: list[str] = []
    real = Embedder.encode

    def counted(self, texts, batch_size=64):
        encoded.extend(texts)
        return real(self, texts, batch_size)

    monkeypatch.setattr(Embedder, "encode", counted)
    Embedded.forget()
    with Store(fresh_project) as store:
        summary = _run(store, OfflineJudge(), scorers=("embedding", "coherence"))[1]
        scored = sorted(set(store.scores("r1", scorer="coherence").feature))
        n = ScoreConfig().n_embedding
        taken = [h.take(n, n) for h in load_held_out(store, "r1", scored, ScoreConfig()).values()]
    windows = {s.text for t in taken for s in t.active + t.negatives}
    assert summary.per_scorer["embedding"]["n_controls"] > 0  # the control read the same windows again
    assert len(encoded) == len(set(encoded))  # nothing embedded twice
    assert windows <= set(encoded)


def test_a_scores_key_ignores_the_prompts_of_other_tasks():
    """Editing the explain prompt leaves the stored detection scores of the same labels valid; editing the
    detection prompt does not."""
    from autointerp.stages.score.stage import key_context, own_settings, score_key

    cfg = ScoreConfig()
    settings = {"provider": "openai", "model": "m", "prompts": {"explain": "e1", "detection": "d1", "fuzzing": "f1"}}

    def key(prompts):
        context = key_context("detection", "openai:m", own_settings({**settings, "prompts": prompts}, "detection"), cfg)
        return score_key('token "x"', context)

    base = key(settings["prompts"])
    assert key({**settings["prompts"], "explain": "e2", "fuzzing": "f2"}) == base
    assert key({**settings["prompts"], "detection": "d2"}) != base


def _intruder_item(feature: int, n_active: int = 10, n_negative: int = 10):
    from autointerp.records import Snippet
    from autointerp.stages.score.sampling import HeldOut
    from autointerp.stages.score.scorers import Item

    def window(kind: str, i: int) -> Snippet:
        return Snippet(feature, "score", kind, i, (f" {kind}", f" w{i}"), None if kind == "negative" else (1.0, 0), 1)

    held = HeldOut(
        [window("top", i) for i in range(n_active // 2)],
        [window("quantile", i) for i in range(n_active // 2, n_active)],
        [window("negative", 100 + i) for i in range(n_negative)],
    )
    return Item(feature, "no label is read", held, feature)


class IntruderJudge(OfflineJudge):
    """Names each group's intruder by peeking at which window is a negative, with probability `skill`;
    otherwise a window drawn uniformly at random."""

    def __init__(self, skill: float, seed: int = 0):
        self.skill, self.rng, self.tasks = skill, np.random.default_rng(seed), []

    async def ask(self, task):
        self.tasks.append(task)
        truth = [1 + next(i for i, s in enumerate(g) if s.kind == "negative") for g in task.groups]
        value = [
            t if self.rng.random() < self.skill else int(self.rng.integers(1, len(g) + 1))
            for t, g in zip(truth, task.groups)
        ]
        return JudgeAnswer(value, raw=str(value))


def test_the_intruder_groups_hold_four_activating_windows_and_one_negative_at_a_uniform_place():
    from autointerp.stages.score.scorers import SCORERS

    judge = IntruderJudge(1.0)
    cfg = ScoreConfig()
    items = [_intruder_item(f) for f in range(400)]
    out = asyncio.run(SCORERS["intruder"].score(items, judge, cfg))
    places = []
    for task in judge.tasks:
        assert len(task.groups) == cfg.n_intruder == 8  # every group of a feature in its one prompt
        for group in task.groups:
            kinds = [s.kind for s in group]
            assert len(group) == 5 and kinds.count("negative") == 1
            assert len({s.context_id for s in group}) == 5  # four distinct activating windows
            places.append(kinds.index("negative"))
        assert len({next(s.context_id for s in g if s.kind == "negative") for g in task.groups}) == 8
    counts = np.bincount(places, minlength=5)
    assert counts.min() > 0.8 * len(places) / 5  # 3,200 places: each of the five near 640
    perfect = out[0].estimate
    # Eight of eight against chance 1/5: p = 0.2^8 exactly; the interval is Wilson's for 8/8.
    assert perfect.value == 1.0 and perfect.p_value == pytest.approx(0.2**8) and perfect.n == 8
    assert perfect.ci_low == pytest.approx(8 / (8 + 1.959964**2), rel=1e-4)


@pytest.mark.parametrize("skill", [0.0, 0.9])
def test_the_intruder_null_is_exact_and_a_judge_right_nine_times_in_ten_is_confident(skill):
    """A judge that cannot tell (skill 0) finds 1/5 of the intruders and is called confident at most
    alpha of the time; one that sees the intruder in 90% of groups is called confident nearly always."""
    from scipy.stats import binom

    from autointerp.stages.score.scorers import SCORERS

    out = asyncio.run(
        SCORERS["intruder"].score([_intruder_item(f) for f in range(2000)], IntruderJudge(skill), ScoreConfig())
    )
    values = np.array([o.estimate.value for o in out])
    p = np.array([o.estimate.p_value for o in out])
    right = np.round(values * 8).astype(int)
    assert p == pytest.approx(binom.sf(right - 1, 8, 0.2))  # P(X >= right), X ~ Binomial(8, 1/5)
    if skill == 0:
        assert abs(values.mean() - 0.2) < 0.01 and np.mean(p < 0.01) <= 0.01
    else:
        # Right with probability 0.9 + 0.1/5 = 0.92 a group: 6 or more of 8 (p <= 0.0012) nearly always.
        assert np.mean(p < 0.01) >= 0.95


def test_the_offline_judge_finds_the_intruder_by_the_token_the_other_windows_share():
    from autointerp.judges.judge import find_intruders
    from autointerp.records import Snippet

    def w(*tokens):
        return Snippet(0, "score", "top", 0, tokens, None, 1)

    groups = [
        [w(" a", " hash", " x"), w(" b", " hash"), w(" c", " y"), w(" hash", " d"), w(" e", " hash", " x")],
        [w(" hash", " f"), w(" g", " h"), w(" i", " hash"), w(" hash", " j"), w(" k", " Hash")],
    ]
    assert find_intruders(groups) == [3, 2]  # the window without "hash", its case and spaces folded


class NoisyDetectionJudge(OfflineJudge):
    """Answers each detection snippet rightly (by peeking at its kind) with probability `accuracy`."""

    def __init__(self, accuracy: float, seed: int = 0):
        self.accuracy, self.rng = accuracy, np.random.default_rng(seed)

    async def ask(self, task):
        value = [(s.kind != "negative") == (self.rng.random() < self.accuracy) for s in task.snippets]
        return JudgeAnswer(value, raw=str(value))


@pytest.mark.parametrize("accuracy", [0.5, 0.9])
def test_detection_at_its_default_sizes_calls_a_label_right_on_90_percent_of_windows_confident(accuracy):
    """Power at n, not only coverage: with the default held-out sample (10 activating windows against
    15 negatives, one prompt) a label the judge finds right on 90% of windows is confident (Fisher p <
    alpha) in at least 95% of features; a label no better than chance in at most alpha of them."""
    from autointerp.stages.score.scorers import SCORERS

    cfg = ScoreConfig()
    assert (cfg.n_top + cfg.n_strata, cfg.n_negative) == (10, 15)
    items = [_intruder_item(f, n_active=10, n_negative=cfg.n_negative) for f in range(2000)]
    out = asyncio.run(SCORERS["detection"].score(items, NoisyDetectionJudge(accuracy), cfg))
    confident = np.mean([o.estimate.p_value < cfg.alpha for o in out])
    print(f"judge right on {accuracy:.0%} of windows: confident in {confident:.1%} of features")
    assert confident >= 0.95 if accuracy == 0.9 else confident <= cfg.alpha


def test_a_scorer_whose_intervals_cannot_tell_a_good_label_from_none_is_reported_not_measurable():
    import pandas as pd

    from autointerp.stages.score.stage import measurability

    def rows(low, high):
        return pd.DataFrame({"ci_low": low, "ci_high": high})

    # Simulation at n = 8: most intervals span chance (0) to beyond 0.4.
    wide = measurability(rows([-0.63, -0.2, 0.1, -0.5], [1.0, 0.9, 0.8, 0.3]), 0.0)
    assert wide == ""  # two of four: half is not most
    wide = measurability(rows([-0.63, -0.2, -0.1, -0.5], [1.0, 0.9, 0.8, 0.3]), 0.0)
    assert wide.startswith("NOT MEASURABLE at this sample: 75% of the intervals hold both chance (0) and 0.4")
    assert measurability(rows([0.547, 0.45, 0.6], [0.87, 0.85, 0.95]), 0.5) == ""  # detection at n = 25
