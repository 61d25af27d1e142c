"""Score stage: check each label by predicting activations on held-out snippets.

Only score-split snippets and score-split verified negatives are ever shown (sampling.py): the
explain split never reaches a scorer. Each scorer (scorers/) gives every labelled feature its
headline metric with a 95% interval and a per-feature null test: a label is *confident* when
its p-value against the permutation null (what a label unrelated to the activations scores on
the same snippets) is below `alpha`.

The shuffle control scores a seeded sample of features against another feature's label, and
grows the sample until the 95% interval of the mean true − shuffled gap is within ±0.03 (or
every feature is in it): it says whether a scorer measures anything at all, at a fraction of
the calls a control on every feature would cost. `shuffle_control="all"` controls every
feature. A failed or undefined score is recorded with its reason and counted in the summary,
never dropped silently.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd

from autointerp.config import ScoreConfig
from autointerp.judges.judge import Judge
from autointerp.stages.score.sampling import HeldOut, derangement, fuzz_snippets, held_out
from autointerp.stages.score.scorers import CHANCE, HEADLINE, INPUT_SCORERS, SCORERS, Item, Outcome, Scorer, chosen
from autointerp.stats import metrics
from autointerp.store.store import Store

__all__ = [
    "ScoreConfig",
    "ScoreSummary",
    "score",
    "select_scored",
    "load_held_out",
    "summarise",
    "write_summaries",
    "SCORERS",
    "INPUT_SCORERS",
    "HEADLINE",
    "CHANCE",
    "held_out",
    "fuzz_snippets",
    "HeldOut",
]


@dataclass
class ScoreSummary:
    explainer: str
    judge: str
    per_scorer: dict[str, dict] = field(default_factory=dict)  # the score_summaries rows, by scorer
    usage: str = ""  # LLM calls, tokens and cost, when an LLM judge ran
    reused: dict[str, int] = field(default_factory=dict)  # scorer → features whose stored score was kept
    seconds: float = 0.0  # wall time of the stage

    def lines(self) -> list[str]:
        out = [f"scores of {self.explainer} labels (judge {self.judge}):"]
        if self.reused:
            kept = ", ".join(f"{n:,} {scorer}" for scorer, n in self.reused.items())
            out.append(f"  kept the stored scores of the same labels, judge and settings: {kept}")
        for scorer, s in self.per_scorer.items():
            out.append(summary_line(scorer, s))
        return out + ([self.usage] if self.usage else [])


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def summary_line(scorer: str, s: dict) -> str:
    f = lambda x: "—" if _missing(x) else f"{x:.3f}"  # noqa: E731
    signed = lambda x: "—" if _missing(x) else f"{x:+.3f}"  # noqa: E731
    line = (
        f"  {scorer:<10} {s['metric']} median {f(s['median'])} (IQR {f(s['q25'])}–{f(s['q75'])}) over {s['n_ok']:,} of "
        f"{s['n_features']:,} features"
        + (f"; {s['n_failed']:,} failed" if s["n_failed"] else "")
        + (f"; {s['n_undefined']:,} undefined" if s["n_undefined"] else "")
        + f"; confident {s['n_confident']:,} (one-sided permutation test, p < {s['alpha']:g})"
        + (
            f"; mean {f(s['mean'])}, lift over the floor {f(s['chance'])} (a trivial answer's): {signed(s['lift'])} "
            f"[{signed(s['lift_low'])}, {signed(s['lift_high'])}]"
            if not _missing(s.get("lift"))
            else ""
        )
    )
    if s["n_controls"]:
        line += (
            f"; shuffle control on {s['n_controls']:,} features: shuffled median {f(s['shuffled_median'])}, gap "
            f"{f(s['gap'])} "
            f"[{f(s['gap_low'])}, {f(s['gap_high'])}] over {s['n_pairs']:,} pairs"
            + (f" ({s['n_pairs_undefined']:,} left out: a score undefined or failed)" if s["n_pairs_undefined"] else "")
            + f" — {s['verdict']}"
        )
        if s["calls_saved"]:
            line += f"; {s['calls_saved']:,} judge calls saved by sampling the control"
    else:
        line += f"; {s['verdict']}"
    return line


def _rows(
    scorer: str,
    judge_name: str,
    source: str,
    pairs: list[tuple[int, int]],
    outcomes: list[Outcome],
    keys: list[str],
) -> list[dict]:
    return [
        {
            "feature": f,
            "judge": judge_name,
            "label_source": source,
            "label_feature": other,
            "metric": SCORERS[scorer].metric,
            "value": o.estimate.value,
            "ci_low": o.estimate.ci_low,
            "ci_high": o.estimate.ci_high,
            "n": o.estimate.n,
            "method": o.estimate.method,
            "p_value": o.estimate.p_value,
            "status": o.status,
            "n_failed": o.failed,
            "error": o.error,
            "prompt_hash": o.prompt_hash,
            "call_ids": o.call_ids,
            "score_key": key,
        }
        for (f, other), o, key in zip(pairs, outcomes, keys)
    ]


# Settings that choose which features and scorers are scored, or only read the stored rows (the summary's
# significance level, the control's size): a score row stays valid whatever they are.
_NOT_IN_KEY = frozenset(
    {
        "scorers",
        "features",
        "sample",
        "sample_seed",
        "shuffle_control",
        "control_half_width",
        "control_start",
        "chunk",
        "alpha",
    }
)


def key_context(scorer: str, judge: str, judge_settings: dict | None, cfg: ScoreConfig) -> str:
    """All but the label that a score row is computed from, as canonical JSON: the scorer, the judge (with
    its model, prompts and sampling when the scorer asks it) and the settings that shape the held-out sample
    and the statistics. The held-out windows themselves are the gather's, which a re-gather that changes
    them deletes with the scores."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in _NOT_IN_KEY}
    return json.dumps([scorer, judge, judge_settings, settings], sort_keys=True, default=str)


