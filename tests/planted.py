"""A planted-feature SAE on the embedded model: latents whose meaning we know, and latents that have none.

- Concept latents: one per chosen word of the corpus, a linear probe (shrunk LDA direction: the
  word's mean activation against everyone else's, whitened) with a JumpReLU threshold above
  99.99% of the other tokens' projections, so it fires on that word and nearly nothing else.
- Random-direction latents that mean nothing: random unit directions orthogonal to the subspace
  that token identity moves along (the top 200 singular directions of the frequent tokens' mean
  activations), each thresholded to fire as often as one of the concept latents (matched density).
- Plain random directions (uniform on the sphere), matched the same way. At this early layer token
  identity dominates the residual stream, so such a direction's strongest activations are a stable
  set of tokens, and a label naming them does predict held-out activity: these are not meaningless,
  and a scorer should rank them between the two other groups.

Written as a SAELens jumprelu SAE reading the embedded model's `encoder.layer.2`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from autointerp.config import EMBEDDED_MODEL, CorpusConfig, ModelConfig
from autointerp.gather.corpus import iter_contexts, iter_documents
from autointerp.subject.model import SubjectModel
from autointerp.subject.sae import SAE, save_saelens

HOOKPOINT = "encoder.layer.2"


@dataclass
class Planted:
    path: Path
    concepts: dict[int, str]  # latent → the word it detects
    random: list[int]  # random directions orthogonal to token identity: no meaning to find
    plain_random: list[int]  # random directions on the whole sphere


def _activations(model: SubjectModel, corpus: CorpusConfig) -> tuple[np.ndarray, np.ndarray]:
    xs, ids = [], []
    for batch in iter_contexts(iter_documents(corpus), model.tokenizer, corpus, 64):
        with torch.no_grad():
            x = (
                model.activations(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask))
                .float()
                .numpy()
            )
        xs.append(x[batch.valid])
        ids.append(batch.input_ids[batch.valid])
    return np.concatenate(xs).astype(np.float64), np.concatenate(ids)


def build(
    directory: Path, corpus: CorpusConfig, n_concepts: int = 24, n_random: int = 24, n_plain: int = 8, seed: int = 0
) -> Planted:
    model = SubjectModel(ModelConfig(name=EMBEDDED_MODEL, hookpoint=HOOKPOINT, device="cpu"))
    x, ids = _activations(model, corpus)
    vocab = model.tokenizer.convert_ids_to_tokens(list(range(len(model.tokenizer))))
    counts = np.bincount(ids, minlength=len(vocab))
    candidates = [
        t
        for t in np.argsort(-counts)
        if 150 <= counts[t] <= 0.01 * len(ids) and vocab[t].isalpha() and len(vocab[t]) >= 4
    ]
    rng = np.random.default_rng(seed)
    chosen = [int(t) for t in rng.choice(candidates[:200], n_concepts, replace=False)]

    mean = x.mean(axis=0)
    x -= mean  # centred once, in place: every projection below is (x − mean)·w
    cov = x.T @ x / (len(x) - 1)
    cov = 0.8 * cov + 0.2 * np.trace(cov) / len(cov) * np.eye(len(cov))  # shrinkage keeps the probe stable
    directions, thresholds, densities = [], [], []
    for t in chosen:
        is_t = ids == t
        mean_t = x[is_t].mean(axis=0)
        mean_rest = -mean_t * is_t.sum() / (~is_t).sum()  # the centred rows sum to zero
        w = np.linalg.solve(cov, mean_t - mean_rest)
        w /= np.linalg.norm(w)
        proj = x @ w
        theta = float(np.quantile(proj[~is_t], 0.9999))
        directions.append(w)
        thresholds.append(theta)  # on the centred projection (x − mean)·w: the bias below centres it
        densities.append(float(np.mean(proj > theta)))
    biases = [-float(mean @ w) for w in directions]
    token_means = np.stack([x[ids == t].mean(axis=0) for t in np.argsort(-counts)[:400]])
    basis = np.linalg.svd(token_means, full_matrices=False)[2][:200]  # the directions token identity moves along
    for k in range(n_random + n_plain):
        u = rng.normal(size=x.shape[1])
        if k < n_random:
            u -= basis.T @ (basis @ u)
        u /= np.linalg.norm(u)
        proj = x @ u
        density = densities[k % len(densities)]
        directions.append(u)
        thresholds.append(float(np.quantile(proj, 1 - density)))
        biases.append(-float(mean @ u))
    W = torch.tensor(np.stack(directions, axis=1), dtype=torch.float32)  # [d_in, d_sae]
    # JumpReLU: pre = x·w − mean·w (the centred projection), firing where pre > threshold; the
    # activation is pre itself, so it grows with how far past the threshold the token lies.
    sae = SAE(
        W,
        torch.tensor(biases, dtype=torch.float32),
        W.T.contiguous(),
        torch.zeros(W.shape[0]),
        architecture="jumprelu",
        threshold=torch.tensor(thresholds, dtype=torch.float32),
        apply_b_dec_to_input=False,
    )
    save_saelens(sae, directory, hook_name=HOOKPOINT, model_name=EMBEDDED_MODEL)
    first_plain = n_concepts + n_random
    return Planted(
        directory,
        {i: vocab[t] for i, t in enumerate(chosen)},
        list(range(n_concepts, first_plain)),
        list(range(first_plain, first_plain + n_plain)),
    )
