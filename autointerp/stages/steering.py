"""The run's steering example: a labelled feature whose label names a topic, its decoder direction
pushed into the causal LM (subject/steer.py), the steered continuation beside the unsteered one.

Which feature shows it is not known before trying: a direction can name a topic in its label and
still only make the model repeat a token. So the stage steers up to `candidates` features whose
label names a word (those whose output effects include a label word first, as they write what
they read; then the LLM sample's free-text labels; then by detection score) and keeps the first
whose steered continuation says a word of its label that the unsteered one does not, without looping
(`fluent`). The strength is one unit for all: the added vector's norm as a multiple of the hookpoint's
median norm on the prompt (steer.py explains why that unit decides fluency); when no candidate shows
its label at that strength, all are tried once more at `escalate` times it. Each try is one short generation beside
the unsteered one, generated once; the example and how it was picked are stored in `steering`.

The example found is often a token label (`token "default"`): it names a word, not a topic. Given a describer
(the run's sample judge), that feature is then labelled in free text once, for the example only (not among the
sample's labels, whose statistics assume a random sample), and the example takes that label when the steered
continuation says one of its words too.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import pandas as pd

from autointerp.config import SteerConfig, SteeringExampleConfig
from autointerp.judges.judge import FUNCTION_WORDS, label_headline, label_terms
from autointerp.subject.steer import SteerResult, norm_scale, steer

MIN_WORD = 3  # letters: shorter words ("of", "if") say nothing of a topic
# Distinct words as a share of a continuation's words, below which it is a loop ("one-zero-zero-zero…",
# "it's there, it's there"): a pushed direction that only makes the model repeat a token shows no topic.
MIN_DISTINCT = 0.5


@dataclass
class Candidate:
    feature: int
    explainer: str
    label: str
    words: list[str]  # the label's topic words


@dataclass
class SteeringExample:
    candidate: Candidate | None
    result: SteerResult | None
    why: str  # how the feature was picked, or why there is no example
    tried: int
    seconds: float

    def lines(self) -> list[str]:
        if self.result is None or self.candidate is None:
            return [f"steering example: {self.why}"]
        c = self.candidate
        return [
            f"steering example ({self.seconds:.0f}s): feature {c.feature}, labelled {c.label!r} by {c.explainer}; "
            f"{self.why}",
            *("  " + line for line in self.result.lines()),
        ]


def topic_words(label: str) -> list[str]:
    """The words a label names that could be a topic: alphabetic, at least MIN_WORD letters, not a
    function word; an offline label's "(also …)" runners-up left out."""
    words = [t.token for t in label_terms(label_headline(label)) if t.after is None]
    return [w for w in dict.fromkeys(words) if w.isalpha() and len(w) >= MIN_WORD and w not in FUNCTION_WORDS]


def _stem(word: str) -> str:
    return word[:5] if len(word) > 5 else word  # "programming" matches "program", "programs"


def says(text: str, words: list[str]) -> list[str]:
    """The words (by a 5-letter stem) that occur in text."""
    found = set(re.findall(r"[^\W\d_]+", text.casefold()))
    return [w for w in words if any(f.startswith(_stem(w)) for f in found)]


def fluent(text: str) -> bool:
    """Whether a continuation reads as text rather than a loop: a few words, at least MIN_DISTINCT of them distinct."""
    words = re.findall(r"[^\W\d_]+", text.casefold())
    return len(words) >= 4 and len(set(words)) >= MIN_DISTINCT * len(words)


def gained_words(result: SteerResult, words: list[str]) -> list[str]:
    """The words the steered continuation says that the unsteered one does not."""
    return [w for w in says(result.steered, words) if w not in says(result.unsteered, words)]


def described(example: SteeringExample, explainer: str, describe: Callable[[int], str | None]) -> SteeringExample:
    """The example under the free-text label `describe` gives its feature (`explainer`'s), asked only when
    another explainer's label found it, and taken where the steered continuation says one of that label's
    words; otherwise as it was, its `why` saying what the describer answered."""
    c, result = example.candidate, example.result
    if c is None or result is None or c.explainer == explainer:
        return example
    label = describe(c.feature)
    if not label:
        return replace(example, why=f"{example.why}; {explainer} gave no label for it")
    words = topic_words(label)
    gained = gained_words(result, words)
    if not (gained and fluent(result.steered)):
        return replace(
            example, why=f"{example.why}; {explainer} labels it {label!r}, which the steered text does not say"
        )
    return replace(
        example,
        candidate=Candidate(c.feature, explainer, label, words),
        why=(
            f"{example.why}; labelled by {explainer} for this example (not part of its sample), the steered text "
            f"saying {', '.join(repr(w) for w in gained)}; its {c.explainer} label: {c.label}"
        ),
    )


