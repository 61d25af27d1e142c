"""Triage: which features need the LLM at all.

For much of a dictionary the free token label (the offline judge's) already predicts where the
feature fires; an LLM call there buys nothing, and a small judge often does worse, naming a nearby
context word instead of the token that fires. So before an LLM explains, each chosen feature's
token label is fitted on the explain-split windows the offline explainer reads (its top, quantile
and negative windows; at most half of each kind a feature has) and tested by detection on the
explain-split windows it did not read: data the final scores never see, as they read only the
score split. A feature whose token label clears the bar keeps it, routed "token", and costs no
call; the rest are routed "llm". Both routes are scored alike afterwards, on the score split.

The test mirrors the detection scorer: the label's tokens appearing in a window predict that it
fires, and balanced accuracy over activating windows (as many top as quantile ones, so peaks do not
dominate) and verified negatives is read with its interval and Fisher's one-sided p-value.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from functools import cached_property

import pandas as pd

from autointerp.config import ExplainConfig
from autointerp.judges.judge import OfflineJudge, explain_terms, format_label, match_positions
from autointerp.records import FeatureSnippets, Snippet
from autointerp.stats.metrics import balanced_accuracy

ALPHA = 0.01  # a token label routed "token" must also beat chance at this level, not only clear the bar


@dataclass(frozen=True)
class Routes:
    """The triage of a run's chosen features: feature → its token label and test, and the bar."""

    tests: pd.DataFrame  # feature, label, value, ci_low, ci_high, n, p_value (indexed by feature)
    bar: float

    @cached_property
    def token(self) -> list[int]:
        """Features whose token label clears the bar: they keep it and cost no call."""
        t = self.tests
        return sorted(int(f) for f in t.index[(t.value >= self.bar) & (t.p_value < ALPHA)])

    def lines(self, n_chosen: int, saved: str = "") -> list[str]:
        n_token = len(self.token)
        return [
            f"triage: {n_token:,} of {n_chosen:,} features keep their free token label (detection >= {self.bar:g}, "
            f"p < {ALPHA:g}, on explain-split windows no score reads); {n_chosen - n_token:,} go to the LLM"
            + (f"; {saved}" if saved else "")
        ]


def offline_config(cfg: ExplainConfig) -> ExplainConfig:
    """The windows the offline explainer reads, whatever judge cfg was meant for."""
    return cfg.for_judge(OfflineJudge.settings["provider"])


def triage_key(fit: ExplainConfig) -> str:
    """What a stored test depends on: the offline judge and the windows it fits on (the bar only
    reads the stored tests)."""
    return hashlib.sha256(
        json.dumps([OfflineJudge.name, fit.n_top, fit.n_quantile, fit.n_negative, fit.context]).encode()
    ).hexdigest()[:16]


def split_windows(
    fs: FeatureSnippets, fit: ExplainConfig
) -> tuple[list[Snippet], list[Snippet], list[Snippet], list[Snippet]]:
    """The explain split cut in two: the windows the token label is fitted on (activating, negative) -
    those the offline explainer reads (`fit`), but at most half of each kind this feature has, so that a
    small gather leaves windows to test on - and the rest (activating, negative), to test it on."""
    from autointerp.stages.explain import explain_snippets

    n_top = sum(s.kind == "top" for s in fs.explain)
    n_quantile = sum(s.kind == "quantile" for s in fs.explain)
    n_negative = min(fit.n_negative, len(fs.explain_negatives) // 2)
    fit = replace(fit, n_top=min(fit.n_top, n_top // 2), n_quantile=min(fit.n_quantile, n_quantile // 2))
    shown = explain_snippets(fs, fit)
    shown_ids = {(s.context_id, s.kind) for s in shown}
    rest = [s for s in fs.explain if (s.context_id, s.kind) not in shown_ids]
    top = [s for s in rest if s.kind == "top"]
    quantile = [s for s in rest if s.kind == "quantile"]
    if top and quantile:  # as many of each: the score split's sample is half peaks, half strata
        n = min(len(top), len(quantile))
        top, quantile = top[:n], quantile[:n]
    return shown, fs.explain_negatives[:n_negative], top + quantile, fs.explain_negatives[n_negative:]


def check_token_label(fs: FeatureSnippets, fit: ExplainConfig) -> dict | None:
    """The feature's token label, fitted on the windows the offline explainer reads (`fit`), and its
    detection on the explain-split windows it did not read; None when it has no label or nothing to test on."""
    shown, shown_negatives, active, negatives = split_windows(fs, fit)
    terms = explain_terms(shown, shown_negatives)
    if not terms or not active or not negatives:
        return None
    tp = sum(any(match_positions(s.tokens, terms)) for s in active)
    tn = sum(not any(match_positions(s.tokens, terms)) for s in negatives)
    e = balanced_accuracy(tp, len(active), tn, len(negatives))
    return {
        "feature": fs.feature,
        "label": format_label(terms),
        "value": e.value,
        "ci_low": e.ci_low,
        "ci_high": e.ci_high,
        "n": e.n,
        "p_value": e.p_value,
    }


def triage(store, run_id: str, features: list[int], cfg: ExplainConfig, write: bool = True) -> Routes:
    """Test the token labels of `features` (a test stored under the same key is kept) and route them at
    cfg.triage; the routes are stored with the tests (unless not `write`: an estimate only reads), for the
    summaries that compare the two."""
    fit = offline_config(cfg)
    key = triage_key(fit)
    stored = store.triage(run_id, key)
    tested_before = set(stored.feature)
    todo = [f for f in features if f not in tested_before]
    rows = []
    for start in range(0, len(todo), cfg.chunk):
        for fs in store.feature_snippets(run_id, todo[start : start + cfg.chunk], split="explain"):
            row = check_token_label(fs, fit)
            # A feature with nothing to test goes to the LLM, and is not tested again.
            rows.append(row or {"feature": fs.feature, "label": None})
    tested = {r["feature"] for r in rows}
    rows += [{"feature": f, "label": None} for f in todo if f not in tested]
    tests = pd.concat([stored[stored.feature.isin(features)], pd.DataFrame(rows)], ignore_index=True)
    tests = tests.drop(columns=["route", "key", "created_at"], errors="ignore").set_index("feature")
    routes = Routes(tests[tests.label.notna()], cfg.triage)
    token = set(routes.token)
    if write:
        store.write_triage(
            run_id, key, tests.reset_index().assign(route=["token" if f in token else "llm" for f in tests.index])
        )
    return routes
