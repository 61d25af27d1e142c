"""Intruder: is the feature interpretable at all, whatever its label says? The judge sees no label.

Each of cfg.n_intruder groups holds GROUP - 1 of the feature's held-out activating windows (drawn
from its top and quantile windows) and one of its verified negatives, the intruder, at a uniformly
random place; the judge names each group's intruder, every group in one prompt. When the judge cannot
tell the feature's windows from the others, each group is right with probability exactly 1/GROUP,
independently (the places are drawn independently), so the number right is Binomial(n, 1/GROUP): the
p-value is that binomial's upper tail, the interval Wilson's. A low detection score beside a high
intruder score says the label is poor; a low intruder score says there may be nothing to name
(delphi's intruder test; Paulo & Belrose 2026 found it tracks human judgement).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from autointerp.judges.judge import Judge, map_bounded
from autointerp.records import IntruderTask
from autointerp.stages.score.scorers.base import Item, Outcome, Scorer, judged
from autointerp.stats import metrics

GROUP = 5  # windows a group: 4 of the feature's and the intruder (chance 1/5)


def binomial_tail(successes: int, n: int, p: float) -> float:
    """P(X >= successes) for X ~ Binomial(n, p), summed exactly."""
    return sum(math.comb(n, x) * p**x * (1 - p) ** (n - x) for x in range(successes, n + 1))


def groups(item: Item, cfg) -> tuple[list[list], list[int]] | None:
    """The groups shown and the 1-based place of each one's intruder; None when the sample is too small."""
    active, negatives = item.held.active, item.held.negatives
    if len(active) < GROUP - 1 or not negatives:
        return None
    rng = np.random.default_rng([cfg.seed, item.seed, GROUP])
    shown, places = [], []
    for g in range(cfg.n_intruder):
        members = [active[i] for i in rng.choice(len(active), GROUP - 1, replace=False)]
        place = int(rng.integers(GROUP))
        members.insert(place, negatives[g % len(negatives)])  # distinct intruders while there are enough
        shown.append(members)
        places.append(place + 1)
    return shown, places


class Intruder(Scorer):
    name, metric, chance, reads_label = "intruder", "accuracy", 1 / GROUP, False

    def samples(self, cfg) -> str:
        return (
            f"{cfg.n_intruder} groups of {GROUP - 1} held-out activating windows and 1 verified negative (the "
            "intruder) at a random place, no label, one prompt; share of intruders found"
        )

    def prompts_per_feature(self, cfg) -> int:
        return 1

    async def score(self, items: Sequence[Item], judge: Judge, cfg) -> list[Outcome]:
        return await map_bounded(lambda item: self._one(item, judge, cfg), list(items), judge.concurrency)

    async def _one(self, item: Item, judge: Judge, cfg) -> Outcome:
        drawn = groups(item, cfg)
        if drawn is None:
            return Outcome(metrics.Estimate(math.nan, math.nan, math.nan, 0, "too few windows"))
        shown, places = drawn
        answer = await judge.ask(IntruderTask(item.feature, shown))
        estimate = metrics.Estimate(math.nan, math.nan, math.nan, 0, "none")
        if answer.ok:
            right = sum(a == b for a, b in zip(answer.value, places))
            estimate = replace(
                metrics.wilson_interval(right, len(places)),
                method=f"wilson; exact binomial p against 1/{GROUP}",
                p_value=binomial_tail(right, len(places), 1 / GROUP),
            )
        return judged([answer], estimate)
