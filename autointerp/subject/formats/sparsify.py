"""EleutherAI sparsify SAE directories (cfg.json + sae.safetensors), one per hookpoint, named after it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from autointerp.subject.autoencoder import SAE, check_choice
from autointerp.subject.formats.files import (
    check_config_dims,
    float_tensors,
    missing_key,
    read_json,
    read_safetensors,
    require,
    source_dtype,
)


def load(d: Path, dtype: torch.dtype, overrides: Mapping[str, Any] | None = None) -> SAE:
    """The SAE in directory d. overrides, a SAELens release's config overrides, do not apply here."""
    cfg_file, weights_file = d / "cfg.json", d / "sae.safetensors"
    cfg = read_json(cfg_file)
    raw = read_safetensors(weights_file)
    t = float_tensors(raw, dtype)
    activation = cfg.get("activation", "topk")  # files from before groupmax existed lack the key
    check_choice("sparsify activation", activation, ("topk", "groupmax"), f" in {cfg_file}")
    encoder = require(t, "encoder.weight", weights_file)
    if encoder.ndim == 2:
        check_config_dims(cfg, cfg_file, encoder.shape[1], encoder.shape[0])
    W_skip = require(t, "W_skip", weights_file) if "W_skip" in raw else None
    if cfg.get("skip_connection") and W_skip is None:
        raise missing_key(weights_file, "W_skip")
    transcode = bool(cfg.get("transcode", False))
    return SAE(
        encoder.T,
        require(t, "encoder.bias", weights_file),
        require(t, "W_dec", weights_file),  # sparsify stores W_dec [latents, d_in], like ours
        require(t, "b_dec", weights_file),
        architecture=activation,
        k=int(require(cfg, "k", cfg_file)),
        W_skip=None if W_skip is None else W_skip.T,
        apply_b_dec_to_input=not transcode,  # a transcoder's input and output spaces differ
        format="sparsify",
        hook_name=d.name,
        metadata={"source": str(d), "config": cfg, "transcode": transcode, "source_dtype": source_dtype(raw)},
    )
