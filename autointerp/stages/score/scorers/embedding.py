"""Embedding: how well the label's similarity to each window separates activating from negative
ones. Needs no judge: the label and the windows are embedded with all-MiniLM-L6-v2."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from autointerp.judges.judge import Judge
from autointerp.stages.score.scorers.base import Item, Outcome, Scorer
from autointerp.stats import metrics

# Window vectors kept between calls: the coherence scorer, the shuffle control and a later sample's
# scores read the windows the embedding scorer embedded. 65,536 MiniLM vectors are about 100 MB, more than
# the distinct windows of a default run (its negatives are shared between features).
CACHED_TEXTS = 65_536


class Embedded(Scorer):
    """What the scorers that embed windows share: all-MiniLM-L6-v2, loaded once on first use for all of
    them, each text embedded once (up to CACHED_TEXTS recent ones), and no judge."""

    uses_judge = False
    _shared = None  # the Embedder, shared by every scorer of this family
    _cache: OrderedDict[str, np.ndarray] = OrderedDict()  # text -> its vector, least recently used first

    @staticmethod
    def forget() -> None:
        """Drop the cached window vectors (a benchmark timing each scorer from scratch)."""
        Embedded._cache.clear()

    def prompts_per_feature(self, cfg) -> int:
        return 0

    def judge_name(self) -> str:
        e = self._embedder()
        return f"{self.name}:{e.name}:{e.precision}"

    def _embedder(self):
        if Embedded._shared is None:
            from autointerp.stats.embed import Embedder

            Embedded._shared = Embedder(precision="auto")
        return Embedded._shared

    def vectors(self, texts: set[str]) -> dict[str, np.ndarray]:
        """Each text's embedding (unit norm); the texts not embedded before are embedded in one batch."""
        cache = Embedded._cache
        new = sorted(t for t in texts if t not in cache)
        if new:
            cache.update(zip(new, self._embedder().encode(new)))
        for text in texts:
            cache.move_to_end(text)
        found = {text: cache[text] for text in texts}
        while len(cache) > CACHED_TEXTS:
            cache.popitem(last=False)
        return found


class Embedding(Embedded):
    name, metric, chance = "embedding", "auroc", 0.5

    def samples(self, cfg) -> str:
        n = cfg.n_embedding
        return (
            f"{n} activating windows (half top, half quantile) and {n} verified negatives; "
            "AUROC of label–window cosine similarity"
        )

    async def score(self, items: Sequence[Item], judge: Judge, cfg) -> list[Outcome]:
        helds = [item.held.take(cfg.n_embedding, cfg.n_embedding) for item in items]
        vectors = self.vectors({s.text for h in helds for s in h.active + h.negatives} | {i.label for i in items})
        out = []
        for item, held in zip(items, helds):
            sims = [float(vectors[s.text] @ vectors[item.label]) for s in held.active + held.negatives]
            out.append(Outcome(metrics.auroc(sims, [True] * len(held.active) + [False] * len(held.negatives)), asked=1))
        return out
