"""Train a TopK SAE on the spot (Gao et al. 2024), for users who have none and for the embedded default.

- TopK activation with an auxiliary loss (AuxK) that makes dead latents
  reconstruct the residual error, so few latents die.
- Decoder rows kept at unit norm (gradient component along each row removed,
  rows renormalised after every step).
- Inputs are centred and scaled to unit mean squared norm per dimension for
  training; that normalisation is folded into the saved weights, so the saved
  SAE reads raw hookpoint activations (SAELens v6, normalize_activations none).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from autointerp.config import TrainConfig
from autointerp.errors import AutointerpError
from autointerp.gather.corpus import ContextBatch
from autointerp.subject.sae import SAE


@dataclass
class SAEMetrics:
    fvu: float  # fraction of variance unexplained on held-out tokens
    l0: float  # mean number of active latents per token
    dead_fraction: float  # latents that never fire on the held-out tokens
    n_tokens: int

    def as_dict(self) -> dict:
        return {"fvu": self.fvu, "l0": self.l0, "dead_fraction": self.dead_fraction, "eval_tokens": self.n_tokens}


def held_out_rows(batch: ContextBatch) -> np.ndarray:
    """The batch's contexts held out from training and kept for evaluation: every 10th context of the corpus."""
    return batch.context_ids % 10 == 9


