"""Intervention: does amplifying the feature make the model say what its label says? (Arad et al. 2025's
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
one direction acts alike on all of them. A label naming no term is undefined.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from autointerp.judges.judge import ANY, Judge, label_terms
from autointerp.stages.score.scorers.base import Item, Outcome, Scorer
from autointerp.stats import metrics


class Intervention(Scorer):
    """Needs no judge, but the subject model: a causal LM."""

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
        if not word or term.token == ANY:
            continue
        for variant in {word, " " + word, word.capitalize(), " " + word.capitalize()}:
            encoded = tokenizer(variant, add_special_tokens=False).input_ids
            if encoded:
                ids.add(int(encoded[0]))
    return sorted(ids)
