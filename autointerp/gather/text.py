"""Snippets as the text they came from: each stored window's source text, cut out of its document
through the tokenizer's character offsets, and where each token ends in it.

Pieces rebuilt from vocabulary entries lose what the tokenizer threw away: WordPiece lower-cases
and splits words (`self . denomi nator`), byte-level BPE splits a multi-byte character over
tokens that are not text on their own. The document itself has none of these losses. A window
is a run of tokens of one document (gather never lets one cross a document boundary), so its
text is the document's characters from its first token's start to its last token's end; token i
owns the characters from the end of token i-1 to its own end (the space before a word goes with
the word), so the pieces join back to the text exactly. A token that ends where the one before
did (the second byte of a character split over two byte tokens) owns no character.

Windows whose document cannot be re-tokenised to the very ids gather stored (a corpus changed
on disk since, a tokenizer without offsets) keep no text, and every view falls back to the
vocabulary pieces for them.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np
import pyarrow as pa

from autointerp.gather.corpus import DOC_CHUNK_CHARS, Document, document_pieces


def token_spans(tokenizer, text: str) -> tuple[list[int], np.ndarray] | None:
    """The document's token ids and each token's [start, end) characters, tokenised piece by piece as
    `iter_contexts` does, so the ids line up with the stored offsets; None where the tokenizer gives
    no offsets (a slow, pure-Python one)."""
    ids: list[int] = []
    spans: list[np.ndarray] = []
    base = 0
    for piece in document_pieces(text, DOC_CHUNK_CHARS):
        try:
            enc = tokenizer(piece, add_special_tokens=False, return_offsets_mapping=True)
        except NotImplementedError:
            return None
        ids += enc["input_ids"]
        spans.append(np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2) + base)
        base += len(piece)
    return ids, np.concatenate(spans) if spans else np.zeros((0, 2), np.int64)


def window_text(text: str, spans: np.ndarray, start: int, n: int) -> tuple[str, list[int]]:
    """The characters of tokens [start, start + n) and where each token ends in them."""
    ends = np.maximum.accumulate(spans[start : start + n, 1])
    first = min(int(spans[start, 0]), int(ends[0]))
    return text[first : int(ends[-1])], (ends - first).tolist()


def source_texts(
    examples: pa.Table, documents: Iterable[Document], tokenizer
) -> tuple[list[tuple[int, str]], pa.Array, pa.Array, int]:
    """One pass over the documents the examples come from: (doc_id, name) of each, and per example
    row its text and token ends (null where the ids do not match), and how many rows got none."""
    doc_ids = examples["doc_id"].to_numpy()
    offsets = examples["doc_offset"].to_numpy()
    token_ids = examples["token_ids"].combine_chunks()
    flat = token_ids.values.to_numpy()
    bounds = token_ids.offsets.to_numpy()
    rows_of: dict[int, list[int]] = defaultdict(list)
    for row, doc in enumerate(doc_ids.tolist()):
        rows_of[doc].append(row)
    texts: list[str | None] = [None] * len(doc_ids)
    ends: list[list[int] | None] = [None] * len(doc_ids)
    names = []
    last = max(rows_of, default=-1)
    for doc in documents:
        if doc.doc_id > last:  # the rest of the corpus lies past the token budget: no window comes from it
            break
        rows = rows_of.get(doc.doc_id)
        if rows is None:
            continue
        names.append((doc.doc_id, doc.name))
        tokenised = token_spans(tokenizer, doc.text)
        if tokenised is None:
            continue
        ids, spans = tokenised
        for row in rows:
            start, window = int(offsets[row]), flat[bounds[row] : bounds[row + 1]]
            if len(window) and start >= 0 and ids[start : start + len(window)] == window.tolist():
                texts[row], ends[row] = window_text(doc.text, spans, start, len(window))
    missing = sum(t is None for t in texts)
    return names, pa.array(texts, pa.string()), pa.array(ends, pa.list_(pa.int32())), missing


_SPLIT_ORDER = {"explain": 0, "score": 1}
_KIND_ORDER = {"top": 0, "quantile": 1, "negative": 2}


def drop_repeated_windows(examples: pa.Table) -> tuple[pa.Table, int]:
    """One text, one window: of a feature's windows with the same text (case and spacing aside; the
    token ids where no text was kept), only the first is kept, explain split before score (a text in
    both would not be held out), top before quantile, by rank; ranks are renumbered without gaps.
    Verified negatives are compared among themselves. Returns the table and how many rows it dropped."""
    import pandas as pd

    texts = examples["text"].to_pylist()
    no_text = [i for i, t in enumerate(texts) if t is None]
    ids = examples["token_ids"].take(pa.array(no_text, pa.int64())).to_pylist() if no_text else []
    keys: list[object] = [None if t is None else " ".join(t.split()).casefold() for t in texts]
    for i, window in zip(no_text, ids):
        keys[i] = tuple(window)
    frame = pd.DataFrame(
        {
            "feature": examples["feature"].to_numpy(),
            "split": examples["split"].to_pandas().map(_SPLIT_ORDER).to_numpy(),
            "kind": examples["kind"].to_pandas().map(_KIND_ORDER).to_numpy(),
            "rank": examples["rank"].to_numpy(),
            "key": keys,
        }
    )
    frame["negative"] = frame.kind == _KIND_ORDER["negative"]
    frame = frame.sort_values(["feature", "split", "kind", "rank"], kind="stable")
    kept = frame[~frame.duplicated(["feature", "negative", "key"])]
    n_dropped = len(frame) - len(kept)
    if not n_dropped:
        return examples, 0
    rank = kept.groupby(["feature", "split", "kind"]).cumcount().to_numpy()
    order = np.sort(kept.index.to_numpy())
    new_rank = pd.Series(rank, index=kept.index).loc[order].to_numpy()
    table = examples.take(pa.array(order, pa.int64()))
    column = table.schema.get_field_index("rank")
    return table.set_column(column, "rank", pa.array(new_rank, pa.int32())), n_dropped
