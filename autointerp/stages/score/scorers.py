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
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from autointerp.judges.judge import Judge, label_terms, map_bounded
from autointerp.records import DetectionTask, FuzzTask, JudgeAnswer, SimulationTask
from autointerp.stages.score.sampling import HeldOut, fuzz_snippets
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
            estimate = metrics.classification_scores(y_true, y_pred, n_boot=cfg.n_boot, seed=item.seed)[
                "balanced_accuracy"
            ]
        return _judged(list(answers), estimate)


class Detection(_Classifying):
    name = "detection"

    def samples(self, cfg) -> str:
        return (
            f"{cfg.n_top} highest and {cfg.n_strata} quantile windows (one per activation stratum) against "
            f"{cfg.n_negative} verified non-activating windows, score split, shuffled, {cfg.per_prompt} per prompt, "
            "unmarked"
        )

    def _pairs(self, held: HeldOut, rng) -> list:
        return [(s, True) for s in held.active] + [(s, False) for s in held.negatives]

    def _ask(self, judge: Judge, item: Item, snippets):
        return judge.detect(DetectionTask(item.feature, item.label, snippets))


class Fuzzing(_Classifying):
    name = "fuzzing"

    def samples(self, cfg) -> str:
        return (
            "the detection sample with tokens marked: half of the top and half of the quantile windows with their "
            "true activating tokens, the other activating windows and every negative with marks on inactive tokens; "
            "correct = true marks"
        )

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


class Intervention:
    """Does amplifying the feature make the model say what its label says? (Arad et al. 2025's
    output score, with a control.) Needs no judge, but the subject model: a causal LM.

    Each direction v is added at the hookpoint, at every position of each neutral prompt, with a
    norm of `intervention_strength` × the hookpoint's median norm on the prompts. Its effect on a
    label is the next-token log-probability of the label's tokens (the first token of each term
    the label names, with and without a leading space and a capital), averaged over the prompts.
    The feature's decoder direction is ranked against `n_random_directions` seeded random
    directions of the same norm, the same for every feature: the headline is the share of them it
    beats (chance 0.5), with a Wilson interval over those directions, and the p-value is its rank
    among them, (1 + random directions at least as good) / (1 + n), an exact test of "the
    feature's direction is no better than a random one". Prompts are not counted as independent:
    one direction acts alike on all of them. A label naming no term is undefined."""

    name, metric, chance, uses_judge, needs_subject = "intervention", "win_rate", 0.5, False, True

    def __init__(self, subject=None, labels: Sequence[str] = ()):
        self.subject = subject
        self.labels = list(labels)
        self._baseline = None  # (settings, probe, token ids, random directions' mean log-probs [n, len(tokens)])

    def bind(self, subject, labels: Sequence[str] = ()) -> Intervention:
        """A scorer for this subject; `labels` (all that will be scored) let the random baseline run once."""
        return Intervention(subject, labels)

    def prompts_per_feature(self, cfg) -> int:
        return 0

    def judge_name(self) -> str:
        return f"intervention:{self.subject.model.cfg.name}" if self.subject else "intervention"

    def samples(self, cfg) -> str:
        return (
            f"{cfg.n_intervention} neutral prompts; the mean next-token log-probability of the label's tokens with the "
            "feature's "
            f"decoder direction added at the hookpoint ({cfg.intervention_strength:g} × the median residual norm), "
            "ranked against "
            f"{cfg.n_random_directions} random directions of the same norm; share beaten, Wilson interval, exact rank "
            "test"
        )

    def _random_baseline(self, cfg, tokens: set[int]):
        import torch  # here, not at load: only this scorer runs the subject model

        from autointerp.subject.steer import amplified_logprobs, make_probe, random_directions

        key = (cfg.n_intervention, cfg.intervention_strength, cfg.n_random_directions, cfg.seed)
        if self._baseline is None or self._baseline[0] != key or not tokens <= set(self._baseline[2].tolist()):
            model = self.subject.model
            probe = (
                self._baseline[1]
                if self._baseline and self._baseline[0] == key
                else make_probe(model, cfg.n_intervention)
            )
            known = set(self._baseline[2].tolist()) if self._baseline and self._baseline[0] == key else set()
            keep = torch.tensor(
                sorted(known | tokens | {t for label in self.labels for t in label_token_ids(model.tokenizer, label)}),
                dtype=torch.long,
            )
            vectors = random_directions(cfg.n_random_directions, model.width, cfg.seed) * (
                cfg.intervention_strength * probe.residual_norm
            )
            self._baseline = (key, probe, keep, amplified_logprobs(model, probe, vectors, keep=keep))
        _, probe, keep, lp = self._baseline
        return probe, {int(t): i for i, t in enumerate(keep)}, lp

    async def score(self, items: Sequence[Item], judge: Judge, cfg) -> list[Outcome]:
        import torch

        from autointerp.subject.steer import amplified_logprobs, unit_directions

        if self.subject is None:
            raise RuntimeError("Intervention.score needs bind(subject) first")  # the score stage binds it
        model, sae = self.subject.model, self.subject.sae
        tokens = {item.feature: label_token_ids(model.tokenizer, item.label) for item in items}
        probe, column, random_lp = self._random_baseline(cfg, {t for ts in tokens.values() for t in ts})
        features = sorted({item.feature for item in items})
        keep = torch.tensor(list(column), dtype=torch.long)
        steered = amplified_logprobs(
            model, probe, unit_directions(sae, features) * (cfg.intervention_strength * probe.residual_norm), keep=keep
        )
        row = {f: i for i, f in enumerate(features)}
        out = []
        for item in items:
            cols = [column[t] for t in tokens[item.feature]]
            if not cols:
                out.append(
                    Outcome(
                        metrics.Estimate(math.nan, math.nan, math.nan, 0, "wilson"),
                        asked=1,
                        error="the label names no term to look for",
                    )
                )
                continue
            effect = torch.logsumexp(steered[row[item.feature]][:, cols], dim=-1).mean()
            null = torch.logsumexp(random_lp[:, :, cols], dim=-1).mean(dim=1)  # [n_random]
            n = len(null)
            beaten = int((effect > null).sum())
            estimate = metrics.wilson_interval(beaten, n)
            p_value = (1 + int((null >= effect).sum())) / (1 + n)
            out.append(Outcome(dataclasses.replace(estimate, p_value=p_value), asked=1))
        return out


def label_token_ids(tokenizer, label: str) -> list[int]:
    """First token of each term the label names, spelt with and without a leading space and a capital."""
    ids = set()
    for term in label_terms(label):
        word = term.token.strip()
        if not word:
            continue
        for variant in {word, " " + word, word.capitalize(), " " + word.capitalize()}:
            encoded = tokenizer(variant, add_special_tokens=False).input_ids
            if encoded:
                ids.add(int(encoded[0]))
    return sorted(ids)


SCORERS: dict[str, Scorer] = {s.name: s for s in (Detection(), Fuzzing(), Simulation(), Embedding(), Intervention())}
INPUT_SCORERS = tuple(name for name, s in SCORERS.items() if not getattr(s, "needs_subject", False))
HEADLINE = {name: s.metric for name, s in SCORERS.items()}
CHANCE = {s.metric: s.chance for s in SCORERS.values()}
