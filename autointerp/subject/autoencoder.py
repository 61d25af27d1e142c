"""The canonical sparse autoencoder: one torch module whose maths covers every supported SAE.

    x̂ = normalise(x)                      # none | constant_norm_rescale | layer_norm | center
    s = x̂ − b_dec  (if apply_b_dec_to_input)
    f = activation(s @ W_enc + b_enc)      # dense [..., d_sae]
    y = f @ W_dec + b_dec (+ x̂ @ W_skip)
    reconstruction = unnormalise(y)

The file formats (subject/formats/) convert into this form; subject/sae.py loads and saves it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from autointerp.errors import AutointerpError

ARCHITECTURES = ("standard", "topk", "batchtopk", "jumprelu", "gated", "groupmax")
ACTIVATIONS = ("relu", "tanh-relu")  # only meaningful for the standard architecture
# center: TransformerLens models loaded with center_writing_weights have a residual stream of mean
# zero over d_model; an SAE trained there reads x − mean(x) and writes back around the mean.
NORMALIZATIONS = ("none", "constant_norm_rescale", "layer_norm", "center")

_LAYER_NORM_EPS = 1e-5


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
        check_choice("architecture", architecture, ARCHITECTURES, where)
        check_choice("activation", activation, ACTIVATIONS, where)
        check_choice("normalization", normalization, NORMALIZATIONS, where)
        if W_enc.ndim != 2:
            raise shape_error(f"W_enc must be 2-D [d_in, d_sae] but has shape {tuple(W_enc.shape)}{where}")
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
        if not value.is_floating_point():
            raise not_float_error(name, value.dtype, where)
        if tuple(value.shape) != shape:
            raise shape_error(
                f"{name} has shape {tuple(value.shape)} but W_enc [d_in={self.d_in}, d_sae={self.d_sae}] "
                f"requires {shape}{where}"
            )
        self.register_parameter(name, nn.Parameter(value.detach().contiguous(), requires_grad=False))

    def check_finite(self) -> None:
        """Refuse weights with NaN or infinite entries (a diverged training run, a broken export): every
        activation or reconstruction they touch would be NaN, and the SAE's metrics with it."""
        for name, value in self.named_parameters():
            bad = sum(int((~torch.isfinite(part)).sum()) for part in value.detach().reshape(-1).split(1 << 24))
            if bad:
                where = f" in {self.metadata['source']}" if "source" in self.metadata else ""
                raise AutointerpError(
                    f"{name}{where} has {bad:,} of {value.numel():,} entries NaN or infinite",
                    "the weights are damaged (a diverged training run or a broken export): re-download or re-export "
                    "the SAE, or use another checkpoint",
                )

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


def check_choice(what: str, value: str, allowed: tuple[str, ...], where: str = "") -> None:
    """Refuse a setting (an SAE's or a file's config value) outside the ones supported."""
    if value not in allowed:
        raise AutointerpError(
            f"unknown {what} {value!r}{where}; supported: {', '.join(allowed)}",
            f"use one of the supported {what} values, or convert the SAE to one of them",
        )


def not_float_error(name: str, dtype: torch.dtype, where: str = "") -> AutointerpError:
    """The error for a weight tensor stored in a dtype that is not a floating-point type."""
    return AutointerpError(
        f"{name}{where} holds {str(dtype).removeprefix('torch.')} values, not a floating-point type "
        "(float32, float16, bfloat16, float64)",
        "re-export the SAE with floating-point weights (its training library saves them so)",
    )


def shape_error(problem: str) -> AutointerpError:
    """The error for tensors, or a config and its tensors, whose shapes disagree."""
    return AutointerpError(
        problem, "the tensors do not belong together (mixed or broken export); re-download or re-export the SAE"
    )


def _missing_arg(name: str, architecture: str, where: str) -> AutointerpError:
    return AutointerpError(f"a {architecture} SAE needs {name}{where}", f"pass {name} when building the SAE")


def random_like(sae: SAE, k: int, seed: int = 0) -> SAE:
    """A TopK SAE of `sae`'s shape whose directions mean nothing: encoder columns drawn uniformly on the
    sphere, the decoder their transpose, keeping `sae`'s input handling (b_dec, normalisation) and k
    latents a token. The floor every score of the real SAE is read against: what a dictionary that
    learned nothing gets from the same pipeline (untrained SAEs score about 0.69 on SAEBench's detection)."""
    generator = torch.Generator().manual_seed(seed)
    W = torch.randn(sae.d_in, sae.d_sae, generator=generator, dtype=torch.float32)
    W /= W.norm(dim=0, keepdim=True)
    dtype, device = sae.W_enc.dtype, sae.W_enc.device
    return SAE(
        W.to(dtype=dtype, device=device),
        torch.zeros(sae.d_sae, dtype=dtype, device=device),
        W.T.contiguous().to(dtype=dtype, device=device),
        sae.b_dec.detach().clone(),
        architecture="topk",
        k=k,
        apply_b_dec_to_input=sae.apply_b_dec_to_input,
        normalization=sae.normalization,
        format=sae.format,
        hook_name=sae.hook_name,
        metadata={"source": "random directions", "random_like": sae.metadata.get("source")},
    )
