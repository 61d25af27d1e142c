"""The streaming gather against a brute-force NumPy oracle, and a feature planted by hand."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from autointerp.config import CorpusConfig, GatherConfig, ModelConfig
from autointerp.gather.collect import HIST_EDGES, Gatherer, run_gather, split_of
from autointerp.gather.corpus import iter_contexts, iter_documents
from autointerp.subject.model import SubjectModel
from autointerp.subject.sae import SAE

CONTEXT = 32


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    from pydoc_data.topics import topics

    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    texts = [topics[k][:600] for k in sorted(topics)[:40]]
    path.write_text("\n".join(json.dumps({"text": t}) for t in texts))
    return path


@pytest.fixture(scope="module")
def gpt2(tiny_model_dir):
    return SubjectModel(ModelConfig(name=tiny_model_dir("gpt2"), hookpoint="blocks.1.hook_resid_post", device="cpu"))


def _random_sae(x: np.ndarray, d_sae: int, seed: int) -> tuple[SAE, dict[str, np.ndarray]]:
    """Random weights; each bias set from the activations x [N, d_in] so the feature fires on 2–20% of tokens."""
    rng = np.random.default_rng(seed)
    d_in = x.shape[-1]
    w = {
        "W_enc": rng.normal(0, 1, (d_in, d_sae)).astype(np.float32),
        "W_dec": rng.normal(0, 0.2, (d_sae, d_in)).astype(np.float32),
        "b_dec": rng.normal(0, 0.01, d_in).astype(np.float32),
    }
    pre = (x - w["b_dec"]) @ w["W_enc"]
    w["b_enc"] = np.zeros(d_sae, np.float32)
    for j, q in enumerate(rng.uniform(0.8, 0.98, d_sae)):
        # Put the threshold in a clear gap between distinct values, so float32 vs float64 rounding
        # cannot flip whether a token fires.
        v = np.unique(pre[:, j])
        i = int(q * len(v))
        while v[i + 1] - v[i] < 1e-3:
            i += 1
        w["b_enc"][j] = -(v[i] + v[i + 1]) / 2
    w["b_enc"][0] = -1e6  # planted dead feature
    w["b_enc"][1] = 1e6  # planted ultra-dense feature: fires on every token
    return SAE(**{k: torch.from_numpy(v) for k, v in w.items()}, architecture="standard"), w


def _contexts(model, corpus_cfg):
    """All contexts in one batch, and their activations."""
    (b,) = iter_contexts(iter_documents(corpus_cfg), model.tokenizer, corpus_cfg, 1000)
    x = model.activations(torch.from_numpy(b.input_ids), torch.from_numpy(b.attention_mask)).numpy().astype(np.float64)
    return b, x


@pytest.fixture(scope="module")
def gathered(gpt2, corpus_file):
    corpus = CorpusConfig(source=str(corpus_file), context_length=CONTEXT)
    batch, x = _contexts(gpt2, corpus)
    sae, w = _random_sae(x[batch.valid], 24, seed=1)
    f = np.maximum((x - w["b_dec"]) @ w["W_enc"] + w["b_enc"], 0)  # the oracle: the SAE formula in NumPy
    f[~batch.valid] = 0
    cfg = GatherConfig(n_top=4, n_bins=2, per_bin=3, n_negative=5, window=8, batch_size=3, seed=7)
    result = run_gather(
        gpt2,
        sae,
        lambda: iter_contexts(iter_documents(corpus), gpt2.tokenizer, corpus, cfg.batch_size),
        cfg,
        progress=False,
    )
    return result, result.examples.to_pandas(), batch, f, cfg


def test_statistics_match_the_oracle(gathered):
    result, _, batch, f, _ = gathered
    feats = result.features
    flat = f.reshape(-1, f.shape[-1])
    np.testing.assert_array_equal(feats.n_firing, (flat > 0).sum(0))
    np.testing.assert_allclose(feats.max_activation, flat.max(0), rtol=1e-5)
    with np.errstate(invalid="ignore"):
        mean = np.where((flat > 0).sum(0) > 0, flat.sum(0) / (flat > 0).sum(0), 0)
    np.testing.assert_allclose(feats.mean_activation, mean, rtol=1e-4)
    assert result.n_tokens == batch.valid.sum()
    np.testing.assert_allclose(feats.density, (flat > 0).sum(0) / batch.valid.sum())
    for j in range(f.shape[-1]):
        v = flat[:, j][flat[:, j] > 0]
        expected = np.bincount(
            np.searchsorted(HIST_EDGES, v.astype(np.float32), side="left"), minlength=len(HIST_EDGES) + 1
        )
        np.testing.assert_array_equal(feats.histogram[j], expected)


def test_dead_and_dense_features_are_flagged(gathered):
    result, ex, *_ = gathered
    feats = result.features
    assert feats.dead[0] and not feats.dead[1:].any()
    assert feats.dense[1] and feats.density[1] == 1.0
    assert not (ex.feature == 0).any()  # a dead feature has no examples of any kind
    assert not ((ex.feature == 1) & (ex.kind == "negative")).any()  # nothing is quiet for it


def test_top_examples_are_the_best_contexts_of_each_split(gathered):
    result, ex, batch, f, cfg = gathered
    ctx_max = f.max(1)  # [contexts, features]
    split = split_of(batch.context_ids, cfg.explain_fraction, cfg.seed)
    for j in range(2, f.shape[-1]):
        for s, name in enumerate(("explain", "score")):
            mine = ex[(ex.feature == j) & (ex.split == name) & (ex.kind == "top")].sort_values("rank")
            rows = np.flatnonzero((split == s) & (ctx_max[:, j] > 0))
            best = rows[np.argsort(-ctx_max[rows, j], kind="stable")][: cfg.n_top]
            # Same values in the same order; contexts may differ only among exact ties (repeated text).
            np.testing.assert_allclose(mine.max_activation, ctx_max[best, j], rtol=1e-5)
            np.testing.assert_allclose(ctx_max[mine.context_id, j], ctx_max[best, j], rtol=1e-5)
            assert len(set(mine.context_id)) == len(mine)


def test_windows_hold_the_right_tokens_and_activations(gathered):
    _, ex, batch, f, cfg = gathered
    ids = batch.input_ids
    for e in ex.itertuples():
        c = e.context_id
        n = len(e.token_ids)
        # Locate the window in its context from its document and offset.
        start = int(np.flatnonzero((batch.doc_ids[c] == e.doc_id) & (batch.doc_offsets[c] == e.doc_offset))[0])
        assert list(ids[c, start : start + n]) == list(e.token_ids)
        assert (batch.doc_ids[c, start : start + n] == e.doc_id).all()  # never crosses a document
        assert n <= cfg.window
        acts = f[c, start : start + n, e.feature]
        if e.kind == "negative":
            assert n >= cfg.window // 2 and (acts == 0).all() and e.activations is None
        else:
            np.testing.assert_allclose(e.activations, acts, rtol=1e-5, atol=1e-5)
            assert e.activations[e.peak] == pytest.approx(e.max_activation, rel=1e-5, abs=1e-5)
            assert e.max_activation == pytest.approx(f[c, :, e.feature].max(), rel=1e-5, abs=1e-5)


def test_quantile_samples_are_activating_contexts_binned_by_activation(gathered):
    _, ex, batch, f, cfg = gathered
    split = split_of(batch.context_ids, cfg.explain_fraction, cfg.seed)
    q = ex[ex.kind == "quantile"]
    assert len(q) > 0
    for (j, name), grp in q.groupby(["feature", "split"]):
        assert (split[grp.context_id] == ("explain", "score").index(name)).all()
        assert (f[grp.context_id, :, j].max(1) > 0).all()
        top = set(ex[(ex.feature == j) & (ex.split == name) & (ex.kind == "top")].context_id)
        assert not top & set(grp.context_id)  # never repeats a top example
        by_bin = grp.groupby("quantile").max_activation
        assert (by_bin.max().iloc[:-1].to_numpy() <= by_bin.min().iloc[1:].to_numpy()).all()


def test_explain_and_score_splits_never_share_a_context(gathered):
    result, ex, batch, _, cfg = gathered
    by_split = ex.groupby("split").context_id.apply(set)
    assert not by_split["explain"] & by_split["score"]
    stored = result.contexts.set_index("context_id").split
    expected = np.array(["explain", "score"])[split_of(batch.context_ids, cfg.explain_fraction, cfg.seed)]
    assert list(stored.loc[batch.context_ids]) == list(expected)
    assert set(stored) == {"explain", "score"}


def test_planted_token_feature(tiny_model_dir, corpus_file):
    """A feature that reads the token embedding and fires on exactly one token id."""
    model = SubjectModel(ModelConfig(name=tiny_model_dir("gpt2"), hookpoint="transformer.wte", device="cpu"))
    E = model.model.transformer.wte.weight.detach().numpy().astype(np.float64)
    target = model.tokenizer(" the", add_special_tokens=False)["input_ids"][0]
    w = E[target] / (E[target] @ E[target])  # target scores exactly 1
    others = np.delete(E @ w, target)
    assert others.max() < 1
    bias = -(1 + others.max()) / 2  # fires on the target token only
    W_enc = np.zeros((E.shape[1], 2), np.float32)
    W_enc[:, 0] = w
    sae = SAE(
        torch.from_numpy(W_enc),
        torch.tensor([bias, -1e6], dtype=torch.float32),
        torch.zeros(2, E.shape[1]),
        torch.zeros(E.shape[1]),
        apply_b_dec_to_input=False,
    )
    corpus = CorpusConfig(source=str(corpus_file), context_length=CONTEXT)
    result = run_gather(
        model,
        sae,
        lambda: iter_contexts(iter_documents(corpus), model.tokenizer, corpus, 4),
        GatherConfig(n_top=5, window=8),
        progress=False,
    )
    # Independent count: tokenise every document and count the target id.
    docs = [json.loads(line)["text"] for line in corpus_file.read_text().splitlines()]
    expected = sum(ids.count(target) for ids in model.tokenizer(docs, add_special_tokens=False)["input_ids"])
    assert result.features.n_firing[0] == expected > 0
    ex = result.examples.to_pandas()
    top = ex[(ex.feature == 0) & (ex.kind == "top")]
    assert len(top) == 10 and all(t[p] == target for t, p in zip(top.token_ids, top.peak))
    assert all(target not in t for t in ex[(ex.feature == 0) & (ex.kind == "negative")].token_ids)


def test_state_does_not_grow_with_the_corpus(gpt2, corpus_file):
    corpus = CorpusConfig(source=str(corpus_file), context_length=CONTEXT)
    batch, x = _contexts(gpt2, corpus)
    sae, _ = _random_sae(x[batch.valid], 24, seed=2)
    g = Gatherer(sae.d_sae, GatherConfig(batch_size=2), gpt2.device, causal=True)

    def state_bytes() -> int:
        tensors = [t for bank in g.banks.values() for t in vars(bank).values() if isinstance(t, torch.Tensor)]
        tensors += [g.count, g.total, g.max, g.hist]
        return sum(t.numel() * t.element_size() for t in tensors)

    before = state_bytes()
    for batch in iter_contexts(iter_documents(corpus), gpt2.tokenizer, corpus, 2):
        x = gpt2.activations(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask))
        g.update(batch, sae.encode_sparse(x))
    assert state_bytes() == before


def test_result_does_not_depend_on_the_order_of_the_nonzeros(gpt2, corpus_file):
    """A TopK SAE lists each token's nonzeros in top-k order; a dense scan lists them by feature.
    Any order of the (row, feature, value) triplets must give the same statistics and examples."""
    corpus = CorpusConfig(source=str(corpus_file), context_length=CONTEXT)
    torch.manual_seed(0)
    sae = SAE(
        torch.randn(gpt2.width, 40),
        torch.randn(40),
        torch.randn(40, gpt2.width),
        torch.zeros(gpt2.width),
        architecture="topk",
        k=4,
    )
    outs = []
    for shuffle in (False, True):
        g = Gatherer(sae.d_sae, GatherConfig(window=8), gpt2.device, causal=True)
        for batch in iter_contexts(iter_documents(corpus), gpt2.tokenizer, corpus, 4):
            nonzeros = sae.encode_sparse(
                gpt2.activations(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask))
            )
            if shuffle:
                order = torch.randperm(len(nonzeros[0]))
                nonzeros = tuple(t[order] for t in nonzeros)
            g.update(batch, nonzeros)
        outs.append(g.finish())
    (feats_a, ex_a, _), (feats_b, ex_b, _) = outs
    for col in ("n_firing", "max_activation", "mean_activation"):
        np.testing.assert_allclose(feats_a[col], feats_b[col], rtol=1e-12)
    assert all((a == b).all() for a, b in zip(feats_a.histogram, feats_b.histogram))
    assert len(ex_a) > 100 and ex_a.equals(ex_b)


def test_a_dictionary_gathered_in_feature_shards_equals_one_pass(gpt2, corpus_file):
    """A memory budget too small for all banks splits the features into passes; each feature's
    statistics and every kept window, reservoir and negatives included, are the one-pass ones,
    and batching differently changes nothing either: sample keys hash (seed, feature, context)."""
    from dataclasses import replace

    from autointerp.gather.collect import feature_shards

    corpus = CorpusConfig(source=str(corpus_file), context_length=CONTEXT)
    batch, x = _contexts(gpt2, corpus)
    sae, _ = _random_sae(x[batch.valid], 24, seed=3)
    cfg = GatherConfig(n_top=4, n_bins=2, per_bin=3, n_negative=5, window=8, batch_size=3, seed=5)
    budget = cfg.bank_bytes(10) / 2**30  # room for 10 features: 24 become three shards of 8
    assert feature_shards(replace(cfg, memory_gib=budget), 24, gpt2.device) == [(0, 8), (8, 16), (16, 24)]

    def gather(c):
        r = run_gather(
            gpt2,
            sae,
            lambda: iter_contexts(iter_documents(corpus), gpt2.tokenizer, corpus, c.batch_size),
            c,
            progress=False,
        )
        ex = r.examples.to_pandas().sort_values(["feature", "split", "kind", "rank"], ignore_index=True)
        return r, ex

    whole, whole_ex = gather(cfg)
    sharded, sharded_ex = gather(replace(cfg, memory_gib=budget))
    rebatched, rebatched_ex = gather(replace(cfg, batch_size=5))
    assert sharded.config["feature_shards"] == 3 and whole.config["feature_shards"] == 1
    for other, other_ex in ((sharded, sharded_ex), (rebatched, rebatched_ex)):
        pd.testing.assert_frame_equal(
            other.features.drop(columns="histogram"), whole.features.drop(columns="histogram")
        )
        assert [list(h) for h in other.features.histogram] == [list(h) for h in whole.features.histogram]
        pd.testing.assert_frame_equal(
            other_ex.drop(columns=["token_ids", "activations"]), whole_ex.drop(columns=["token_ids", "activations"])
        )
        assert [list(t) for t in other_ex.token_ids] == [list(t) for t in whole_ex.token_ids]
        as_lists = lambda col: [None if a is None else list(a) for a in col]  # noqa: E731 (negatives keep no activations)
        assert as_lists(other_ex.activations) == as_lists(whole_ex.activations)
        assert other.n_tokens == whole.n_tokens and other.contexts.equals(whole.contexts)
    assert (whole_ex.kind == "quantile").sum() > 0 and (whole_ex.kind == "negative").sum() > 0


def test_gatherers_of_context_shares_merge_into_the_one_pass_gather(gpt2, corpus_file):
    """The basis of a distributed gather: workers take contexts by a stateless rule (context id
    modulo the number of workers); absorbing their gatherers gives the one-pass examples row for row."""
    from autointerp.gather.collect import Gatherer
    from autointerp.gather.corpus import rank_share

    corpus = CorpusConfig(source=str(corpus_file), context_length=CONTEXT)
    batch, x = _contexts(gpt2, corpus)
    sae, _ = _random_sae(x[batch.valid], 24, seed=4)
    cfg = GatherConfig(n_top=4, n_bins=2, per_bin=3, n_negative=5, window=8, batch_size=3, seed=6)

    def gatherer(batches):
        g = Gatherer(sae.d_sae, cfg, gpt2.device, gpt2.is_causal)
        with torch.inference_mode():
            for b in batches:
                g.update(
                    b,
                    sae.encode_sparse(
                        gpt2.activations(torch.from_numpy(b.input_ids), torch.from_numpy(b.attention_mask))
                    ),
                )
        return g

    def stream():
        return iter_contexts(iter_documents(corpus), gpt2.tokenizer, corpus, cfg.batch_size)

    whole = gatherer(stream())
    shares = [gatherer(rank_share(stream(), rank, 3)) for rank in range(3)]
    assert sum(len(np.concatenate(g.context_ids)) for g in shares) == len(np.concatenate(whole.context_ids))
    merged = shares[0]
    for other in shares[1:]:
        merged.absorb(other)
    (wf, we, wc), (mf, me, mc) = whole.finish(), merged.finish()
    order = ["feature", "split", "kind", "rank"]
    we, me = (t.to_pandas().sort_values(order, ignore_index=True) for t in (we, me))
    pd.testing.assert_frame_equal(mf.drop(columns="histogram"), wf.drop(columns="histogram"))
    assert [list(h) for h in mf.histogram] == [list(h) for h in wf.histogram]
    pd.testing.assert_frame_equal(
        me.drop(columns=["token_ids", "activations"]), we.drop(columns=["token_ids", "activations"])
    )
    assert [list(t) for t in me.token_ids] == [list(t) for t in we.token_ids]
    pd.testing.assert_frame_equal(mc, wc)
    assert (we.kind == "quantile").sum() > 0 and (we.kind == "negative").sum() > 0
