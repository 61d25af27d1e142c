"""The documented views answer the first questions without unnesting token ids: each checked
against the typed records and score rows the Python API returns, on a real run and on databases
upgraded from schema 1 and from schema 7 (where a scorer added later gets its columns)."""

from __future__ import annotations

import math

import pytest
from test_migrations import load_fixture, v1_project
from test_report import RUN, real_run  # noqa: F401 (a fixture)

from autointerp.store import Store


def _check_views(store: Store, run_id: str) -> None:
    snippets = {
        (s.feature, s.split, s.kind, s.context_id): s
        for fs in store.feature_snippets(run_id, list(store.features(run_id).feature))
        for s in fs.explain + fs.explain_negatives + fs.score + fs.score_negatives
    }
    rows = store.con.execute(
        "SELECT feature, split, kind, context_id, text, peak_token FROM snippet_text WHERE run_id = ?", [run_id]
    ).fetchall()
    examples = store.con.execute(
        "SELECT peak FROM examples WHERE run_id = ? ORDER BY feature, split, kind, context_id", [run_id]
    ).fetchall()
    assert len(rows) == len(snippets) == len(examples) > 0
    for feature, split, kind, context, text, _peak_token in rows:
        s = snippets[feature, split, kind, context]
        assert text.strip() == s.text.strip()  # a WordPiece snippet's first word has no leading space in the records
    peaks = store.con.execute(
        "SELECT e.peak, e.token_ids, t.peak_token FROM examples e JOIN snippet_text t USING (run_id, feature, split, "
        "kind, rank, context_id) "
        "WHERE run_id = ? AND kind <> 'negative' LIMIT 50",
        [run_id],
    ).fetchall()
    from autointerp.records import piece_tables, vocab_style

    vocab = store.vocab(run_id)
    _, pieces = piece_tables(vocab, vocab_style(vocab))
    assert len(peaks) == 50 and all(peak_token == pieces[ids[peak]] for peak, ids, peak_token in peaks)


def test_views_of_a_real_run(real_run):
    with Store(real_run, read_only=True) as store:
        _check_views(store, RUN)
        summary = store.con.execute("SELECT * FROM feature_summary WHERE run_id = ?", [RUN]).df()
        labels = store.explanations(RUN)
        assert len(summary) == len(labels) == len(store.features(RUN))
        scores = store.scores(RUN)
        own = scores[scores.label_source == "true"].set_index(["scorer", "feature"])
        for r in summary.itertuples():
            for scorer in ("detection", "fuzzing", "simulation"):
                want = own.loc[(scorer, r.feature)] if (scorer, r.feature) in own.index else None
                got = getattr(r, scorer), getattr(r, f"{scorer}_low"), getattr(r, f"{scorer}_p")
                if want is None or math.isnan(want.value):
                    assert got[0] is None or math.isnan(got[0])
                else:
                    assert got == pytest.approx((want.value, want.ci_low, want.p_value), nan_ok=True)
        assert summary.intervention.isna().all()
        edges = store.run(RUN)["histogram_edges"]
        assert len(edges) == 65 and edges[0] == pytest.approx(1e-4) and edges[-1] == pytest.approx(1e4)


def test_views_of_a_database_upgraded_from_schema_1(tmp_path):
    project = v1_project(tmp_path)
    with Store(project) as store:
        run_id = store.runs().run_id.iloc[0]
        assert store.con.execute("SELECT count(*) FROM vocab WHERE piece IS NULL").fetchone()[0] == 0
        _check_views(store, run_id)
        assert store.run(run_id)["histogram_edges"] is None  # not recorded then; not invented


def _summary_columns(store: Store) -> list[str]:
    return [d[0] for d in store.con.execute("SELECT * FROM feature_summary LIMIT 0").description]


def test_a_scorer_added_later_gets_its_columns_in_a_database_written_before_it(tmp_path):
    # Written by main at d74eb4a (schema 7, views from migration 6): scores of a scorer "newscorer"
    # that its feature_summary has no column for.
    project = load_fixture(tmp_path, "db_schema_7")
    headlines = ["detection", "fuzzing", "simulation", "embedding", "intervention"]
    with Store(project) as store:
        before = _summary_columns(store)
        assert "detection_p" in before and not any(c.startswith("newscorer") for c in before)
        assert store.ensure_score_columns([*headlines, "newscorer"]) == ["newscorer"]
        assert store.ensure_score_columns(["newscorer", "detection"]) == []  # each scorer once
        with pytest.raises(ValueError, match="label"):  # a name clashing with a column changes nothing
            store.ensure_score_columns(["other", "label"])
    with Store(project, read_only=True) as store:
        assert _summary_columns(store) == before + ["newscorer", "newscorer_low", "newscorer_high", "newscorer_p"]
        summary = store.con.execute("SELECT * FROM feature_summary WHERE run_id = 'r1'").df()
        scores = store.scores("r1")
        own = scores[scores.label_source == "true"].set_index(["scorer", "explainer", "feature"])
        assert len(summary) == 7 and len(own.loc["newscorer"]) == 6  # 3 labelled features x 2 explainers, 1 unlabelled
        for scorer in ("newscorer", "detection"):
            for r in summary.itertuples():
                got = tuple(getattr(r, scorer + suffix) for suffix in ("", "_low", "_high", "_p"))
                key = (scorer, r.explainer, r.feature)
                if key not in own.index:
                    assert all(v is None or math.isnan(v) for v in got)
                    continue
                want = own.loc[key]
                assert got == pytest.approx((want.value, want.ci_low, want.ci_high, want.p_value), nan_ok=True)
        assert summary.newscorer.notna().sum() == 4  # feature 1 scored NaN under both explainers
