"""OpenAI sparse_autoencoder SAEs: one .pt state dict (pre_bias, latent_bias, encoder, decoder)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from autointerp.errors import AutointerpError
from autointerp.subject.autoencoder import SAE, check_choice
from autointerp.subject.formats import SUPPORTED_TEXT
from autointerp.subject.formats.files import float_tensors, read_pt, require, source_dtype


def load(path: Path, dtype: torch.dtype, overrides: Mapping[str, Any] | None = None) -> SAE:
    """The SAE in the file at path. overrides, a SAELens release's config overrides, do not apply here."""
    raw = read_pt(path)
    if "pre_bias" not in raw or "latent_bias" not in raw:
        raise AutointerpError(
            f"{path} is not an OpenAI sparse_autoencoder state dict (keys: {sorted(raw)[:12]})",
            f"pass a file or directory in a supported format: {SUPPORTED_TEXT}",
        )
    t = float_tensors(raw, dtype)
    activation = raw.get("activation", "ReLU")  # OpenAI's own loader defaults to ReLU
    check_choice("OpenAI activation", activation, ("ReLU", "TopK"), f" in {path}")
    k = None
    if activation == "TopK":
        state = require(raw, "activation_state_dict", path)
        k = int(require(state, "k", path, "activation_state_dict.k"))
        check_choice("OpenAI TopK postact_fn", state.get("postact_fn", "ReLU"), ("ReLU",), f" in {path}")
    return SAE(
        require(t, "encoder.weight", path).T,
        require(t, "latent_bias", path),
        require(t, "decoder.weight", path).T,
        require(t, "pre_bias", path),
        architecture="topk" if k else "standard",
        k=k,
        normalization="layer_norm" if k else "none",  # OpenAI normalises exactly when TopK is used
        format="openai",
        metadata={"source": str(path), "source_dtype": source_dtype(raw)},
    )
