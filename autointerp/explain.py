"""Explain stage: a judge labels each feature from its explain-split snippets only.

Features are processed in chunks: each chunk's labels are written to the store
and the LLM call log flushed before the next, so an interrupted run loses at most
one chunk, and a re-run is served from the response cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from .judges import Judge, map_bounded
from .saturate import CoverageStop
from .records import ExplainTask, FeatureSnippets, JudgeAnswer, Snippet
from .store import Store


@dataclass
class ExplainConfig:
    n_top: int = 10  # max-activating explain snippets shown
    n_quantile: int = 10  # plus quantile samples, spread over the bins
    n_negative: int = 10  # negatives (used by judges that contrast, e.g. the offline one)
    features: list[int] | None = None  # None: every alive feature
    max_features: int | None = None
    chunk: int = 512  # features per store write (and per stop-rule check)
    # Stop labelling once saturation coverage reaches this target (None: label every feature).
    stop_coverage: float | None = None
    stop_min_labels: int = 100
    stop_threshold: float = 0.8  # label-embedding similarity that merges two labels into one category


@dataclass
class ExplainSummary:
    explainer: str
    n_features: int
    n_ok: int
    n_failed: int
    failures: dict[str, int] = field(default_factory=dict)
    saved_calls: int = 0  # judge calls the stop rule saved
    usage: str = ""  # LLM calls, tokens and cost, when an LLM judge ran

    def lines(self) -> list[str]:
        kinds = ", ".join(f"{k} {v}" for k, v in self.failures.items())
        line = f"explained {self.n_ok:,} of {self.n_features:,} features with {self.explainer}" + (f"; failed {self.n_failed:,} ({kinds})" if self.n_failed else "")
        stop = [f"stop rule: coverage target reached; {self.saved_calls:,} judge calls saved"] if self.saved_calls else []
        return [line] + stop + ([self.usage] if self.usage else [])


def explainer_id(judge: Judge) -> str:
    return f"{judge.provider}:{judge.model}"


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
    return top + quantile


def explain_task(fs: FeatureSnippets, cfg: ExplainConfig) -> ExplainTask:
    return ExplainTask(fs.feature, explain_snippets(fs, cfg), fs.explain_negatives[: cfg.n_negative], fs.max_activation)


def select_features(store: Store, run_id: str, features: list[int] | None, max_features: int | None) -> list[int]:
    chosen = features if features is not None else store.alive_features(run_id, include_dense=True)
    return chosen[:max_features] if max_features is not None else chosen


async def _explain_one(judge: Judge, task: ExplainTask, on_done) -> JudgeAnswer:
    answer = await judge.explain(task)
    on_done(answer)
    return answer


async def explain(store: Store, run_id: str, judge: Judge, cfg: ExplainConfig, call_log=None, progress: bool = True) -> ExplainSummary:
    """Label the chosen features of a run and store the labels (failures stored as such)."""
    from tqdm.auto import tqdm

    explainer = explainer_id(judge)
    features = select_features(store, run_id, cfg.features, cfg.max_features)
    bar = tqdm(total=len(features), desc="explain", unit="feat", disable=not progress)
    failures: dict[str, int] = {}
    totals = {"tokens": 0, "cost": 0.0}
    n_ok = n_done = 0
    stop = CoverageStop(cfg.stop_coverage, cfg.stop_min_labels, cfg.stop_threshold) if cfg.stop_coverage else None

    def on_done(answer) -> None:
        totals["tokens"] += answer.prompt_tokens + answer.completion_tokens
        totals["cost"] += answer.cost_usd or 0.0
        if not answer.ok:
            kind = (answer.error or "error").split(":", 1)[0]
            failures[kind] = failures.get(kind, 0) + 1
        bar.update(1)
        bar.set_postfix(failed=sum(failures.values()), tokens=totals["tokens"], cost=f"${totals['cost']:.4f}")

    for start in range(0, len(features), cfg.chunk):
        chunk = store.feature_snippets(run_id, features[start : start + cfg.chunk], split="explain", max_per_kind={"top": cfg.n_top, "negative": cfg.n_negative})
        tasks = [explain_task(fs, cfg) for fs in chunk if fs.explain]
        answers = await map_bounded(lambda t: _explain_one(judge, t, on_done), tasks, judge.concurrency)
        rows = pd.DataFrame(
            {
                "feature": [t.feature for t in tasks],
                "label": [a.value if a.ok else None for a in answers],
                "status": ["ok" if a.ok else "failed" for a in answers],
                "error": [a.error for a in answers],
                "raw": [a.raw for a in answers],
                "prompt_hash": [a.prompt_hash for a in answers],
                "n_snippets": [len(t.snippets) for t in tasks],
            }
        )
        store.write_explanations(run_id, explainer, rows)
        if call_log is not None:
            call_log.flush()
        n_ok += int((rows.status == "ok").sum())
        n_done += len(rows)
        if stop is not None and stop.add([a.value if a.ok else None for a in answers]):
            break
    bar.close()
    return ExplainSummary(explainer, n_done, n_ok, n_done - n_ok, failures, stop.saved_calls(len(features)) if stop else 0)
