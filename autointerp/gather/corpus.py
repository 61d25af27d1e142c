"""Corpus stage: documents in, fixed-length token contexts out, streamed.

Documents come from text files, JSONL, Parquet, a Hugging Face dataset, or the
embedded default (Python's own bundled documentation). They are tokenised and
packed back to back into contexts of `context_length` tokens; every token keeps
its document id and its token offset inside that document, so any snippet can
be traced back to its source. Nothing here holds more than a chunk of the
corpus in memory.
"""

from __future__ import annotations

import ast
import hashlib
import itertools
import json
import sys
import sysconfig
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from autointerp.config import DEFAULT_CORPUS, CorpusConfig
from autointerp.errors import AutointerpError

DOC_CHUNK_CHARS = 200_000  # characters of a document tokenised at once (text.py cuts documents the same way)


@dataclass
class Document:
    doc_id: int
    name: str  # where it came from: file path, file:line, dataset row, module.qualname
    text: str


@dataclass
class ContextBatch:
    """Packed contexts. `doc_ids` is -1 and `valid` False at special/padding tokens."""

    context_ids: np.ndarray  # [B] running context index in the corpus
    input_ids: np.ndarray  # [B, T] int64
    attention_mask: np.ndarray  # [B, T] int64, 0 only at padding
    valid: np.ndarray  # [B, T] bool, True at real document tokens
    doc_ids: np.ndarray  # [B, T] int64
    doc_offsets: np.ndarray  # [B, T] int64, token index inside its document

    def take(self, rows: np.ndarray) -> ContextBatch:
        """The contexts at `rows` (an index or a boolean mask), e.g. one rank's share."""
        return ContextBatch(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})


def rank_share(batches: Iterable[ContextBatch], rank: int, world: int) -> Iterator[ContextBatch]:
    """The contexts of one of `world` workers, by a stateless rule (context id modulo world), so
    every worker knows its share without talking to the others."""
    for batch in batches:
        mine = batch.context_ids % world == rank
        if mine.any():
            yield batch.take(mine)


# ---------------------------------------------------------------- documents


@dataclass
class CorpusStats:
    """What reading the corpus skipped."""

    repeated_documents: int = 0  # documents whose text (whitespace aside) came before


def iter_documents(cfg: CorpusConfig, stats: CorpusStats | None = None) -> Iterator[Document]:
    """Yield documents from the configured source, skipping empty texts and repeats of an earlier
    document's text (whitespace aside), counted in `stats`."""
    source = cfg.source
    if source == DEFAULT_CORPUS:
        texts = _python_docs()
    elif source.startswith("hf:"):
        texts = _hf_dataset(source[3:], cfg)
    else:
        path = Path(source)
        if not path.exists():
            raise AutointerpError(
                f"corpus '{source}' is neither a file, a directory, 'pydoc' nor 'hf:<dataset>'",
                "pass an existing .txt/.jsonl/.parquet file or directory, 'pydoc' for the "
                "embedded default, or 'hf:<name>' for a Hugging Face dataset",
            )
        texts = _local_files(path, cfg)
    doc_id = 0
    seen: set[bytes] = set()
    for name, text in texts:
        if not (text and text.strip()):
            continue
        # One text, one document: a copy (a mirrored page, an inherited docstring) would give every
        # feature firing on it the same window twice, and could put one window in both splits.
        key = hashlib.blake2b(" ".join(text.split()).encode("utf-8", "replace"), digest_size=8).digest()
        if key in seen:
            if stats is not None:
                stats.repeated_documents += 1
            continue
        seen.add(key)
        yield Document(doc_id, name, _encodable(text))
        doc_id += 1


