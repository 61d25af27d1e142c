"""Every SAE format and architecture against an independent NumPy evaluation of its formula.

Weights are small (d_in=16, d_sae=48), seeded and written with tests/sae_writers.py; the NumPy
references below follow /work/shared/reference/sae-formats.md and never call autointerp.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import huggingface_hub.constants
import numpy as np
import pytest
import sae_writers as w  # tests/ is on sys.path under pytest's default import mode
import torch

from autointerp.errors import AutointerpError
from autointerp.subject.sae import SAE, load_sae, save_saelens

D_IN, D_SAE, K = 16, 48, 8
TOL = 1e-5
REPO_ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Random weights and inputs


def normal(rng: np.random.Generator, *shape: int, scale: float = 1.0, shift: float = 0.0) -> np.ndarray:
    return (rng.normal(size=shape) * scale + shift).astype(np.float32)


def inputs(rng: np.random.Generator, n: int = 64) -> np.ndarray:
    # An offset and a non-unit scale so that every normalisation mode has something to undo.
    return normal(rng, n, D_IN, scale=1.5, shift=0.3)


def base_params(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "W_enc": normal(rng, D_IN, D_SAE, scale=0.25),
        "b_enc": normal(rng, D_SAE, scale=0.3, shift=-0.2),
        # Decoder rows of unequal norm, so rescale_acts_by_decoder_norm changes the result.
        "W_dec": normal(rng, D_SAE, D_IN, scale=0.25) * rng.uniform(0.5, 2.0, (D_SAE, 1)).astype(np.float32),
        "b_dec": normal(rng, D_IN, scale=0.2),
    }


def thresholds(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.2, 1.0, D_SAE).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# NumPy references (float64), straight from the formulas


def f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def relu(a: np.ndarray) -> np.ndarray:
    return np.maximum(a, 0.0)


def keep_topk(h: np.ndarray, k: int) -> np.ndarray:
    """relu of the k largest entries per row, zeros elsewhere."""
    out = np.zeros_like(h)
    idx = np.argsort(-h, axis=-1)[..., :k]
    np.put_along_axis(out, idx, relu(np.take_along_axis(h, idx, axis=-1)), axis=-1)
    return out


def keep_groupmax(h: np.ndarray, k: int) -> np.ndarray:
    """sparsify groupmax: k contiguous groups, the max of each survives at its position."""
    g = h.reshape(h.shape[0], k, -1)
    out = np.zeros_like(g)
    idx = g.argmax(axis=-1)[..., None]
    np.put_along_axis(out, idx, np.take_along_axis(g, idx, axis=-1), axis=-1)
    return out.reshape(h.shape)


NORM_SCALE = 0.37  # a release's norm_scaling_factor


def norm_in(x: np.ndarray, mode: str) -> tuple[np.ndarray, Any]:
    """Normalised x and a function that undoes it on the reconstruction."""
    x = f64(x)
    if mode == "constant_norm_rescale":
        c = np.sqrt(D_IN) / np.linalg.norm(x, axis=-1, keepdims=True)
        return x * c, lambda y: y / c
    if mode == "layer_norm":
        mu, sd = x.mean(-1, keepdims=True), x.std(-1, ddof=1, keepdims=True)
        return (x - mu) / (sd + 1e-5), lambda y: y * sd + mu
    if mode == "expected_average_only_in":  # trained on NORM_SCALE · x; the reconstruction is divided back
        return x * NORM_SCALE, lambda y: y / NORM_SCALE
    return x, lambda y: y


def ref_saelens(
    x: np.ndarray,
    p: dict[str, np.ndarray],
    arch: str,
    norm: str = "none",
    *,
    k: int = K,
    rescale: bool = False,
    activation: str = "relu",
    apply_b_dec: bool = True,
    fsf: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    p = {key: f64(v) for key, v in p.items()}
    xn, undo = norm_in(x, norm)
    s = xn - p["b_dec"] if apply_b_dec else xn
    if arch == "gated":
        gate = s @ p["W_enc"] + p["b_gate"] > 0
        mag = relu(s @ (p["W_enc"] * np.exp(p["r_mag"])) + p["b_mag"])
        f = gate * mag
    else:
        h = s @ p["W_enc"] + p["b_enc"]
        norms = np.linalg.norm(p["W_dec"], axis=1)
        if arch == "standard":
            f = np.tanh(relu(h)) if activation == "tanh-relu" else relu(h)
        elif arch == "jumprelu":
            f = relu(h) * (h > p["threshold"])
        else:  # topk
            f = keep_topk(h * norms if rescale else h, k)
    fd = f / norms if rescale else f
    if fsf is not None:
        fd = fd * f64(fsf)
    return f, undo(fd @ p["W_dec"] + p["b_dec"])


def ref_sparsify(x, p, activation, transcode):
    p = {key: f64(v) for key, v in p.items()}
    x = f64(x)
    s = x if transcode else x - p["b_dec"]
    pre = relu(s @ p["encoder.weight"].T + p["encoder.bias"])
    f = keep_topk(pre, K) if activation == "topk" else keep_groupmax(pre, K)
    y = f @ p["W_dec"] + p["b_dec"]
    if "W_skip" in p:
        y = y + x @ p["W_skip"].T
    return f, y


def ref_dictionary_learning(x, sd, dict_class):
    p = {key: f64(v) for key, v in sd.items() if isinstance(v, np.ndarray)}
    x = f64(x)
    if dict_class == "AutoEncoder":
        f = relu((x - p["bias"]) @ p["encoder.weight"].T + p["encoder.bias"])
        return f, f @ p["decoder.weight"].T + p["bias"]
    if dict_class == "GatedAutoEncoder":
        e = (x - p["decoder_bias"]) @ p["encoder.weight"].T
        f = (e + p["gate_bias"] > 0) * relu(np.exp(p["r_mag"]) * e + p["mag_bias"])
        return f, f @ p["decoder.weight"].T + p["decoder_bias"]
    if dict_class == "JumpReluAutoEncoder":
        pre = x @ p["W_enc"] + p["b_enc"]
        f = relu(pre * (pre > p["threshold"]))
        return f, f @ p["W_dec"] + p["b_dec"]
    r = relu((x - p["b_dec"]) @ p["encoder.weight"].T + p["encoder.bias"])
    if dict_class == "BatchTopKSAE" and sd["threshold"] >= 0:
        f = r * (r > sd["threshold"])
    else:  # AutoEncoderTopK
        f = keep_topk(r, int(sd["k"]))
    return f, f @ p["decoder.weight"].T + p["b_dec"]


def ref_jumprelu_no_bdec(x, p):
    """Gemma Scope: no b_dec subtraction, strict threshold."""
    p = {key.lower(): f64(v) for key, v in p.items()}
    pre = f64(x) @ p["w_enc"] + p["b_enc"]
    f = (pre > p["threshold"]) * relu(pre)
    return f, f @ p["w_dec"] + p["b_dec"]


def ref_openai(x, sd):
    p = {key: f64(v) for key, v in sd.items() if isinstance(v, np.ndarray)}
    topk = sd.get("activation") == "TopK"
    xn, undo = norm_in(x, "layer_norm" if topk else "none")
    pre = (xn - p["pre_bias"]) @ p["encoder.weight"].T + p["latent_bias"]
    f = keep_topk(pre, sd["activation_state_dict"]["k"]) if topk else relu(pre)
    return f, undo(f @ p["decoder.weight"].T + p["pre_bias"])


def check(sae: SAE, x: np.ndarray, f_ref: np.ndarray, y_ref: np.ndarray) -> None:
    """encode (dense and sparse) and reconstruction match the reference; a fair share of features fire."""
    xt = torch.from_numpy(x)
    with torch.no_grad():
        f, y = sae.encode(xt), sae(xt)
        y_from_f = sae.decode(f, xt)
        row, feature, value = sae.encode_sparse(xt)
    assert f.dtype == torch.float32 and f.shape == f_ref.shape
    assert np.abs(f.numpy() - f_ref).max() < TOL
    from_sparse = np.zeros(f_ref.shape)
    from_sparse[row.numpy(), feature.numpy()] = value.numpy()
    assert np.abs(from_sparse - f_ref).max() < TOL and (value != 0).all()
    assert np.abs(y.numpy() - y_ref).max() < TOL
    assert torch.equal(y, y_from_f)
    assert 0.05 < (f_ref > 0).mean() < 0.95


def assert_jump_exercised(pre: np.ndarray, threshold: np.ndarray) -> None:
    """Some features are positive yet below threshold (cut by the jump), some pass it."""
    assert ((pre > 0) & (pre <= threshold)).mean() > 0.02
    assert (pre > threshold).mean() > 0.05


# ---------------------------------------------------------------------------------------------
# SAELens


def saelens_params(rng: np.random.Generator, arch: str) -> dict[str, np.ndarray]:
    p = base_params(rng)
    if arch == "gated":
        p["b_gate"] = p.pop("b_enc")
        p["r_mag"] = normal(rng, D_SAE, scale=0.3)
        p["b_mag"] = normal(rng, D_SAE, scale=0.3, shift=-0.1)
    if arch == "jumprelu":
        p["threshold"] = thresholds(rng)
    return p


def v6_cfg(arch: str, norm: str = "none", **top: Any) -> dict[str, Any]:
    return {
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "architecture": arch,
        "normalize_activations": norm,
        "reshape_activations": "none",
        "metadata": {
            "model_name": "gpt2-small",
            "hook_name": "blocks.3.hook_resid_post",
            "hook_head_index": None,
            "context_size": 128,
            "prepend_bos": True,
            "model_from_pretrained_kwargs": {"center_writing_weights": False},
            "sae_lens_version": "6.5.1",
        },
        **top,
    }


V6_CASES = [
    ("standard", {}),
    ("jumprelu", {}),
    ("gated", {}),
    ("topk", {"k": K}),
    ("topk", {"k": K, "rescale_acts_by_decoder_norm": True}),
]
NORMS = ["none", "constant_norm_rescale", "layer_norm", "expected_average_only_in"]


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("arch,extra", V6_CASES, ids=["standard", "jumprelu", "gated", "topk", "topk-rescale"])
def test_saelens_v6(tmp_path, arch, extra, norm):
    rng = np.random.default_rng(1)
    p, x = saelens_params(rng, arch), inputs(rng)
    scale = NORM_SCALE if norm == "expected_average_only_in" else None
    sae = load_sae(w.write_saelens(tmp_path / "sae", v6_cfg(arch, norm, **extra), p), norm_scaling_factor=scale)
    f_ref, y_ref = ref_saelens(x, p, arch, norm, rescale=bool(extra.get("rescale_acts_by_decoder_norm")))
    check(sae, x, f_ref, y_ref)
    assert (sae.format, sae.architecture, sae.d_in, sae.d_sae) == ("saelens", arch, D_IN, D_SAE)
    assert sae.hook_name == "blocks.3.hook_resid_post"
    assert sae.metadata["model_name"] == "gpt2-small"
    assert sae.metadata["normalize_activations"] == norm
    if arch == "jumprelu":
        xn, _ = norm_in(x, norm)
        assert_jump_exercised((xn - p["b_dec"]) @ f64(p["W_enc"]) + p["b_enc"], p["threshold"])
    if arch == "gated":
        s = norm_in(x, norm)[0] - p["b_dec"]
        mag = s @ (f64(p["W_enc"]) * np.exp(p["r_mag"])) + p["b_mag"]
        gate = s @ f64(p["W_enc"]) + p["b_gate"] > 0
        assert ((mag > 0) & ~gate).mean() > 0.02 and ((mag > 0) & gate).mean() > 0.05


def test_saelens_v6_extras(tmp_path):
    """apply_b_dec_to_input false, sparsity file, centred-weights flag, 3-D input, dtype."""
    rng = np.random.default_rng(2)
    p, x = saelens_params(rng, "standard"), inputs(rng)
    cfg = v6_cfg("standard", apply_b_dec_to_input=False)
    cfg["metadata"]["model_from_pretrained_kwargs"] = {"center_writing_weights": True}
    d = w.write_saelens(tmp_path / "sae", cfg, p)
    sparsity = normal(rng, D_SAE, shift=-3)
    w.write_safetensors(d / "sparsity.safetensors", {"sparsity": sparsity})
    sae = load_sae(d)
    check(sae, x, *ref_saelens(x, p, "standard", apply_b_dec=False))
    assert sae.metadata["center_writing_weights"] is True
    assert np.array_equal(sae.metadata["log10_feature_sparsity"].numpy(), sparsity)
    f3 = sae.encode(torch.from_numpy(x).reshape(4, 16, D_IN))
    assert torch.equal(f3.reshape(64, D_SAE), sae.encode(torch.from_numpy(x)))
    # Loading a file of the directory finds the directory; dtype may be chosen.
    sae64 = load_sae(d / "sae_weights.safetensors", dtype="float64")
    assert sae64.W_enc.dtype == torch.float64 and not sae64.W_enc.requires_grad


def pre6_cfg(activation: str = "relu", **top: Any) -> dict[str, Any]:
    return {
        "d_in": D_IN,
        "d_sae": D_SAE,
        "dtype": "torch.float32",
        "device": "cpu",
        "model_name": "gpt2-small",
        "hook_point": "blocks.2.hook_resid_pre",
        "hook_layer": 2,
        "hook_point_head_index": None,
        "activation_fn_str": activation,
        "apply_b_dec_to_input": True,
        "normalize_activations": False,
        "context_size": 128,
        **top,
    }


PRE6_CASES = {
    "relu-no-version": ("standard", pre6_cfg("relu", apply_b_dec_to_input=False), {"apply_b_dec": False}),
    "tanh-relu-bool-norm": (
        "standard",
        pre6_cfg("tanh-relu", normalize_activations=True),
        {"activation": "tanh-relu", "norm": "expected_average_only_in"},
    ),
    "topk-kwargs": (
        "topk",
        pre6_cfg("topk", architecture="standard", activation_fn_kwargs={"k": K}, sae_lens_version="5.9.1"),
        {},
    ),
    "jumprelu": ("jumprelu", pre6_cfg(architecture="jumprelu", sae_lens_version="4.4.1"), {}),
    "gated-string-norm": (
        "gated",
        pre6_cfg(architecture="gated", normalize_activations="layer_norm"),
        {"norm": "layer_norm"},
    ),
}


@pytest.mark.parametrize("case", list(PRE6_CASES))
def test_saelens_pre6(tmp_path, case):
    arch, cfg, ref_kwargs = PRE6_CASES[case]
    rng = np.random.default_rng(3)
    p, x = saelens_params(rng, arch), inputs(rng)
    scale = NORM_SCALE if ref_kwargs.get("norm") == "expected_average_only_in" else None
    sae = load_sae(w.write_saelens(tmp_path / "sae", cfg, p), norm_scaling_factor=scale)
    check(sae, x, *ref_saelens(x, p, arch, **ref_kwargs))
    assert sae.architecture == arch
    assert sae.hook_name == "blocks.2.hook_resid_pre"
    assert sae.metadata["model_name"] == "gpt2-small"


def test_saelens_pre6_finetuning_scaling_factor(tmp_path):
    rng = np.random.default_rng(4)
    p, x = saelens_params(rng, "standard"), inputs(rng)
    fsf = rng.uniform(0.5, 1.5, D_SAE).astype(np.float32)
    cfg = pre6_cfg(finetuning_scaling_factor=True)
    sae = load_sae(w.write_saelens(tmp_path / "sae", cfg, {**p, "finetuning_scaling_factor": fsf}))
    check(sae, x, *ref_saelens(x, p, "standard", fsf=fsf))


# ---------------------------------------------------------------------------------------------
# sparsify


def sparsify_params(rng: np.random.Generator, skip: bool) -> dict[str, np.ndarray]:
    b = base_params(rng)
    p = {"encoder.weight": b["W_enc"].T.copy(), "encoder.bias": b["b_enc"], "W_dec": b["W_dec"], "b_dec": b["b_dec"]}
    if skip:
        p["W_skip"] = normal(rng, D_IN, D_IN, scale=0.1)
    return p


def sparsify_cfg(activation: str, skip: bool, transcode: bool) -> dict[str, Any]:
    return {
        "activation": activation,
        "expansion_factor": D_SAE // D_IN,
        "normalize_decoder": True,
        "num_latents": 0,
        "k": K,
        "multi_topk": False,
        "skip_connection": skip,
        "transcode": transcode,
        "d_in": D_IN,
    }


@pytest.mark.parametrize("transcode", [False, True], ids=["sae", "transcoder"])
@pytest.mark.parametrize("skip", [False, True], ids=["noskip", "skip"])
@pytest.mark.parametrize("activation", ["topk", "groupmax"])
def test_sparsify(tmp_path, activation, skip, transcode):
    rng = np.random.default_rng(5)
    p, x = sparsify_params(rng, skip), inputs(rng)
    sae = load_sae(w.write_sparsify(tmp_path / "layers.6", sparsify_cfg(activation, skip, transcode), p))
    check(sae, x, *ref_sparsify(x, p, activation, transcode))
    assert (sae.format, sae.architecture, sae.k, sae.hook_name) == ("sparsify", activation, K, "layers.6")
    assert sae.metadata["transcode"] is transcode


def test_sparsify_bfloat16_file_loads_as_float32(tmp_path):
    rng = np.random.default_rng(6)
    p, x = sparsify_params(rng, False), inputs(rng)
    # Old files may lack the activation key (topk was the only choice then).
    cfg = {key: v for key, v in sparsify_cfg("topk", False, False).items() if key != "activation"}
    sae = load_sae(w.write_sparsify(tmp_path / "h.3", cfg, p, dtype=torch.bfloat16))
    rounded = {key: torch.from_numpy(v).bfloat16().float().numpy() for key, v in p.items()}
    check(sae, x, *ref_sparsify(x, rounded, "topk", False))
    assert sae.metadata["source_dtype"] == "bfloat16"


def test_sparsify_root_with_hookpoints(tmp_path):
    rng = np.random.default_rng(7)
    x = inputs(rng)
    params = {}
    for hook in ("layers.3", "layers.5"):
        params[hook] = sparsify_params(rng, False)
        w.write_sparsify(tmp_path / "root" / hook, sparsify_cfg("topk", False, False), params[hook])
    sae = load_sae(tmp_path / "root", sae_id="layers.5")
    assert sae.hook_name == "layers.5"
    check(sae, x, *ref_sparsify(x, params["layers.5"], "topk", False))
    with pytest.raises(AutointerpError) as e:
        load_sae(tmp_path / "root")
    assert "layers.3" in str(e.value) and "layers.5" in str(e.value) and "hookpoint=" in e.value.fix
    with pytest.raises(AutointerpError) as e:
        load_sae(tmp_path / "root", sae_id="layers.9")
    assert "layers.3" in str(e.value) and "hookpoint" in e.value.fix


# ---------------------------------------------------------------------------------------------
# dictionary_learning


def dictionary_learning_state(rng: np.random.Generator, dict_class: str, threshold: float = -1.0) -> dict[str, Any]:
    b = base_params(rng)
    enc, dec = b["W_enc"].T.copy(), b["W_dec"].T.copy()  # nn.Linear layouts
    if dict_class == "AutoEncoder":
        return {"bias": b["b_dec"], "encoder.weight": enc, "encoder.bias": b["b_enc"], "decoder.weight": dec}
    if dict_class == "GatedAutoEncoder":
        return {
            "decoder_bias": b["b_dec"],
            "encoder.weight": enc,
            "r_mag": normal(rng, D_SAE, scale=0.3),
            "gate_bias": b["b_enc"],
            "mag_bias": normal(rng, D_SAE, scale=0.3, shift=-0.1),
            "decoder.weight": dec,
        }
    if dict_class == "JumpReluAutoEncoder":
        return {**b, "threshold": thresholds(rng)}
    return {
        "k": torch.tensor(K, dtype=torch.int),
        "threshold": torch.tensor(threshold, dtype=torch.float32),
        "encoder.weight": enc,
        "encoder.bias": b["b_enc"],
        "decoder.weight": dec,
        "b_dec": b["b_dec"],
    }


def dictionary_learning_config(dict_class: str) -> dict[str, Any]:
    return {
        "trainer": {
            "dict_class": dict_class,
            "activation_dim": D_IN,
            "dict_size": D_SAE,
            "k": K,
            "layer": 3,
            "lm_name": "EleutherAI/pythia-70m-deduped",
            "submodule_name": "resid_post_layer_3",
        },
        "buffer": {"d_submodule": D_IN, "n_ctxs": 30000},
    }


DL_CASES = {
    "AutoEncoder": ("AutoEncoder", -1.0, "standard"),
    "GatedAutoEncoder": ("GatedAutoEncoder", -1.0, "gated"),
    "JumpReluAutoEncoder": ("JumpReluAutoEncoder", -1.0, "jumprelu"),
    "AutoEncoderTopK": ("AutoEncoderTopK", 0.4, "topk"),  # its threshold is unused by default
    "BatchTopKSAE-threshold": ("BatchTopKSAE", 0.4, "batchtopk"),
}


@pytest.mark.parametrize("case", list(DL_CASES))
def test_dictionary_learning(tmp_path, case):
    dict_class, threshold, arch = DL_CASES[case]
    rng = np.random.default_rng(8)
    sd, x = dictionary_learning_state(rng, dict_class, threshold), inputs(rng)
    sae = load_sae(w.write_dictionary_learning(tmp_path / "ae", dictionary_learning_config(dict_class), sd))
    # The reference reads k and threshold as plain numbers, not the saved buffers.
    reference_sd = {**sd, "threshold": threshold, "k": K} if "k" in sd else sd
    check(sae, x, *ref_dictionary_learning(x, reference_sd, dict_class))
    # SAEBench's submodule name resid_post_layer_3 is the TransformerLens hook of the same place.
    assert (sae.format, sae.architecture, sae.hook_name) == ("dictionary_learning", arch, "blocks.3.hook_resid_post")
    assert sae.metadata["model_name"] == "EleutherAI/pythia-70m-deduped" and sae.metadata["layer"] == 3
    if dict_class == "JumpReluAutoEncoder":
        assert_jump_exercised(f64(x) @ sd["W_enc"] + sd["b_enc"], sd["threshold"])
    if case == "BatchTopKSAE-threshold":
        r = relu((f64(x) - sd["b_dec"]) @ sd["encoder.weight"].T + sd["encoder.bias"])
        assert_jump_exercised(r, np.full(D_SAE, threshold))


# ---------------------------------------------------------------------------------------------
# Gemma Scope


def gemma_scope_params(rng: np.random.Generator, lower: bool) -> dict[str, np.ndarray]:
    p = {**base_params(rng), "threshold": thresholds(rng)}
    return {key.lower(): v for key, v in p.items()} if lower else p


def test_gemma_scope_npz(tmp_path):
    rng = np.random.default_rng(9)
    p, x = gemma_scope_params(rng, lower=False), inputs(rng)
    d = w.write_gemma_scope_npz(tmp_path / "gemma-scope-2b-pt-res" / "layer_20" / "width_16k" / "average_l0_71", p)
    sae = load_sae(d / "params.npz")
    check(sae, x, *ref_jumprelu_no_bdec(x, p))
    assert (sae.format, sae.architecture, sae.hook_name) == ("gemma_scope", "jumprelu", "blocks.20.hook_resid_post")
    assert_jump_exercised(f64(x) @ p["W_enc"] + p["b_enc"], p["threshold"])


def test_gemma_scope_safetensors(tmp_path):
    rng = np.random.default_rng(10)
    p, x = gemma_scope_params(rng, lower=True), inputs(rng)
    config = {"model_name": "gemma-3-1b-pt", "width": D_SAE}
    sae = load_sae(w.write_gemma_scope_safetensors(tmp_path / "gemma-scope-x-mlp" / "layer_4", config, p))
    check(sae, x, *ref_jumprelu_no_bdec(x, p))
    assert (sae.format, sae.hook_name) == ("gemma_scope", "blocks.4.hook_mlp_out")
    assert sae.metadata["config"] == config


# ---------------------------------------------------------------------------------------------
# OpenAI


def openai_state(rng: np.random.Generator, activation: str) -> dict[str, Any]:
    b = base_params(rng)
    sd: dict[str, Any] = {
        "pre_bias": b["b_dec"],
        "latent_bias": b["b_enc"],
        "encoder.weight": b["W_enc"].T.copy(),
        "decoder.weight": b["W_dec"].T.copy(),
        "stats_last_nonzero": torch.zeros(D_SAE, dtype=torch.long),
        "activation": activation,
    }
    if activation == "TopK":
        sd["activation_state_dict"] = {"k": K, "postact_fn": "ReLU"}
    return sd


@pytest.mark.parametrize("activation", ["ReLU", "TopK"])
def test_openai(tmp_path, activation):
    rng = np.random.default_rng(11)
    sd, x = openai_state(rng, activation), inputs(rng)
    sae = load_sae(w.write_openai(tmp_path / "8.pt", sd))
    check(sae, x, *ref_openai(x, sd))
    expected = ("topk", "layer_norm") if activation == "TopK" else ("standard", "none")
    assert (sae.format, sae.architecture, sae.normalization) == ("openai", *expected)


# ---------------------------------------------------------------------------------------------
# save_saelens


def test_save_saelens_round_trip_is_bit_exact(tmp_path):
    rng = np.random.default_rng(12)
    b = {key: torch.from_numpy(v) for key, v in base_params(rng).items()}
    sae = SAE(b["W_enc"], b["b_enc"], b["W_dec"], b["b_dec"], architecture="topk", k=K)
    out = save_saelens(
        sae, tmp_path / "ours", hook_name="blocks.5.hook_resid_post", model_name="gpt2", extra_metadata={"steps": 10}
    )
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == K and cfg["rescale_acts_by_decoder_norm"] is False
    assert cfg["apply_b_dec_to_input"] is True and cfg["normalize_activations"] == "none"
    assert cfg["metadata"]["sae_lens_version"].startswith("6.")
    assert cfg["metadata"]["hook_name"] == "blocks.5.hook_resid_post" and cfg["metadata"]["steps"] == 10

    loaded = load_sae(out)
    assert (loaded.architecture, loaded.k, loaded.hook_name) == ("topk", K, "blocks.5.hook_resid_post")
    assert loaded.metadata["model_name"] == "gpt2"
    assert sae.state_dict().keys() == loaded.state_dict().keys()
    assert all(torch.equal(v, loaded.state_dict()[key]) for key, v in sae.state_dict().items())
    x = torch.from_numpy(inputs(rng))
    assert torch.equal(sae.encode(x), loaded.encode(x)) and torch.equal(sae(x), loaded(x))


@pytest.mark.parametrize("arch", ["standard", "jumprelu", "gated", "batchtopk"])
def test_save_saelens_round_trip_other_architectures(tmp_path, arch):
    rng = np.random.default_rng(13)
    x = torch.from_numpy(inputs(rng))
    if arch == "batchtopk":
        sd = dictionary_learning_state(rng, "BatchTopKSAE", 0.4)
        config = dictionary_learning_config("BatchTopKSAE")
        original = load_sae(w.write_dictionary_learning(tmp_path / "ae", config, sd))
    else:
        p = saelens_params(rng, arch)
        original = load_sae(w.write_saelens(tmp_path / "in", v6_cfg(arch, "layer_norm"), p))
    loaded = load_sae(save_saelens(original, tmp_path / "out", hook_name="h", model_name="m"))
    assert torch.equal(original.encode(x), loaded.encode(x)) and torch.equal(original(x), loaded(x))


# ---------------------------------------------------------------------------------------------
# Hugging Face Hub, offline from a cache laid out as huggingface_hub writes it


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads both variables once, at import; mirror them for this process.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache


def test_hub_subfolder_and_whole_repo(tmp_path, hf_cache):
    rng = np.random.default_rng(14)
    p, x = saelens_params(rng, "jumprelu"), inputs(rng)
    w.write_saelens(tmp_path / "repo1" / "blocks.3" / "width_48", v6_cfg("jumprelu"), p)
    w.write_hf_cache(hf_cache, "owner/saes", tmp_path / "repo1")
    w.write_saelens(tmp_path / "repo2", v6_cfg("jumprelu"), p)
    w.write_hf_cache(hf_cache, "owner/single", tmp_path / "repo2")
    for source in ("hf://owner/saes/blocks.3/width_48", "hf://owner/single", "hf://owner/saes"):
        sae = load_sae(source)
        check(sae, x, *ref_saelens(x, p, "jumprelu"))
        assert "snapshots" in sae.metadata["source"]


def test_hub_sparsify_hookpoint(tmp_path, hf_cache):
    rng = np.random.default_rng(15)
    x = inputs(rng)
    params = {hook: sparsify_params(rng, False) for hook in ("layers.0", "layers.1")}
    for hook, p in params.items():
        w.write_sparsify(tmp_path / "repo" / hook, sparsify_cfg("topk", False, False), p)
    w.write_hf_cache(hf_cache, "EleutherAI/sae-test", tmp_path / "repo")
    sae = load_sae("hf://EleutherAI/sae-test", sae_id="layers.1")
    assert sae.hook_name == "layers.1"
    check(sae, x, *ref_sparsify(x, params["layers.1"], "topk", False))


def test_hub_not_cached_offline(hf_cache):
    with pytest.raises(AutointerpError) as e:
        load_sae("hf://owner/missing")
    assert "owner/missing" in str(e.value) and "HF cache" in e.value.fix


def test_hub_env_variables_in_fresh_process(tmp_path):
    """The real path: HF_HUB_CACHE and HF_HUB_OFFLINE set before huggingface_hub is imported."""
    rng = np.random.default_rng(16)
    w.write_saelens(tmp_path / "repo" / "sae", v6_cfg("standard"), saelens_params(rng, "standard"))
    w.write_hf_cache(tmp_path / "cache", "owner/repo", tmp_path / "repo")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    code = (
        "from autointerp.subject.sae import load_sae; "
        "s = load_sae('hf://owner/repo/sae'); print(s.architecture, s.d_sae)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["standard", str(D_SAE)]


# ---------------------------------------------------------------------------------------------
# Errors: each is an AutointerpError whose fix says what to do


def expect_error(call, *in_message: str, fix: str = "") -> AutointerpError:
    with pytest.raises(AutointerpError) as e:
        call()
    for text in in_message:
        assert text in str(e.value), str(e.value)
    assert fix in e.value.fix and e.value.fix
    return e.value


def test_error_not_found(tmp_path):
    expect_error(lambda: load_sae(tmp_path / "nope"), "does not exist", fix="hf://")
    expect_error(lambda: load_sae(tmp_path / "nope.pt"), "does not exist")
    expect_error(lambda: load_sae("owner/repo-that-is-not-local"), "does not exist", fix="hf://owner/repo")
    expect_error(lambda: load_sae("hf://just-a-name"), "not a Hub address", fix="hf://owner/repo")


def test_error_no_recognised_format(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    w.write_json(tmp_path / "cfg.json", v6_cfg("standard"))  # weights missing
    err = expect_error(lambda: load_sae(tmp_path), "no SAE format recognised", "cfg.json", "notes.txt")
    assert "sae_weights.safetensors" in err.fix and "params.npz" in err.fix and "pre_bias" in err.fix
    rng = np.random.default_rng(17)
    not_openai = {"W": normal(rng, 3, 3)}
    expect_error(lambda: load_sae(w.write_openai(tmp_path / "x.pt", not_openai)), "not an OpenAI", fix="SAELens")


def test_error_corrupt_files(tmp_path):
    rng = np.random.default_rng(18)
    d = w.write_saelens(tmp_path / "st", v6_cfg("standard"), saelens_params(rng, "standard"))
    w.truncate(d / "sae_weights.safetensors")
    expect_error(lambda: load_sae(d), "cannot read", "sae_weights.safetensors", fix="re-download")

    d = w.write_saelens(tmp_path / "json", v6_cfg("standard"), saelens_params(rng, "standard"))
    (d / "cfg.json").write_text('{"d_in": 16,')
    expect_error(lambda: load_sae(d), "cannot read", "cfg.json", fix="re-download")

    cfg = dictionary_learning_config("AutoEncoder")
    d = w.write_dictionary_learning(tmp_path / "pt", cfg, dictionary_learning_state(rng, "AutoEncoder"))
    w.truncate(d / "ae.pt")
    expect_error(lambda: load_sae(d), "cannot read", "ae.pt", fix="re-download")

    d = w.write_gemma_scope_npz(tmp_path / "npz", gemma_scope_params(rng, lower=False))
    w.truncate(d / "params.npz")
    expect_error(lambda: load_sae(d), "cannot read", "params.npz", fix="re-download")

    path = w.write_openai(tmp_path / "oa.pt", openai_state(rng, "ReLU"))
    w.truncate(path, keep=0.3)
    expect_error(lambda: load_sae(path), "cannot read", "oa.pt", fix="re-download")


def test_error_missing_keys(tmp_path):
    rng = np.random.default_rng(19)
    p = saelens_params(rng, "standard")
    cfg = v6_cfg("standard")
    del cfg["d_sae"]
    expect_error(lambda: load_sae(w.write_saelens(tmp_path / "a", cfg, p)), "'d_sae'", "cfg.json", fix="add 'd_sae'")
    expect_error(lambda: load_sae(w.write_saelens(tmp_path / "b", v6_cfg("topk"), p)), "'k (v6)", "cfg.json")
    no_w_enc = {key: v for key, v in p.items() if key != "W_enc"}
    d = w.write_saelens(tmp_path / "c", v6_cfg("standard"), no_w_enc)
    expect_error(lambda: load_sae(d), "'W_enc'", "sae_weights.safetensors", fix="re-export")

    cfg = dictionary_learning_config("AutoEncoder")
    del cfg["trainer"]["dict_class"]
    d = w.write_dictionary_learning(tmp_path / "d", cfg, dictionary_learning_state(rng, "AutoEncoder"))
    expect_error(lambda: load_sae(d), "'trainer.dict_class'", "config.json")

    cfg = sparsify_cfg("topk", False, False)
    del cfg["k"]
    d = w.write_sparsify(tmp_path / "e", cfg, sparsify_params(rng, False))
    expect_error(lambda: load_sae(d), "'k'", "cfg.json")
    d = w.write_sparsify(tmp_path / "f", sparsify_cfg("topk", True, False), sparsify_params(rng, False))
    expect_error(lambda: load_sae(d), "'W_skip'", "sae.safetensors")


def test_error_shape_mismatch(tmp_path):
    rng = np.random.default_rng(20)
    p = saelens_params(rng, "standard")
    for i, (key, bad) in enumerate([("W_dec", normal(rng, D_SAE, D_IN + 1)), ("b_dec", normal(rng, D_IN - 1))]):
        d = w.write_saelens(tmp_path / str(i), v6_cfg("standard"), {**p, key: bad})
        expect_error(lambda d=d: load_sae(d), key, "shape", str(d), fix="re-download")
    d = w.write_saelens(tmp_path / "cfg", {**v6_cfg("standard"), "d_sae": 64}, p)
    expect_error(lambda: load_sae(d), "d_sae=64", fix="re-export")
    b = base_params(rng)
    expect_error(
        lambda: SAE(torch.from_numpy(b["W_enc"]), torch.zeros(3), torch.from_numpy(b["W_dec"]), torch.zeros(D_IN)),
        "b_enc",
        "(3,)",
    )


def test_error_unknown_architecture(tmp_path):
    rng = np.random.default_rng(21)
    p = saelens_params(rng, "standard")
    cases = [
        (v6_cfg("transcoder"), "'transcoder'"),
        (pre6_cfg("sigmoid"), "'sigmoid'"),
        (v6_cfg("standard", "batch_norm"), "'batch_norm'"),
    ]
    for i, (cfg, name) in enumerate(cases):
        expect_error(
            lambda i=i, cfg=cfg: load_sae(w.write_saelens(tmp_path / str(i), cfg, p)), name, "supported:", fix="one of"
        )
    d = w.write_sparsify(tmp_path / "sp", sparsify_cfg("softmax", False, False), sparsify_params(rng, False))
    expect_error(lambda: load_sae(d), "'softmax'", "topk, groupmax")
    cfg = dictionary_learning_config("MatryoshkaBatchTopKSAE")
    d = w.write_dictionary_learning(tmp_path / "dl", cfg, dictionary_learning_state(rng, "AutoEncoder"))
    expect_error(lambda: load_sae(d), "'MatryoshkaBatchTopKSAE'", "BatchTopKSAE")
    path = w.write_openai(tmp_path / "oa.pt", openai_state(rng, "GELU"))
    expect_error(lambda: load_sae(path), "'GELU'", "ReLU, TopK")
    b = {key: torch.from_numpy(v) for key, v in base_params(rng).items()}
    expect_error(lambda: SAE(*b.values(), architecture="maxout"), "'maxout'", "groupmax")


def test_error_usage(tmp_path):
    rng = np.random.default_rng(22)
    x = torch.from_numpy(inputs(rng))
    sae = load_sae(w.write_saelens(tmp_path / "ln", v6_cfg("standard", "layer_norm"), saelens_params(rng, "standard")))
    expect_error(lambda: sae.decode(sae.encode(x)), "layer_norm", fix="decode(f, x)")
    gm = w.write_sparsify(tmp_path / "gm", sparsify_cfg("groupmax", False, False), sparsify_params(rng, False))
    sp = load_sae(gm)
    expect_error(lambda: save_saelens(sp, tmp_path / "out", hook_name="h", model_name="m"), "groupmax")
    expect_error(lambda: load_sae(tmp_path / "ln", dtype="float33"), "'float33'", fix="torch.float32")
    b = {key: torch.from_numpy(v) for key, v in base_params(rng).items()}
    expect_error(lambda: SAE(*b.values(), architecture="topk"), "needs k", fix="k")


# ---------------------------------------------------------------------------------------------
# Fields that change the maths: applied against an independent formula, or refused


def _hidden_state(model, ids: torch.Tensor, index: int) -> np.ndarray:
    with torch.no_grad():
        hs = model.model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True).hidden_states
    return hs[index][0].double().numpy()


@pytest.mark.parametrize("family,applied", [("gpt2", True), ("llama", False)])
def test_center_writing_weights_follows_transformer_lens(tmp_path, tiny_model_dir, family, applied):
    """TransformerLens centres the residual stream of LayerNorm models only (RMSNorm ones untouched)."""
    from autointerp.config import ModelConfig
    from autointerp.gather.collect import fit_sae
    from autointerp.subject.model import SubjectModel

    model = SubjectModel(ModelConfig(name=tiny_model_dir(family), hookpoint="blocks.1.hook_resid_post", device="cpu"))
    rng = np.random.default_rng(40)
    d = model.width
    p = {
        "W_enc": normal(rng, d, D_SAE, scale=0.3),
        "b_enc": normal(rng, D_SAE, scale=0.1),
        "W_dec": normal(rng, D_SAE, d, scale=0.3),
        "b_dec": normal(rng, d, scale=0.2),
    }
    cfg = v6_cfg("standard") | {"d_in": d}
    cfg["metadata"]["model_from_pretrained_kwargs"] = {"center_writing_weights": True}
    sae = load_sae(w.write_saelens(tmp_path / "sae", cfg, p))
    fit_sae(model, sae)
    fit_sae(model, sae)  # every load path calls it; twice changes nothing
    ids = torch.randint(1, 400, (1, 24))
    x = _hidden_state(model, ids, 2)  # block 1's output, read independently of the hook
    mean = x.mean(-1, keepdims=True) if applied else 0.0
    f_ref = relu((x - mean - p["b_dec"]) @ f64(p["W_enc"]) + p["b_enc"])
    y_ref = f_ref @ f64(p["W_dec"]) + p["b_dec"] + mean
    with torch.no_grad():
        acts = model.activations(ids, torch.ones_like(ids))[0]
        f, y = sae.encode(acts), sae(acts)
    assert np.abs(f.double().numpy() - f_ref).max() < 1e-4 and np.abs(y.double().numpy() - y_ref).max() < 1e-4
    assert 0.05 < (f_ref > 0).mean() < 0.95
    assert sae.normalization == ("center" if applied else "none")
    if applied:  # saved back as SAELens writes it: the flag on the model, no SAE normalisation
        out = json.loads(
            (
                save_saelens(sae, tmp_path / "out", hook_name="blocks.1.hook_resid_post", model_name="m") / "cfg.json"
            ).read_text()
        )
        assert (
            out["normalize_activations"] == "none"
            and out["metadata"]["model_from_pretrained_kwargs"]["center_writing_weights"]
        )


def test_transcoder_refused_when_paired_with_the_model(tmp_path, tiny_model_dir):
    from autointerp.config import ModelConfig
    from autointerp.gather.collect import fit_sae
    from autointerp.subject.model import SubjectModel

    model = SubjectModel(ModelConfig(name=tiny_model_dir("gpt2"), hookpoint="blocks.1.hook_resid_post", device="cpu"))
    rng = np.random.default_rng(41)
    sae = load_sae(w.write_sparsify(tmp_path / "tc", sparsify_cfg("topk", False, True), sparsify_params(rng, False)))
    expect_error(lambda: fit_sae(model, sae), "transcoder", fix="transcode false")


def test_hook_head_index_refused(tmp_path):
    rng = np.random.default_rng(42)
    cfg = v6_cfg("standard")
    cfg["metadata"]["hook_head_index"] = 3
    expect_error(
        lambda: load_sae(w.write_saelens(tmp_path / "sae", cfg, saelens_params(rng, "standard"))),
        "attention head 3",
        fix="hook_head_index null",
    )


def test_batchtopk_without_threshold_refused(tmp_path):
    rng = np.random.default_rng(43)
    sd = dictionary_learning_state(rng, "BatchTopKSAE", -1.0)
    d = w.write_dictionary_learning(tmp_path / "ae", dictionary_learning_config("BatchTopKSAE"), sd)
    expect_error(lambda: load_sae(d), "no threshold", fix="AutoEncoderTopK")


def test_norm_scaling_factor_errors(tmp_path):
    rng = np.random.default_rng(44)
    p = saelens_params(rng, "standard")
    scaled = w.write_saelens(tmp_path / "scaled", v6_cfg("standard", "expected_average_only_in"), p)
    plain = w.write_saelens(tmp_path / "plain", v6_cfg("standard"), p)
    expect_error(lambda: load_sae(scaled), "expected_average_only_in", fix="--sae-norm-scale")
    expect_error(lambda: load_sae(plain, norm_scaling_factor=0.5), "not trained on scaled", fix="drop")
    for bad in (0.0, -1.0, float("nan")):
        expect_error(lambda bad=bad: load_sae(scaled, norm_scaling_factor=bad), "not a positive finite number")


# ---------------------------------------------------------------------------------------------
# SAELens release names, resolved through its public directory to hub folders (read offline here)


def test_release_saelens_gpt2_applies_the_release_overrides(tmp_path, hf_cache):
    """gpt2-small-res-jb: its SAEs' cfg.json say nothing of centring; the release's overrides do."""
    rng = np.random.default_rng(45)
    p, x = saelens_params(rng, "standard"), inputs(rng)
    cfg = pre6_cfg(hook_point="blocks.8.hook_resid_pre")
    w.write_saelens(tmp_path / "repo" / "blocks.8.hook_resid_pre", cfg, p)
    w.write_hf_cache(hf_cache, "jbloom/GPT2-Small-SAEs-Reformatted", tmp_path / "repo")
    sae = load_sae("gpt2-small-res-jb", sae_id="blocks.8.hook_resid_pre")
    check(sae, x, *ref_saelens(x, p, "standard"))
    assert sae.metadata["center_writing_weights"] is True
    assert sae.metadata["release"]["model"] == "openai-community/gpt2"
    assert sae.metadata["release"]["neuronpedia"] == "gpt2-small/8-res-jb"


def test_release_norm_scaling_factor_comes_from_the_directory(tmp_path, hf_cache):
    rng = np.random.default_rng(46)
    p, x = saelens_params(rng, "standard"), inputs(rng)
    folder = "gemma_2b_blocks.12.hook_resid_post_16384"
    cfg = v6_cfg("standard", "expected_average_only_in")
    w.write_saelens(tmp_path / "repo" / folder, cfg, p)
    w.write_hf_cache(hf_cache, "jbloom/Gemma-2b-Residual-Stream-SAEs", tmp_path / "repo")
    sae = load_sae("gemma-2b-res-jb", sae_id="blocks.12.hook_resid_post")
    factor = 0.21381938399317255  # SAELens pretrained_saes.yaml, gemma-2b-res-jb blocks.12.hook_resid_post
    xf = f64(x)
    f_ref = relu((xf * factor - p["b_dec"]) @ f64(p["W_enc"]) + p["b_enc"])
    check(sae, x, f_ref, (f_ref @ f64(p["W_dec"]) + p["b_dec"]) / factor)
    assert sae.metadata["norm_scaling_factor"] == factor


def test_release_gemma_scope_canonical(tmp_path, hf_cache):
    rng = np.random.default_rng(47)
    p, x = gemma_scope_params(rng, lower=False), inputs(rng)
    w.write_gemma_scope_npz(tmp_path / "repo" / "layer_12" / "width_16k" / "average_l0_82", p)
    w.write_hf_cache(hf_cache, "google/gemma-scope-2b-pt-res", tmp_path / "repo")
    sae = load_sae("gemma-scope-2b-pt-res-canonical", sae_id="layer_12/width_16k/canonical")
    check(sae, x, *ref_jumprelu_no_bdec(x, p))
    # The snapshot path lacks the repository's name; the hookpoint comes from the directory.
    assert sae.hook_name == "blocks.12.hook_resid_post"
    assert sae.metadata["release"]["model"] == "google/gemma-2-2b"


def test_release_errors(hf_cache):
    expect_error(lambda: load_sae("gemma-scope-2b-pt-res-canonical"), "holds 58 SAEs", fix="--sae-id")
    expect_error(
        lambda: load_sae("gemma-scope-2b-pt-res-canonical", sae_id="layer_12/width_16k/canonicl"),
        "no SAE 'layer_12/width_16k/canonicl'",
        "layer_12/width_16k/canonical",
    )
    expect_error(lambda: load_sae("llama_scope_lxr_8x", sae_id="l0r_8x"), "llama_scope", fix="save_model")
    expect_error(lambda: load_sae("gemma-scope-2b-pt-res-canonicl"), "close: gemma-scope-2b-pt-res-canonical")
    # Found in the directory but not downloaded: the hub error names the repository.
    expect_error(
        lambda: load_sae("gpt2-small-res-jb", sae_id="blocks.0.hook_resid_pre"), "jbloom/GPT2-Small-SAEs-Reformatted"
    )