def candidates(store, run_id: str, explainers: list[str], limit: int) -> list[Candidate]:
    """Labelled live features whose label names a topic word, best bets first: features that fire on
    under the dense share of tokens; then those whose output effects (the tokens their direction
    promotes, or makes likelier on neutral prompts) include a label word, as they write what they read
    and steering shows it; then by explainer in the order given (the LLM sample first); then by
    detection score. A feature labelled by two explainers is tried once, under the first."""
    features = store.features(run_id).set_index("feature")
    dense = features.dense[~features.dead]
    effects = store.output_effects(run_id)
    effects = effects[effects.kind.isin(["promoted", "amplified"])]
    writes = effects.groupby("feature").piece.agg(lambda t: " ".join(map(str, t)))  # the text each token stands for
    pool = []
    for rank, explainer in enumerate(explainers):
        labels = store.explanations(run_id, explainer)
        labels = labels[(labels.status == "ok") & labels.feature.isin(dense.index)]
        labels = labels.assign(words=labels.label.map(topic_words))
        labels = labels[labels.words.map(len) > 0]
        if labels.empty:
            continue
        scores = store.scores(run_id, explainer, "detection")
        detection = scores[scores.label_source == "true"].groupby("feature").value.first()
        pool.append(
            labels.assign(
                explainer=explainer,
                rank=rank,
                dense=labels.feature.map(dense).astype(bool),
                writes=[bool(says(writes.get(f, ""), w)) for f, w in zip(labels.feature, labels.words)],
                detection=labels.feature.map(detection),
            )
        )
    if not pool:
        return []
    ordered = (
        pd.concat(pool)
        .sort_values(
            ["dense", "writes", "rank", "detection", "feature"],
            ascending=[True, False, True, False, True],
            na_position="last",
        )
        .drop_duplicates("feature")
        .head(limit)
    )
    return [Candidate(int(r.feature), r.explainer, r.label, r.words) for r in ordered.itertuples()]


def steering_example(
    project: str,
    run_id: str,
    explainers: list[str],
    cfg: SteeringExampleConfig,
    describer: tuple[str, Callable[[int], str | None]] | None = None,
) -> SteeringExample:
    """The example (module docstring); describer: an explainer's name and a function giving its free-text
    label of one feature, asked for the example's feature when another explainer's label found it."""
    from autointerp.store import Store
    from autointerp.subject.load import load_subject

    started = time.perf_counter()
    with Store(project, read_only=True) as store:
        pool = candidates(store, run_id, explainers, cfg.candidates)
        subject = load_subject(store, run_id) if pool else None
    if not pool:
        return SteeringExample(None, None, "no labelled feature names a topic word", 0, time.perf_counter() - started)
    first: tuple[Candidate, SteerResult] | None = None  # the best bet's try, shown if none says its label
    unsteered = None  # the same for every feature: generated once
    # Near 1 the text degenerates, and below it a direction may be too weak to show: one more pass, stronger.
    strengths = [cfg.strength] + ([cfg.strength * cfg.escalate] if cfg.escalate > 1 else [])
    tried = 0
    for strength in strengths:
        for c in pool:
            tried += 1
            scale = norm_scale(subject, c.feature, cfg.prompt, strength)
            result = steer(
                subject,
                SteerConfig(
                    feature=c.feature,
                    prompt=cfg.prompt,
                    scale=scale,
                    max_new_tokens=cfg.max_new_tokens,
                    seed=cfg.seed,
                ),
                unsteered,
            )
            unsteered = result.unsteered
            gained = gained_words(result, c.words)
            if gained and fluent(result.steered):
                why = (
                    f"the first of {len(pool)} candidates (labels naming a word; features writing it first, then the "
                    f"LLM's labels, then by detection) whose steered continuation at strength {strength:g} says "
                    f"{', '.join(repr(w) for w in gained)}, which the unsteered one does not, without looping "
                    f"({tried} tried at {', '.join(f'{s:g}' for s in strengths[: strengths.index(strength) + 1])})"
                )
                example = SteeringExample(c, result, why, tried, time.perf_counter() - started)
                if describer is not None:
                    example = described(example, *describer)
                    example.seconds = time.perf_counter() - started
                return _stored(project, run_id, example)
            first = first or (c, result)
    c, result = first
    why = (
        f"none of the {len(pool)} candidates' steered continuations says a word of its label without looping, at "
        f"strength {' or '.join(f'{s:g}' for s in strengths)}; shown: the first one tried"
    )
    return _stored(project, run_id, SteeringExample(c, result, why, tried, time.perf_counter() - started))


def _stored(project: str, run_id: str, example: SteeringExample) -> SteeringExample:
    from autointerp.store import Store

    c = example.candidate
    with Store(project) as store:
        store.write_steering(run_id, "run", steering_row(example.result, c.explainer, c.label, example.why))
    return example


def steering_row(result: SteerResult, explainer: str | None, label: str | None, why: str) -> dict:
    """The steering table's row for one result."""
    return asdict(result) | {"explainer": explainer, "label": label, "why": why}
