"""Steering: generate from a causal LM with one SAE feature pushed at the SAE's hookpoint.

Two edits, both made at every position (prompt and generated tokens) of the hookpoint's value x:
- add:   x ← x + s·m·d, where d is the feature's decoder row (rescaled by the SAE's input
  normalisation, if any), m the feature's max activation in the gather and s the scale;
- clamp: x ← x + (s·m − f(x))·d, where f(x) is the feature's activation on x: the feature is
  held at s·m and the SAE's reconstruction error stays in the residual stream.
So strength is in multiples of the feature's max activation; the summary also gives the added
vector's norm against the hookpoint's typical norm on the prompt, the unit that decides whether
text stays fluent (a quarter of it already shows; the whole of it tends to repeat one token).
The unsteered continuation is generated with the same seed, so any difference is the edit's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from autointerp.config import SteerConfig
from autointerp.errors import AutointerpError


@dataclass
class SteerResult:
    feature: int
    prompt: str
    mode: str  # "add" or "clamp"
    scale: float  # multiples of max activation
    activation: float  # scale × max activation, in the feature's units
    added_norm: float  # norm of the added vector (add) or its mean over positions (clamp)
    residual_norm: float  # median norm of the hookpoint's value over the prompt's tokens
    unsteered: str
    steered: str
    seed: int
    temperature: float
    max_new_tokens: int

    def lines(self) -> list[str]:
        what = "added" if self.mode == "add" else "clamped at"
        return [
            f"feature {self.feature}: {what} {self.scale:g} × max activation = {self.activation:.3g}; "
            f"vector norm {self.added_norm:.3g} = {self.added_norm / self.residual_norm:.2f} × the median residual "
            f"norm ({self.residual_norm:.3g}) on the prompt",
            f"prompt:    {self.prompt}",
            f"unsteered: {self.unsteered}",
            f"steered:   {self.steered}",
        ]


def add_edit(sae, feature: int, amount: float):
    return lambda x: (
        x + sae.feature_delta(feature, torch.full((*x.shape[:-1], 1), amount, device=x.device), x).to(x.dtype)
    )


def clamp_edit(sae, feature: int, value: float):
    def edit(x):
        now = sae.encode(x)[..., feature : feature + 1]
        return x + sae.feature_delta(feature, value - now, x).to(x.dtype)

    return edit


def content_norm(acts: torch.Tensor, attention_mask: torch.Tensor) -> float:
    """Median norm of hookpoint values acts [B, T, d] over real tokens, the first one left out: in
    most causal LMs the first position's norm is an outlier many times the rest."""
    acts = acts.float()
    mask = attention_mask.to(acts.device).bool().clone()
    if mask.shape[1] > 1:
        mask[:, 0] = False
    norms = acts.norm(dim=-1)[mask]
    return float(norms.median()) if len(norms) else float(acts.norm(dim=-1).median())


def steer(subject, cfg: SteerConfig, unsteered: str | None = None) -> SteerResult:
    """The steered and the unsteered continuation of cfg.prompt, with the same seed. `unsteered`, when
    given, is that continuation from an earlier call with the same prompt and generation settings, which
    no feature changes: a caller trying many features generates it once."""
    model, sae = subject.model, subject.sae
    model.require_causal("steering")
    top = subject.feature_max(cfg.feature)
    if top <= 0:
        raise AutointerpError(
            f"feature {cfg.feature} never fired in the gather, so it has no max activation to scale by",
            "pick a feature that fires (autointerp show lists them), or one with a label",
        )
    enc = model.tokenizer(cfg.prompt, return_tensors="pt")
    n_ctx = getattr(model.model.config, "max_position_embeddings", None)
    if n_ctx and enc.input_ids.shape[1] + cfg.max_new_tokens > n_ctx:
        raise AutointerpError(
            f"the prompt is {enc.input_ids.shape[1]:,} tokens and {cfg.max_new_tokens} more are asked for, past the "
            f"model's context of {n_ctx:,}",
            "shorten the prompt or lower --max-new-tokens",
        )
    ids, mask = enc.input_ids.to(model.device), enc.attention_mask.to(model.device)
    mode, scale = ("add", cfg.scale) if cfg.scale is not None else ("clamp", cfg.clamp)
    amount = scale * top
    edit = add_edit(sae, cfg.feature, amount) if mode == "add" else clamp_edit(sae, cfg.feature, amount)
    with torch.inference_mode():
        x = model.activations(ids, mask)
        added_norm = float((edit(x) - x).float().norm(dim=-1).mean())
    residual_norm = content_norm(x, mask)

    def generate() -> str:
        torch.manual_seed(cfg.seed)
        sampling = (
            {"do_sample": True, "temperature": cfg.temperature, "top_k": 0, "top_p": 1.0}
            if cfg.temperature > 0
            else {"do_sample": False}
        )
        with torch.inference_mode():
            out = model.model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=cfg.max_new_tokens,
                pad_token_id=model.tokenizer.pad_token_id or model.tokenizer.eos_token_id,
                **sampling,
            )
        return model.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)

    unsteered = generate() if unsteered is None else unsteered
    with model.editing(edit):
        steered = generate()
    return SteerResult(
        cfg.feature,
        cfg.prompt,
        mode,
        scale,
        amount,
        added_norm,
        residual_norm,
        unsteered,
        steered,
        cfg.seed,
        cfg.temperature,
        cfg.max_new_tokens,
    )


