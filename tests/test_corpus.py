"""Corpus sources, packing with provenance, and bad corpus input."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from autointerp.config import CorpusConfig
from autointerp.errors import AutointerpError
from autointerp.gather.corpus import iter_contexts, iter_documents

DOCS = [
    "alpha beta gamma delta. " * 12,
    "the quick brown fox jumps over the lazy dog. " * 9,
    "lorem ipsum dolor sit amet. " * 15,
]


@pytest.fixture
def sources(tmp_path):
    (tmp_path / "txt").mkdir()
    for i, d in enumerate(DOCS):
        (tmp_path / "txt" / f"{i}.txt").write_text(d)
    (tmp_path / "docs.jsonl").write_text("\n".join(json.dumps({"body": d, "id": i}) for i, d in enumerate(DOCS)))
    pq.write_table(pa.table({"body": DOCS}), tmp_path / "docs.parquet")
    return tmp_path


@pytest.mark.parametrize("name,field", [("txt", "text"), ("docs.jsonl", "body"), ("docs.parquet", "body")])
def test_every_source_gives_the_same_documents(sources, name, field):
    docs = list(iter_documents(CorpusConfig(source=str(sources / name), text_field=field)))
    assert [d.text for d in docs] == DOCS
    assert [d.doc_id for d in docs] == [0, 1, 2]


def test_packing_keeps_document_and_offset_of_every_token(sources, byte_bpe_tokenizer):
    cfg = CorpusConfig(source=str(sources / "docs.jsonl"), text_field="body", context_length=24)
    batches = list(iter_contexts(iter_documents(cfg), byte_bpe_tokenizer, cfg, batch_size=4))
    ids = np.concatenate([b.input_ids for b in batches])
    doc = np.concatenate([b.doc_ids for b in batches])
    off = np.concatenate([b.doc_offsets for b in batches])
    valid = np.concatenate([b.valid for b in batches])
    assert ids.shape[1] == 24
    # Independent expectation: tokenise each document alone and compare token by token.
    for d, text in enumerate(DOCS):
        expected = byte_bpe_tokenizer(text, add_special_tokens=False)["input_ids"]
        mask = valid & (doc == d)
        assert list(ids[mask]) == expected
        assert list(off[mask]) == list(range(len(expected)))
    assert not valid[ids == byte_bpe_tokenizer.bos_token_id].any()  # BOS/separators never count
    assert (np.concatenate([b.context_ids for b in batches]) == np.arange(len(ids))).all()


def test_max_tokens_caps_the_corpus(sources, byte_bpe_tokenizer):
    cfg = CorpusConfig(source=str(sources / "txt"), context_length=24, max_tokens=50)
    batches = list(iter_contexts(iter_documents(cfg), byte_bpe_tokenizer, cfg, batch_size=8))
    assert sum(int(b.valid.sum()) for b in batches) == 50


@pytest.mark.slow
def test_embedded_default_is_python_documentation():
    docs = iter_documents(CorpusConfig())
    first = [next(docs) for _ in range(3)]
    assert all(d.name.startswith("pydoc_data.topics:") for d in first)
    names = [d.name for d in docs]
    assert any(n.startswith("json.") for n in names)  # standard-library docstrings follow
    texts = [" ".join(d.text.split()) for d in iter_documents(CorpusConfig())]
    assert len(texts) == len(set(texts))  # deduplicated


def test_corpus_shorter_than_one_context(tmp_path, byte_bpe_tokenizer):
    (tmp_path / "tiny.txt").write_text("just a few words")
    cfg = CorpusConfig(source=str(tmp_path / "tiny.txt"), context_length=128)
    with pytest.raises(AutointerpError, match="fewer than one context.*\n.*fix: .*context-length"):
        list(iter_contexts(iter_documents(cfg), byte_bpe_tokenizer, cfg, 4))


def test_empty_corpus(tmp_path, byte_bpe_tokenizer):
    (tmp_path / "empty.txt").write_text("   \n")
    cfg = CorpusConfig(source=str(tmp_path / "empty.txt"))
    with pytest.raises(AutointerpError, match="has 0 tokens"):
        list(iter_contexts(iter_documents(cfg), byte_bpe_tokenizer, cfg, 4))


def test_non_utf8_names_file_byte_and_fix(tmp_path):
    (tmp_path / "latin.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    with pytest.raises(AutointerpError, match=r"latin.txt is not valid utf-8: byte 3 \(0xe9\)[\s\S]*iconv"):
        list(iter_documents(CorpusConfig(source=str(tmp_path / "latin.txt"))))
    docs = list(iter_documents(CorpusConfig(source=str(tmp_path / "latin.txt"), encoding="latin-1")))
    assert docs[0].text == "café au lait"


def test_jsonl_errors_name_line_and_field(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    with pytest.raises(
        AutointerpError, match=r"bad.jsonl:2 has no 'text' field \(found: \['body'\]\)[\s\S]*--text-field"
    ):
        list(iter_documents(CorpusConfig(source=str(tmp_path / "bad.jsonl"))))
    (tmp_path / "broken.jsonl").write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(AutointerpError, match="broken.jsonl:2 is not valid JSON"):
        list(iter_documents(CorpusConfig(source=str(tmp_path / "broken.jsonl"))))


def test_missing_corpus_path(tmp_path):
    with pytest.raises(AutointerpError, match="neither a file"):
        list(iter_documents(CorpusConfig(source=str(tmp_path / "nope"))))


def test_hf_dataset_goes_through_datasets(monkeypatch):
    """The real `datasets.load_dataset` path, fed a local in-memory dataset instead of the hub."""
    import datasets

    calls = {}

    def fake_load(name, config, split, streaming):
        calls.update(name=name, config=config, split=split, streaming=streaming)
        return datasets.Dataset.from_dict({"content": DOCS}).to_iterable_dataset()

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    docs = list(iter_documents(CorpusConfig(source="hf:org/corpus:en", text_field="content", split="validation")))
    assert [d.text for d in docs] == DOCS
    assert calls == {"name": "org/corpus", "config": "en", "split": "validation", "streaming": True}
    assert docs[0].name == "org/corpus/validation#0"


def test_a_lone_surrogate_in_json_becomes_a_replacement_character(tmp_path, byte_bpe_tokenizer):
    (tmp_path / "s.jsonl").write_text('{"text": "broken \\ud800 pair,' + " plain text" * 20 + '"}\n')
    cfg = CorpusConfig(source=str(tmp_path / "s.jsonl"), context_length=16)
    (doc,) = iter_documents(cfg)
    assert doc.text == "broken \ufffd pair," + " plain text" * 20
    batches = list(iter_contexts(iter_documents(cfg), byte_bpe_tokenizer, cfg, 4))
    ids = np.concatenate([b.input_ids[b.valid] for b in batches])
    assert list(ids) == byte_bpe_tokenizer(doc.text, add_special_tokens=False)["input_ids"]


class Spy:
    """The tokenizer, recording how many characters each text it is given has."""

    def __init__(self, tokenizer):
        self.tokenizer, self.seen = tokenizer, []

    def __call__(self, texts, **kw):
        if isinstance(texts, list):
            self.seen.extend(len(t) for t in texts)
        return self.tokenizer(texts, **kw)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_a_long_line_is_tokenised_a_piece_at_a_time_with_the_same_tokens(tmp_path, byte_bpe_tokenizer):
    words = [f"w{i % 97} x{i % 13}" for i in range(6000)]
    line = " ".join(words)  # one 60 KB document on one line
    (tmp_path / "long.txt").write_text(line)
    spy = Spy(byte_bpe_tokenizer)
    cfg = CorpusConfig(source=str(tmp_path / "long.txt"), context_length=64)
    batches = list(iter_contexts(iter_documents(cfg), spy, cfg, 16, doc_chunk_chars=5_000))
    ids = np.concatenate([b.input_ids[b.valid] for b in batches])
    offsets = np.concatenate([b.doc_offsets[b.valid] for b in batches])
    expected = byte_bpe_tokenizer(line, add_special_tokens=False)["input_ids"]  # the whole line at once
    assert list(ids) == expected and list(offsets) == list(range(len(expected)))
    assert max(spy.seen) <= 5_000 < len(line)  # no call saw more than a piece


def test_the_budget_stops_reading_a_long_line_early(tmp_path, byte_bpe_tokenizer):
    (tmp_path / "huge.txt").write_text("word " * 400_000)  # 2 MB on one line
    spy = Spy(byte_bpe_tokenizer)
    cfg = CorpusConfig(source=str(tmp_path / "huge.txt"), context_length=64, max_tokens=2_000)
    batches = list(iter_contexts(iter_documents(cfg), spy, cfg, 16, doc_chunk_chars=20_000))
    assert sum(int(b.valid.sum()) for b in batches) == 2_000
    assert sum(spy.seen) <= 2 * 20_000 + 10  # a piece or two read, not 2 MB


def test_an_unreachable_hugging_face_dataset_is_a_clear_error(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'org/corpus' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(AutointerpError) as e:
        list(iter_documents(CorpusConfig(source="hf:org/corpus")))
    assert "cannot read the Hugging Face dataset 'org/corpus'" in e.value.problem and "local" in e.value.fix
