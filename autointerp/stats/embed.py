"""Sentence embeddings with the embedded all-MiniLM-L6-v2, and label clustering.

The model's sentence-transformers files define the embedding: modules.json
chains Transformer → Pooling → Normalize, and 1_Pooling/config.json sets
`pooling_mode_mean_tokens: true`. So a sentence vector is the mean of the last
hidden states over real (attention-mask = 1) tokens, scaled to unit length.
We compute the same thing with plain transformers, and check the pooling
config of any local model directory we are given.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from autointerp.errors import AutointerpError
from autointerp.subject.model import embedded_model_path, resolve_device

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def _check_pooling(path: str) -> int | None:
    """Confirm a local sentence-transformers directory uses mean pooling; return its max_seq_length.

    Hub ids and plain transformers directories carry no such files here, and
    are assumed to want mean pooling (the common sentence-embedding recipe).
    """
    root = Path(path)
    pooling = root / "1_Pooling" / "config.json"
    if pooling.is_file():
        modes = {k: v for k, v in json.loads(pooling.read_text()).items() if k.startswith("pooling_mode_") and v}
        if set(modes) != {"pooling_mode_mean_tokens"}:
            raise AutointerpError(
                f"model at {path} pools with {sorted(modes)}, but Embedder implements mean pooling only",
                "use a sentence-transformers model with mean pooling, e.g. the embedded all-MiniLM-L6-v2",
            )
    config = root / "sentence_bert_config.json"
    if config.is_file():
        return json.loads(config.read_text()).get("max_seq_length")
    return None


@cache
def _load(path: str, device: str) -> tuple[PreTrainedTokenizerBase, PreTrainedModel, int]:
    """One tokenizer and model per (path, device) per process."""
    from transformers import AutoModel, AutoTokenizer

    max_len = _check_pooling(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModel.from_pretrained(path, dtype=torch.float32).to(device).eval()
    except (OSError, ValueError) as e:
        raise AutointerpError(
            f"cannot load embedding model '{path}': {str(e).splitlines()[0]}",
            "pass a local sentence-embedding model directory, or leave model unset for the embedded all-MiniLM-L6-v2",
        ) from None
    # Sentence-transformers truncates at max_seq_length (256 for MiniLM), which
    # is shorter than the tokenizer's own limit (512); match it.
    return tokenizer, model, max_len or tokenizer.model_max_length


class Embedder:
    """Unit-length sentence embeddings from a mean-pooling sentence encoder."""

    def __init__(self, model: str | None = None, device: str = "auto", precision: str = "float32"):
        self.path = model or embedded_model_path()
        self.device = resolve_device(device)
        if precision not in ("float32", "bfloat16", "auto"):
            raise AutointerpError(f"unknown precision {precision!r}", "use float32, bfloat16 or auto")
        # bf16 matmuls run ~2.4x faster on CPUs with AVX-512 BF16 (cosine to fp32 ≥ 0.9999), but slower without.
        fast_bf16 = self.device.type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported()
        self.precision = ("bfloat16" if fast_bf16 else "float32") if precision == "auto" else precision
        self.tokenizer, self.model, self.max_length = _load(self.path, str(self.device))
        self.dim: int = self.model.config.hidden_size
        self.name = "all-MiniLM-L6-v2" if self.path == embedded_model_path() else Path(self.path).name

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        """Embed texts → float32 array [len(texts), dim], each row of L2 norm 1."""
        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise AutointerpError("texts must be a list of strings", "pass e.g. encode(['a label', 'another'])")
        if batch_size < 1:
            raise AutointerpError(f"batch_size is {batch_size}", "pass batch_size >= 1")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Batch texts of similar length together so little compute goes to padding.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = self.tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            ).to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.precision == "bfloat16"):
                hidden = self.model(**batch).last_hidden_state.float()
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            # Padding positions get zero weight, so a text's vector does not depend on its batch.
            mean = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(mean, p=2, dim=1).float().cpu().numpy()
        return out


def similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
    """Cosine similarity of unit vectors: a dot product.

    Vectors [d]·[d] give a float; matrices [n, d] and [m, d] give [n, m].
    Only valid for normalised inputs such as `Embedder.encode` output.
    """
    result = np.asarray(a) @ np.asarray(b).T
    return float(result) if np.ndim(result) == 0 else result


def cluster_labels(labels: list[str], threshold: float, *, embedder: Embedder | None = None) -> list[int]:
    """Cluster label strings incrementally, in the order given; return a cluster id per label.

    Rule: a cluster's *code* is its first member. Each label is compared with
    the codes of the clusters opened so far; it joins the one with the highest
    cosine similarity if that similarity is >= threshold (ties go to the
    earlier cluster), otherwise it opens a new cluster and becomes its code.
    Cluster ids count from 0 in order of opening. Codes never change, so a
    label's cluster depends only on the labels before it: appending labels
    never relabels earlier ones, and the same list always gives the same ids.
    """
    if isinstance(labels, str):
        raise AutointerpError("labels is one string, not a list", "pass a list of label strings")
    if not -1.0 <= threshold <= 1.0:
        raise AutointerpError(
            f"threshold is {threshold!r}; cosine similarity lies in [-1, 1]",
            "pass a similarity threshold such as 0.7",
        )
    if not labels:
        return []
    vectors = (embedder or Embedder()).encode(list(labels))
    codes = np.empty_like(vectors)  # row c: the vector of cluster c's first member, filled as clusters open
    n_codes = 0
    ids: list[int] = []
    for vec in vectors:
        if n_codes:
            sims = codes[:n_codes] @ vec
            best = int(np.argmax(sims))  # argmax returns the first maximum: the earlier cluster
            if sims[best] >= threshold:
                ids.append(best)
                continue
        codes[n_codes] = vec
        ids.append(n_codes)
        n_codes += 1
    return ids
