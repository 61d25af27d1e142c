"""The scorers: one adapter per way of testing a label, behind one interface, registered in SCORERS.

A scorer takes (feature, label, held-out sample) items and returns one `Outcome` each: its
headline metric with a 95% interval, the n behind it (the unit the interval resamples), and a
one-sided p-value against the permutation null "the label says nothing about which snippets
are active" (metrics.py). A failed or unparsable judge answer makes the outcome "failed";
a defined set of answers whose metric has no value (constant predictions) makes it
"undefined". Neither is ever counted as a score.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from .. import metrics
from ..judges import Judge, map_bounded
from ..records import DetectionTask, FuzzTask, JudgeAnswer, SimulationTask
from .sampling import HeldOut, fuzz_snippets


@dataclass
class Outcome:
    """One feature scored with one label by one scorer."""

    estimate: metrics.Estimate
    failed: int = 0  # judge answers that failed
    asked: int = 0  # judge answers asked for
    error: str | None = None
    prompt_hash: str | None = None
    call_ids: list[int] = field(default_factory=list)  # the logged LLM calls behind it

    @property
    def status(self) -> str:
        if self.failed:
            return "failed"
        return "ok" if not math.isnan(self.estimate.value) else "undefined"


@dataclass(frozen=True)
class Item:
    feature: int
    label: str
    held: HeldOut
    seed: int


class Scorer(Protocol):
    name: str
    metric: str  # the headline metric
    chance: float  # what an uninformative label scores on average
    uses_judge: bool  # asks the judge (and so costs calls), or not

    def samples(self, cfg) -> str:
        """What it shows, in words, for the report."""

    def prompts_per_feature(self, cfg) -> int:
        """Judge requests it makes for one feature and one label (0: it asks no judge)."""

    async def score(self, items: Sequence[Item], judge: Judge, cfg) -> list[Outcome]: ...


def _failure_text(answers: list[JudgeAnswer]) -> str | None:
    errors = [a.error for a in answers if not a.ok]
    return "; ".join(dict.fromkeys(e or "no value" for e in errors)) or None


def _judged(answers: list[JudgeAnswer], estimate: metrics.Estimate) -> Outcome:
    hashes = [a.prompt_hash for a in answers if a.prompt_hash]
    failed = sum(not a.ok for a in answers)
    if failed:  # a score on the prompts that happened to be answered is not this scorer's score
        estimate = metrics.Estimate(math.nan, math.nan, math.nan, 0, estimate.method)
    return Outcome(estimate, failed, len(answers), _failure_text(answers), hashes[0] if hashes else None,
                   [a.call_id for a in answers if a.call_id is not None])


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class _Classifying:
    """Detection and fuzzing: the judge says 1/0 per snippet, shuffled, in prompts of cfg.per_prompt."""

    metric, chance, uses_judge = "balanced_accuracy", 0.5, True

    def prompts_per_feature(self, cfg) -> int:
        return math.ceil((cfg.n_top + cfg.n_strata + cfg.n_negative) / cfg.per_prompt)

    async def score(self, items: Sequence[Item], judge: Judge, cfg) -> list[Outcome]:
        return await map_bounded(lambda item: self._one(item, judge, cfg), list(items), judge.concurrency)

    async def _one(self, item: Item, judge: Judge, cfg) -> Outcome:
        rng = np.random.default_rng([cfg.seed, item.seed])
        pairs = self._pairs(item.held, rng)
        pairs = [pairs[i] for i in rng.permutation(len(pairs))]
        groups = _chunks(pairs, cfg.per_prompt)
        answers = await asyncio.gather(*(self._ask(judge, item, [x for x, _ in g]) for g in groups))
        y_true = [t for g in groups for _, t in g]
        y_pred = [v for a in answers for v in (a.value or [])] if all(a.ok for a in answers) else []
        if len(y_pred) != len(y_true):
            estimate = metrics.Estimate(math.nan, math.nan, math.nan, 0, "none")
        else:
            estimate = metrics.classification_scores(y_true, y_pred, n_boot=cfg.n_boot, seed=item.seed)["balanced_accuracy"]
        return _judged(list(answers), estimate)


class Detection(_Classifying):
    name = "detection"

    def samples(self, cfg) -> str:
        return (f"{cfg.n_top} highest and {cfg.n_strata} quantile windows (one per activation stratum) against "
                f"{cfg.n_negative} verified non-activating windows, score split, shuffled, {cfg.per_prompt} per prompt, unmarked")

    def _pairs(self, held: HeldOut, rng) -> list:
        return [(s, True) for s in held.active] + [(s, False) for s in held.negatives]

    def _ask(self, judge: Judge, item: Item, snippets):
        return judge.detect(DetectionTask(item.feature, item.label, snippets))


class Fuzzing(_Classifying):
    name = "fuzzing"

    def samples(self, cfg) -> str:
        return ("the detection sample with tokens marked: half of the top and half of the quantile windows with their "
                "true activating tokens, the other activating windows and every negative with marks on inactive tokens; "
                "correct = true marks")

    def _pairs(self, held: HeldOut, rng) -> list:
        return [(m, m.correct) for m in fuzz_snippets(held, rng)]

    def _ask(self, judge: Judge, item: Item, marked):
        return judge.fuzz(FuzzTask(item.feature, item.label, marked))


class Simulation:
    name, metric, chance, uses_judge = "simulation", "pearson", 0.0, True

    def prompts_per_feature(self, cfg) -> int:
        return 1

    def samples(self, cfg) -> str:
        n = cfg.n_simulation
        return (f"{n} activating windows (half top, half quantile) and {n} verified negatives in one prompt; Pearson r of "
                "predicted vs true activations pooled over tokens, interval and null over whole windows")

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
        return _judged([answer], estimate)


class Embedding:
    """Needs no judge: the label and the snippets are embedded with all-MiniLM-L6-v2."""

    name, metric, chance, uses_judge = "embedding", "auroc", 0.5, False

    def __init__(self):
        self.embedder = None

    def prompts_per_feature(self, cfg) -> int:
        return 0

    def samples(self, cfg) -> str:
        n = cfg.n_embedding
        return f"{n} activating windows (half top, half quantile) and {n} verified negatives; AUROC of label–window cosine similarity"

    def judge_name(self) -> str:
        e = self._embedder()
        return f"embedding:{e.name}:{e.precision}"

    def _embedder(self):
        if self.embedder is None:
            from ..embed import Embedder

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


SCORERS: dict[str, Scorer] = {s.name: s for s in (Detection(), Fuzzing(), Simulation(), Embedding())}
HEADLINE = {name: s.metric for name, s in SCORERS.items()}
CHANCE = {s.metric: s.chance for s in SCORERS.values()}
