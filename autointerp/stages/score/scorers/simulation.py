"""Simulation: from the label alone, the judge predicts each token's activation 0–10."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from autointerp.judges.judge import Judge, map_bounded
from autointerp.records import SimulationTask
from autointerp.stages.score.scorers.base import Item, Outcome, Scorer, judged
from autointerp.stats import metrics


class Simulation(Scorer):
    name, metric, chance = "simulation", "pearson", 0.0

    def prompts_per_feature(self, cfg) -> int:
        return 1

    def samples(self, cfg) -> str:
        n = cfg.n_simulation
        return (
            f"{n} activating windows (half top, half quantile) and {n} verified negatives in one prompt; Pearson r of "
            "predicted vs true activations pooled over tokens, interval and null over whole windows"
        )

    async def score(self, items: Sequence[Item], judge: Judge, cfg) -> list[Outcome]:
        return await map_bounded(lambda item: self._one(item, judge, cfg), list(items), judge.concurrency)

    async def _one(self, item: Item, judge: Judge, cfg) -> Outcome:
        held = item.held.take(cfg.n_simulation, cfg.n_simulation)
        shown = held.active + held.negatives
        answer = await judge.simulate(SimulationTask(item.feature, item.label, shown))
        estimate = metrics.Estimate(math.nan, math.nan, math.nan, 0, "none")
        if answer.ok:
            pred = np.concatenate([np.asarray(p, float) for p in answer.value])
            true = np.concatenate([np.asarray(s.values(), float) for s in shown])
            groups = np.concatenate([np.full(len(s.tokens), i) for i, s in enumerate(shown)])
            estimate = metrics.pearson(pred, true, groups=groups, n_permutations=cfg.n_permutations, seed=item.seed)
        return judged([answer], estimate)
