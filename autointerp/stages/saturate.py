"""Saturation stage: map each feature's label to a category, then measure when new categories stop appearing.

Labels are read in labelling order (the order the explain pass wrote them, see
`Store.saturation_labels`). Two merge rules turn labels into categories:

- "embedding" (offline): `embed.cluster_labels` with all-MiniLM-L6-v2. A label joins the
  category whose first label is most similar, if the cosine is >= `threshold`; else it opens
  a new category.
- "codebook": the LLM judge merges duplicate or highly similar labels into a codebook,
  `codebook_batch` labels per call in labelling order, shown the codebook so far each time
  (prompts/codebook.txt). Each label gets an existing code or a new one.

Neither rule ever changes an earlier label's category, so the per-step table is the history
as the labels arrived. A failed codebook call (API error or an answer that does not parse)
leaves its whole batch unmapped, stored with the error and the raw answer, and those labels
count in no figure: a guessed category would be a made-up data point.

The figures come from `autointerp.stats.saturation`. Loose or strict merging moves all of them (false
singletons inflate Chao1 and lower coverage), so the merge rule is stored with every row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from autointerp.config import DEFAULT_THRESHOLD, MIN_LABELS, SaturationConfig
from autointerp.errors import AutointerpError
from autointerp.judges.judge import Judge
from autointerp.stats.embed import Embedder, cluster_labels
from autointerp.stats.saturation import (
    BootstrapSummary,
    SaturationVerdict,
    bootstrap_orders,
    counts_from_labels,
    good_toulmin,
    guest_saturation,
    labels_to_reach_coverage,
    rarefaction,
    saturation_step_table,
    saturation_verdict,
    stop_rule,
)
from autointerp.store import Store

RAREFACTION_POINTS = 200  # the order-free curve is stored on at most this many sample sizes


@dataclass
class SaturationSummary:
    run_id: str
    explainer: str
    method: str
    merge_rule: str
    cfg: SaturationConfig
    n_labels: int  # labels read (the explainer's successful labels)
    n_failed: int  # of those, left unmapped by failed merge calls
    # The rest is None when no label was mapped.
    verdict: SaturationVerdict | None = None
    bootstrap: BootstrapSummary | None = None
    guest_in_order: str | None = None  # Guest "N+R" in labelling order
    its_final: float | None = None  # rolling ITS at the last label, labelling order
    next_m: int | None = None  # cfg.next_m capped at the mapped labels and at the features left
    expected_new: float | None = None  # Good–Toulmin estimate of new categories in the next next_m labels
    labels_to_target: int | None = None  # more labels until the extrapolated coverage reaches the target
    stop_at: int | None = None  # where the stop rule would have stopped in labelling order

    def lines(self) -> list[str]:
        head = f"saturation of {self.n_labels:,} labels by {self.explainer} ({self.merge_rule})"
        if self.n_failed:
            head += f"; {self.n_failed:,} left unmapped by failed merge calls"
        v, b, cfg = self.verdict, self.bootstrap, self.cfg
        if v is None or b is None:
            return [head, "no label was mapped to a category: see the error column of the categories table"]
        c = v.chao1
        population = f" of {v.population:,} alive features" if v.population is not None else ""
        if v.fully_labelled:
            return [
                head,
                f"fully labelled: {v.n_labels:,}{population} labelled, {v.distinct:,} categories; every figure is "
                "exact, no new category can appear",
                f"verdict: {'saturated' if v.saturated else 'not saturated'} ({'; '.join(v.reasons)})",
                f"meaning: {v.meaning}",
            ]
        reach = (
            f"after about {self.labels_to_target:,} more labels"
            if self.labels_to_target is not None
            else "never, by extrapolation"
        )
        guest = f"saturated at {self.guest_in_order}" if self.guest_in_order else "not saturated"
        spread = (
            f" (N median {b.saturation_n.median:.0f}, 95% {b.saturation_n.low:.0f}–{b.saturation_n.high:.0f})"
            if b.saturation_n
            else ""
        )
        its = b.final_its_rolling
        window = min(b.window, v.n_labels)
        if self.stop_at is None:
            stop = f"stop rule (coverage {v.target_coverage}, at least {cfg.min_labels} labels): never reached"
        else:
            stop = (
                f"stop rule (coverage {v.target_coverage}, at least {cfg.min_labels} labels): "
                f"stops after {self.stop_at:,} labels, {v.n_labels - self.stop_at:,} fewer judge calls"
            )
        return [
            head,
            f"categories: {v.distinct:,} in {v.n_labels:,} labels{population}; Chao1 {c.estimate:,.1f} (95% CI "
            f"{c.ci_low:,.1f}–{c.ci_high:,.1f}), completeness {c.completeness:.0%}",
            f"coverage {v.coverage:.3f}: the next feature opens a new category with probability {1 - v.coverage:.3f}; "
            f"coverage {v.target_coverage} {reach}",
            f"expected new categories in the next {self.next_m:,} labels: {self.expected_new:.1f}",
            f"Guest (base {v.base}, run {v.run}, threshold {v.threshold:.0%}): {guest} in labelling order; saturated "
            f"in {b.saturated_fraction:.0%} of {b.n_boot} shuffled orders{spread}",
            f"rolling ITS over the last {window} labels: {self.its_final:.3f} in labelling order, {its.median:.3f} "
            f"(95% {its.low:.3f}–{its.high:.3f}) over shuffled orders",
            stop,
            f"verdict: {'saturated' if v.saturated else 'not saturated'} ({'; '.join(v.reasons)})",
            f"meaning: {v.meaning}",
        ]


@dataclass
class _Mapping:
    """Per label: its category (None when unmapped) and code; and the rule that made them."""

    category: list[int | None]
    code: list[str | None]
    status: list[str]  # "ok" | "failed"
    error: list[str | None]
    raw: list[str | None]  # the judge's answer for the label's batch (codebook only)
    merge_rule: str
    rule: dict[str, object]  # the rule's parameters, stored in params


def _embedding_mapping(labels: list[str], threshold: float) -> _Mapping:
    embedder = Embedder()
    ids = cluster_labels(labels, threshold, embedder=embedder)
    first: dict[int, str] = {}
    for label, i in zip(labels, ids):
        first.setdefault(i, label)
    n = len(labels)
    return _Mapping(
        category=list(ids),
        code=[first[i] for i in ids],
        status=["ok"] * n,
        error=[None] * n,
        raw=[None] * n,
        merge_rule=f"embedding: {embedder.name} cosine >= {threshold} to a category's first label, in labelling order",
        rule={"embedding_model": embedder.name, "threshold": threshold},
    )


def _code_key(code: str) -> str:
    """Codes differing only in case or spacing are one code: a judge re-typing a code must not open a category."""
    return " ".join(code.split()).casefold()


async def _codebook_mapping(labels: list[str], judge: Judge, cfg: SaturationConfig) -> _Mapping:
    settings = judge.settings
    temperature = settings.get("temperature")
    temperature = "provider's default temperature" if temperature is None else f"temperature {temperature:g}"
    prompt_hash = settings.get("prompts", {}).get("codebook", "")
    out = _Mapping(
        [],
        [],
        [],
        [],
        [],
        merge_rule=(
            f"codebook: {judge.name} at {temperature}, prompt codebook.txt "
            f"sha256 {prompt_hash[:12]}, {cfg.codebook_batch} labels per call in labelling order"
        ),
        rule={"judge": judge.name, "temperature": settings.get("temperature"), "prompt_hash": prompt_hash},
    )
    category_of: dict[str, int] = {}  # code key → category
    codes: list[str] = []  # category → its code as first written
    for start in range(0, len(labels), cfg.codebook_batch):
        batch = labels[start : start + cfg.codebook_batch]
        answer = await judge.codebook(batch, codes)
        for k in range(len(batch)):
            category = None
            if answer.ok:
                category = category_of.setdefault(_code_key(answer.value[k]), len(codes))
                if category == len(codes):
                    codes.append(answer.value[k])
            out.category.append(category)
            out.code.append(None if category is None else codes[category])
            out.status.append("ok" if answer.ok else "failed")
            out.error.append(answer.error)
            out.raw.append(answer.raw)
    return out


def _steps_frame(
    categories: list[int], features: list[int], cfg: SaturationConfig, merge_rule: str, population: int | None
) -> pd.DataFrame:
    stats = saturation_step_table(
        [str(c) for c in categories],
        window=cfg.its_window,
        base=cfg.guest_base,
        run=cfg.guest_run,
        threshold=cfg.guest_threshold,
        population=population,
    )
    frame = pd.DataFrame([asdict(s) for s in stats]).rename(columns={"distinct": "n_categories"})
    return frame.assign(
        feature=features,
        category=categories,
        its_ratio=frame.n_categories / frame.total,
        guest_ratio=frame.guest_ratio.astype(float),  # None before the first full run → NULL
        merge_rule=merge_rule,
    )


async def saturate(
    store: Store,
    run_id: str,
    explainer: str,
    cfg: SaturationConfig,
    judge: Judge | None = None,
    call_log=None,
) -> SaturationSummary:
    """Categorise the explainer's labels of the run, compute every saturation figure, store them.

    Replaces what an earlier call stored for the same run, explainer and method. `judge` is
    needed for method "codebook" only; `call_log` (store.CallLog) is flushed after its calls.
    """
    labelled = store.saturation_labels(run_id, explainer)
    if labelled.empty:
        raise AutointerpError(
            f"run '{run_id}' has no labels by {explainer}", "run `autointerp explain` with that judge first"
        )
    labels = labelled.label.tolist()
    # The dictionary is the population: its alive features, whichever of them this explainer labelled
    # (None, an unbounded population, only for labels stored without a gather).
    alive = set(store.alive_features(run_id, include_dense=True))
    population = len(alive | set(labelled.feature.tolist())) if alive else None
    if cfg.method == "embedding":
        mapping = _embedding_mapping(labels, cfg.threshold)
    else:
        try:
            mapping = await _codebook_mapping(labels, judge, cfg)
        finally:
            if call_log is not None:
                call_log.flush()

    categories = pd.DataFrame(
        {
            "position": np.arange(1, len(labels) + 1),
            "feature": labelled.feature,
            "label": labels,
            "category": pd.array(mapping.category, dtype="Int32"),  # NULL where unmapped
            "code": mapping.code,
            "status": mapping.status,
            "error": mapping.error,
            "raw": mapping.raw,
            "merge_rule": mapping.merge_rule,
        }
    )
    mapped = categories[categories.status == "ok"]
    steps = pd.DataFrame()
    figures: dict[str, object] = {}
    stored: dict[str, object] = {"rarefaction": None, "extrapolation": None}
    if len(mapped):
        ids = mapped.category.astype(int).tolist()
        steps = _steps_frame(ids, mapped.feature.tolist(), cfg, mapping.merge_rule, population)
        figures, stored = _figures([str(c) for c in ids], cfg, mapping.merge_rule, population)
        figures["its_final"] = float(steps.its_rolling.iloc[-1])
    summary = SaturationSummary(
        run_id, explainer, cfg.method, mapping.merge_rule, cfg, len(labels), len(labels) - len(mapped), **figures
    )
    v = summary.verdict
    store.write_saturation(
        run_id,
        explainer,
        cfg.method,
        categories,
        steps,
        {
            "merge_rule": mapping.merge_rule,
            "params": asdict(cfg) | mapping.rule,
            "n_labels": summary.n_labels,
            "n_mapped": len(mapped),
            "n_failed": summary.n_failed,
            "n_categories": v.distinct if v else 0,
            "saturated": v.saturated if v else None,
            "verdict": asdict(v) | {"guest_in_labelling_order": summary.guest_in_order} if v else None,
            "bootstrap": asdict(summary.bootstrap) if summary.bootstrap else None,
            **stored,
        },
    )
    return summary


def _figures(
    sequence: list[str], cfg: SaturationConfig, merge_rule: str, population: int | None
) -> tuple[dict[str, object], dict[str, object]]:
    """The summary's order-free and extrapolated figures, and the rarefaction curve and
    extrapolation as they are stored. Every bound respects the population of alive features."""
    guest = dict(base=cfg.guest_base, run=cfg.guest_run, threshold=cfg.guest_threshold)
    n = len(sequence)
    counts = counts_from_labels(sequence)
    next_m = min(cfg.next_m, n, population - n if population is not None else n)
    figures: dict[str, object] = dict(
        verdict=saturation_verdict(
            sequence, target_coverage=cfg.target_coverage, merge_rule=merge_rule, population=population, **guest
        ),
        bootstrap=bootstrap_orders(sequence, cfg.n_boot, cfg.seed, window=cfg.its_window, **guest),
        guest_in_order=guest_saturation(sequence, **guest).label,
        next_m=next_m,
        expected_new=good_toulmin(counts, next_m, population),
        labels_to_target=labels_to_reach_coverage(counts, cfg.target_coverage, population),
        stop_at=stop_rule(sequence, cfg.target_coverage, cfg.min_labels, population),
    )
    m = np.unique(np.linspace(1, n, num=min(n, RAREFACTION_POINTS)).round().astype(int))
    stop_at = figures["stop_at"]
    stored = {
        "rarefaction": {"m": m.tolist(), "expected_categories": rarefaction(counts, m).tolist()},
        "extrapolation": {
            "population": population,
            "next_m": next_m,
            "expected_new": figures["expected_new"],
            "labels_to_target": figures["labels_to_target"],
            "stop_at": stop_at,
            "labels_after_stop": None if stop_at is None else n - stop_at,
        },
    }
    return figures, stored


class _MemoEmbedder:
    """Embedder.encode with a memo: CoverageStop re-clusters its codes on every call, and must
    get the very same vectors each time (and not pay to recompute them)."""

    def __init__(self, embedder: Embedder):
        self.embedder = embedder
        self.vectors: dict[str, np.ndarray] = {}

    def encode(self, texts: list[str]) -> np.ndarray:
        missing = [t for t in dict.fromkeys(texts) if t not in self.vectors]
        if missing:
            self.vectors.update(zip(missing, self.embedder.encode(missing)))
        return np.stack([self.vectors[t] for t in texts])


class CoverageStop:
    """Stop rule for the explain stage: stop labelling once the estimated coverage of label
    categories (embedding rule, as in `saturate`) reaches `target`, after at least `min_labels`.

    Give it each chunk's answers in labelling order, None for a failed label (a judge call
    that produced no label):

        stop = CoverageStop(target=0.95, min_labels=100)
        for chunk in chunks:
            ...label the chunk...
            if stop.add(labels_of_chunk):
                break
        saved = stop.saved_calls(len(features))

    `add` returns True once coverage has reached the target; `stopped_at` is then the number of
    labels at which it first did (`saturation.stop_rule` on the categories so far). Features of
    the chunk that were labelled after that point still count as calls made.
    """

    def __init__(
        self,
        target: float,
        min_labels: int = MIN_LABELS,
        threshold: float = DEFAULT_THRESHOLD,
        embedder: Embedder | None = None,
    ):
        stop_rule(["x"], target, min_labels)  # the rule's own argument checks, before any label is paid for
        self.target = target
        self.min_labels = min_labels
        self.threshold = threshold
        self._embedder = _MemoEmbedder(embedder or Embedder())
        self._codes: list[str] = []  # first label of each category, in order of opening
        self.categories: list[str] = []  # category of each label so far
        self.calls = 0  # judge calls made: labels and failures given to add
        self.stopped_at: int | None = None

    def add(self, labels: Sequence[str | None]) -> bool:
        """Record the next labels (None: the call failed); True when labelling should stop now."""
        self.calls += len(labels)
        new = [label for label in labels if label is not None]
        if new:
            # Re-clustering the codes first reproduces their own ids 0..k-1 (each code opened its
            # category because it matched no earlier code), so the new labels get exactly the ids
            # cluster_labels would give them in the full sequence, at the cost of the codes only.
            ids = cluster_labels(self._codes + new, self.threshold, embedder=self._embedder)  # type: ignore[arg-type]
            for label, i in zip(new, ids[len(self._codes) :]):
                if i == len(self._codes):
                    self._codes.append(label)
                self.categories.append(str(i))
            self.stopped_at = stop_rule(self.categories, self.target, self.min_labels)
        return self.stopped_at is not None

    def saved_calls(self, total_features: int) -> int:
        """Judge calls not made: total_features (what the pass would have labelled) minus calls made;
        0 if never stopped."""
        return max(0, total_features - self.calls) if self.stopped_at is not None else 0
