"""Load sparse autoencoders from the common file formats into one canonical torch module.

Every format (SAELens v6 and pre-6, EleutherAI sparsify, dictionary_learning, Gemma Scope,
OpenAI sparse_autoencoder) is converted into `SAE`, whose maths is:

    x̂ = normalise(x)                      # none | constant_norm_rescale | layer_norm | center
    s = x̂ − b_dec  (if apply_b_dec_to_input)
    f = activation(s @ W_enc + b_enc)      # dense [..., d_sae]
    y = f @ W_dec + b_dec (+ x̂ @ W_skip)
    reconstruction = unnormalise(y)

Per-feature scalings found in some formats (SAELens `finetuning_scaling_factor`, topk
`rescale_acts_by_decoder_norm`) are folded into W_enc/b_enc/W_dec at load time, so encode stays
one matmul plus the activation and the encoded activations equal the source library's. So is a
release's activation norm scaling factor (SAELens `norm_scaling_factor`): the SAE then reads raw
activations. Fields whose meaning depends on the subject model (SAELens `center_writing_weights`)
are applied when the SAE is paired with the model (gather.fit_sae); fields that describe another
computation than "encode one hookpoint, decode into it" are refused with the reason.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from autointerp import __version__
from autointerp.errors import AutointerpError
from autointerp.subject.releases import ReleaseSAE, close_releases, gemma_scope_hookpoint, is_release, resolve_release

ARCHITECTURES = ("standard", "topk", "batchtopk", "jumprelu", "gated", "groupmax")
ACTIVATIONS = ("relu", "tanh-relu")  # only meaningful for the standard architecture
# center: TransformerLens models loaded with center_writing_weights have a residual stream of mean
# zero over d_model; an SAE trained there reads x − mean(x) and writes back around the mean.
NORMALIZATIONS = ("none", "constant_norm_rescale", "layer_norm", "center")
FORMATS = ("saelens", "sparsify", "dictionary_learning", "gemma_scope", "openai")

# Written into cfg.json by save_saelens: the SAELens config layout we follow.
SAELENS_FORMAT_VERSION = "6.0.0"
_LAYER_NORM_EPS = 1e-5

# Files that identify a directory format, in detection order.
_DIRECTORY_FORMATS: dict[str, tuple[str, ...]] = {
    "saelens": ("cfg.json", "sae_weights.safetensors"),
    "sparsify": ("cfg.json", "sae.safetensors"),
    "dictionary_learning": ("config.json", "ae.pt"),
    "gemma_scope_npz": ("params.npz",),
    "gemma_scope_safetensors": ("config.json", "params.safetensors"),
}
_SUPPORTED_TEXT = (
    "SAELens (cfg.json + sae_weights.safetensors), sparsify (cfg.json + sae.safetensors), "
    "dictionary_learning (config.json + ae.pt), Gemma Scope (params.npz, or config.json + "
    "params.safetensors), OpenAI (a .pt state dict with pre_bias and latent_bias)"
)


class SAE(nn.Module):
    """A sparse autoencoder in canonical form; see the module docstring for the maths.

    Weights are stored as (requires_grad=False) parameters: W_enc [d_in, d_sae], b_enc [d_sae],
    W_dec [d_sae, d_in], b_dec [d_in], and where the architecture needs them threshold [d_sae]
    (jumprelu, batchtopk), r_mag and b_mag [d_sae] (gated; b_enc is then the gate bias), and
    W_skip [d_in, d_in] (applied as x @ W_skip).
    """

    def __init__(
        self,
        W_enc: Tensor,
        b_enc: Tensor,
        W_dec: Tensor,
        b_dec: Tensor,
        *,
        architecture: str = "standard",
        activation: str = "relu",
        k: int | None = None,
        threshold: Tensor | float | None = None,
        r_mag: Tensor | None = None,
        b_mag: Tensor | None = None,
        W_skip: Tensor | None = None,
        apply_b_dec_to_input: bool = True,
        normalization: str = "none",
        format: str = "saelens",
        hook_name: str | None = None,
        metadata: dict[str, Any] | None = None,
    ):
        super().__init__()
        self.metadata = dict(metadata or {})
        where = f" (source: {self.metadata['source']})" if "source" in self.metadata else ""
        _check_choice("architecture", architecture, ARCHITECTURES, where)
        _check_choice("activation", activation, ACTIVATIONS, where)
        _check_choice("normalization", normalization, NORMALIZATIONS, where)
        _check_choice("format", format, FORMATS, where)
        if W_enc.ndim != 2:
            raise _shape_error(f"W_enc must be 2-D [d_in, d_sae] but has shape {tuple(W_enc.shape)}{where}")
        self.d_in, self.d_sae = (int(n) for n in W_enc.shape)
        self.architecture = architecture
        self.activation = activation
        self.format = format
        self.hook_name = hook_name
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.normalization = normalization

        if architecture in ("topk", "groupmax"):
            if k is None or not 1 <= k <= self.d_sae:
                raise AutointerpError(
                    f"{architecture} SAE needs k in [1, d_sae={self.d_sae}], got {k}{where}",
                    "pass the k the SAE was trained with (the config's `k`)",
                )
            if architecture == "groupmax" and self.d_sae % k:
                raise AutointerpError(
                    f"groupmax splits d_sae={self.d_sae} latents into k={k} equal groups, which is impossible{where}",
                    "check that k and the number of latents in the config match the weights",
                )
        if k is not None:
            self.metadata.setdefault("k", k)
        self.k = k

        d_in, d_sae = self.d_in, self.d_sae
        self._param("W_enc", W_enc, (d_in, d_sae), where)
        self._param("b_enc", b_enc, (d_sae,), where)
        self._param("W_dec", W_dec, (d_sae, d_in), where)
        self._param("b_dec", b_dec, (d_in,), where)
        if architecture in ("jumprelu", "batchtopk"):
            if threshold is None:
                raise _missing_arg("threshold", architecture, where)
            # batchtopk's single scalar threshold acts per feature exactly like jumprelu's.
            threshold = torch.as_tensor(threshold, dtype=W_enc.dtype, device=W_enc.device)
            if threshold.ndim == 0:
                threshold = threshold.expand(d_sae)
            self._param("threshold", threshold, (d_sae,), where)
        else:
            self.register_parameter("threshold", None)
        if architecture == "gated":
            if r_mag is None or b_mag is None:
                raise _missing_arg("r_mag and b_mag", architecture, where)
            self._param("r_mag", r_mag, (d_sae,), where)
            self._param("b_mag", b_mag, (d_sae,), where)
        else:
            self.register_parameter("r_mag", None)
            self.register_parameter("b_mag", None)
        if W_skip is not None:
            self._param("W_skip", W_skip, (d_in, d_in), where)
        else:
            self.register_parameter("W_skip", None)

    def _param(self, name: str, value: Tensor, shape: tuple[int, ...], where: str) -> None:
        if tuple(value.shape) != shape:
            raise _shape_error(
                f"{name} has shape {tuple(value.shape)} but W_enc [d_in={self.d_in}, d_sae={self.d_sae}] "
                f"requires {shape}{where}"
            )
        self.register_parameter(name, nn.Parameter(value.detach().contiguous(), requires_grad=False))

    def extra_repr(self) -> str:
        return (
            f"d_in={self.d_in}, d_sae={self.d_sae}, architecture={self.architecture}, "
            f"format={self.format}, hook_name={self.hook_name!r}, normalization={self.normalization}"
        )

    # Normalisation statistics are per example and recomputed from x when decoding.
    def _normalize(self, x: Tensor) -> Tensor:
        if self.normalization == "constant_norm_rescale":
            return x * (math.sqrt(self.d_in) / x.norm(dim=-1, keepdim=True))
        if self.normalization == "layer_norm":
            mu = x.mean(dim=-1, keepdim=True)
            return (x - mu) / (x.std(dim=-1, keepdim=True) + _LAYER_NORM_EPS)
        if self.normalization == "center":
            return x - x.mean(dim=-1, keepdim=True)
        return x

    def _unnormalize(self, y: Tensor, x: Tensor) -> Tensor:
        if self.normalization == "constant_norm_rescale":
            return y / (math.sqrt(self.d_in) / x.norm(dim=-1, keepdim=True))
        if self.normalization == "layer_norm":
            # No eps on the way out: SAELens and OpenAI both undo with the bare std.
            return y * x.std(dim=-1, keepdim=True) + x.mean(dim=-1, keepdim=True)
        if self.normalization == "center":
            return y + x.mean(dim=-1, keepdim=True)
        return y

    def encode(self, x: Tensor) -> Tensor:
        """Dense feature activations [..., d_sae] for activations x [..., d_in]."""
        x = self._encoder_input(x)
        if self.architecture == "gated":
            pre = x @ self.W_enc
            magnitude = F.relu(pre * torch.exp(self.r_mag) + self.b_mag)
            return magnitude * (pre + self.b_enc > 0)
        pre = F.linear(x, self.W_enc.T, self.b_enc)
        if self.architecture == "standard":
            return torch.tanh(F.relu(pre)) if self.activation == "tanh-relu" else F.relu(pre)
        if self.architecture in ("jumprelu", "batchtopk"):
            return F.relu(pre) * (pre > self.threshold)
        if self.architecture == "topk":
            values, indices = self._topk(pre)
            return torch.zeros_like(pre).scatter_(-1, indices, values)
        # groupmax: the maximum of each of k contiguous groups of latents survives.
        groups = F.relu(pre).unflatten(-1, (self.k, -1))
        values, indices = groups.max(dim=-1, keepdim=True)
        return torch.zeros_like(groups).scatter_(-1, indices, values).flatten(-2)

    def encode_sparse(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """The nonzero activations as (row, feature, value), rows counting over x's flattened leading
        dims in order. A TopK SAE never builds the dense [..., d_sae] tensor on this path."""
        if self.architecture == "topk":
            values, indices = self._topk(F.linear(self._encoder_input(x), self.W_enc.T, self.b_enc))
            values = values.reshape(-1)
            hit = (values != 0).nonzero().squeeze(1)  # != keeps NaN, so callers can see it
            return hit // self.k, indices.reshape(-1)[hit], values[hit]
        dense = self.encode(x).reshape(-1, self.d_sae)
        row, feature = dense.nonzero(as_tuple=True)
        return row, feature, dense[row, feature]

    def _encoder_input(self, x: Tensor) -> Tensor:
        x = self._normalize(x.to(self.W_enc.dtype))
        return x - self.b_dec if self.apply_b_dec_to_input else x

    def _topk(self, pre: Tensor) -> tuple[Tensor, Tensor]:
        values, indices = torch.topk(pre, self.k, dim=-1, sorted=False)
        return F.relu(values), indices

    def decode(self, f: Tensor, x: Tensor | None = None) -> Tensor:
        """Reconstruction from features f [..., d_sae]; x is needed to undo input normalisation
        and for the skip connection."""
        y = F.linear(f.to(self.W_dec.dtype), self.W_dec.T, self.b_dec)
        if self.normalization == "none" and self.W_skip is None:
            return y
        if x is None:
            raise AutointerpError(
                "decode needs the input activations x: this SAE normalises its input "
                f"({self.normalization}) or has a skip connection",
                "call decode(f, x) with the activations that were encoded, or forward(x)",
            )
        x = x.to(self.W_dec.dtype)
        if self.W_skip is not None:
            y = y + self._normalize(x) @ self.W_skip
        return self._unnormalize(y, x)

    def forward(self, x: Tensor) -> Tensor:
        return self.decode(self.encode(x), x)

    def fold_input_scale(self, factor: float) -> None:
        """Make an SAE trained on activations × factor read raw ones (SAELens `norm_scaling_factor`):
        (factor·x − b_dec) @ W_enc = (x − b_dec/factor) @ (factor·W_enc), and the reconstruction,
        divided by factor to return to raw units, is f @ (W_dec/factor) + b_dec/factor."""
        if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
            raise AutointerpError(
                f"norm scaling factor {factor!r} is not a positive finite number",
                "pass the release's norm_scaling_factor (SAELens' pretrained_saes.yaml lists it per SAE)",
            )
        self.W_enc.mul_(factor)
        self.W_dec.div_(factor)
        self.b_dec.div_(factor)
        self.metadata["norm_scaling_factor"] = factor

    def feature_delta(self, feature: int, amount: Tensor, x: Tensor) -> Tensor:
        """How the reconstruction of x [..., d_in] moves when `feature`'s activation changes by
        `amount` [..., 1]: its decoder row, rescaled by the input normalisation where there is one.
        Steering adds this to the residual stream; the SAE's error term is left as it was."""
        x = x.to(self.W_dec.dtype)
        row = self.W_dec[feature]
        if self.normalization == "none":
            return amount.to(row.dtype) * row
        return self._unnormalize(amount.to(row.dtype) * row + self.b_dec, x) - self._unnormalize(
            self.b_dec.expand_as(x), x
        )


