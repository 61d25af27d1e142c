"""Output-centric descriptions: what each feature does to the model's next-token prediction.

Input-centric labels (from max-activating text) miss what a feature causes. For causal LMs we
store, per alive feature, two output views (Gur-Arieh et al. 2025):
- vocabulary projection: the tokens its decoder direction promotes and suppresses most when read
  alone through the final norm and the unembedding (Neuronpedia's top and bottom logits);
- token change: the tokens whose next-token probability rises most, averaged over neutral
  prompts, when the direction is added at the hookpoint with a norm of `strength` × the
  hookpoint's median norm on those prompts.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pandas as pd
import torch

from autointerp.config import OutputEffectsConfig
from autointerp.subject.steer import amplified_logprobs, make_probe, unit_directions


@dataclass
class EffectsResult:
    rows: pd.DataFrame  # feature, kind (promoted | suppressed | amplified), rank, token_id, value
    settings: dict
    seconds: float


def output_effects(model, sae, features: list[int], cfg: OutputEffectsConfig, progress: bool = True) -> EffectsResult:
    from tqdm.auto import tqdm

    start = time.perf_counter()
    frames = []
    probe = make_probe(model, cfg.n_prompts) if cfg.token_change else None
    clean = probe.clean.exp() if probe else None
    bar = tqdm(total=len(features), desc="output effects", unit="feat", disable=not progress)
    for i in range(0, len(features), cfg.chunk):
        part = features[i : i + cfg.chunk]
        directions = unit_directions(sae, part)
        logits = model.unembed_directions(directions).cpu()
        top = logits.topk(cfg.k, dim=-1)
        bottom = (-logits).topk(cfg.k, dim=-1)
        frames += [
            _frame(part, "promoted", top.indices, top.values),
            _frame(part, "suppressed", bottom.indices, -bottom.values),
        ]
        if probe is not None:
            logprobs = amplified_logprobs(model, probe, directions * (cfg.strength * probe.residual_norm))
            change = (logprobs.exp() - clean).mean(dim=1)  # [F, V]: probability gained, averaged over prompts
            rise = change.topk(cfg.k, dim=-1)
            frames.append(_frame(part, "amplified", rise.indices, rise.values))
        bar.update(len(part))
    bar.close()
    settings = {
        "k": cfg.k,
        "token_change": cfg.token_change,
        "strength": cfg.strength,
        "n_prompts": len(probe.prompts) if probe else 0,
        "residual_norm": probe.residual_norm if probe else None,
    }
    return EffectsResult(
        pd.concat(frames, ignore_index=True)
        if frames
        else _frame([], "promoted", torch.empty(0, 0), torch.empty(0, 0)),
        settings,
        time.perf_counter() - start,
    )


def _frame(features: list[int], kind: str, indices: torch.Tensor, values: torch.Tensor) -> pd.DataFrame:
    k = indices.shape[1] if indices.ndim == 2 else 0
    return pd.DataFrame(
        {
            "feature": [f for f in features for _ in range(k)],
            "kind": kind,
            "rank": [r for _ in features for r in range(k)],
            "token_id": indices.reshape(-1).numpy().astype("int32"),
            "value": values.reshape(-1).numpy().astype("float64"),
        }
    )