def own_settings(settings: dict, scorer: str) -> dict:
    """The judge's settings as they bear on one scorer: of its prompts, only the scorer's own (named like
    it), so editing the explain prompt does not void the scores of labels it did not write."""
    if "prompts" not in settings:
        return settings
    return {**settings, "prompts": {k: v for k, v in settings["prompts"].items() if k == scorer}}


def score_key(label: str, context: str) -> str:
    """A score row's key: the digest of its label and its key_context."""
    return hashlib.sha256(json.dumps([label, context]).encode()).hexdigest()


def _control_partners(features: list[int], labels: dict[int, str], seed: int) -> dict[int, int]:
    """A derangement in which, where it can be arranged, no feature gets a label worded like its own."""
    partner = derangement(features, seed)
    same = [f for f in features if labels[partner[f]] == labels[f]]
    rng = np.random.default_rng(seed + 1)
    for f in same:  # swap with a random other feature's partner when that fixes both
        for g in rng.permutation(features):
            g = int(g)
            if (
                g != f
                and partner[g] != f
                and labels[partner[g]] != labels[f]
                and labels[partner[f]] != labels[g]
                and partner[f] != g
            ):
                partner[f], partner[g] = partner[g], partner[f]
                break
    return partner


def select_scored(labelled, cfg: ScoreConfig) -> list[int]:
    """The labelled features to score: the chosen ones (cfg.features), then a seeded sample."""
    features = sorted(labelled) if cfg.features is None else sorted(set(cfg.features) & set(labelled))
    if cfg.sample is not None and cfg.sample < len(features):
        features = sorted(
            int(f) for f in np.random.default_rng(cfg.sample_seed).choice(features, cfg.sample, replace=False)
        )
    return features


def load_held_out(store: Store, run_id: str, features: list[int], cfg: ScoreConfig) -> dict[int, HeldOut]:
    """Each feature's held-out sample (score split only); features without snippets are left out."""
    return {
        fs.feature: held_out(fs, cfg.n_top, cfg.n_strata, cfg.n_negative, cfg.seed)
        for fs in store.feature_snippets(
            run_id, features, split="score", max_per_kind={"top": cfg.n_top, "negative": cfg.n_negative}
        )
    }


