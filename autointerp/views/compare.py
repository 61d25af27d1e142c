"""How far two explainers agree on the features both labelled, with a control.

Agreement is measured on label meaning, not wording: both labels of a feature are embedded
with all-MiniLM-L6-v2 and compared by cosine similarity. The control is the same comparison
with the other explainer's labels shuffled among the features, so "agree" means "closer
than two labels of different features are". Reported:

- the median cosine of a feature's two labels, and the median over mismatched pairs;
- the match rate: how often a feature's label by B is the nearest of all B's labels to its label
  by A (chance: 1/n);
- a one-sided permutation p-value for the mean matched cosine against shuffled pairings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Agreement:
    a: str
    b: str
    n: int  # features both labelled
    matched_median: float  # cosine of a feature's two labels
    mismatched_median: float  # cosine of labels of different features
    match_rate: float  # B's label of f is the nearest B label to A's label of f
    chance: float  # 1/n
    p_value: float  # permutation test of mean matched cosine > shuffled
    n_permutations: int

    def line(self) -> str:
        if self.n < 2:
            return f"agreement {self.a} vs {self.b}: {self.n} feature(s) labelled by both, too few to compare"
        verdict = "agree beyond chance" if self.p_value < 0.05 else "agreement indistinguishable from chance"
        return (
            f"agreement {self.a} vs {self.b} on {self.n} features: label cosine median {self.matched_median:.2f} "
            f"(different features: {self.mismatched_median:.2f}); nearest-label match {self.match_rate:.0%} "
            f"(chance {self.chance:.0%}); permutation p = {self.p_value:.3g}: {verdict}"
        )


def labels_digest(labels_a: dict[int, str], labels_b: dict[int, str]) -> str:
    """Names the two label sets an agreement was computed on (a stored agreement is used only for them)."""
    import hashlib
    import json

    text = json.dumps([sorted(labels_a.items()), sorted(labels_b.items())], ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def store_agreements(store, run_id: str, explainer: str, embedder=None) -> list[Agreement]:
    """Compute and store how far `explainer` agrees with every other explainer of the run, both ways,
    so that the report reads them instead of loading an embedding model."""
    from dataclasses import asdict

    labels = {name: ok_labels(store.explanations(run_id, name)) for name in store.explainers(run_id)}
    if explainer not in labels:
        return []
    if embedder is None and len(labels) > 1:
        from autointerp.stats.embed import Embedder

        embedder = Embedder()
    out = []
    for other in labels:
        if other == explainer:
            continue
        for a, b in ((explainer, other), (other, explainer)):
            agreement = label_agreement(a, labels[a], b, labels[b], embedder=embedder)
            store.write_agreement(run_id, labels_digest(labels[a], labels[b]), asdict(agreement))
            out.append(agreement)
    return out


def ok_labels(explanations) -> dict[int, str]:
    """The labels of an explanations frame (Store.explanations) that were written: feature → label,
    failures left out."""
    return {int(r.feature): str(r.label) for r in explanations[explanations.status == "ok"].itertuples()}


def agreement(store, run_id: str, a: str, labels_a: dict[int, str], b: str, labels_b: dict[int, str]) -> Agreement:
    """The agreement of a's and b's labels: the one stored when they were written (store_agreements),
    else, for labels changed since, computed here (which loads the embedding model)."""
    stored = store.agreement(run_id, a, b, labels_digest(labels_a, labels_b))
    return Agreement(**stored) if stored else label_agreement(a, labels_a, b, labels_b)


def label_agreement(
    a: str,
    labels_a: dict[int, str],
    b: str,
    labels_b: dict[int, str],
    embedder=None,
    n_permutations: int = 2000,
    seed: int = 0,
) -> Agreement:
    """Agreement of explainer a's and b's labels (feature → label) on the features both labelled."""
    common = sorted(set(labels_a) & set(labels_b))
    n = len(common)
    if n < 2:
        return Agreement(a, b, n, float("nan"), float("nan"), float("nan"), float("nan"), float("nan"), 0)
    if embedder is None:
        from autointerp.stats.embed import Embedder

        embedder = Embedder()
    va = np.asarray(embedder.encode([labels_a[f] for f in common]), dtype=np.float64)
    vb = np.asarray(embedder.encode([labels_b[f] for f in common]), dtype=np.float64)
    va /= np.linalg.norm(va, axis=1, keepdims=True)
    vb /= np.linalg.norm(vb, axis=1, keepdims=True)
    sims = va @ vb.T  # [n, n]: row f = A's label of f against every B label
    matched = np.diag(sims)
    mismatched = sims[~np.eye(n, dtype=bool)]
    match_rate = float(np.mean(sims.argmax(axis=1) == np.arange(n)))
    rng = np.random.default_rng(seed)
    perms = np.array([sims[np.arange(n), rng.permutation(n)].mean() for _ in range(n_permutations)])
    p = (1 + np.sum(perms >= matched.mean())) / (1 + n_permutations)
    return Agreement(
        a, b, n, float(np.median(matched)), float(np.median(mismatched)), match_rate, 1 / n, float(p), n_permutations
    )


def sample_lines(store, run_id: str, sample: str, main: str) -> list[str]:
    """The sample explainer's labels beside the main explainer's, each with its scores, then the agreement."""
    from autointerp.stages.score.stage import HEADLINE

    labels = store.explanations(run_id, sample)
    other_ok = ok_labels(store.explanations(run_id, main))
    scores = store.scores(run_id, sample)
    head = scores[(scores.metric == scores.scorer.map(HEADLINE)) & (scores.label_source == "true")]
    cells: dict[int, list[str]] = {}
    for r in head.itertuples():
        value = "—" if r.status != "ok" else f"{r.value:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]"
        cells.setdefault(int(r.feature), []).append(
            f"{r.scorer} {value}" + ("" if r.status == "ok" else f" ({r.status})")
        )
    out = [f"labels by {sample} on its sample of {len(labels)} features, beside {main}:"]
    for r in labels.sort_values("position").itertuples():
        f = int(r.feature)
        mine = repr(r.label) if r.status == "ok" else f"FAILED ({r.error})"
        out.append(
            f"  #{f:<6} {mine}  |  {main}: {other_ok.get(f, '—')}  |  " + ("; ".join(cells.get(f, [])) or "not scored")
        )
    failed = labels[labels.status != "ok"]
    kinds = failed.error.fillna("").str.split(":").str[0].value_counts().to_dict()
    out.append(
        f"  labels that failed: {len(failed)} of {len(labels)}"
        + (f" ({', '.join(f'{k} {v}' for k, v in kinds.items())})" if kinds else "")
    )
    out.append("  " + agreement(store, run_id, sample, ok_labels(labels), main, other_ok).line())
    return out + ["  " + line for line in route_lines(store, run_id, [main, sample])]


def route_lines(store, run_id: str, explainers: list[str]) -> list[str]:
    """Where triage sent the features, and how each explainer's labels of each route score by detection
    on the score split: the token route is where the free token label held up on the explain split."""
    routes = store.triage(run_id)
    if routes.empty:
        return []
    token = set(routes.feature[routes.route == "token"])
    llm = set(routes.feature) - token

    def detection(rows, features: set) -> str:
        rows = rows[rows.feature.isin(features)]
        if rows.empty:
            return "not scored"
        v = rows.value
        return (
            f"detection median {v.median():.3f} (IQR {v.quantile(0.25):.3f}-{v.quantile(0.75):.3f}) over "
            f"{len(v):,}, {int((rows.p_value < 0.01).sum()):,} confident (p < 0.01)"
        )

    out = [
        f"triage routes: {len(token):,} features keep their token label ({len(token):,} explain calls saved), "
        f"{len(llm):,} go to the LLM"
    ]
    for explainer in explainers:
        rows = store.scores(run_id, explainer, "detection")
        rows = rows[(rows.label_source == "true") & (rows.status == "ok")]
        out.append(f"  {explainer}: token route {detection(rows, token)}; LLM route {detection(rows, llm)}")
    return out


RANDOM_SUFFIX = "-random"  # the run of a real run's random-directions baseline (pipeline.random_baseline)


def baseline_lines(store, run_id: str, explainer: str) -> list[str]:
    """Each scorer's median and lift over its chance on the real SAE beside the same on its random
    baseline (run <run_id>-random), and the difference of the lifts: what the SAE's training bought."""
    real = store.score_summaries(run_id, explainer).set_index("scorer")
    random = store.score_summaries(run_id + RANDOM_SUFFIX, explainer).set_index("scorer")
    if random.empty:
        return []
    out = [f"random-SAE baseline (run {run_id}{RANDOM_SUFFIX}: the same shape, k and pipeline, random directions):"]
    for scorer in real.index.intersection(random.index):
        r, b = real.loc[scorer], random.loc[scorer]

        def lift(row) -> str:
            return f"lift {row.lift:+.3f} [{row.lift_low:+.3f}, {row.lift_high:+.3f}]"

        out.append(
            f"  {scorer:<12} this SAE median {r['median']:.3f} ({lift(r)}, {int(r.n_confident):,} of "
            f"{int(r.n_features):,} confident); random SAE {b['median']:.3f} ({lift(b)}, {int(b.n_confident):,} of "
            f"{int(b.n_features):,} confident)"
        )
    return out