def _encodable(text: str) -> str:
    """The text, with lone surrogates (JSON allows "\\ud800"; UTF-8 does not) replaced by U+FFFD, which
    tokenizers and the store take."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _local_files(path: Path, cfg: CorpusConfig) -> Iterator[tuple[str, str]]:
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    supported = [f for f in files if f.suffix in (".txt", ".md", ".jsonl", ".parquet")]
    if not supported:
        raise AutointerpError(
            f"no .txt, .md, .jsonl or .parquet file found at {path}",
            "point --corpus at text, JSONL (one JSON object with a text field per line) or Parquet files",
        )
    for f in supported:
        if f.suffix == ".jsonl":
            yield from _jsonl(f, cfg)
        elif f.suffix == ".parquet":
            yield from _parquet(f, cfg)
        else:
            yield str(f), _read_text(f, cfg.encoding)


def _read_text(path: Path, encoding: str) -> str:
    data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        raise AutointerpError(
            f"{path} is not valid {encoding}: byte {e.start} (0x{data[e.start]:02x}) cannot be decoded",
            f"convert it (e.g. `iconv -f latin1 -t utf-8 {path.name}`) or pass --encoding with its real encoding",
        ) from None


def _jsonl(path: Path, cfg: CorpusConfig) -> Iterator[tuple[str, str]]:
    for line_no, line in enumerate(_read_text(path, cfg.encoding).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise AutointerpError(
                f"{path}:{line_no} is not valid JSON ({e.msg})",
                'write one JSON object per line, e.g. {"text": "..."}',
            ) from None
        if not isinstance(row, dict) or cfg.text_field not in row:
            keys = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise AutointerpError(
                f"{path}:{line_no} has no '{cfg.text_field}' field (found: {keys})",
                "pass --text-field with the name of the field that holds the text",
            )
        yield f"{path}:{line_no}", str(row[cfg.text_field])


def _parquet(path: Path, cfg: CorpusConfig) -> Iterator[tuple[str, str]]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a bad file
        raise AutointerpError(f"{path} is not a readable Parquet file ({e})", "re-export the file as Parquet") from None
    if cfg.text_field not in pf.schema_arrow.names:
        raise AutointerpError(
            f"{path} has no column '{cfg.text_field}' (columns: {pf.schema_arrow.names})",
            "pass --text-field with the name of the column that holds the text",
        )
    row = 0
    for batch in pf.iter_batches(columns=[cfg.text_field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            yield f"{path}#{row}", text or ""
            row += 1


def _hf_dataset(spec: str, cfg: CorpusConfig) -> Iterator[tuple[str, str]]:
    import datasets

    name, _, config = spec.partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=cfg.split, streaming=True)
        rows = iter(ds)
        first = next(rows, None)
    except Exception as e:  # the hub client raises many types: offline, not found, gated, a bad split
        raise AutointerpError(
            f"cannot read the Hugging Face dataset {name!r} (split {cfg.split}): {type(e).__name__}: {e}",
            "check the dataset name and that the hub is reachable (or that HF_DATASETS_OFFLINE=1 has it "
            "cached), or pass a local .jsonl/.parquet/.txt corpus",
        ) from None
    if first is None:
        return
    for row_no, row in enumerate(itertools.chain([first], rows)):
        if cfg.text_field not in row:
            raise AutointerpError(
                f"dataset {name} has no '{cfg.text_field}' field (found: {sorted(row)})",
                "pass --text-field with the name of the field that holds the text",
            )
        yield f"{name}/{cfg.split}#{row_no}", row[cfg.text_field]


def _python_docs() -> Iterator[tuple[str, str]]:
    """Python's bundled documentation: pydoc topics, then standard-library docstrings.

    Docstrings are read with `ast`, never by importing modules; copies (inherited or copied
    docstrings are common) are dropped by iter_documents, as in every corpus.
    """
    from pydoc_data.topics import topics

    for topic in sorted(topics):
        yield f"pydoc_data.topics:{topic}", topics[topic]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"site-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"}
    for path in sorted(stdlib.rglob("*.py")):
        if skip.intersection(path.relative_to(stdlib).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
        except (SyntaxError, ValueError):
            continue
        module = ".".join(path.relative_to(stdlib).with_suffix("").parts)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) > 40:
                    name = module if isinstance(node, ast.Module) else f"{module}.{node.name}"
                    yield name, doc


# ---------------------------------------------------------------- packing


@dataclass
class SpecialTokens:
    """How the tokenizer frames a sequence: prefix (CLS/BOS), suffix (SEP), document separator, padding."""

    prefix: list[int]
    suffix: list[int]
    separator: list[int]
    pad: int

    @classmethod
    def of(cls, tokenizer) -> SpecialTokens:
        bare = tokenizer("a", add_special_tokens=False)["input_ids"]
        framed = tokenizer("a", add_special_tokens=True)["input_ids"]
        start = _find(framed, bare)
        prefix, suffix = framed[:start], framed[start + len(bare) :]
        if not prefix and tokenizer.bos_token_id is not None:
            prefix = [tokenizer.bos_token_id]  # causal LMs expect BOS first (SAELens prepend_bos)
        sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        return cls(prefix, suffix, [sep_id] if sep_id is not None else [], pad)


def _find(haystack: list[int], needle: list[int]) -> int:
    for i in range(len(haystack) - len(needle) + 1):
        if haystack[i : i + len(needle)] == needle:
            return i
    return 0


def iter_contexts(
    documents: Iterator[Document],
    tokenizer,
    cfg: CorpusConfig,
    batch_size: int,
    *,
    doc_chunk_chars: int = DOC_CHUNK_CHARS,
) -> Iterator[ContextBatch]:
    """Tokenise documents and pack them into [batch_size, context_length] batches.

    Documents are tokenised a chunk (of about `doc_chunk_chars` characters) at a
    time. Between documents goes the tokenizer's separator token; framing tokens
    (CLS/BOS/SEP) are added to every context. All of them are marked not valid, so
    they never enter statistics or examples. The last context is padded.
    """
    special = SpecialTokens.of(tokenizer)
    frame = len(special.prefix) + len(special.suffix)
    content = cfg.context_length - frame
    if content < 8:
        raise AutointerpError(
            f"context_length {cfg.context_length} leaves {content} content tokens",
            "use --context-length of at least 16",
        )
    limit = cfg.max_tokens if cfg.max_tokens is not None else sys.maxsize
    buf_ids: list[int] = []
    buf_doc: list[int] = []
    buf_off: list[int] = []
    total = 0
    pending: list[tuple[list[int], list[int], list[int]]] = []
    n_contexts = 0
    last_doc, next_offset = None, 0  # a long document is tokenised in pieces; offsets run on across them

    def emit(final: bool) -> Iterator[ContextBatch]:
        nonlocal n_contexts
        while len(buf_ids) >= content or (final and buf_ids):
            take = min(content, len(buf_ids))
            pending.append((buf_ids[:take], buf_doc[:take], buf_off[:take]))
            del buf_ids[:take], buf_doc[:take], buf_off[:take]
            if len(pending) == batch_size or (final and not buf_ids):
                yield _frame(pending, special, cfg.context_length, n_contexts)
                n_contexts += len(pending)
                pending.clear()

    pieces = ((doc, piece) for doc in documents for piece in document_pieces(doc.text, doc_chunk_chars))
    for chunk in _chunked(pieces, doc_chunk_chars):
        encoded = tokenizer([piece for _, piece in chunk], add_special_tokens=False)["input_ids"]
        for (doc, _), ids in zip(chunk, encoded):
            if total >= limit:
                break
            ids = ids[: limit - total]
            if doc.doc_id != last_doc:
                if buf_ids and special.separator:
                    buf_ids.extend(special.separator)
                    buf_doc.append(-1)
                    buf_off.append(-1)
                last_doc, next_offset = doc.doc_id, 0
            buf_ids.extend(ids)
            buf_doc.extend([doc.doc_id] * len(ids))
            buf_off.extend(range(next_offset, next_offset + len(ids)))
            next_offset += len(ids)
            total += len(ids)
        yield from emit(final=False)
        if total >= limit:
            break
    if total < content:
        raise AutointerpError(
            f"the corpus has {total} tokens, fewer than one context of {content} content tokens",
            "add more text to the corpus, or pass a smaller --context-length",
        )
    yield from emit(final=True)


def document_pieces(text: str, max_chars: int) -> Iterator[str]:
    """A document in pieces of at most max_chars, cut at whitespace where there is some: a 10 MB
    line is tokenised a piece at a time, so memory follows the token budget, not the longest line."""
    while len(text) > max_chars:
        cut = text.rfind(" ", max_chars // 2, max_chars)
        cut = max_chars if cut <= 0 else cut
        yield text[:cut]
        text = text[cut:]
    yield text


def _chunked(pieces: Iterator[tuple[Document, str]], max_chars: int) -> Iterator[list[tuple[Document, str]]]:
    chunk: list[tuple[Document, str]] = []
    size = 0
    for doc, piece in pieces:
        chunk.append((doc, piece))
        size += len(piece)
        if size >= max_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _frame(rows, special: SpecialTokens, length: int, first_context: int) -> ContextBatch:
    b = len(rows)
    ids = np.full((b, length), special.pad, dtype=np.int64)
    attn = np.zeros((b, length), dtype=np.int64)
    doc = np.full((b, length), -1, dtype=np.int64)
    off = np.full((b, length), -1, dtype=np.int64)
    p = len(special.prefix)
    for i, (r_ids, r_doc, r_off) in enumerate(rows):
        n = len(r_ids)
        seq = special.prefix + r_ids + special.suffix
        ids[i, : len(seq)] = seq
        attn[i, : len(seq)] = 1
        doc[i, p : p + n] = r_doc
        off[i, p : p + n] = r_off
    return ContextBatch(
        context_ids=np.arange(first_context, first_context + b, dtype=np.int64),
        input_ids=ids,
        attention_mask=attn,
        valid=doc >= 0,
        doc_ids=doc,
        doc_offsets=off,
    )
