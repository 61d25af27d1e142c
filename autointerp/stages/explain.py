"""Explain stage: a judge labels each feature from its explain-split snippets only.

Features are processed in chunks: each chunk's labels are written to the store
and the LLM call log flushed before the next, so an interrupted run loses at most
one chunk, and a re-run is served from the response cache.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from autointerp.config import ExplainConfig
from autointerp.errors import AutointerpError
from autointerp.judges.judge import Judge, map_bounded
from autointerp.judges.prompts import FREQUENT, activation_marks
from autointerp.records import ExplainTask, FeatureSnippets, JudgeAnswer, Snippet
from autointerp.stages.saturate import CoverageStop
from autointerp.stages.triage import Routes, triage
from autointerp.store import Store

# Prompt sizes by judge: a 1.5B model on two CPU cores reads ~50 tokens/s, so its prompt is the
# budget (measured in bench/local_judge.py); an API model reads the full set.


@dataclass
class ExplainSummary:
    explainer: str
    n_features: int
    n_ok: int
    n_failed: int
    failures: dict[str, int] = field(default_factory=dict)
    saved_calls: int = 0  # judge calls the stop rule saved
    usage: str = ""  # LLM calls, tokens and cost, when an LLM judge ran
    skipped: int = 0  # chosen features this explainer had labelled already
    seconds: float = 0.0  # wall time of the stage
    triage: list[str] = field(default_factory=list)  # the routes and what they saved, when triage ran

    def lines(self) -> list[str]:
        kinds = ", ".join(f"{k} {v}" for k, v in self.failures.items())
        line = f"explained {self.n_ok:,} of {self.n_features:,} features with {self.explainer}" + (
            f"; failed {self.n_failed:,} ({kinds})" if self.n_failed else ""
        )
        if self.skipped:
            line += f"; {self.skipped:,} labelled earlier, kept (--redo labels them again)"
        stop = (
            [f"stop rule: coverage target reached; {self.saved_calls:,} judge calls saved"] if self.saved_calls else []
        )
        return self.triage + [line] + stop + ([self.usage] if self.usage else [])


def trim(snippet: Snippet, context: int) -> Snippet:
    """The snippet cut to `context` tokens either side of its marked tokens (0: left whole)."""
    if not context:
        return snippet
    marks = activation_marks(snippet)
    if not any(marks):
        return snippet
    first = marks.index(True)
    last = len(marks) - 1 - marks[::-1].index(True)
    lo, hi = max(0, first - context), min(len(marks), last + context + 1)
    acts = snippet.activations[lo:hi] if snippet.activations is not None else None
    return replace(snippet, tokens=snippet.tokens[lo:hi], activations=acts)


def explain_snippets(fs: FeatureSnippets, cfg: ExplainConfig) -> list[Snippet]:
    """The top snippets by rank, then quantile samples taking one bin at a time so all bins are shown."""
    top = [s for s in fs.explain if s.kind == "top"][: cfg.n_top]
    by_bin: dict[int, list[Snippet]] = {}
    for s in fs.explain:
        if s.kind == "quantile":
            by_bin.setdefault(s.quantile or 0, []).append(s)
    quantile: list[Snippet] = []
    while len(quantile) < cfg.n_quantile and any(by_bin.values()):
        for b in sorted(by_bin):
            if by_bin[b] and len(quantile) < cfg.n_quantile:
                quantile.append(by_bin[b].pop(0))
    return [trim(s, cfg.context or 0) for s in top + quantile]


def contrast_windows(fs: FeatureSnippets, shown: list[Snippet], cfg: ExplainConfig) -> list[Snippet]:
    """Hard negatives: explain-split windows where the feature stays silent though they hold the tokens
    it is marked on most often, those holding most of them first, each cut to cfg.context tokens either
    side of the first such token. None when no silent window holds one."""
    marked = Counter(
        t.strip().casefold() for s in shown for t, m in zip(s.tokens, activation_marks(s)) if m and t.strip()
    )
    frequent = {t for t, _ in marked.most_common(FREQUENT)}
    held = [[t.strip().casefold() in frequent for t in s.tokens] for s in fs.explain_negatives]
    order = sorted((i for i, hits in enumerate(held) if any(hits)), key=lambda i: (-sum(held[i]), i))
    out = []
    for i in order[: cfg.n_contrast]:
        s, first = fs.explain_negatives[i], held[i].index(True)
        lo, hi = (max(0, first - cfg.context), first + cfg.context + 1) if cfg.context else (0, len(s.tokens))
        out.append(replace(s, tokens=s.tokens[lo:hi]))
    return out


def explain_task(fs: FeatureSnippets, cfg: ExplainConfig, outputs: dict[str, list[str]] | None = None) -> ExplainTask:
    """What the explainer is shown of one feature: its examples and, by cfg.views, their activations,
    contrast windows and (given `outputs`) what it writes."""
    snippets = explain_snippets(fs, cfg)
    return ExplainTask(
        fs.feature,
        snippets,
        fs.explain_negatives[: cfg.n_negative],
        fs.max_activation,
        cfg.views,
        contrast_windows(fs, snippets, cfg) if "contrast" in cfg.views else [],
        (outputs or {}) if "outputs" in cfg.views else {},
    )


def output_tokens(store: Store, run_id: str, features: list[int], cfg: ExplainConfig) -> dict[int, dict]:
    """feature → effect kind → its top tokens as text (the outputs view; empty without output effects)."""
    if "outputs" not in cfg.views:
        return {}
    effects = store.output_effects(run_id, features)
    effects = effects[effects["rank"] < cfg.n_outputs]
    out: dict[int, dict] = {}
    for (feature, kind), rows in effects.groupby(["feature", "kind"]):
        out.setdefault(int(feature), {})[kind] = rows.sort_values("rank").piece.tolist()
    return out


def select_features(store: Store, run_id: str, cfg: ExplainConfig, exclude: Collection[int] = ()) -> list[int]:
    """The features to label, in labelling order: the given ones or every alive one, the first
    max_features of them, less `exclude` (those triage keeps from the LLM), then a seeded random
    sample (kept in feature order), nested across sizes."""
    if cfg.features is not None:
        d_sae = int(store.run(run_id)["d_sae"])
        beyond = [f for f in cfg.features if f >= d_sae]
        if beyond:
            shown = ", ".join(map(str, beyond[:5])) + (" …" if len(beyond) > 5 else "")
            raise AutointerpError(
                f"--features names {shown}, but run {run_id} has {d_sae:,} features (0-{d_sae - 1})",
                f"pick indices below {d_sae:,}",
            )
    chosen = cfg.features if cfg.features is not None else store.alive_features(run_id, include_dense=True)
    if cfg.max_features is not None:
        chosen = chosen[: cfg.max_features]
    if exclude:
        excluded = set(exclude)
        chosen = [f for f in chosen if f not in excluded]
    if cfg.sample is not None and cfg.sample < len(chosen):
        # A prefix of one seeded permutation: a larger sample holds every feature of a smaller one, so
        # growing a sample (RunConfig.llm_minutes) labels only the features added.
        picked = np.random.default_rng(cfg.seed).permutation(len(chosen))[: cfg.sample]
        chosen = [chosen[i] for i in sorted(picked)]
    return list(chosen)


def explain_tasks(store: Store, run_id: str, features: list[int], cfg: ExplainConfig):
    """The explain tasks of `features`, a chunk (cfg.chunk features) at a time, from their explain-split
    snippets; features without any are left out."""
    # The contrast view looks through every explain-split negative, so then they are not capped.
    caps = {"top": cfg.n_top} | ({} if "contrast" in cfg.views else {"negative": cfg.n_negative})
    for start in range(0, len(features), cfg.chunk):
        part = features[start : start + cfg.chunk]
        chunk = store.feature_snippets(run_id, part, split="explain", max_per_kind=caps)
        outputs = output_tokens(store, run_id, part, cfg)
        yield [explain_task(fs, cfg, outputs.get(fs.feature)) for fs in chunk if fs.explain]


def as_asked(cfg: ExplainConfig, judge: Judge) -> ExplainConfig:
    """cfg as `judge` is asked: its provider's default views, and none where it reads no views (nothing
    to load for views it would not read)."""
    cfg = cfg.for_judge(judge.settings.get("provider"))
    return cfg if judge.reads_views else replace(cfg, views=())


async def label_one(store: Store, run_id: str, judge: Judge, feature: int, cfg: ExplainConfig) -> str | None:
    """`judge`'s label of one feature, asked as the explain stage asks it, returned and not stored (None
    when the feature has no explain-split examples or the judge gave no label)."""
    tasks = [task for chunk in explain_tasks(store, run_id, [feature], as_asked(cfg, judge)) for task in chunk]
    return (await judge.explain(tasks[0])).value if tasks else None


async def _explain_one(judge: Judge, task: ExplainTask, on_done) -> JudgeAnswer:
    answer = await judge.explain(task)
    on_done(answer)
    return answer


async def explain(
    store: Store, run_id: str, judge: Judge, cfg: ExplainConfig, call_log=None, progress: bool = True
) -> ExplainSummary:
    """Label the chosen features of a run and store the labels (failures stored as such).

    Features this explainer already labelled are skipped unless cfg.redo: re-running an
    interrupted explain finishes the rest (answered calls come from the cache either way).
    """
    from tqdm.auto import tqdm

    given, cfg = cfg, as_asked(cfg, judge)
    explainer = judge.name
    stored = store.explanations(run_id, explainer)
    done = stored[stored.status == "ok"]
    routes = None
    if cfg.triage is not None and judge.makes_calls:
        chosen = select_features(store, run_id, replace(cfg, sample=None))
        routes = triage(store, run_id, chosen, given)  # the offline explainer's windows, not this judge's
        if cfg.sample is None:  # labelling them all: the token route's labels are this explainer's too
            _write_token_labels(store, run_id, explainer, routes, set() if cfg.redo else set(done.feature))
    features = select_features(store, run_id, cfg, exclude=routes.token if routes else ())
    todo = features if cfg.redo else [f for f in features if f not in set(done.feature.tolist())]
    bar = tqdm(total=len(todo), desc="explain", unit="feat", disable=not progress)
    failures: dict[str, int] = {}
    totals = {"tokens": 0, "cost": 0.0}
    n_ok = n_done = 0
    stop = CoverageStop(cfg.stop_coverage, cfg.stop_min_labels, cfg.stop_threshold) if cfg.stop_coverage else None
    if stop is not None and len(done) and not cfg.redo:
        stop.add(done.sort_values("position").label.tolist())

    started = time.perf_counter()

    def on_done(answer) -> None:
        totals["tokens"] += answer.prompt_tokens + answer.completion_tokens
        totals["cost"] += answer.cost_usd or 0.0
        if not answer.ok:
            kind = (answer.error or "error").split(":", 1)[0]
            failures[kind] = failures.get(kind, 0) + 1
        bar.update(1)
        bar.set_postfix(failed=sum(failures.values()), tokens=totals["tokens"], cost=f"${totals['cost']:.4f}")

    for tasks in explain_tasks(store, run_id, todo, cfg):
        if stop is not None and stop.stopped_at is not None:
            break
        answers = await map_bounded(lambda t: _explain_one(judge, t, on_done), tasks, judge.concurrency)
        rows = pd.DataFrame(
            {
                "feature": pd.array([t.feature for t in tasks], dtype="int32"),
                "label": pd.array([a.value if a.ok else None for a in answers], dtype="string"),
                "status": ["ok" if a.ok else "failed" for a in answers],
                "error": pd.array([a.error for a in answers], dtype="string"),
                "raw": pd.array([a.raw for a in answers], dtype="string"),
                "prompt_hash": pd.array([a.prompt_hash for a in answers], dtype="string"),
                "n_snippets": pd.array([len(t.snippets) for t in tasks], dtype="int32"),
                "call_id": pd.array([a.call_id for a in answers], dtype="Int64"),
                "route": pd.array(["llm" if routes else None] * len(tasks), dtype="string"),
            }
        )
        if call_log is not None:
            call_log.flush()  # the calls first: a label never points at a call the log lacks
        store.write_explanations(run_id, explainer, rows)
        n_ok += int((rows.status == "ok").sum())
        n_done += len(rows)
        if stop is not None:
            stop.add([a.value if a.ok else None for a in answers])
    bar.close()
    skipped = len(features) - len(todo)
    return ExplainSummary(
        explainer,
        n_done,
        n_ok,
        n_done - n_ok,
        failures,
        stop.saved_calls(len(features)) if stop else 0,
        skipped=skipped,
        triage=routes.lines(len(chosen), _saved(routes, n_done, totals["cost"], time.perf_counter() - started))
        if routes
        else [],
    )


def _write_token_labels(store: Store, run_id: str, explainer: str, routes: Routes, labelled: set[int]) -> None:
    """Store the token route's labels under this explainer, as it would label them all: no call, marked
    route "token"; a feature it labelled already keeps that label."""
    token = [f for f in routes.token if f not in labelled]
    if not token:
        return
    labels = routes.tests.label.reindex(token)
    store.write_explanations(
        run_id,
        explainer,
        pd.DataFrame(
            {
                "feature": pd.array(token, dtype="int32"),
                "label": pd.array(labels.tolist(), dtype="string"),
                "status": "ok",
                "route": "token",
            }
        ),
    )


def _saved(routes: Routes, n_calls: int, cost: float, seconds: float) -> str:
    """What the token route saved: one explain call a feature, priced at this run's average call."""
    n = len(routes.token)
    if not n:
        return ""
    if n_calls and cost > 0:
        worth = f" (about ${n * cost / n_calls:,.2f} at this run's ${cost / n_calls:.4f} a call)"
    elif n_calls:
        worth = f" (about {n * seconds / n_calls / 60:,.0f} min at this run's {seconds / n_calls:.1f} s a call)"
    else:
        worth = ""
    return f"{n:,} explain calls saved{worth}"