def _check_choice(what: str, value: str, allowed: tuple[str, ...], where: str = "") -> None:
    if value not in allowed:
        raise AutointerpError(
            f"unknown {what} {value!r}{where}; supported: {', '.join(allowed)}",
            f"use one of the supported {what} values, or convert the SAE to one of them",
        )


def _shape_error(problem: str) -> AutointerpError:
    return AutointerpError(
        problem, "the tensors do not belong together (mixed or broken export); re-download or re-export the SAE"
    )


def _missing_arg(name: str, architecture: str, where: str) -> AutointerpError:
    return AutointerpError(f"a {architecture} SAE needs {name}{where}", f"pass {name} when building the SAE")


# ---------------------------------------------------------------------------------------------
# Reading files


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise _unreadable(path, e) from e
    if not isinstance(data, dict):
        raise _unreadable(path, "expected a JSON object at the top level")
    return data


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
        raise _unreadable(path, e) from e


def _read_pt(path: Path) -> dict[str, Any]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling a damaged file can fail in many ways
        raise _unreadable(path, e) from e
    if not isinstance(data, Mapping):
        raise _unreadable(path, f"expected a state dict, found {type(data).__name__}")
    return dict(data)


def _read_npz(path: Path) -> dict[str, Tensor]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: torch.from_numpy(np.array(npz[key])) for key in npz.files}
    except Exception as e:  # zipfile and numpy raise assorted errors on damaged archives
        raise _unreadable(path, e) from e


