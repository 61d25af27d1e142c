"""The documented views answer the first questions without unnesting token ids: each checked
against the typed records and score rows the Python API returns, on a real run and on a database
upgraded from schema 1."""

from __future__ import annotations

import math

import pytest
from test_migrations import v1_project
from test_report import RUN, real_run  # noqa: F401 (a fixture)

from autointerp.store.store import Store


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
