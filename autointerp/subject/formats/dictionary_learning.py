"""dictionary_learning SAE directories (config.json + ae.pt), as trained by dictionary_learning and SAEBench."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from autointerp.errors import AutointerpError
from autointerp.subject.autoencoder import SAE, check_choice
from autointerp.subject.formats.files import float_tensors, read_json, read_pt, require, source_dtype
from autointerp.subject.formats.gemma_scope import jumprelu_reading_raw_input

_DICTIONARY_CLASSES = ("AutoEncoder", "GatedAutoEncoder", "JumpReluAutoEncoder", "AutoEncoderTopK", "BatchTopKSAE")


def load(d: Path, dtype: torch.dtype, overrides: Mapping[str, Any] | None = None) -> SAE:
    """The SAE in directory d. overrides, a SAELens release's config overrides, do not apply here."""
    cfg_file, weights_file = d / "config.json", d / "ae.pt"
    cfg = read_json(cfg_file)
    trainer = require(cfg, "trainer", cfg_file)
    dict_class = require(trainer, "dict_class", cfg_file, "trainer.dict_class")
    check_choice("dictionary_learning dict_class", dict_class, _DICTIONARY_CLASSES, f" in {cfg_file}")
    raw = read_pt(weights_file)
    t = float_tensors(raw, dtype)

    def need(key: str) -> Tensor:
        return require(t, key, weights_file)

    metadata: dict[str, Any] = {
        "source": str(d),
        "config": cfg,
        "dict_class": dict_class,
        "model_name": trainer.get("lm_name"),
        "layer": trainer.get("layer"),
        "source_dtype": source_dtype(raw),
    }
    submodule = trainer.get("submodule_name")
    # SAEBench names the submodule resid_post_layer_<L>: the TransformerLens hook of the same place.
    resid_post = re.fullmatch(r"resid_post_layer_(\d+)", str(submodule))
    hook_name = f"blocks.{resid_post.group(1)}.hook_resid_post" if resid_post else submodule
    common = {"format": "dictionary_learning", "hook_name": hook_name, "metadata": metadata}
    if dict_class == "AutoEncoder":
        return SAE(need("encoder.weight").T, need("encoder.bias"), need("decoder.weight").T, need("bias"), **common)
    if dict_class == "GatedAutoEncoder":
        return SAE(
            need("encoder.weight").T,
            need("gate_bias"),
            need("decoder.weight").T,
            need("decoder_bias"),
            architecture="gated",
            r_mag=need("r_mag"),
            b_mag=need("mag_bias"),
            **common,
        )
    if dict_class == "JumpReluAutoEncoder":
        return jumprelu_reading_raw_input(need, **common)
    # AutoEncoderTopK and BatchTopKSAE keep k (and threshold) as buffers in the state dict.
    k = int(raw["k"]) if "k" in raw else int(require(trainer, "k", cfg_file, "trainer.k"))
    threshold = float(raw["threshold"]) if "threshold" in raw else -1.0
    weights = (need("encoder.weight").T, need("encoder.bias"), need("decoder.weight").T, need("b_dec"))
    if dict_class == "BatchTopKSAE" and threshold < 0:
        # -1 means training never estimated it; dictionary_learning would then keep every positive
        # pre-activation, and batch-level top-k depends on which other rows share the batch.
        raise AutointerpError(
            f"the BatchTopKSAE in {weights_file} has no threshold (-1: never set by training), so its "
            "activations are not defined per token",
            "set the threshold buffer in ae.pt to the one training would have estimated (the mean over training "
            "batches of "
            "the smallest activation batch top-k kept), or re-export the SAE as AutoEncoderTopK to encode per token "
            "with "
            f"top-k (k={k})",
        )
    if dict_class == "BatchTopKSAE":
        return SAE(*weights, architecture="batchtopk", k=k, threshold=threshold, **common)
    return SAE(*weights, architecture="topk", k=k, **common)
