"""Gemma Scope SAE folders: JumpReLU weights in params.npz (Gemma Scope 2) or config.json +
params.safetensors (Gemma Scope 3), the hookpoint read from the folder's path."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from autointerp.subject.autoencoder import SAE
from autointerp.subject.formats.files import float_tensors, read_json, read_npz, read_safetensors, require, source_dtype
from autointerp.subject.releases import gemma_scope_hookpoint


def jumprelu_reading_raw_input(need: Callable[[str], Tensor], **kwargs: Any) -> SAE:
    """JumpReLU stored as W_enc, b_enc, W_dec, b_dec, threshold, encoding x itself (no b_dec
    subtraction): dictionary_learning's JumpReluAutoEncoder and Gemma Scope alike."""
    return SAE(
        need("W_enc"),
        need("b_enc"),
        need("W_dec"),
        need("b_dec"),
        architecture="jumprelu",
        threshold=need("threshold"),
        apply_b_dec_to_input=False,
        **kwargs,
    )


def load(d: Path, dtype: torch.dtype, overrides: Mapping[str, Any] | None = None) -> SAE:
    """The SAE in directory d. overrides, a SAELens release's config overrides, do not apply here."""
    if (d / "params.npz").exists():
        weights_file, config = d / "params.npz", None
        raw = read_npz(weights_file)
    else:
        weights_file, config = d / "params.safetensors", read_json(d / "config.json")
        raw = read_safetensors(weights_file)
    # Gemma Scope 2 (npz) uses W_enc/W_dec, Gemma Scope 3 (safetensors) w_enc/w_dec.
    t = float_tensors({k.lower(): v for k, v in raw.items()}, dtype)

    def need(key: str) -> Tensor:
        return require(t, key.lower(), weights_file, key)

    return jumprelu_reading_raw_input(
        need,
        format="gemma_scope",
        hook_name=gemma_scope_hookpoint(d.as_posix()),
        metadata={"source": str(d), "config": config, "source_dtype": source_dtype(raw)},
    )
