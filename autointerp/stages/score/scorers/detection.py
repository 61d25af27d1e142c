"""Detection: from the label alone, the judge says which unmarked snippets the feature fires on."""

from __future__ import annotations

from autointerp.judges.judge import Judge
from autointerp.records import DetectionTask
from autointerp.stages.score.sampling import HeldOut
from autointerp.stages.score.scorers.base import Classifying, Item


class Detection(Classifying):
    name = "detection"

    def samples(self, cfg) -> str:
        return (
            f"{cfg.n_top} highest and {cfg.n_strata} quantile windows (one per activation stratum) against "
            f"{cfg.n_negative} verified non-activating windows, score split, shuffled, "
            f"{cfg.snippets_per_prompt} per prompt, unmarked"
        )

    def pairs(self, held: HeldOut, rng) -> list:
        return [(s, True) for s in held.active] + [(s, False) for s in held.negatives]

    def ask(self, judge: Judge, item: Item, snippets):
        return judge.detect(DetectionTask(item.feature, item.label, snippets))