def norm_scale(subject, feature: int, prompt: str, strength: float) -> float:
    """The add-scale (in multiples of the feature's max activation) whose added vector's norm is
    `strength` × the hookpoint's median norm on `prompt`: one strength for features of any size."""
    model, sae = subject.model, subject.sae
    enc = model.tokenizer(prompt, return_tensors="pt")
    ids, mask = enc.input_ids.to(model.device), enc.attention_mask.to(model.device)
    with torch.inference_mode():
        x = model.activations(ids, mask)
        one = add_edit(sae, feature, subject.feature_max(feature))(x) - x  # one max activation's worth
    per_max = float(one.float().norm(dim=-1).mean())
    return strength * content_norm(x, mask) / per_max if per_max > 0 else 0.0


# ----------------------------------------------------------------------------
# amplification on neutral prompts: what a direction makes the model say next


def neutral_prompts(limit: int | None = None) -> list[str]:
    from importlib.resources import files

    text = files("autointerp.data").joinpath("neutral_prompts.txt").read_text(encoding="utf-8")
    prompts = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return prompts[:limit] if limit else prompts


@dataclass
class Probe:
    """Neutral prompts tokenised one by one (no padding, so each is read exactly), their clean
    next-token log-probabilities [P, V], and the hookpoint's typical norm on them."""

    prompts: list[str]
    ids: list[torch.Tensor]
    clean: torch.Tensor
    residual_norm: float


def _last_logits(model, ids: torch.Tensor) -> torch.Tensor:
    mask = torch.ones_like(ids)
    try:  # transformers computes the unembedding for the last position only
        out = model.model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=1)
    except TypeError:
        out = model.model(input_ids=ids, attention_mask=mask, use_cache=False)
    return out.logits[:, -1].float()


@torch.inference_mode()
def make_probe(model, n_prompts: int | None = None) -> Probe:
    model.require_causal("amplifying features")
    prompts = neutral_prompts(n_prompts)
    ids = [model.tokenizer(p, return_tensors="pt").input_ids.to(model.device) for p in prompts]
    clean = torch.cat([_last_logits(model, i) for i in ids]).log_softmax(-1)
    norms = [content_norm(model.activations(i, torch.ones_like(i)), torch.ones_like(i)) for i in ids]
    return Probe(prompts, ids, clean, float(torch.tensor(norms).median()))


@torch.inference_mode()
def amplified_logprobs(
    model, probe: Probe, vectors: torch.Tensor, rows: int = 256, keep: torch.Tensor | None = None
) -> torch.Tensor:
    """Next-token log-probabilities [R, P, V] on each neutral prompt with vectors [R, d] added to
    the hookpoint's value at every position, one vector per batch row; with `keep` (token ids),
    only those columns [R, P, len(keep)]."""
    vectors = vectors.to(model.device)
    width = probe.clean.shape[-1] if keep is None else len(keep)
    out = torch.empty(len(vectors), len(probe.ids), width)
    for start in range(0, len(vectors), rows):
        part = vectors[start : start + rows]
        for p, ids in enumerate(probe.ids):
            with model.editing(lambda x, part=part: x + part[:, None, :].to(x.dtype)):
                lp = _last_logits(model, ids.expand(len(part), -1)).log_softmax(-1).cpu()
            out[start : start + len(part), p] = lp if keep is None else lp[:, keep]
    return out


def random_directions(n: int, width: int, seed: int) -> torch.Tensor:
    """n seeded directions uniform on the unit sphere [n, width]."""
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, width, generator=g)
    return v / v.norm(dim=-1, keepdim=True)


def unit_directions(sae, features) -> torch.Tensor:
    """The features' decoder rows, each scaled to norm 1 [F, d]."""
    rows = sae.W_dec[torch.as_tensor(list(features), dtype=torch.long, device=sae.W_dec.device)].float()
    return rows / rows.norm(dim=-1, keepdim=True).clamp_min(1e-12)
