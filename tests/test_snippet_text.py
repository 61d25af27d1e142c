"""Snippets read as the text they came from, for each tokenizer family: a stored window's pieces join to
a stretch of its source document, character for character (case, spaces, whole words, multi-byte
characters split over tokens), with one piece per token."""

from __future__ import annotations

import json

import pytest
import torch
import transformers as tf
from conftest import FAMILY_CONFIGS, pipeline_config
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from autointerp.config import CorpusConfig, GatherConfig
from autointerp.store import Store

# Mixed case, accents, CJK and an emoji: what WordPiece folds or drops and byte-level BPE splits over tokens.
SPICE = " Naïve Café in 東京 — 👍 MixedCase WORDS, ünïcödé. "


def _training_text() -> list[str]:
    from pydoc_data.topics import topics

    return list(topics.values())[:200]


def wordpiece() -> tf.PreTrainedTokenizerFast:
    """BERT's scheme: lower-cased, accents stripped, '##' continuations, [UNK] for what it cannot spell."""
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(_training_text(), trainers.WordPieceTrainer(vocab_size=600, special_tokens=special))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    tok.decoder = decoders.WordPiece()
    return tf.PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def sentencepiece() -> tf.PreTrainedTokenizerFast:
    """Llama's scheme: '▁' for a space, and bytes (<0xE6>) for characters not in the vocabulary."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Metaspace()])
    special = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tok.train_from_iterator(_training_text(), trainers.BpeTrainer(vocab_size=900, special_tokens=special))
    return tf.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")


TOKENIZERS = {"bytelevel": ("gpt2", None), "wordpiece": ("bert", wordpiece), "sentencepiece": ("llama", sentencepiece)}


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def gathered(request, pipeline_setup, byte_bpe_tokenizer, tmp_path_factory):
    """A run gathered through the pipeline with a tiny model of the family and its tokenizer, on a corpus
    whose every document holds SPICE several times."""
    from autointerp.pipeline import gather

    family, make = TOKENIZERS[request.param]
    tokenizer = make() if make else byte_bpe_tokenizer
    root = tmp_path_factory.mktemp(request.param)
    torch.manual_seed(0)
    cls = tf.AutoModel if family == "bert" else tf.AutoModelForCausalLM
    model = cls.from_config(FAMILY_CONFIGS[family](len(tokenizer)))
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    from pydoc_data.topics import topics

    docs = [SPICE.join(topics[k][i : i + 120] for i in range(0, 600, 120)) for k in sorted(topics)[:30]]
    corpus = root / "docs.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    sae_root = pipeline_setup[0]
    cfg = pipeline_config(
        (sae_root, str(corpus), str(root / "model")),
        root / "p",
        corpus=CorpusConfig(source=str(corpus), context_length=64),
        gather=GatherConfig(n_top=4, n_bins=2, per_bin=2, n_negative=3, window=24, batch_size=4),
    )
    gather(cfg)
    with Store(root / "p") as store:
        alive = store.alive_features("r1", include_dense=True)
        snippets = [
            s
            for f in store.feature_snippets("r1", alive)
            for s in f.explain + f.score + f.explain_negatives + f.score_negatives
        ]
        rows = store.con.execute("SELECT len(token_ids), len(text_ends) FROM examples").fetchall()
    return tokenizer, docs, snippets, rows, root / "p"


def test_every_window_keeps_its_source_text_with_one_piece_per_token(gathered):
    _, _, snippets, rows, _ = gathered
    assert len(rows) > 50 and all(n_tokens == n_ends for n_tokens, n_ends in rows)
    assert len(snippets) == len(rows)


def test_pieces_join_to_a_stretch_of_the_source_document(gathered):
    _, docs, snippets, _, _ = gathered
    assert snippets
    for s in snippets:
        text = "".join(s.tokens)
        assert any(text in d for d in docs), (text, s.tokens)


def test_case_whole_words_and_characters_split_over_tokens_come_back(gathered):
    _, docs, snippets, _, _ = gathered
    texts = ["".join(s.tokens) for s in snippets]
    # Each of these is spelt in the corpus and nowhere else; vocabulary pieces lose every one of them for
    # some family (lower case and split words for WordPiece, byte tokens for BPE and SentencePiece).
    for word in ("Naïve", "Café", "東京", "👍", "MixedCase", "WORDS", "ünïcödé"):
        assert any(word in t for t in texts), word


def test_serve_shows_each_window_as_its_source_text(gathered, tmp_path):
    import html
    import re

    from autointerp.store import Browser
    from autointerp.views.serve import App

    _, docs, snippets, _, project = gathered
    db = Browser(project)
    try:
        pages = [App(db).feature(f, {}) for f in sorted({s.feature for s in snippets})[:6]]
    finally:
        db.close()
    window = re.compile(r"<div class='win'[^>]*><span class='muted'>.*?</span>\n(.*?)</div>", re.S)
    shown = [html.unescape(re.sub(r"<[^>]+>", "", body)) for page in pages for body in window.findall(page)]
    assert len(shown) > 10 and all(any(text in d for d in docs) for text in shown)


def test_a_window_whose_document_changed_since_keeps_no_text(byte_bpe_tokenizer):
    """The text is cut out only where re-tokenising the document gives the very ids gather stored."""
    import pyarrow as pa

    from autointerp.gather.corpus import Document
    from autointerp.gather.text import source_texts

    text = "The Return value of Café"
    ids = byte_bpe_tokenizer(text, add_special_tokens=False)["input_ids"]
    second = byte_bpe_tokenizer("The", add_special_tokens=False)["input_ids"]
    examples = pa.table(
        {
            "doc_id": pa.array([0, 0], pa.int64()),
            "doc_offset": pa.array([len(second), 0], pa.int64()),
            "token_ids": pa.array([ids[len(second) :], ids], pa.list_(pa.int32())),
        }
    )
    names, texts, ends, missing = source_texts(examples, [Document(0, "d", text)], byte_bpe_tokenizer)
    assert names == [(0, "d")] and missing == 0
    assert texts.to_pylist() == [" Return value of Café", text]
    assert ends.to_pylist()[1][-1] == len(text)
    _, texts, _, missing = source_texts(examples, [Document(0, "d", "The return value of café")], byte_bpe_tokenizer)
    assert missing == 2 and texts.to_pylist() == [None, None]


def test_one_text_one_window_and_one_document(pipeline_setup, tmp_path):
    """A passage copied into every document, and a document repeated with other spacing: the copy is read
    once, and no feature keeps two windows of one text (nor one in each split), ranks without gaps."""
    from collections import Counter
    from pydoc_data.topics import topics

    from autointerp.gather.corpus import CorpusStats, iter_documents
    from autointerp.pipeline import gather

    root, _, model = pipeline_setup
    passage = " The passage that every document quotes word for word, again and again. "
    docs = [topics[k][:500] + passage + topics[k][500:800] for k in sorted(topics)[:30]]
    docs.append("  \n".join(docs[3].split(" ")))  # document 3 again, spaced otherwise
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    stats = CorpusStats()
    assert len(list(iter_documents(CorpusConfig(source=str(corpus)), stats))) == 30 and stats.repeated_documents == 1
    cfg = pipeline_config(
        (root, str(corpus), model),
        tmp_path / "p",
        corpus=CorpusConfig(source=str(corpus), context_length=64),
        gather=GatherConfig(n_top=8, n_bins=2, per_bin=3, n_negative=3, window=24, batch_size=4),
    )
    summary = gather(cfg)
    assert summary.n_repeated_documents == 1 and summary.n_repeated_windows > 0
    assert f"{summary.n_repeated_windows:,} dropped as repeats" in "\n".join(summary.lines())
    with Store(tmp_path / "p") as store:
        rows = store.con.execute(
            "SELECT feature, split, kind, rank, text FROM examples ORDER BY feature, split, kind, rank"
        ).fetchall()
    texts = Counter((f, kind == "negative", " ".join(t.split()).casefold()) for f, _, kind, _, t in rows)
    assert max(texts.values()) == 1
    ranks: dict = {}
    for f, split, kind, rank, _ in rows:
        ranks.setdefault((f, split, kind), []).append(rank)
    assert all(r == list(range(len(r))) for r in ranks.values())


def test_vocabulary_entries_read_as_the_tokenizers_own_decoder_reads_them(byte_bpe_tokenizer):
    """Output effects and token lists show vocabulary entries: byte-level ones decoded from their bytes
    (what the tokenizer's decoder gives), WordPiece and SentencePiece ones as spelled, ▁ as ␣."""
    from autointerp.views.text import visible_token

    def marked(text: str) -> str:
        return text.replace(" ", "␣").replace("\n", "⏎").replace("\t", "⇥")

    tok = byte_bpe_tokenizer
    entries = tok.convert_ids_to_tokens(list(range(len(tok))))
    whole = [t for t in entries if "\ufffd" not in tok.convert_tokens_to_string([t])]
    assert len(whole) > 300
    assert [visible_token(t) for t in whole] == [marked(tok.convert_tokens_to_string([t])) for t in whole]
    pieces = tok.convert_ids_to_tokens(tok(SPICE)["input_ids"])
    assert any(visible_token(p).startswith("\\x") for p in pieces)  # a multi-byte character split over tokens
    assert [visible_token(t) for t in ("café", "##ing", "▁the", "<0xE6>")] == ["café", "##ing", "␣the", "<0xE6>"]