async def score(
    store: Store,
    run_id: str,
    explainer: str,
    judge: Judge,
    cfg: ScoreConfig,
    call_log=None,
    progress: bool = True,
    subject=None,
) -> ScoreSummary:
    """Score every successfully labelled feature of `explainer` with each configured scorer, run the
    shuffle control, and store the rows and each scorer's summary. Scorers that intervene on the
    model (intervention) use `subject` (subject.Subject), loaded from the run record when None."""
    from tqdm.auto import tqdm

    labels_df = store.explanations(run_id, explainer)
    labels = {int(r.feature): r.label for r in labels_df.itertuples() if r.status == "ok"}
    features = select_scored(labels, cfg)
    scorers: dict[str, Scorer] = {name: SCORERS[name] for name in chosen(cfg.scorers)}
    if any(s.needs_subject for s in scorers.values()):
        if subject is None:
            from autointerp.subject.load import load_subject

            subject = load_subject(store, run_id)
        needing = [name for name, s in scorers.items() if s.needs_subject]
        subject.model.require_causal(f"the {' and '.join(needing)} scorer")
        every_label = [labels[f] for f in features]
        scorers = {name: s.bind(subject, every_label) if s.needs_subject else s for name, s in scorers.items()}
    names = {name: (s.judge_name() if not s.uses_judge else judge.name) for name, s in scorers.items()}
    bar = tqdm(total=len(features) * len(scorers), desc="score", unit="feat", disable=not progress)
    held: dict[int, HeldOut] = {}
    reused: dict[str, int] = dict.fromkeys(scorers, 0)

    contexts = {
        name: key_context(name, names[name], own_settings(judge.settings, name) if s.uses_judge else None, cfg)
        for name, s in scorers.items()
    }

    def key_of(name: str, label: str) -> str:
        return score_key(label if scorers[name].reads_label else "", contexts[name])  # label-free: any label

    async def run(batch: list[int], source: str, partner: dict[int, int]) -> None:
        stored = {name: store.score_keys(run_id, explainer, name, source) for name in scorers}
        for start in range(0, len(batch), cfg.chunk):
            part = batch[start : start + cfg.chunk]
            keys = {name: {f: key_of(name, labels[partner.get(f, f)]) for f in part} for name in scorers}
            # A row computed from the same label, judge and settings is kept: a re-run resumes.
            todo = {name: [f for f in part if stored[name].get(f) != keys[name][f]] for name in scorers}
            wanted = {f for fs in todo.values() for f in fs}
            held.update(load_held_out(store, run_id, [f for f in wanted if f not in held], cfg))
            for name, scorer in scorers.items():
                if source == "shuffled" and not scorer.reads_label:
                    continue  # another feature's label changes nothing a label-free score reads
                pairs = [(f, partner.get(f, f)) for f in todo[name] if f in held]
                if source == "true":
                    reused[name] += len(part) - len(todo[name])
                    bar.update(len(part) - len(pairs))
                if not pairs:
                    continue
                outcomes = await scorer.score([Item(f, labels[other], held[f], f) for f, other in pairs], judge, cfg)
                if source == "true":
                    bar.update(len(pairs))
                if call_log is not None:
                    call_log.flush()  # the calls first: a score never points at a call the log lacks
                rows = _rows(name, names[name], source, pairs, outcomes, [keys[name][f] for f, _ in pairs])
                store.write_scores(run_id, explainer, name, pd.DataFrame(rows), label_source=source)

    store.ensure_score_columns(list(scorers))  # a scorer newer than the database gets its feature_summary columns
    await run(features, "true", {})
    bar.close()
    n_controls = 0
    if cfg.shuffle_control != "none" and len(features) >= 2:
        partner = _control_partners(features, {f: labels[f] for f in features}, cfg.seed)
        order = [features[i] for i in np.random.default_rng(cfg.seed).permutation(len(features))]
        for name in scorers:  # drop the control rows this control would not compute again
            stored = store.score_keys(run_id, explainer, name, "shuffled")
            valid = [f for f, k in stored.items() if f in partner and k == key_of(name, labels[partner[f]])]
            store.delete_scores(run_id, explainer, [name], "shuffled", keep=valid)
        target = len(features) if cfg.shuffle_control == "all" else min(cfg.control_start, len(features))
        while n_controls < target:
            await run(order[n_controls:target], "shuffled", partner)
            n_controls = target
            if target == len(features):
                break
            needed = _control_size_needed(store, run_id, explainer, list(scorers), cfg, set(order[:n_controls]))
            if needed <= n_controls:
                break
            target = min(len(features), max(needed, n_controls + cfg.control_start))
        # Controls of an earlier, larger plan would be counted in the summary: this control is order[:n_controls].
        store.delete_scores(run_id, explainer, list(scorers), "shuffled", keep=order[:n_controls])
    else:
        store.delete_scores(run_id, explainer, list(scorers), "shuffled")  # a control of older labels is not this one
    per_scorer = write_summaries(store, run_id, explainer, names, cfg)
    return ScoreSummary(explainer, judge.name, per_scorer, reused={name: n for name, n in reused.items() if n})


def write_summaries(
    store: Store, run_id: str, explainer: str, judges: dict[str, str], cfg: ScoreConfig
) -> dict[str, dict]:
    """Summarise the stored rows of each scorer (scorer → the judge named in its rows) and store the summaries."""
    out = {}
    for name, judge_name in judges.items():
        scorer = SCORERS[name]
        rows = store.scores(run_id, explainer, name)
        n_features = int(
            rows[rows.label_source == "true"].feature.nunique()
        )  # every feature scored, however it came out
        row = _summary(rows, scorer, cfg if scorer.reads_label else replace(cfg, shuffle_control="none"), n_features)
        out[name] = row | {"scorer": name, "judge": judge_name, "samples": scorer.samples(cfg)}
    store.write_score_summaries(run_id, explainer, pd.DataFrame(out.values()))
    return out


def _paired(rows: pd.DataFrame) -> pd.DataFrame:
    """Per controlled feature: its own-label and shuffled-label headline values (NaN where not defined)."""
    own = rows[rows.label_source == "true"].set_index("feature")
    shuffled = rows[rows.label_source == "shuffled"].set_index("feature")
    both = pd.DataFrame({"t": own.value.reindex(shuffled.index), "s": shuffled.value})
    both["ok"] = (own.status.reindex(shuffled.index) == "ok") & (shuffled.status == "ok")
    return both