def _unreadable(path: Path, error: object) -> AutointerpError:
    return AutointerpError(
        f"cannot read {path}: {error}",
        "the file is truncated or corrupt; re-download or re-export it",
    )


def _need(mapping: Mapping[str, Any], key: str, file: Path, label: str | None = None) -> Any:
    """mapping[key], or an error naming the key and the file it should be in."""
    if key not in mapping:
        raise _missing_key(file, label or key)
    return mapping[key]


def _missing_key(file: Path, key: str) -> AutointerpError:
    return AutointerpError(
        f"{file} has no {key!r}",
        f"add {key!r} to {file.name}, or re-export the SAE with the tool that trained it",
    )


def _tensors(raw: Mapping[str, Any], dtype: torch.dtype) -> dict[str, Tensor]:
    """The floating-point tensors of a state dict, converted to the working dtype."""
    return {k: v.to(dtype) for k, v in raw.items() if isinstance(v, Tensor) and v.is_floating_point()}


def _source_dtype(raw: Mapping[str, Any]) -> str | None:
    for v in raw.values():
        if isinstance(v, Tensor) and v.is_floating_point():
            return str(v.dtype).removeprefix("torch.")
    return None


def _check_config_dims(cfg: Mapping[str, Any], file: Path, d_in: int, d_sae: int | None) -> None:
    for key, actual in (("d_in", d_in), ("d_sae", d_sae), ("num_latents", d_sae)):
        claimed = cfg.get(key)
        # sparsify writes num_latents=0 to mean "d_in * expansion_factor".
        if actual is not None and claimed and int(claimed) != actual:
            raise _shape_error(f"{file} says {key}={claimed} but the weights have {key}={actual}")


