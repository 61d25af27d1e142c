"""A planted-feature SAE on the embedded model: latents whose meaning we know, and latents that have none.

- Concept latents: one per chosen word of the corpus, a linear probe (shrunk LDA direction: the
  word's mean activation against everyone else's, whitened) with a JumpReLU threshold above
  99.99% of the other tokens' projections, so it fires on that word and nearly nothing else.
- Role latents, concepts that are not a token: one per chosen word Y, a logistic-regression probe
  for "the token right after Y", whatever that token is (Y followed by many different tokens), so
  its firing tokens share a position in the text, not a spelling: a syntactic role. Thresholded
  like the concepts; a word is taken only where the probe finds at least MIN_ROLE_RECALL of the
  positions after it (the rest of what the layer encodes about the previous token is too weak).
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
MIN_ROLE_RECALL = 0.6


@dataclass
class Planted:
    path: Path
    concepts: dict[int, str]  # latent → the word it detects
    roles: dict[int, str]  # latent → the word after which it fires, on any token
    role_recall: dict[int, float]  # latent → the share of the tokens right after its word it fires on
    random: list[int]  # random directions orthogonal to token identity: no meaning to find
    plain_random: list[int]  # random directions on the whole sphere


def _activations(model: SubjectModel, corpus: CorpusConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each valid token's activation, id, and the id of the token before it in its context (-1 at the start)."""
    xs, ids, prev = [], [], []
    for batch in iter_contexts(iter_documents(corpus), model.tokenizer, corpus, 64):
        with torch.no_grad():
            x = (
                model.activations(torch.from_numpy(batch.input_ids), torch.from_numpy(batch.attention_mask))
                .float()
                .numpy()
            )
        xs.append(x[batch.valid])
        ids.append(batch.input_ids[batch.valid])
        before = np.full_like(batch.input_ids, -1)
        before[:, 1:] = batch.input_ids[:, :-1]
        prev.append(before[batch.valid])
    return np.concatenate(xs).astype(np.float64), np.concatenate(ids), np.concatenate(prev)


def _logistic_probe(x: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Weights of an L2-regularised logistic regression of target on x, the classes balanced."""
    xs = torch.tensor(x, dtype=torch.float32)
    y = torch.tensor(target, dtype=torch.float32)
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=100)
    balance = (len(y) - y.sum()) / y.sum()

    def loss():
        opt.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(xs @ w + b, y, pos_weight=balance)
        value = value + 1e-4 * (w * w).sum()
        value.backward()
        return value

    opt.step(loss)
    return w.detach().double().numpy()


def build(
    directory: Path,
    corpus: CorpusConfig,
    n_concepts: int = 24,
    n_roles: int = 8,
    n_random: int = 24,
    n_plain: int = 8,
    seed: int = 0,
) -> Planted:
    model = SubjectModel(ModelConfig(name=EMBEDDED_MODEL, hookpoint=HOOKPOINT, device="cpu"))
    x, ids, prev = _activations(model, corpus)
    vocab = model.tokenizer.convert_ids_to_tokens(list(range(len(model.tokenizer))))
    counts = np.bincount(ids, minlength=len(vocab))
    candidates = [
        t
        for t in np.argsort(-counts)
        if 150 <= counts[t] <= 0.01 * len(ids) and vocab[t].isalpha() and len(vocab[t]) >= 4
    ]
    rng = np.random.default_rng(seed)
    chosen = [int(t) for t in rng.choice(candidates[:200], n_concepts, replace=False)]
    # A role's word: frequent, alphabetic, followed by many different tokens (none a fifth of the time).
    follows = np.bincount(prev[prev >= 0], minlength=len(vocab))
    role_words = [
        int(y)
        for y in np.argsort(-follows)
        if 150 <= follows[y] <= 0.02 * len(ids)
        and vocab[y].isalpha()
        and int(y) not in chosen
        and np.bincount(ids[prev == y]).max() <= 0.2 * follows[y]
    ]
    # A generator of their own, so the random directions below stay the ones drawn before roles existed.
    order = np.random.default_rng(seed + 1).permutation(min(40, len(role_words)))

    mean = x.mean(axis=0)
    x -= mean  # centred once, in place: every projection below is (x − mean)·w
    cov = x.T @ x / (len(x) - 1)
    cov = 0.8 * cov + 0.2 * np.trace(cov) / len(cov) * np.eye(len(cov))  # shrinkage keeps the probe stable
    directions, thresholds, densities = [], [], []

    def plant(w: np.ndarray, is_t: np.ndarray) -> float:
        """Add the latent along w, firing above 99.99% of the other tokens; its recall on is_t."""
        w = w / np.linalg.norm(w)
        proj = x @ w
        theta = float(np.quantile(proj[~is_t], 0.9999))
        directions.append(w)
        thresholds.append(theta)  # on the centred projection (x − mean)·w: the bias below centres it
        densities.append(float(np.mean(proj > theta)))
        return float(np.mean(proj[is_t] > theta))

    for t in chosen:
        is_t = ids == t
        mean_t = x[is_t].mean(axis=0)
        mean_rest = -mean_t * is_t.sum() / (~is_t).sum()  # the centred rows sum to zero
        plant(np.linalg.solve(cov, mean_t - mean_rest), is_t)
    token_means = np.stack([x[ids == t].mean(axis=0) for t in np.argsort(-counts)[:400]])
    basis = np.linalg.svd(token_means, full_matrices=False)[2][:200]  # the directions token identity moves along
    for k in range(n_random + n_plain):
        u = rng.normal(size=x.shape[1])
        if k < n_random:
            u -= basis.T @ (basis @ u)
        u /= np.linalg.norm(u)
        proj = x @ u
        density = densities[k % n_concepts]
        directions.append(u)
        thresholds.append(float(np.quantile(proj, 1 - density)))
    # The roles come last, so the latents above keep the indices (and sampled windows) they had before roles.
    roles, recall = [], []
    scale = x.std(axis=0)
    for y in (role_words[i] for i in order):
        is_t = prev == y
        w = _logistic_probe(x / scale, is_t) / scale  # fitted on standardised activations
        r = plant(w, is_t)
        if r < MIN_ROLE_RECALL:
            directions.pop(), thresholds.pop(), densities.pop()
            continue
        roles.append(y)
        recall.append(r)
        if len(roles) == n_roles:
            break
    biases = [-float(mean @ w) for w in directions]
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
    first_role = first_plain + n_plain
    return Planted(
        directory,
        {i: vocab[t] for i, t in enumerate(chosen)},
        {first_role + i: vocab[y] for i, y in enumerate(roles)},
        {first_role + i: r for i, r in enumerate(recall)},
        list(range(n_concepts, first_plain)),
        list(range(first_plain, first_role)),
    )