def collect_activations(
    model, batches: Iterable[ContextBatch], train_tokens: int, holdout_tokens: int, progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Hookpoint activations of real tokens: held_out_rows go to the held-out set, the rest to training."""
    from tqdm.auto import tqdm

    train, held, n_train, n_held = [], [], 0, 0
    bar = tqdm(
        total=train_tokens + holdout_tokens, desc="activations", unit="tok", unit_scale=True, disable=not progress
    )
    for batch in batches:
        held_rows = held_out_rows(batch)
        if (
            n_train >= train_tokens or n_held >= holdout_tokens
        ):  # one set is full: run the model only on the other's contexts
            keep = held_rows if n_train >= train_tokens else ~held_rows
            batch, held_rows = batch.take(keep), held_rows[keep]
            if not len(batch.context_ids):
                continue
        x = model.activations(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask)).float()
        valid = torch.from_numpy(batch.valid).to(x.device)
        to_held = torch.from_numpy(held_rows).to(x.device)
        for mask, out, room in (
            (valid & ~to_held[:, None], train, train_tokens - n_train),
            (valid & to_held[:, None], held, holdout_tokens - n_held),
        ):
            if room > 0:
                rows = x[mask][:room]
                out.append(rows)
                if out is train:
                    n_train += len(rows)
                else:
                    n_held += len(rows)
        bar.update(min(n_train, train_tokens) + min(n_held, holdout_tokens) - bar.n)
        if n_train >= train_tokens and n_held >= holdout_tokens:
            break
    bar.close()
    if holdout_tokens > 0 and not held:
        raise AutointerpError(
            "the corpus has fewer than 10 contexts, so no tokens can be held out to evaluate the SAE",
            "use a larger corpus (every 10th context is held out)",
        )
    width = model.width
    return (torch.cat(train) if train else torch.empty(0, width)), (torch.cat(held) if held else torch.empty(0, width))


class _TopKTrainer(torch.nn.Module):
    def __init__(self, d_in: int, cfg: TrainConfig, generator: torch.Generator):
        super().__init__()
        w = torch.randn(cfg.n_features, d_in, generator=generator)
        w = w / w.norm(dim=1, keepdim=True)
        self.W_dec = torch.nn.Parameter(w)
        self.W_enc = torch.nn.Parameter(w.T.clone())  # tied initialisation
        self.b_enc = torch.nn.Parameter(torch.zeros(cfg.n_features))
        self.b_dec = torch.nn.Parameter(torch.zeros(d_in))
        self.k = cfg.k

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def decode_sparse(self, values: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        # embedding_bag sums k weighted decoder rows per token: k·d work instead of d_sae·d.
        return F.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum")


def train_topk_sae(
    x_train: torch.Tensor, x_held: torch.Tensor, cfg: TrainConfig, progress: bool = True
) -> tuple[SAE, SAEMetrics, dict]:
    """Train on x_train [N, d]; return the folded SAE, its held-out metrics and a training log."""
    from tqdm.auto import tqdm

    device = x_train.device
    g = torch.Generator(device="cpu").manual_seed(cfg.seed)
    mu = x_train.mean(0)
    scale = ((x_train - mu).pow(2).sum(1).mean() / x_train.shape[1]).sqrt()
    d_in = x_train.shape[1]
    aux_k = cfg.aux_k or d_in // 2
    net = _TopKTrainer(d_in, cfg, g).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, betas=(0.9, 0.999))
    n = x_train.shape[0]
    steps = cfg.epochs * math.ceil(n / cfg.batch_tokens)
    last_fired = torch.zeros(cfg.n_features, dtype=torch.long, device=device)
    seen = 0
    start = time.perf_counter()
    bar = tqdm(total=steps, desc="train SAE", disable=not progress)
    log = []
    step = 0
    for _epoch in range(cfg.epochs):
        order = torch.randperm(n, generator=g).to(device)
        for i in range(0, n, cfg.batch_tokens):
            x = (x_train[order[i : i + cfg.batch_tokens]] - mu) / scale
            pre = net.pre(x)
            values, indices = pre.topk(cfg.k, dim=1)
            values = F.relu(values)
            recon = net.decode_sparse(values, indices) + net.b_dec
            err = x - recon
            total_var = (x - x.mean(0)).pow(2).sum()
            loss = err.pow(2).sum() / total_var
            loss_nmse = loss.detach()
            seen += len(x)
            fired = torch.zeros(cfg.n_features, dtype=torch.bool, device=device)
            fired[indices[values > 0]] = True
            last_fired[fired] = seen
            dead = (seen - last_fired) > cfg.dead_after_tokens
            aux = torch.zeros((), device=device)
            if bool(dead.any()):
                k_aux = min(aux_k, int(dead.sum()))
                aux_values, aux_idx = pre.masked_fill(~dead, -torch.inf).topk(k_aux, dim=1)
                aux_recon = net.decode_sparse(F.relu(aux_values), aux_idx)
                residual = err.detach()
                aux = (residual - aux_recon).pow(2).sum() / (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-8)
                loss = loss + cfg.aux_coef * aux
                aux = aux.detach()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():  # keep decoder rows on the unit sphere
                row = net.W_dec
                row.grad -= (row.grad * row).sum(1, keepdim=True) * row
            lr_scale = min(1.0, 10 * (1 - step / steps))  # linear decay over the last 10% of steps
            for group in opt.param_groups:
                group["lr"] = cfg.lr * lr_scale
            opt.step()
            with torch.no_grad():
                net.W_dec /= net.W_dec.norm(dim=1, keepdim=True)
            step += 1
            bar.update(1)
            if step % 50 == 0 or step == steps:
                entry = {"step": step, "nmse": float(loss_nmse), "aux": float(aux), "dead": int(dead.sum())}
                log.append(entry)
                bar.set_postfix(nmse=f"{entry['nmse']:.3f}", dead=entry["dead"])
    bar.close()
    with torch.no_grad():
        # Fold the normalisation in: f = s·f', so W_enc and W_dec stay, b_enc and b_dec absorb s and μ.
        sae = SAE(
            W_enc=net.W_enc.detach().clone(),
            b_enc=net.b_enc.detach() * scale,
            W_dec=net.W_dec.detach().clone(),
            b_dec=mu + scale * net.b_dec.detach(),
            architecture="topk",
            k=cfg.k,
            format="saelens",
        ).to(device)
    metrics = evaluate_sae(sae, x_held)
    return sae, metrics, {"seconds": time.perf_counter() - start, "steps": steps, "train_tokens": n, "log": log}


def loss_recovered(model, sae: SAE, batches: Iterable[ContextBatch], max_contexts: int = 64) -> dict:
    """For causal LMs: LM loss clean, with the SAE's reconstruction spliced in at the hookpoint,
    and with the hookpoint zero-ablated; recovered = (zero − spliced) / (zero − clean)."""
    ids, masks = [], []
    for batch in batches:
        held = held_out_rows(batch)
        ids.append(torch.from_numpy(batch.input_ids[held]))
        masks.append(torch.from_numpy(batch.attention_mask[held]))
        if sum(len(i) for i in ids) >= max_contexts:
            break
    input_ids, mask = torch.cat(ids)[:max_contexts], torch.cat(masks)[:max_contexts]
    if len(input_ids) == 0:
        return {}  # fewer than 10 contexts: nothing held out to measure on
    clean = spliced = zero = 0.0
    for i in range(0, len(input_ids), 8):
        x, m = input_ids[i : i + 8], mask[i : i + 8]
        w = len(x) / len(input_ids)
        clean += w * model.lm_loss(x, m)
        spliced += w * model.lm_loss(x, m, replace=lambda a: sae(a.to(sae.W_dec.dtype)).to(a.dtype))
        zero += w * model.lm_loss(x, m, replace=torch.zeros_like)
    return {
        "loss_clean": clean,
        "loss_spliced": spliced,
        "loss_zero_ablated": zero,
        "loss_recovered": (zero - spliced) / (zero - clean) if zero != clean else float("nan"),
        "loss_contexts": len(input_ids),
    }


@torch.no_grad()
def evaluate_sae(sae: SAE, x: torch.Tensor, chunk: int = 8192) -> SAEMetrics:
    """FVU, L0 and dead fraction of any SAE on activations x [N, d_in]."""
    err = 0.0
    l0 = 0.0
    fired = torch.zeros(sae.d_sae, dtype=torch.bool, device=x.device)
    mean = x.mean(0)
    total = (x - mean).pow(2).sum().item()
    for i in range(0, len(x), chunk):
        xi = x[i : i + chunk]
        f = sae.encode(xi)
        err += (xi - sae.decode(f, xi)).pow(2).sum().item()
        active = f > 0
        l0 += active.sum().item()
        fired |= active.any(0)
    return SAEMetrics(fvu=err / total, l0=l0 / len(x), dead_fraction=1 - fired.float().mean().item(), n_tokens=len(x))