# ---------------------------------------------------------------------------------------------
# Format loaders: each returns the SAE in the working dtype on the CPU.


def _load_saelens(d: Path, dtype: torch.dtype, overrides: Mapping[str, Any] | None = None) -> SAE:
    """overrides: a release's config_overrides from SAELens' directory, which win over cfg.json."""
    cfg_file, weights_file = d / "cfg.json", d / "sae_weights.safetensors"
    cfg = _read_json(cfg_file)
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
    raw = _read_safetensors(weights_file)
    t = _tensors(raw, dtype)

    def need(key: str) -> Tensor:
        return _need(t, key, weights_file)

    architecture = cfg.get("architecture", "standard")
    activation = cfg.get("activation_fn_str", "relu")  # pre-6 only
    if architecture == "standard" and activation == "topk":
        architecture = "topk"
    _check_choice("SAELens architecture", architecture, ("standard", "topk", "jumprelu", "gated"), f" in {cfg_file}")
    if architecture == "standard":
        _check_choice("SAELens activation_fn_str", activation, ("relu", "tanh-relu"), f" in {cfg_file}")
    k = None
    if architecture == "topk":
        k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
        if k is None:
            raise _missing_key(cfg_file, "k (v6) or activation_fn_kwargs.k (pre-6)")

    normalize = cfg.get("normalize_activations", "none")
    if isinstance(normalize, bool):  # old configs: true meant expected_average_only_in
        normalize = "expected_average_only_in" if normalize else "none"
    _check_choice(
        "SAELens normalize_activations",
        normalize,
        ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm"),
        f" in {cfg_file}",
    )

    for key in ("d_in", "d_sae"):
        _need(cfg, key, cfg_file)
    W_enc = need("W_enc")
    if W_enc.ndim == 2:
        _check_config_dims(cfg, cfg_file, W_enc.shape[0], W_enc.shape[1])
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
        "source_dtype": cfg.get("dtype") or _source_dtype(raw),
    }
    if (d / "sparsity.safetensors").exists():
        sparsity = _read_safetensors(d / "sparsity.safetensors")
        metadata["log10_feature_sparsity"] = _need(sparsity, "sparsity", d / "sparsity.safetensors")
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
            raise _shape_error(f"finetuning_scaling_factor has shape {tuple(scale.shape)}, expected ({sae.d_sae},)")
        sae.W_dec.mul_(scale[:, None])
    return sae


