"""What each scorer is shown: held-out snippets stratified over every activation range.

Only score-split windows reach a scorer. A feature's activating sample is stratified:
`n_top` of its highest windows, then one window from each of `n_strata` equal slices of its
activation-quantile bins (slice k holds bins k·B/S … (k+1)·B/S − 1; the bin inside a slice
and the window inside the bin are drawn with a seed per feature), so a label is tested on weak
activations as well as on its peaks. The non-activating sample is verified negatives (every
token's activation exactly 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autointerp.judges.prompts import activation_marks
from autointerp.records import FeatureSnippets, MarkedSnippet, Snippet


@dataclass
class HeldOut:
    top: list[Snippet]  # highest activating windows, by rank
    quantile: list[Snippet]  # one per activation stratum, weakest first
    negatives: list[Snippet]

    @property
    def active(self) -> list[Snippet]:
        return self.top + self.quantile

    def take(self, n_active: int, n_negative: int) -> HeldOut:
        """A smaller sample keeping the strata balanced: about half top, half quantile."""
        n_top = min(len(self.top), (n_active + 1) // 2)
        n_quantile = min(len(self.quantile), n_active - n_top)
        n_top = min(len(self.top), n_active - n_quantile)
        spread = np.linspace(0, len(self.quantile) - 1, n_quantile).round().astype(int) if n_quantile else []
        return HeldOut(self.top[:n_top], [self.quantile[i] for i in dict.fromkeys(spread)], self.negatives[:n_negative])


def held_out(fs: FeatureSnippets, n_top: int, n_strata: int, n_negative: int, seed: int) -> HeldOut:
    rng = np.random.default_rng([seed, fs.feature])
    top = [s for s in fs.score if s.kind == "top"][:n_top]
    by_bin: dict[int, list[Snippet]] = {}
    for s in fs.score:
        if s.kind == "quantile" and s.quantile is not None and s.quantile >= 0:
            by_bin.setdefault(s.quantile, []).append(s)
    quantile = []
    if by_bin:
        bins = sorted(by_bin)
        n_bins = max(bins) + 1
        for k in range(min(n_strata, len(bins))):
            lo, hi = k * n_bins // n_strata, max(k * n_bins // n_strata + 1, (k + 1) * n_bins // n_strata)
            present = [b for b in bins if lo <= b < hi]
            if not present:
                continue
            pool = by_bin[int(rng.choice(present))]
            quantile.append(pool[int(rng.integers(len(pool)))])
    return HeldOut(top, quantile, fs.score_negatives[:n_negative])


def fuzz_snippets(held: HeldOut, rng: np.random.Generator) -> list[MarkedSnippet]:
    """Half of the activating snippets of each stratum (top and quantile) keep their true marks; the
    others, and every negative, get as many marks placed on tokens that do not activate."""
    out = []
    for group in (held.top, held.quantile):
        keep = set(rng.permutation(len(group))[: (len(group) + 1) // 2].tolist())
        for i, s in enumerate(group):
            true = activation_marks(s)
            if i in keep:
                out.append(MarkedSnippet(s, true, True))
                continue
            quiet = [j for j, m in enumerate(true) if not m]
            n = min(max(sum(true), 1), len(quiet))
            if n == 0:
                continue
            wrong = set(rng.choice(quiet, n, replace=False).tolist())
            out.append(MarkedSnippet(s, tuple(j in wrong for j in range(len(true))), False))
    for s in held.negatives:
        n = max(1, min(3, len(s.tokens) // 8))
        wrong = set(rng.choice(len(s.tokens), n, replace=False).tolist())
        out.append(MarkedSnippet(s, tuple(j in wrong for j in range(len(s.tokens))), False))
    return out


def derangement(features: list[int], seed: int) -> dict[int, int]:
    """feature → the feature whose label it is scored against in the shuffle control (never itself)."""
    if len(features) < 2:
        return {}
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(features))
    # A random cyclic shift of a random order has no fixed point.
    return {features[order[i]]: features[order[(i + 1) % len(order)]] for i in range(len(order))}
