"""SAELens SAE directories (cfg.json + sae_weights.safetensors), v6 and pre-6 configs: reading and writing."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from autointerp import __version__
from autointerp.errors import AutointerpError
from autointerp.subject.autoencoder import SAE, check_choice, shape_error
from autointerp.subject.formats.files import (
    check_config_dims,
    float_tensors,
    missing_key,
    read_json,
    read_safetensors,
    require,
    source_dtype,
)

# Written into cfg.json by save: the SAELens config layout we follow.
SAELENS_FORMAT_VERSION = "6.0.0"


def load(d: Path, dtype: torch.dtype, overrides: Mapping[str, Any] | None = None) -> SAE:
    """The SAE in directory d; overrides, a release's config_overrides from SAELens' directory, win over cfg.json."""
    cfg_file, weights_file = d / "cfg.json", d / "sae_weights.safetensors"
    cfg = read_json(cfg_file)
    # v6 nests model/hook facts under "metadata"; pre-6 configs keep them at the top level.
    meta = cfg.get("metadata") if isinstance(cfg.get("metadata"), dict) else {}

    def get(key: str) -> Any:
        return meta.get(key, cfg.get(key))

    overrides = dict(overrides or {})
    model_kwargs = {**(get("model_from_pretrained_kwargs") or {}), **overrides.pop("model_from_pretrained_kwargs", {})}
    cfg = {**cfg, **overrides}
    if get("hook_head_index") is not None:
        raise AutointerpError(
            f"{cfg_file} reads attention head {get('hook_head_index')} of {get('hook_name') or get('hook_point')} "
            "alone "
            "(hook_head_index); autointerp encodes and splices whole hookpoints",
            "use an SAE trained on the whole hook (hook_head_index null), e.g. on attn.hook_z with reshape_activations "
            "hook_z",
        )
    raw = read_safetensors(weights_file)
    t = float_tensors(raw, dtype)

    def need(key: str) -> Tensor:
        return require(t, key, weights_file)

    architecture = cfg.get("architecture", "standard")
    activation = cfg.get("activation_fn_str", "relu")  # pre-6 only
    if architecture == "standard" and activation == "topk":
        architecture = "topk"
    check_choice("SAELens architecture", architecture, ("standard", "topk", "jumprelu", "gated"), f" in {cfg_file}")
    if architecture == "standard":
        check_choice("SAELens activation_fn_str", activation, ("relu", "tanh-relu"), f" in {cfg_file}")
    k = None
    if architecture == "topk":
        k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
        if k is None:
            raise missing_key(cfg_file, "k (v6) or activation_fn_kwargs.k (pre-6)")

    normalize = cfg.get("normalize_activations", "none")
    if isinstance(normalize, bool):  # old configs: true meant expected_average_only_in
        normalize = "expected_average_only_in" if normalize else "none"
    check_choice(
        "SAELens normalize_activations",
        normalize,
        ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm"),
        f" in {cfg_file}",
    )

    for key in ("d_in", "d_sae"):
        require(cfg, key, cfg_file)
    W_enc = need("W_enc")
    if W_enc.ndim == 2:
        check_config_dims(cfg, cfg_file, W_enc.shape[0], W_enc.shape[1])
    metadata: dict[str, Any] = {
        "source": str(d),
        "config": cfg,
        "model_name": get("model_name"),
        "sae_lens_version": get("sae_lens_version"),
        "normalize_activations": normalize,
        "hook_head_index": get("hook_head_index"),
        "reshape_activations": cfg.get("reshape_activations", "none"),
        # Such SAEs expect the residual stream minus its mean over d_model.
        "center_writing_weights": bool(model_kwargs.get("center_writing_weights")),
        "source_dtype": cfg.get("dtype") or source_dtype(raw),
    }
    if (d / "sparsity.safetensors").exists():
        sparsity = read_safetensors(d / "sparsity.safetensors")
        metadata["log10_feature_sparsity"] = require(sparsity, "sparsity", d / "sparsity.safetensors")
    sae = SAE(
        W_enc,
        need("b_gate" if architecture == "gated" else "b_enc"),
        need("W_dec"),
        need("b_dec"),
        architecture=architecture,
        activation=activation if architecture == "standard" else "relu",
        k=None if k is None else int(k),
        threshold=need("threshold") if architecture == "jumprelu" else None,
        r_mag=need("r_mag") if architecture == "gated" else None,
        b_mag=need("b_mag") if architecture == "gated" else None,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
        normalization="none" if normalize == "expected_average_only_in" else normalize,
        format="saelens",
        hook_name=get("hook_name") or get("hook_point"),
        metadata=metadata,
    )
    # Fold per-feature scalings into the weights (shapes are validated by now).
    if architecture == "topk" and cfg.get("rescale_acts_by_decoder_norm"):
        # Encode multiplies pre-activations by the decoder row norms; decode divides by them.
        norms = sae.W_dec.norm(dim=1).clamp_min(torch.finfo(dtype).tiny)
        sae.W_enc.mul_(norms)
        sae.b_enc.mul_(norms)
        sae.W_dec.div_(norms[:, None])
    if "finetuning_scaling_factor" in t:  # pre-6: scales f before decoding
        scale = t["finetuning_scaling_factor"]
        if tuple(scale.shape) != (sae.d_sae,):
            raise shape_error(f"finetuning_scaling_factor has shape {tuple(scale.shape)}, expected ({sae.d_sae},)")
        sae.W_dec.mul_(scale[:, None])
    return sae


def save(
    sae: SAE,
    directory: str | os.PathLike[str],
    *,
    hook_name: str,
    model_name: str,
    extra_metadata: dict[str, Any] | None = None,
) -> Path:
    """Write sae as a SAELens v6 directory (cfg.json + sae_weights.safetensors); returns it."""
    if sae.architecture == "groupmax" or sae.activation != "relu" or sae.W_skip is not None:
        raise AutointerpError(
            f"a {sae.architecture} SAE with activation {sae.activation}"
            f"{' and a skip connection' if sae.W_skip is not None else ''} has no SAELens v6 equivalent",
            "keep this SAE in its original format; save_saelens takes standard, topk, batchtopk, jumprelu or gated",
        )
    tensors = {"W_enc": sae.W_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    cfg: dict[str, Any] = {
        # SAELens stores BatchTopK SAEs as jumprelu with a constant threshold.
        "architecture": "jumprelu" if sae.architecture == "batchtopk" else sae.architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": str(sae.W_enc.dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        # SAELens expresses centring as a property of the model it loads, not of the SAE.
        "normalize_activations": "none" if sae.normalization == "center" else sae.normalization,
        "reshape_activations": "none",
        "metadata": {
            "hook_head_index": None,
            "model_from_pretrained_kwargs": {"center_writing_weights": sae.normalization == "center"},
            **(extra_metadata or {}),
            "model_name": model_name,
            "hook_name": hook_name,
            "sae_lens_version": SAELENS_FORMAT_VERSION,
            "saved_by": f"autointerp {__version__}",
        },
    }
    if sae.architecture == "gated":
        tensors |= {"b_gate": sae.b_enc, "r_mag": sae.r_mag, "b_mag": sae.b_mag}
    else:
        tensors["b_enc"] = sae.b_enc
    if sae.architecture in ("jumprelu", "batchtopk"):
        tensors["threshold"] = sae.threshold
    if sae.architecture == "topk":
        cfg |= {"k": sae.k, "rescale_acts_by_decoder_norm": False}
    try:
        cfg_text = json.dumps(cfg, indent=2)
    except TypeError as e:
        raise AutointerpError(
            f"extra_metadata cannot be written to cfg.json: {e}", "pass only JSON-serialisable values"
        ) from e
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}, out / "sae_weights.safetensors")
    (out / "cfg.json").write_text(cfg_text)
    return out
