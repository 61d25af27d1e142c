"""Coherence: is the feature interpretable at all, whatever its label says? Needs no label and no judge.

The feature's activating windows and as many verified negatives are embedded (all-MiniLM-L6-v2, the
embedding scorer's windows). Each window's score is its mean cosine similarity to the feature's
activating windows (itself left out); the headline is the AUROC of those scores, activating windows
against negatives: 0.5 when the windows the feature fires on are no more alike than any corpus text,
1.0 when every one of them sits nearer the others than any negative does. The null is exact in kind:
the p-value is the share of random reassignments of the same windows to "activating" and "negative"
(cfg.n_permutations of them) that score as high. A low score beside a high coherence says the label is
poor; a low coherence says there may be nothing to name (delphi's example-embedding score is this
idea; Paulo & Belrose 2026 found such label-free scores track human judgement).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from autointerp.judges.judge import Judge
from autointerp.stages.score.scorers.base import Item, Outcome
from autointerp.stages.score.scorers.embedding import Embedded
from autointerp.stats import metrics


def centroid_scores(sims: np.ndarray, active: np.ndarray) -> np.ndarray:
    """Each window's mean cosine similarity to the windows marked active, itself left out, for every row
    of `active` [R, N] at once (sims [N, N], the diagonal ignored)."""
    sims = sims - np.diag(np.diag(sims))
    n_active = active.sum(axis=-1, keepdims=True)
    return (active @ sims) / np.maximum(n_active - active, 1)  # sims is symmetric


def coherence(vectors: np.ndarray, n_active: int, n_permutations: int, seed: int) -> metrics.Estimate:
    """AUROC of the leave-one-out centroid scores, the first n_active rows (unit vectors) against the rest,
    with the permutation p-value of that AUROC over random reassignments of which rows are active."""
    labels = np.arange(len(vectors)) < n_active
    sims = vectors @ vectors.T
    e = metrics.auroc(centroid_scores(sims, labels[None].astype(float))[0].tolist(), labels.tolist())
    if np.isnan(e.value):
        return e
    rng = np.random.default_rng(seed)
    shuffled = rng.permuted(np.tile(labels, (n_permutations, 1)), axis=1)  # each row shuffled on its own
    null = metrics.auroc_rows(centroid_scores(sims, shuffled.astype(float)), shuffled)
    p = (1 + int(np.sum(null >= e.value - 1e-12))) / (n_permutations + 1)
    return replace(e, method=e.method + "; permutation p over which windows are activating", p_value=p)


class Coherence(Embedded):
    name, metric, chance, reads_label = "coherence", "auroc", 0.5, False

    def samples(self, cfg) -> str:
        n = cfg.n_embedding
        return (
            f"{n} activating windows (half top, half quantile) and {n} verified negatives, no label; AUROC of each "
            "window's mean cosine similarity to the activating windows"
        )

    async def score(self, items: Sequence[Item], judge: Judge, cfg) -> list[Outcome]:
        helds = [item.held.take(cfg.n_embedding, cfg.n_embedding) for item in items]
        vectors = self.vectors({s.text for h in helds for s in h.active + h.negatives})
        out = []
        for item, held in zip(items, helds):
            matrix = np.stack([vectors[s.text] for s in held.active + held.negatives]).astype(np.float64)
            matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
            estimate = coherence(matrix, len(held.active), cfg.n_permutations, cfg.seed + item.seed)
            out.append(Outcome(estimate, asked=1))
        return out