def _control_size_needed(
    store: Store, run_id: str, explainer: str, scorers: list[str], cfg: ScoreConfig, controlled: set[int]
) -> int:
    """Controlled features enough to bring every scorer's gap interval within ±control_half_width, from the
    spread of the paired differences so far over the `controlled` features (normal approximation, 10% margin)."""
    needed = 0
    for name in scorers:
        both = _paired(store.scores(run_id, explainer, name))
        both = both[both.index.isin(controlled)]
        diff = (both.t - both.s)[both.ok].to_numpy()
        if len(diff) < 2:
            continue
        gap = metrics.shuffle_gap(both.t[both.ok], both.s[both.ok], n_boot=cfg.n_boot, seed=cfg.seed)
        if (gap.ci_high - gap.ci_low) / 2 <= cfg.control_half_width:
            continue
        sd = float(np.std(diff, ddof=1))
        share = len(diff) / max(len(both), 1)  # controls that give a defined pair
        needed = max(needed, math.ceil(1.1 * (metrics.Z95 * sd / cfg.control_half_width) ** 2 / max(share, 0.05)))
    return needed


UNINFORMATIVE_SPAN = 0.4  # an interval holding chance and chance + this cannot tell a good label from none


def measurability(ok: pd.DataFrame, chance: float) -> str:
    """'NOT MEASURABLE ...; ' when most features' intervals hold both chance and chance + 0.4 (the sample
    is too small for a score to tell a good label from none), else ''."""
    if ok.empty:
        return ""
    wide = ((ok.ci_low <= chance) & (ok.ci_high >= chance + UNINFORMATIVE_SPAN)).mean()
    if wide <= 0.5:
        return ""
    return (
        f"NOT MEASURABLE at this sample: {wide:.0%} of the intervals hold both chance ({chance:g}) and "
        f"{chance + UNINFORMATIVE_SPAN:g}; show more windows a feature; "
    )


def _summary(rows: pd.DataFrame, scorer: Scorer, cfg: ScoreConfig, n_features: int) -> dict:
    own = rows[rows.label_source == "true"]
    ok = own[own.status == "ok"]
    values = ok.value
    both = _paired(rows)
    gap = (
        metrics.shuffle_gap(both.t[both.ok], both.s[both.ok], n_boot=cfg.n_boot, seed=cfg.seed)
        if both.ok.any()
        else None
    )
    n_controls = len(both)
    lift = metrics.lift_over(values, scorer.chance, n_boot=cfg.n_boot, seed=cfg.seed)
    quantile = lambda q: float(values.quantile(q)) if len(values) else math.nan  # noqa: E731
    return {
        "metric": scorer.metric,
        "chance": scorer.chance,
        "n_features": n_features,
        "n_ok": int(len(ok)),
        "n_failed": int((own.status == "failed").sum()),
        "n_undefined": int((own.status == "undefined").sum()),
        "mean": float(values.mean()) if len(values) else math.nan,
        "lift": lift.value,
        "lift_low": lift.ci_low,
        "lift_high": lift.ci_high,
        "median": quantile(0.5),
        "q25": quantile(0.25),
        "q75": quantile(0.75),
        "n_confident": int((ok.p_value < cfg.alpha).sum()),
        "alpha": cfg.alpha,
        "control": cfg.shuffle_control,
        "n_controls": int(n_controls),
        "n_pairs": int(both.ok.sum()),
        "n_pairs_undefined": int((~both.ok).sum()),
        "shuffled_median": float(both.s[both.ok].median()) if both.ok.any() else math.nan,
        "gap": gap.value if gap else math.nan,
        "gap_low": gap.ci_low if gap else math.nan,
        "gap_high": gap.ci_high if gap else math.nan,
        "verdict": measurability(ok, scorer.chance)
        + (
            metrics.gap_verdict(gap)
            if gap
            else (
                ("label-free: no shuffle control" if not scorer.reads_label else "no shuffle control")
                if cfg.shuffle_control == "none"
                else "undefined: no controlled feature has both scores defined"
            )
        ),
        # Judge requests a control of every feature would have made on top (offline judge's too: its "calls" cost time,
        # not money).
        "calls_saved": (n_features - n_controls) * scorer.prompts_per_feature(cfg)
        if cfg.shuffle_control == "sample"
        else 0,
    }


def summarise(store: Store, run_id: str, explainer: str) -> dict[str, dict]:
    """The stored per-scorer summaries of an explainer's labels (what the score stage computed), by scorer."""
    frame = store.score_summaries(run_id, explainer)
    return {r["scorer"]: r for r in frame.to_dict("records")}