def _load_sparsify(d: Path, dtype: torch.dtype) -> SAE:
    cfg_file, weights_file = d / "cfg.json", d / "sae.safetensors"
    cfg = _read_json(cfg_file)
    raw = _read_safetensors(weights_file)
    t = _tensors(raw, dtype)
    activation = cfg.get("activation", "topk")  # files from before groupmax existed lack the key
    _check_choice("sparsify activation", activation, ("topk", "groupmax"), f" in {cfg_file}")
    encoder = _need(t, "encoder.weight", weights_file)
    if encoder.ndim == 2:
        _check_config_dims(cfg, cfg_file, encoder.shape[1], encoder.shape[0])
    W_skip = t.get("W_skip")
    if cfg.get("skip_connection") and W_skip is None:
        raise _missing_key(weights_file, "W_skip")
    transcode = bool(cfg.get("transcode", False))
    return SAE(
        encoder.T,
        _need(t, "encoder.bias", weights_file),
        _need(t, "W_dec", weights_file),  # sparsify stores W_dec [latents, d_in], like ours
        _need(t, "b_dec", weights_file),
        architecture=activation,
        k=int(_need(cfg, "k", cfg_file)),
        W_skip=None if W_skip is None else W_skip.T,
        apply_b_dec_to_input=not transcode,  # a transcoder's input and output spaces differ
        format="sparsify",
        hook_name=d.name,
        metadata={"source": str(d), "config": cfg, "transcode": transcode, "source_dtype": _source_dtype(raw)},
    )


_DICTIONARY_CLASSES = ("AutoEncoder", "GatedAutoEncoder", "JumpReluAutoEncoder", "AutoEncoderTopK", "BatchTopKSAE")


