"""Fuzzing: from the label alone, the judge says which snippets have the right tokens marked."""

from __future__ import annotations

from autointerp.judges.judge import Judge
from autointerp.records import FuzzTask
from autointerp.stages.score.sampling import HeldOut, fuzz_snippets
from autointerp.stages.score.scorers.base import Classifying, Item


class Fuzzing(Classifying):
    name = "fuzzing"

    def samples(self, cfg) -> str:
        return (
            "the detection sample with tokens marked: half of the top and half of the quantile windows with their "
            "true activating tokens, the other activating windows and every negative with marks on inactive tokens; "
            "correct = true marks"
        )

    def pairs(self, held: HeldOut, rng) -> list:
        return [(m, m.correct) for m in fuzz_snippets(held, rng)]

    def ask(self, judge: Judge, item: Item, marked):
        return judge.fuzz(FuzzTask(item.feature, item.label, marked))
