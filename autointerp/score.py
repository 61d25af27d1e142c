"""Score stage: check each label by predicting activations on held-out snippets.

Only score-split snippets and score-split verified negatives are ever shown: the
explain split never reaches a scorer. Every feature is scored twice, with its own
label and with another feature's label (a derangement), so each scorer's gap
between the two says whether it measures anything. A failed or unparsable judge
answer is recorded with its reason and never counted as a prediction.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import metrics
from .judges import Judge, map_bounded
from .prompts import activation_marks
from .records import DetectionTask, FeatureSnippets, FuzzTask, JudgeAnswer, MarkedSnippet, SimulationTask, Snippet
from .errors import AutointerpError
from .store import Store

SCORERS = ("detection", "fuzzing", "simulation", "embedding")


@dataclass
class ScoreConfig:
    scorers: tuple[str, ...] = SCORERS
    n_activating: int = 10  # held-out activating snippets per feature (top and quantile, alternating)
    n_negative: int = 10  # held-out verified negatives per feature
    per_prompt: int = 10  # snippets per detection / fuzzing prompt
    n_simulation: int = 4  # activating snippets simulated (plus as many negatives)
    n_embedding: int = 6  # activating snippets (plus as many negatives) per embedding AUROC: MiniLM costs most here
    shuffle_control: bool = True
    n_boot: int = 500
    seed: int = 0
    chunk: int = 512

    def __post_init__(self) -> None:
        unknown = set(self.scorers) - set(SCORERS)
        if unknown:
            raise AutointerpError(f"unknown scorer(s) {sorted(unknown)}", f"choose from {', '.join(SCORERS)}")


@dataclass
class ScoreSummary:
    explainer: str
    judge: str
    per_scorer: dict[str, dict] = field(default_factory=dict)
    usage: str = ""  # LLM calls, tokens and cost, when an LLM judge ran

    def lines(self) -> list[str]:
        out = [f"scores of {self.explainer} labels (judge {self.judge}):"]
        for scorer, s in self.per_scorer.items():
            out.append(
                f"  {scorer:<10} {s['metric']} median {s['median']:.3f} (IQR {s['q25']:.3f}–{s['q75']:.3f}, n={s['n_features']}); "
                f"shuffled {s['shuffled_median']:.3f}; gap {s['gap']:.3f} [{s['gap_low']:.3f}, {s['gap_high']:.3f}] — {s['verdict']}"
                + (f"; {s['n_failed']} failed" if s["n_failed"] else "")
                + (f"; {s['n_undefined']} undefined" if s["n_undefined"] else "")
            )
        return out + ([self.usage] if self.usage else [])


HEADLINE = {"detection": "balanced_accuracy", "fuzzing": "balanced_accuracy", "simulation": "pearson", "embedding": "auroc"}


def held_out(fs: FeatureSnippets, cfg: ScoreConfig) -> tuple[list[Snippet], list[Snippet]]:
    """Activating score-split snippets, alternating top and quantile samples, and negatives."""
    top = [s for s in fs.score if s.kind == "top"]
    quantile = sorted((s for s in fs.score if s.kind == "quantile"), key=lambda s: s.max_activation)
    picked: list[Snippet] = []
    # Quantile samples are taken evenly from low to high so every activation range is tested.
    q_idx = np.linspace(0, len(quantile) - 1, num=min(len(quantile), cfg.n_activating)).round().astype(int) if quantile else []
    qs = [quantile[i] for i in dict.fromkeys(q_idx)]
    for a, b in zip(top, qs):
        picked += [a, b]
    picked += top[len(qs) :] + qs[len(top) :]
    return picked[: cfg.n_activating], fs.score_negatives[: cfg.n_negative]


def fuzz_snippets(active: list[Snippet], negatives: list[Snippet], rng: np.random.Generator) -> list[MarkedSnippet]:
    """Half of the activating snippets keep their true marks; the other half, and every negative,
    get as many marks placed on tokens that do not activate."""
    out = []
    for i, s in enumerate(active):
        true = activation_marks(s)
        if i % 2 == 0:
            out.append(MarkedSnippet(s, true, True))
            continue
        quiet = [j for j, m in enumerate(true) if not m]
        n = min(max(sum(true), 1), len(quiet))
        if n == 0:
            continue
        wrong = set(rng.choice(quiet, n, replace=False).tolist())
        out.append(MarkedSnippet(s, tuple(j in wrong for j in range(len(true))), False))
    for s in negatives:
        n = max(1, min(3, len(s.tokens) // 8))
        wrong = set(rng.choice(len(s.tokens), n, replace=False).tolist())
        out.append(MarkedSnippet(s, tuple(j in wrong for j in range(len(s.tokens))), False))
    return out


def derangement(features: list[int], seed: int) -> dict[int, int]:
    """feature → the feature whose label it is scored against in the shuffle control (never itself)."""
    if len(features) < 2:
        return {}
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(features))
    # A random cyclic shift of a random order has no fixed point.
    return {features[order[i]]: features[order[(i + 1) % len(order)]] for i in range(len(order))}


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _failure_text(answers: list[JudgeAnswer]) -> str | None:
    errors = [a.error for a in answers if not a.ok]
    return "; ".join(dict.fromkeys(e or "no value" for e in errors)) or None


@dataclass
class Outcome:
    """One feature scored with one label by one scorer."""

    rows: list[dict]  # one per metric
    failed: int  # judge answers that failed
    asked: int  # judge answers asked for
    error: str | None = None
    prompt_hash: str | None = None
    call_ids: list[int] = field(default_factory=list)  # the logged LLM calls behind it

    @property
    def status(self) -> str:
        # failed: an answer it needed failed; undefined: every answer came, but the metric has
        # no value (e.g. constant predictions give no correlation).
        if self.failed:
            return "failed"
        return "ok" if not np.isnan(self.rows[0]["value"]) else "undefined"


def _classification_rows(y_true: list[bool], y_pred: list[bool], cfg: ScoreConfig, seed: int) -> list[dict]:
    if not y_true:
        return [{"metric": "balanced_accuracy", "value": np.nan, "ci_low": np.nan, "ci_high": np.nan, "n": 0, "method": "none"}]
    est = metrics.classification_scores(y_true, y_pred, n_boot=cfg.n_boot, seed=seed)
    return [{"metric": m, "value": e.value, "ci_low": e.ci_low, "ci_high": e.ci_high, "n": e.n, "method": e.method} for m, e in est.items()]


async def _score_feature(scorer: str, judge: Judge, feature: int, label: str, active: list[Snippet], negatives: list[Snippet], cfg: ScoreConfig) -> Outcome:
    """One feature scored with one label."""
    rng = np.random.default_rng([cfg.seed, feature])
    if scorer in ("detection", "fuzzing"):
        if scorer == "detection":
            items = [(s, s.active) for s in active + negatives]
        else:
            items = [(m, m.correct) for m in fuzz_snippets(active, negatives, rng)]
        items = [items[i] for i in rng.permutation(len(items))]
        groups = _chunks(items, cfg.per_prompt)
        if scorer == "detection":
            calls = [judge.detect(DetectionTask(feature, label, [s for s, _ in g])) for g in groups]
        else:
            calls = [judge.fuzz(FuzzTask(feature, label, [m for m, _ in g])) for g in groups]
        answers = await asyncio.gather(*calls)
        y_true, y_pred = [], []
        if all(a.ok for a in answers):  # a score on the prompts that happened to be answered is not this scorer's score
            for g, a in zip(groups, answers):
                y_true += [t for _, t in g]
                y_pred += list(a.value)
        rows = _classification_rows(y_true, y_pred, cfg, feature)
    else:  # simulation
        shown = active[: cfg.n_simulation] + negatives[: cfg.n_simulation]
        answers = [await judge.simulate(SimulationTask(feature, label, shown))]
        a = answers[0]
        if a.ok:
            pred = np.concatenate([np.asarray(p, float) for p in a.value])
            true = np.concatenate([np.asarray(s.values(), float) for s in shown])
            groups_ = np.concatenate([np.full(len(s.tokens), i) for i, s in enumerate(shown)])
            e = metrics.pearson(pred, true, groups=groups_, n_boot=cfg.n_boot, seed=feature)
            rows = [{"metric": "pearson", "value": e.value, "ci_low": e.ci_low, "ci_high": e.ci_high, "n": e.n, "method": e.method}]
        else:
            rows = [{"metric": "pearson", "value": np.nan, "ci_low": np.nan, "ci_high": np.nan, "n": 0, "method": "none"}]
    failed = sum(not a.ok for a in answers)
    hashes = [a.prompt_hash for a in answers if a.prompt_hash]
    calls = [a.call_id for a in answers if a.call_id is not None]
    return Outcome(rows, failed, len(answers), _failure_text(answers), hashes[0] if hashes else None, calls)


def _embedding_rows(embedder, labels: dict[int, str], snippets: dict[int, tuple[list[Snippet], list[Snippet]]], cfg: ScoreConfig) -> dict[int, list[dict]]:
    """AUROC of label–snippet cosine similarity, activating vs negative, per (feature, label)."""
    texts = sorted({s.text for act, neg in snippets.values() for s in act[: cfg.n_embedding] + neg[: cfg.n_embedding]} | set(labels.values()))
    vectors = dict(zip(texts, embedder.encode(texts)))
    out = {}
    for feature, (act, neg) in snippets.items():
        act, neg = act[: cfg.n_embedding], neg[: cfg.n_embedding]
        label_vec = vectors[labels[feature]]
        sims = [float(vectors[s.text] @ label_vec) for s in act + neg]
        e = metrics.auroc(sims, [True] * len(act) + [False] * len(neg), n_boot=cfg.n_boot, seed=feature)
        out[feature] = [{"metric": "auroc", "value": e.value, "ci_low": e.ci_low, "ci_high": e.ci_high, "n": e.n, "method": e.method}]
    return out


async def _judge_outcomes(scorer: str, judge: Judge, runs, labels, held, cfg: ScoreConfig, bar) -> dict:
    async def one(run) -> tuple:
        feature, source, label_feature = run
        outcome = await _score_feature(scorer, judge, feature, labels[label_feature], *held[feature], cfg)
        if source == "true":
            bar.update(1)
        return (feature, source), outcome

    return dict(await map_bounded(one, runs, judge.concurrency))


def _embedding_outcomes(embedder, runs, labels, held, cfg: ScoreConfig) -> dict:
    out = {}
    for source in ("true", "shuffled"):
        pairs = {f: labels[other] for f, src, other in runs if src == source}
        rows = _embedding_rows(embedder, pairs, {f: held[f] for f in pairs}, cfg)
        out.update({(f, source): Outcome(r, failed=0, asked=1) for f, r in rows.items()})
    return out


async def score(store: Store, run_id: str, explainer: str, judge: Judge, cfg: ScoreConfig, embedder=None, call_log=None, progress: bool = True) -> ScoreSummary:
    """Score every successfully labelled feature of `explainer` with each configured scorer."""
    from tqdm.auto import tqdm

    labels_df = store.explanations(run_id, explainer)
    labels = {int(r.feature): r.label for r in labels_df.itertuples() if r.status == "ok"}
    features = sorted(labels)
    shuffled = derangement(features, cfg.seed) if cfg.shuffle_control else {}
    judge_name = judge.name
    if "embedding" in cfg.scorers and embedder is None:
        from .embed import Embedder

        embedder = Embedder(precision="auto")
    bar = tqdm(total=len(features) * len(cfg.scorers), desc="score", unit="feat", disable=not progress)
    for start in range(0, len(features), cfg.chunk):
        chunk = store.feature_snippets(run_id, features[start : start + cfg.chunk], split="score", max_per_kind={"top": cfg.n_activating, "negative": cfg.n_negative})
        held = {fs.feature: held_out(fs, cfg) for fs in chunk}
        runs = [(f, "true", f) for f in held] + [(f, "shuffled", shuffled[f]) for f in held if f in shuffled]
        for scorer in cfg.scorers:
            if scorer == "embedding":
                outcomes = _embedding_outcomes(embedder, runs, labels, held, cfg)
                name = f"embedding:{embedder.name}:{embedder.precision}"
                bar.update(len(held))
            else:
                outcomes = await _judge_outcomes(scorer, judge, runs, labels, held, cfg, bar)
                name = judge_name
            frame = [
                {"feature": f, "judge": name, "label_source": src, "label_feature": other, **row, "status": o.status,
                 "n_failed": o.failed, "error": o.error, "prompt_hash": o.prompt_hash, "call_ids": o.call_ids}
                for (f, src, other), o in ((r, outcomes[r[0], r[1]]) for r in runs)
                for row in o.rows
            ]
            if call_log is not None:
                call_log.flush()  # the calls first: a score never points at a call the log lacks
            store.write_scores(run_id, explainer, scorer, pd.DataFrame(frame))
    bar.close()
    return summarise(store, run_id, explainer, judge_name, cfg)


def summarise(store: Store, run_id: str, explainer: str, judge_name: str, cfg: ScoreConfig) -> ScoreSummary:
    """Per scorer: distribution of the headline metric, the shuffled control, and the gap."""
    df = store.scores(run_id, explainer)
    summary = ScoreSummary(explainer, judge_name)
    for scorer in cfg.scorers:
        sub = df[(df.scorer == scorer) & (df.metric == HEADLINE[scorer])]
        true = sub[sub.label_source == "true"].set_index("feature").value
        shuf = sub[sub.label_source == "shuffled"].set_index("feature").value
        both = pd.concat([true, shuf], axis=1, keys=["t", "s"]).dropna()
        gap = metrics.shuffle_gap(both.t.to_numpy(), both.s.to_numpy(), n_boot=cfg.n_boot, seed=cfg.seed) if len(both) else None
        vals = true.dropna()
        summary.per_scorer[scorer] = {
            "metric": HEADLINE[scorer],
            "n_features": int(len(vals)),
            "n_failed": int((sub[sub.label_source == "true"].status == "failed").sum()),
            "n_undefined": int((sub[sub.label_source == "true"].status == "undefined").sum()),
            "median": float(vals.median()) if len(vals) else np.nan,
            "q25": float(vals.quantile(0.25)) if len(vals) else np.nan,
            "q75": float(vals.quantile(0.75)) if len(vals) else np.nan,
            "shuffled_median": float(shuf.dropna().median()) if shuf.notna().any() else np.nan,
            "gap": gap.value if gap else np.nan,
            "gap_low": gap.ci_low if gap else np.nan,
            "gap_high": gap.ci_high if gap else np.nan,
            "verdict": metrics.gap_verdict(gap) if gap else "no shuffle control",
        }
    return summary