def _load_dictionary_learning(d: Path, dtype: torch.dtype) -> SAE:
    cfg_file, weights_file = d / "config.json", d / "ae.pt"
    cfg = _read_json(cfg_file)
    trainer = _need(cfg, "trainer", cfg_file)
    dict_class = _need(trainer, "dict_class", cfg_file, "trainer.dict_class")
    _check_choice("dictionary_learning dict_class", dict_class, _DICTIONARY_CLASSES, f" in {cfg_file}")
    raw = _read_pt(weights_file)
    t = _tensors(raw, dtype)

    def need(key: str) -> Tensor:
        return _need(t, key, weights_file)

    metadata: dict[str, Any] = {
        "source": str(d),
        "config": cfg,
        "dict_class": dict_class,
        "model_name": trainer.get("lm_name"),
        "layer": trainer.get("layer"),
        "source_dtype": _source_dtype(raw),
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
        return _jumprelu_reading_raw_input(need, **common)
    # AutoEncoderTopK and BatchTopKSAE keep k (and threshold) as buffers in the state dict.
    k = int(raw["k"]) if "k" in raw else int(_need(trainer, "k", cfg_file, "trainer.k"))
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


def _jumprelu_reading_raw_input(need: Callable[[str], Tensor], **kwargs: Any) -> SAE:
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


def _load_gemma_scope(d: Path, dtype: torch.dtype) -> SAE:
    if (d / "params.npz").exists():
        weights_file, config = d / "params.npz", None
        raw = _read_npz(weights_file)
    else:
        weights_file, config = d / "params.safetensors", _read_json(d / "config.json")
        raw = _read_safetensors(weights_file)
    # Gemma Scope 2 (npz) uses W_enc/W_dec, Gemma Scope 3 (safetensors) w_enc/w_dec.
    t = {k.lower(): v for k, v in _tensors(raw, dtype).items()}

    def need(key: str) -> Tensor:
        return _need(t, key.lower(), weights_file, key)

    return _jumprelu_reading_raw_input(
        need,
        format="gemma_scope",
        hook_name=gemma_scope_hookpoint(d.as_posix()),
        metadata={"source": str(d), "config": config, "source_dtype": _source_dtype(raw)},
    )


def _load_openai(path: Path, dtype: torch.dtype) -> SAE:
    raw = _read_pt(path)
    if "pre_bias" not in raw or "latent_bias" not in raw:
        raise AutointerpError(
            f"{path} is not an OpenAI sparse_autoencoder state dict (keys: {sorted(raw)[:12]})",
            f"pass a file or directory in a supported format: {_SUPPORTED_TEXT}",
        )
    t = _tensors(raw, dtype)
    activation = raw.get("activation", "ReLU")  # OpenAI's own loader defaults to ReLU
    _check_choice("OpenAI activation", activation, ("ReLU", "TopK"), f" in {path}")
    k = None
    if activation == "TopK":
        state = _need(raw, "activation_state_dict", path)
        k = int(_need(state, "k", path, "activation_state_dict.k"))
        _check_choice("OpenAI TopK postact_fn", state.get("postact_fn", "ReLU"), ("ReLU",), f" in {path}")
    return SAE(
        _need(t, "encoder.weight", path).T,
        t["latent_bias"],
        _need(t, "decoder.weight", path).T,
        t["pre_bias"],
        architecture="topk" if k else "standard",
        k=k,
        normalization="layer_norm" if k else "none",  # OpenAI normalises exactly when TopK is used
        format="openai",
        metadata={"source": str(path), "source_dtype": _source_dtype(raw)},
    )


_LOADERS = {
    "saelens": _load_saelens,
    "sparsify": _load_sparsify,
    "dictionary_learning": _load_dictionary_learning,
    "gemma_scope_npz": _load_gemma_scope,
    "gemma_scope_safetensors": _load_gemma_scope,
}


# ---------------------------------------------------------------------------------------------
# Public entry points


def _detect(d: Path) -> str | None:
    names = {p.name for p in d.iterdir() if p.is_file()}
    return next((fmt for fmt, files in _DIRECTORY_FORMATS.items() if set(files) <= names), None)


def _sae_subdirectories(root: Path) -> list[str]:
    """Relative paths of the folders under root that hold an SAE in a recognised format."""
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames.sort()
        if Path(dirpath) != root and _detect(Path(dirpath)):
            found.append(Path(dirpath).relative_to(root).as_posix())
    return found


def _load_local(
    path: Path, hookpoint: str | None, dtype: torch.dtype, overrides: Mapping[str, Any] | None = None
) -> SAE:
    if not path.exists():
        close = close_releases(str(path))
        raise AutointerpError(
            f"SAE path {path} does not exist and is not a SAELens release name"
            + (f" (close: {', '.join(close)})" if close else ""),
            "check the path; hub folders are written hf://owner/repo[/folder], SAELens releases as the release name "
            "with --sae-id",
        )
    if path.is_file():
        if path.suffix == ".pt" and not (path.name == "ae.pt" and (path.parent / "config.json").exists()):
            return _load_openai(path, dtype)
        path = path.parent  # a file of a directory format: load the directory it belongs to
    if hookpoint is not None:
        if not (path / hookpoint).is_dir():
            raise AutointerpError(
                f"hookpoint {hookpoint!r} is not a folder of {path}; SAEs there: {_sae_subdirectories(path)}",
                "pass one of the listed folders as hookpoint=",
            )
        path = path / hookpoint
    fmt = _detect(path)
    if fmt is None:
        candidates = _sae_subdirectories(path)
        if len(candidates) == 1:
            return _load_local(path / candidates[0], None, dtype, overrides)
        if candidates:
            raise AutointerpError(
                f"{path} holds {len(candidates)} SAEs: {', '.join(candidates)}",
                f"choose one with hookpoint='<folder>' (e.g. hookpoint={candidates[0]!r})",
            )
        files = sorted(p.name for p in path.iterdir())
        raise AutointerpError(
            f"no SAE format recognised in {path}; it contains: {files[:30] or 'nothing'}",
            f"point at a file or directory in a supported format: {_SUPPORTED_TEXT}",
        )
    if fmt == "saelens":
        return _load_saelens(path, dtype, overrides)
    return _LOADERS[fmt](path, dtype)


def _download(source: str, hookpoint: str | None) -> Path:
    """Fetch hf://owner/repo[/folder] into the HF cache (or find it there offline); return its path."""
    parts = source.removeprefix("hf://").strip("/").split("/")
    if len(parts) < 2 or not all(parts):
        raise AutointerpError(
            f"{source!r} is not a Hub address", "write it as hf://owner/repo or hf://owner/repo/sub/folder"
        )
    repo_id, folder = "/".join(parts[:2]), "/".join(parts[2:])
    wanted = "/".join(p for p in (folder, hookpoint) if p)
    from huggingface_hub import snapshot_download  # imported lazily: only Hub sources need it

    try:
        snapshot = Path(snapshot_download(repo_id, allow_patterns=[f"{wanted}/*"] if wanted else None))
    except Exception as e:  # network, auth, offline-cache misses: all reported the same way
        raise AutointerpError(
            f"cannot fetch {repo_id} from the Hugging Face Hub: {type(e).__name__}: {e}",
            "check the repo id and your network/token; offline (HF_HUB_OFFLINE=1) the files must already "
            "be in the HF cache (HF_HUB_CACHE); or pass a local directory",
        ) from e
    return snapshot / folder if folder else snapshot


def load_sae(
    source: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    sae_id: str | None = None,
    norm_scaling_factor: float | None = None,
) -> SAE:
    """Load an SAE from a local file/directory, hf://owner/repo[/folder], or a SAELens release name
    (then sae_id names one of its SAEs, as SAELens' sae_id), detecting the format.

    sae_id picks one SAE folder when the source holds several (e.g. a sparsify root, by hookpoint).
    norm_scaling_factor: for SAEs trained on scaled activations (normalize_activations
    expected_average_only_in); a release supplies its own. Weights are float32 unless dtype is
    given; the result is for inference (no gradients).
    """
    if isinstance(dtype, str):
        resolved = getattr(torch, dtype.removeprefix("torch."), None)
        if not isinstance(resolved, torch.dtype):
            raise AutointerpError(f"unknown dtype {dtype!r}", "pass a torch dtype such as torch.float32 or 'bfloat16'")
        dtype = resolved
    work_dtype = dtype or torch.float32
    text = os.fspath(source)
    release = None
    if text.startswith("hf://"):
        path = _download(text, sae_id)
    elif not Path(text).expanduser().exists() and is_release(text):
        release = resolve_release(text, sae_id)
        path, sae_id = _download(release.hub_source, None), None
    else:
        path = Path(text).expanduser()
    sae = _load_local(path, sae_id, work_dtype, release.overrides if release else None)
    if release is not None:
        sae.hook_name = sae.hook_name or release.hookpoint
        sae.metadata["release"] = {
            "release": release.release,
            "sae_id": release.sae_id,
            "repo_id": release.repo_id,
            "folder": release.folder,
            "model": release.model,
            "neuronpedia": release.neuronpedia,
        }
        sae.metadata.setdefault("model_name", release.model)
    _apply_norm_scale(sae, norm_scaling_factor, release)
    return sae.to(device)


def _apply_norm_scale(sae: SAE, given: float | None, release: ReleaseSAE | None) -> None:
    scaled = sae.metadata.get("normalize_activations") == "expected_average_only_in"
    if given is not None and not scaled:
        raise AutointerpError(
            f"a norm scaling factor was given, but {sae.metadata.get('source')} was not trained on scaled "
            "activations (normalize_activations is not expected_average_only_in)",
            "drop the norm scaling factor (--sae-norm-scale)",
        )
    if not scaled:
        return
    factor = given if given is not None else (release.norm_scaling_factor if release else None)
    if factor is None:
        raise AutointerpError(
            f"{sae.metadata.get('source')} was trained on activations scaled to a fixed average norm "
            "(normalize_activations expected_average_only_in), and the scaling factor is not in its files",
            "load it by its SAELens release name (--sae <release> --sae-id <id>), whose directory lists the factor, "
            "or pass it: --sae-norm-scale (Python: norm_scaling_factor=)",
        )
    sae.fold_input_scale(factor)


def save_saelens(
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
