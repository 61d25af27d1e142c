"""What every scorer shares: the interface (`Scorer`, whose class attributes are the registry's
data), its input (`Item`) and output (`Outcome`), and the classifying scorers' common procedure.

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
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from autointerp.judges.judge import Judge, map_bounded
from autointerp.records import JudgeAnswer
from autointerp.stages.score.sampling import HeldOut
from autointerp.stats import metrics


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


class Scorer:
    """One way of testing a label. A subclass sets the class attributes and implements the methods.

    A scorer that asks the judge puts its question as a task (a subclass of records.LabelTask,
    which may live in the scorer's module) whose `prompt` names a row of judges.prompts.TASKS, named
    like the scorer (calls are logged, and estimated, under it), and asks it with `judge.ask`. A scorer that asks
    no judge says who scored in `judge_name`."""

    name: ClassVar[str]
    metric: ClassVar[str]  # the headline metric
    chance: ClassVar[float]  # what an uninformative label scores on average
    uses_judge: ClassVar[bool] = True  # asks the judge (and so costs calls), or not
    needs_subject: ClassVar[bool] = False  # runs the subject model: `bind` it first; never run by default
    reads_label: ClassVar[bool] = True  # False: scores the feature itself, so no shuffled-label control

    def samples(self, cfg) -> str:
        """What it shows, in words, for the report."""
        raise NotImplementedError

    def prompts_per_feature(self, cfg) -> int:
        """Judge requests it makes for one feature and one label (0: it asks no judge)."""
        raise NotImplementedError

    async def score(self, items: Sequence[Item], judge: Judge, cfg) -> list[Outcome]:
        raise NotImplementedError

    def judge_name(self) -> str:
        """Who scored, for a scorer that asks no judge."""
        raise NotImplementedError

    def bind(self, subject, labels: Sequence[str] = ()) -> Scorer:
        """A scorer for this subject (a scorer that needs_subject); `labels`: all that will be scored."""
        raise NotImplementedError


def _failure_text(answers: list[JudgeAnswer]) -> str | None:
    errors = [a.error for a in answers if not a.ok]
    return "; ".join(dict.fromkeys(e or "no value" for e in errors)) or None


def judged(answers: list[JudgeAnswer], estimate: metrics.Estimate) -> Outcome:
    """The outcome of a feature's judge answers: failed, with no value, when any answer failed."""
    hashes = [a.prompt_hash for a in answers if a.prompt_hash]
    failed = sum(not a.ok for a in answers)
    if failed:  # a score on the prompts that happened to be answered is not this scorer's score
        estimate = metrics.Estimate(math.nan, math.nan, math.nan, 0, estimate.method)
    return Outcome(
        estimate,
        failed,
        len(answers),
        _failure_text(answers),
        hashes[0] if hashes else None,
        [a.call_id for a in answers if a.call_id is not None],
    )


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


class Classifying(Scorer):
    """The judge says 1/0 per shown thing, shuffled, in prompts of cfg.snippets_per_prompt; the headline is the
    balanced accuracy. A subclass says what it shows (`pairs`: (thing, truth)) and how it asks."""

    metric, chance = "balanced_accuracy", 0.5

    def pairs(self, held: HeldOut, rng: np.random.Generator) -> list[tuple[object, bool]]:
        raise NotImplementedError

    def ask(self, judge: Judge, item: Item, shown: list) -> Awaitable[JudgeAnswer[list[bool]]]:
        raise NotImplementedError

    def prompts_per_feature(self, cfg) -> int:
        return math.ceil((cfg.n_top + cfg.n_strata + cfg.n_negative) / cfg.snippets_per_prompt)

    async def score(self, items: Sequence[Item], judge: Judge, cfg) -> list[Outcome]:
        return await map_bounded(lambda item: self._one(item, judge, cfg), list(items), judge.concurrency)

    async def _one(self, item: Item, judge: Judge, cfg) -> Outcome:
        rng = np.random.default_rng([cfg.seed, item.seed])
        pairs = self.pairs(item.held, rng)
        pairs = [pairs[i] for i in rng.permutation(len(pairs))]
        groups = _chunks(pairs, cfg.snippets_per_prompt)
        answers = await asyncio.gather(*(self.ask(judge, item, [x for x, _ in g]) for g in groups))
        y_true = [t for g in groups for _, t in g]
        y_pred = [v for a in answers for v in (a.value or [])] if all(a.ok for a in answers) else []
        if len(y_pred) != len(y_true):
            estimate = metrics.Estimate(math.nan, math.nan, math.nan, 0, "none")
        else:
            estimate = metrics.classification_scores(y_true, y_pred, n_boot=cfg.n_boot, seed=item.seed)[
                "balanced_accuracy"
            ]
        return judged(list(answers), estimate)
