"""Embedding: how well the label's similarity to each window separates activating from negative
ones. Needs no judge: the label and the windows are embedded with all-MiniLM-L6-v2."""

from __future__ import annotations

from collections.abc import Sequence

from autointerp.judges.judge import Judge
from autointerp.stages.score.scorers.base import Item, Outcome, Scorer
from autointerp.stats import metrics


class Embedding(Scorer):
    name, metric, chance, uses_judge = "embedding", "auroc", 0.5, False

    def __init__(self):
        self.embedder = None

    def prompts_per_feature(self, cfg) -> int:
        return 0

    def samples(self, cfg) -> str:
        n = cfg.n_embedding
        return (
            f"{n} activating windows (half top, half quantile) and {n} verified negatives; "
            "AUROC of label–window cosine similarity"
        )

    def judge_name(self) -> str:
        e = self._embedder()
        return f"embedding:{e.name}:{e.precision}"

    def _embedder(self):
        if self.embedder is None:
            from autointerp.stats.embed import Embedder

            self.embedder = Embedder(precision="auto")
        return self.embedder

    async def score(self, items: Sequence[Item], judge: Judge, cfg) -> list[Outcome]:
        helds = [item.held.take(cfg.n_embedding, cfg.n_embedding) for item in items]
        texts = sorted({s.text for h in helds for s in h.active + h.negatives} | {item.label for item in items})
        vectors = dict(zip(texts, self._embedder().encode(texts))) if texts else {}
        out = []
        for item, held in zip(items, helds):
            sims = [float(vectors[s.text] @ vectors[item.label]) for s in held.active + held.negatives]
            out.append(Outcome(metrics.auroc(sims, [True] * len(held.active) + [False] * len(held.negatives)), asked=1))
        return out
