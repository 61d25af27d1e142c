"""Audit report of one run, built from the DuckDB file alone: one self-contained HTML file and a Markdown summary.

The HTML opens from disk and fetches nothing: plots are matplotlib SVG inlined in the page,
per-feature histograms are data-URI PNGs, and the search/sort script is inline. Corpus text,
labels and every other string read from the database go through `html.escape`, so a snippet
holding `<script>` is shown as text. As a second line of defence the page's Content-Security-Policy
lets only its own two scripts run (by hash) and blocks every network load.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure

from autointerp import __version__
from autointerp.config import ReportConfig, ScoreConfig, default_of
from autointerp.errors import AutointerpError
from autointerp.judges.judge import label_headline, names_only_function_tokens
from autointerp.records import Snippet
from autointerp.store import Store
from autointerp.views.text import file_stem, visible_token

NOT_SATURATED_YET = "not computed yet — run autointerp saturate"

# Figures are built on bare matplotlib Figures (no pyplot, no backend switch) under these settings only:
# text stays text in the SVG (smaller, in the page's font) and a fixed hash salt makes ids, so the file, reproducible.
MPL_STYLE = {"svg.fonttype": "none", "svg.hashsalt": "autointerp-report", "font.size": 9}


@dataclass
class ReportFiles:
    html: Path
    markdown: Path
    seconds: float
    n_features: int


@dataclass(frozen=True)
class ScoreCell:
    """One scorer's headline metric for one feature's own label."""

    metric: str
    value: float
    ci_low: float
    ci_high: float
    n: int
    status: str
    p_value: float = float("nan")  # against the permutation null (NaN: not tested)


@dataclass
class FeatureCard:
    feature: int
    n_firing: int
    density: float
    max_activation: float
    dead: bool
    dense: bool
    histogram: np.ndarray
    label: str | None = None
    label_status: str | None = None
    label_error: str | None = None
    scores: dict[str, ScoreCell] = field(default_factory=dict)
    snippets: list[Snippet] = field(default_factory=list)
    low_confidence: list[tuple[str, str]] = field(default_factory=list)  # (kind, detail)
    watch: list[str] = field(default_factory=list)
    other_labels: dict[str, str] = field(default_factory=dict)  # explainer → label, for the other explainers of the run
    effects: dict[str, list[str]] = field(
        default_factory=dict
    )  # promoted / suppressed / amplified → tokens, best first


@dataclass
class ReportData:
    run: dict
    db_path: Path
    explainer: str | None
    counts: dict[str, int]
    cards: list[FeatureCard]
    headline: pd.DataFrame  # feature, scorer, label_source, metric, value, ci_low, ci_high, n, status
    summary: dict[str, dict]  # score.summarise per scorer
    judges: dict[str, str]  # scorer → judge
    prompts: pd.DataFrame
    usage: pd.DataFrame
    saturation: list[SaturationResult]  # one per merge method; empty until `autointerp saturate` ran
    generated_at: str
    explainers: list[dict] = field(
        default_factory=list
    )  # every explainer of the run: name, labelled, failed, per-scorer summary
    agreements: list = field(default_factory=list)  # compare.Agreement of the shown explainer with each other one
    alpha: float = default_of(ScoreConfig, "alpha")  # the level the score stage used for "confident"
    steering: pd.DataFrame = field(default_factory=pd.DataFrame)  # Store.steering: the run's steering experiments
    routes: list[str] = field(default_factory=list)  # compare.route_lines: triage's routes and how each scores
    baseline: list[str] = field(default_factory=list)  # compare.baseline_lines: each score beside a random SAE's


# ----------------------------------------------------------------------------- reading


def watch_patterns(watch: dict[str, tuple[str, ...]]) -> dict[str, re.Pattern]:
    def term(t: str) -> str:
        core = r"[-\s]?".join(re.escape(w) for w in re.split(r"[-\s]+", t.rstrip("*")))
        return rf"\b{core}" + (r"\w*" if t.endswith("*") else r"(?:s|es)?\b")

    return {concept: re.compile("|".join(term(t) for t in terms), re.IGNORECASE) for concept, terms in watch.items()}


def low_confidence(card: FeatureCard, cfg: ReportConfig, alpha: float) -> list[tuple[str, str]]:
    """Why this feature's label should not be trusted yet; empty when nothing is wrong. A label is
    trusted when the confidence scorer's one-sided permutation test rejects "the label says nothing
    about which snippets are active" at alpha, on this feature's own snippets."""
    if card.label_status is None:
        return [] if card.dead else [("not labelled", "no label stored")]
    if card.label_status != "ok":
        return [("label failed", f"label failed: {card.label_error or 'no reason stored'}")]
    reasons = [(f"{s} {c.status}", f"{s} score {c.status}") for s, c in card.scores.items() if c.status != "ok"]
    main = card.scores.get(cfg.confidence_scorer)
    if main is None:
        reasons.append((f"no {cfg.confidence_scorer}", f"not scored by {cfg.confidence_scorer}"))
    elif main.status == "ok" and not main.p_value < alpha:  # NaN (untested) fails too
        reasons.append(
            (
                f"{cfg.confidence_scorer} not above the null",
                f"{cfg.confidence_scorer} p = {_num(main.p_value)} against a label unrelated to the activations (needs "
                f"< {alpha:g})",
            )
        )
    return reasons + interpretability(card, alpha, label_trusted=not reasons)


def interpretability_verdict(label_trusted: bool, label_free_p: Sequence[float | None], alpha: float) -> str | None:
    """What the label-free scores (coherence, intruder: scorers that read no label) say of an untrusted
    label: a feature one of them finds interpretable has a poor label; one none of them does may have
    nothing to name. None for a trusted label (a token feature's windows need not read alike) or
    without a label-free test."""
    tested = [p for p in label_free_p if p is not None and not math.isnan(p)]
    if label_trusted or not tested:
        return None
    return "label poor, feature interpretable" if min(tested) < alpha else "feature not interpretable?"


def interpretability(card: FeatureCard, alpha: float, label_trusted: bool) -> list[tuple[str, str]]:
    """The label-free verdict on a card, as a low-confidence reason, with its figures."""
    from autointerp.stages.score.scorers import LABEL_FREE

    tested = {name: card.scores[name] for name in LABEL_FREE if name in card.scores}
    tested = {name: c for name, c in tested.items() if c.status == "ok"}
    verdict = interpretability_verdict(label_trusted, [c.p_value for c in tested.values()], alpha)
    if verdict is None:
        return []
    why = (
        "its windows are told apart from corpus text without a label; a better label may exist"
        if verdict.startswith("label poor")
        else "no label-free score tells its windows apart from corpus text"
    )
    figures = ", ".join(f"{name} {_num(c.value)} (p = {_num(c.p_value)})" for name, c in tested.items())
    return [(verdict, f"{figures}: {why}")]


@dataclass
class SaturationResult:
    """What the saturation stage stored for one explainer and merge method."""

    # Store.saturation_summaries row: method, merge_rule, n_labels, n_failed, verdict, bootstrap,
    # rarefaction, extrapolation
    summary: dict
    steps: pd.DataFrame  # Store.saturation_steps: step, n_categories, coverage, chao1, chao1_low, chao1_high, ...
    categories: pd.DataFrame  # Store.categories: feature, label, category, code, status, ...


def saturation_results(store: Store, run_id: str, explainer: str | None) -> list[SaturationResult]:
    # A database written before the saturation stage existed has no such tables (a read-only store creates none).
    if explainer is None or "saturation_summary" not in store.table_names():
        return []
    return [
        SaturationResult(
            s, store.saturation_steps(run_id, explainer, s["method"]), store.categories(run_id, explainer, s["method"])
        )
        for s in store.saturation_summaries(run_id)
        if s["explainer"] == explainer
    ]


def _explainer_rows(store: Store, run_id: str, names: list[str]) -> list[dict]:
    """Per explainer: how many labels it wrote and failed, and each scorer's stored summary of them."""
    from autointerp.stages.score.stage import summarise

    rows = []
    for name in names:
        labels = store.explanations(run_id, name)
        rows.append(
            {
                "explainer": name,
                "labelled": int((labels.status == "ok").sum()),
                "failed": int((labels.status != "ok").sum()),
                "scores": summarise(store, run_id, name),
            }
        )
    return rows


def collect(store: Store, run_id: str | None, cfg: ReportConfig) -> ReportData:
    from autointerp.stages.score.stage import HEADLINE
    from autointerp.views.compare import agreement, baseline_lines, ok_labels, route_lines

    run = store.run(run_id)
    run_id = run["run_id"]
    explainer = cfg.explainer or store.default_explainer(run_id)
    features = store.features(run_id)
    labels = store.explanations(run_id, explainer).set_index("feature")  # explainer None: the run has no labels at all
    scores = store.scores(run_id, explainer)
    headline = scores[scores.metric == scores.scorer.map(HEADLINE)]
    scorers = [s for s in HEADLINE if s in set(headline.scorer)]
    judges = {s: str(headline[headline.scorer == s].judge.iloc[0]) for s in scorers}
    explainers = _explainer_rows(store, run_id, store.explainers(run_id))
    summary = next((x["scores"] for x in explainers if x["explainer"] == explainer), {})
    alpha = next((v["alpha"] for v in summary.values()), default_of(ScoreConfig, "alpha"))
    others = {
        x["explainer"]: store.explanations(run_id, x["explainer"]) for x in explainers if x["explainer"] != explainer
    }
    other_ok = {name: ok_labels(df) for name, df in others.items()}
    own_ok = ok_labels(labels.reset_index())
    # Read as stored when the labels were written; only labels changed since are embedded here.
    agreements = (
        [agreement(store, run_id, explainer, own_ok, name, ok) for name, ok in other_ok.items()] if explainer else []
    )

    own = headline[headline.label_source == "true"]
    cells: dict[int, dict[str, ScoreCell]] = {}
    for r in own.itertuples():
        cells.setdefault(int(r.feature), {})[r.scorer] = ScoreCell(
            r.metric, r.value, r.ci_low, r.ci_high, int(r.n), r.status, r.p_value
        )
    alive = [int(f) for f in features.feature[~features.dead]]
    snippets = store.feature_snippets(
        run_id,
        alive,
        split="explain",
        max_per_kind={"top": cfg.n_snippets, "negative": cfg.n_negatives},
        quantile_bins=cfg.quantile_bins,
    )
    top = {
        fs.feature: [s for s in fs.explain if s.kind == "top"]
        + sorted((s for s in fs.explain if s.kind == "quantile"), key=lambda s: -(s.quantile or 0))
        + fs.explain_negatives
        for fs in snippets
    }
    patterns = watch_patterns(cfg.watch)
    effects: dict[int, dict[str, list[str]]] = {}
    for r in store.output_effects(run_id).itertuples():
        effects.setdefault(int(r.feature), {}).setdefault(r.kind, []).append(str(r.token))
    cards = []
    for r in features.itertuples():
        f = int(r.feature)
        card = FeatureCard(
            f,
            int(r.n_firing),
            float(r.density),
            float(r.max_activation),
            bool(r.dead),
            bool(r.dense),
            np.asarray(r.histogram),
            scores=cells.get(f, {}),
            snippets=top.get(f, []),
            other_labels={name: ok[f] for name, ok in other_ok.items() if f in ok},
            effects=effects.get(f, {}),
        )
        if f in labels.index:
            row = labels.loc[f]
            card.label, card.label_status, card.label_error = (
                None if pd.isna(v) else str(v) for v in (row.label, row.status, row.error)
            )
        card.low_confidence = low_confidence(card, cfg, alpha)
        card.watch = [c for c, p in patterns.items() if card.label and p.search(label_headline(card.label))]
        cards.append(card)
    return ReportData(
        run=run,
        db_path=store.path,
        explainer=explainer,
        counts=store.table_counts(run_id),
        cards=cards,
        headline=headline,
        summary=summary,
        judges=judges,
        prompts=store.prompt_hashes(run_id),
        usage=store.llm_usage(run_id),
        saturation=saturation_results(store, run_id, explainer),
        generated_at=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        explainers=explainers,
        agreements=agreements,
        alpha=alpha,
        steering=store.steering(run_id),
        routes=route_lines(store, run_id, [x["explainer"] for x in explainers]),
        baseline=baseline_lines(store, run_id, explainer) if explainer else [],
    )


# ----------------------------------------------------------------------------- plots


def _text(x: object) -> str | None:
    """A string read from the database, or None for SQL NULL (which pandas may hand over as NaN)."""
    return None if x is None or (not isinstance(x, str) and pd.isna(x)) else str(x)


def _chance(metric: str) -> float:
    from autointerp.stages.score.stage import CHANCE

    return CHANCE[metric]


def _num(x: float | None, digits: int = 3) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _svg(fig: Figure) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg") :]  # inline: drop the XML prolog and doctype


def density_figure(cards: list[FeatureCard], dense_threshold: float | None) -> str | None:
    alive = np.array([c.density for c in cards if not c.dead and c.density > 0])
    if not len(alive):
        return None
    fig = Figure(figsize=(6.5, 2.4))
    ax = fig.subplots()
    ax.hist(np.log10(alive), bins=50, color="#4a6fa5")
    if dense_threshold:
        ax.axvline(
            math.log10(dense_threshold), color="#b03030", ls="--", lw=1, label=f"dense above {dense_threshold:g}"
        )
        ax.legend(frameon=False)
    n_dead = sum(c.dead for c in cards)
    ax.set(
        xlabel="log10 firing density (fraction of tokens)",
        ylabel="features",
        title=f"firing density of {len(alive):,} alive features ({n_dead:,} dead)",
    )
    return _svg(fig)


def scores_figure(headline: pd.DataFrame, scorers: list[str]) -> str | None:
    """Per scorer: true vs shuffled-label distribution, and every feature's score with its 95% interval."""
    if not scorers:
        return None
    fig = Figure(figsize=(9, 2.2 * len(scorers)), layout="tight")
    axes = fig.subplots(len(scorers), 2, squeeze=False)
    for (left, right), scorer in zip(axes, scorers):
        sub = headline[headline.scorer == scorer]
        metric = sub.metric.iloc[0]
        true = sub[sub.label_source == "true"].dropna(subset=["value"]).sort_values("value")
        shuf = sub[sub.label_source == "shuffled"].value.dropna()
        both = pd.concat([true.value, shuf])
        bins = np.linspace(both.min(), both.max(), 26) if both.max() > both.min() else 10
        left.hist(true.value, bins=bins, color="#4a6fa5", alpha=0.8, label="own label")
        left.hist(shuf, bins=bins, histtype="step", color="#b03030", lw=1.2, label="shuffled label")
        left.axvline(_chance(metric), color="grey", ls=":", lw=1)
        left.set(title=f"{scorer}: {metric}", ylabel="features")
        left.legend(frameon=False, fontsize=7)
        x = np.arange(len(true))
        right.fill_between(x, true.ci_low, true.ci_high, color="#4a6fa5", alpha=0.25, lw=0, label="95% CI")
        right.plot(x, true.value, color="#4a6fa5", lw=1, label="own label")
        right.axhline(_chance(metric), color="grey", ls=":", lw=1)
        right.set(title=f"{scorer}: features sorted by score", xlabel="feature rank", ylabel=metric)
        right.legend(frameon=False, fontsize=7, loc="upper left")
    return _svg(fig)


def saturation_figure(result: SaturationResult) -> str:
    """Categories against labels in labelling order, with the Chao1 band, the order-free
    rarefaction curve and coverage."""
    steps = result.steps
    fig = Figure(figsize=(7, 2.8), layout="tight")
    ax = fig.subplots()
    ax.fill_between(
        steps.step, steps.chao1_low, steps.chao1_high, color="#d08c2a", alpha=0.25, lw=0, label="Chao1 95% CI"
    )
    ax.plot(steps.step, steps.chao1, color="#d08c2a", lw=1, ls="--", label="Chao1 estimate")
    ax.plot(steps.step, steps.n_categories, color="#4a6fa5", lw=1.5, label="categories (labelling order)")
    rare = result.summary.get("rarefaction")
    if rare:
        ax.plot(rare["m"], rare["expected_categories"], color="#4a6fa5", lw=1, ls=":", label="rarefaction (any order)")
    ax.set(xlabel="labels", ylabel="categories", title=f"saturation, {result.summary['method']} merge")
    cov = ax.twinx()
    cov.plot(steps.step, steps.coverage, color="#2f7d4f", lw=1, label="coverage")
    cov.set(ylim=(0, 1), ylabel="coverage")
    handles = ax.get_legend_handles_labels()[0] + cov.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], frameon=False, fontsize=7, loc="upper left")
    return _svg(fig)


class HistogramPNG:
    """Tiny per-feature activation histograms as data-URI PNGs.

    One figure and one step artist are reused; only the data changes. That keeps 4,096 features to
    about a second of drawing, where a fresh figure each would take a minute.
    """

    def __init__(self, edges: Sequence[float] | None):
        """edges: the bin edges stored with the run; None or empty for a run gathered before they were stored."""
        self.edges = edges if edges is not None and len(edges) else None
        self.fig = Figure(figsize=(1.6, 0.4), dpi=100)
        self.ax = self.fig.add_axes((0, 0, 1, 1))
        self.ax.set_axis_off()
        self.steps = self.ax.stairs([1.0], [0.0, 1.0], fill=True, color="#d07020")

    def render(self, counts: np.ndarray) -> tuple[str, float | None, float | None, int] | None:
        """(data URI, lowest and highest activation of the shown bins, the tallest bin's count), or
        None for a feature that never fired. The activations are None where the run stored no edges
        that fit these counts."""
        nonzero = np.flatnonzero(counts)
        if not len(nonzero):
            return None
        lo, hi = nonzero[0], nonzero[-1] + 1
        shown = counts[lo:hi].astype(float)
        self.steps.set_data(shown, np.arange(len(shown) + 1))
        self.ax.set_xlim(0, len(shown))
        self.ax.set_ylim(0, shown.max())
        buf = io.BytesIO()
        self.fig.savefig(buf, format="png", metadata={"Software": None})
        uri = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        if self.edges is None or len(counts) != len(self.edges) + 1:
            return uri, None, None, int(shown.max())
        # Bin i holds activations in (edges[i-1], edges[i]]; the first and last bins are open-ended.
        low = self.edges[lo - 1] if lo > 0 else 0.0
        high = self.edges[hi - 1] if hi - 1 < len(self.edges) else math.inf
        return uri, float(low), float(high), int(shown.max())


# ----------------------------------------------------------------------------- HTML

e = html.escape

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
main{max-width:1200px;margin:auto;padding:0 1.2em 3em}
nav{position:sticky;top:0;background:#fff;border-bottom:1px solid #ddd;padding:.4em 1.2em;z-index:2}
nav a{margin-right:1em}
section{background:#fff;border:1px solid #e3e3e3;border-radius:6px;padding:.6em 1.2em;margin:1em 0}
table{border-collapse:collapse;margin:.4em 0}
td,th{border-bottom:1px solid #eee;padding:.15em .6em;text-align:left;vertical-align:top}
th{font-weight:600}.num{text-align:right;font-variant-numeric:tabular-nums}
.muted{color:#777}.bad{color:#a02020;font-weight:600}.good{color:#1d6b3a;font-weight:600}
svg{max-width:100%;height:auto}.scroll{max-height:30em;overflow:auto}
#controls{display:flex;gap:.8em;flex-wrap:wrap;align-items:center;margin:.5em 0}
#controls input{flex:1;min-width:14em;padding:.3em}
#cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:.7em}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.5em .7em;
content-visibility:auto;contain-intrinsic-size:auto 300px}
.card[hidden]{display:none}
.card h3{font-size:14px;margin:0 0 .2em}.card h3 a{color:#555;margin-right:.4em}
.b{display:inline-block;font-size:11px;border-radius:3px;padding:0 .4em;margin:0 .3em .2em 0}
.b.low{background:#fbe3c8}.b.watch{background:#f7c6c6}.b.dead{background:#ddd}.b.trivial{background:#e6e6e6}.b.dense{background:#d8e4f5}
.card table{font-size:12px}.card img{display:block;margin:.3em 0 0}
.card figcaption{font-size:11px;color:#777}
.hist{display:grid;grid-template-columns:auto 160px;gap:0 .3em;margin:.3em 0;font-size:10px;color:#777}
.hist .yaxis{text-align:right;line-height:30px}.hist .xaxis{grid-column:2;display:flex;justify-content:space-between}
.hist figcaption{grid-column:1/3}.kind{font-size:10px;color:#777;margin-top:.3em}
.snip{font:12px/1.5 ui-monospace,monospace;white-space:pre-wrap;word-break:break-word;
background:#f6f6f6;padding:.2em .4em;margin:.3em 0}
mark{background:none;color:inherit;border-radius:2px}
""" + "".join(f".a{k}{{background:rgba(230,110,0,{k / 10:.1f})}}" for k in range(1, 10))

# Installed first so that an error anywhere later, or a CSP violation, lands in #js-errors (read by the browser test).
TRAP_JS = """
(function(){var seen=[];function show(){var box=document.getElementById('js-errors');
if(box&&seen.length){box.hidden=false;box.textContent=seen.join('\\n');}}
function put(m){seen.push(String(m));show();}
window.addEventListener('error',function(ev){put('error: '+ev.message+' at '+ev.filename+':'+ev.lineno);});
window.addEventListener('unhandledrejection',function(ev){put('unhandled rejection: '+ev.reason);});
document.addEventListener('securitypolicyviolation',function(ev){
put('blocked by CSP: '+ev.violatedDirective+' '+ev.blockedURI);});
document.addEventListener('DOMContentLoaded',show);})();
"""

# Search, filter and sort the feature cards; the initial state can come from the URL (?q=…&only=…&sort=…).
CARDS_JS = """
(function(){
var box=document.getElementById('cards'),cards=Array.prototype.slice.call(box.children);
var q=document.getElementById('q'),only=document.getElementById('only'),sort=document.getElementById('sort'),
shown=document.getElementById('shown');
function filter(){var needle=q.value.trim().toLowerCase(),want=only.value,n=0;
cards.forEach(function(c){var ok=(!needle||c.getAttribute('data-search').indexOf(needle)>=0)&&
(!want||(' '+c.getAttribute('data-flags')+' ').indexOf(' '+want+' ')>=0);
c.hidden=!ok;if(ok)n++;});shown.textContent=n;}
function order(){var key=sort.value,desc=key!=='f'&&key!=='label',byScore=key.indexOf('s-')===0;
function val(c){if(key==='label')return c.getAttribute('data-search');
var v=parseFloat(c.getAttribute('data-'+key));return isNaN(v)?null:v;}
function last(c){return byScore&&(' '+c.getAttribute('data-flags')+' ').indexOf(' trivial ')>=0?1:0;}
var keyed=cards.map(function(c){return [val(c),+c.getAttribute('data-f'),c,last(c)];});
keyed.sort(function(a,b){if((a[0]===null)!==(b[0]===null))return a[0]===null?1:-1;if(a[3]!==b[3])return a[3]-b[3];
if(a[0]===b[0])return a[1]-b[1];var d=a[0]<b[0]?-1:1;return desc?-d:d;});
var frag=document.createDocumentFragment();keyed.forEach(function(k){frag.appendChild(k[2]);});box.appendChild(frag);}
var params=new URLSearchParams(location.search);
if(params.has('q'))q.value=params.get('q');
if(params.has('only'))only.value=params.get('only');
if(params.has('sort')&&sort.querySelector('option[value="'+CSS.escape(params.get('sort'))+'"]'))sort.value=params.get('sort');
q.addEventListener('input',filter);only.addEventListener('change',filter);sort.addEventListener('change',order);
order();filter();document.body.setAttribute('data-js','ready');
})();
"""


def _csp() -> str:
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(js.encode()).digest()).decode()}'" for js in (TRAP_JS, CARDS_JS)
    )
    return (
        f"default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src {hashes}; "
        "base-uri 'none'; form-action 'none'"
    )


def _table(header: list[str], rows: list[list[str]], numeric: tuple[int, ...] = ()) -> str:
    """rows hold ready HTML: callers escape every value that came from the database."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{c}</td>' if i in numeric else f"<td>{c}</td>" for i, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _kv(pairs: list[tuple[str, object]]) -> str:
    return "<table>" + "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in pairs) + "</table>"


def _audit_pairs(d: ReportData) -> list[tuple[str, object]]:
    r = d.run
    provider, _, model = (d.explainer or "—:—").partition(":")
    return [
        ("run", r["run_id"]),
        ("created / updated", f"{r['created_at']} / {r['updated_at']}"),
        ("model", r["model"]),
        ("hookpoint", f"{r['hookpoint']} → {r['hook_module']}"),
        ("d_model", r["d_model"]),
        ("SAE", r["sae_source"]),
        ("SAE format / architecture", f"{r['sae_format']} / {r['sae_architecture']}"),
        ("d_sae", r["d_sae"]),
        ("corpus", r["corpus"]),
        ("tokens / contexts", f"{r['n_tokens']:,} / {r['n_contexts']:,}"),
        ("gather time", f"{r['gather_seconds']:.0f} s"),
        ("labels by (explainer)", d.explainer or "no labels stored"),
        ("judge provider / model", f"{provider} / {model}"),
        *[(f"{s} judged by", j) for s, j in d.judges.items()],
        ("database", d.db_path),
        ("report by", f"autointerp {__version__}, {d.generated_at}"),
    ]


def _usage_rows(usage: pd.DataFrame) -> tuple[list[list[str]], str]:
    rows = [
        [
            e(str(u.provider)),
            e(str(u.model)),
            e(str(u.purpose)),
            f"{u.calls:,}",
            f"{u.failed:,}",
            f"{u.prompt_tokens:,}",
            f"{u.cache_read_tokens:,}",
            f"{u.completion_tokens:,}",
            _cost(u.cost_usd, u.priced, u.calls),
        ]
        for u in usage.itertuples()
    ]
    total = (
        (
            f"{int(usage.calls.sum()):,} calls, {int(usage.prompt_tokens.sum() + usage.completion_tokens.sum()):,} "
            "tokens, "
            f"cost {_cost(usage.cost_usd.sum(min_count=1), usage.priced.sum(), usage.calls.sum())}"
        )
        if len(usage)
        else "no LLM calls logged (the offline judge makes none)"
    )
    return rows, total


def _cost(cost: float, priced: int, calls: int) -> str:
    if priced == 0:
        return "unknown"
    return f"${cost:.4f}" + (f" ({calls - priced:,} calls unpriced)" if priced < calls else "")


def loss_recovered_text(run: dict) -> str:
    """Loss recovered needs a causal LM's next-token loss. The run stores no architecture, so the reason
    is given only where it is known: the embedded default is a sentence encoder."""
    from autointerp.config import EMBEDDED_MODEL

    m = run["sae_metrics"]
    if "loss_recovered" in m:
        return (
            f"{_num(m['loss_recovered'])} (next-token loss clean {_num(m['loss_clean'])}, SAE spliced in "
            f"{_num(m['loss_spliced'])}, "
            f"zero-ablated {_num(m['loss_zero_ablated'])} nats/token on {m.get('loss_contexts', 0):,} held-out "
            "contexts)"
        )
    return "not measured (not a causal LM)" if run["model"] == EMBEDDED_MODEL else "not measured"


def _health(d: ReportData) -> list[tuple[str, str]]:
    m = d.run["sae_metrics"]
    cards = d.cards
    n = len(cards)
    return [
        ("L0 (held-out)", _num(m.get("l0"), 1)),
        ("FVU (held-out)", _num(m.get("fvu"))),
        ("dead on held-out tokens", f"{m['dead_fraction']:.1%}" if "dead_fraction" in m else "—"),
        (
            "dead over the corpus",
            f"{sum(c.dead for c in cards) / max(n, 1):.1%} ({sum(c.dead for c in cards):,} of {n:,})",
        ),
        ("ultra-dense", f"{sum(c.dense for c in cards) / max(n, 1):.1%} ({sum(c.dense for c in cards):,})"),
        ("loss recovered", loss_recovered_text(d.run)),
        ("held-out tokens", f"{m['eval_tokens']:,}" if "eval_tokens" in m else "—"),
    ]


def _explainer_table(d: ReportData) -> tuple[list[str], list[list[str]]]:
    """Explainers side by side: labels, failures, and each scorer's median with its shuffle gap (raw text cells)."""
    scorers = sorted({s for x in d.explainers for s in x["scores"]})
    header = ["explainer", "labelled", "failed"] + [f"{s} median (gap)" for s in scorers]
    rows = []
    for x in d.explainers:
        cells = [x["explainer"], f"{x['labelled']:,}", f"{x['failed']:,}"]
        for s in scorers:
            v = x["scores"].get(s)
            cells.append(f"{_num(v['median'])} ({_num(v['gap'])}, n={v['n_features']})" if v else "—")
        rows.append(cells)
    return header, rows


def _lines_html(lines: list[str]) -> str:
    """A heading line and its items, as a paragraph and a list (nothing when there are none)."""
    if not lines:
        return ""
    return f"<p>{e(lines[0])}</p><ul>" + "".join(f"<li>{e(line.strip())}</li>" for line in lines[1:]) + "</ul>"


def _explainers_html(d: ReportData) -> str:
    routes = "".join(f"<li>{e(line)}</li>" for line in d.routes)
    routes = f"<ul>{routes}</ul>" if routes else ""
    if len(d.explainers) < 2:
        return (
            f'<p class="muted">one explainer ({e(d.explainer or "none")}); label with another judge to compare</p>'
            + routes
        )
    header, rows = _explainer_table(d)
    agree = "".join(f"<li>{e(a.line())}</li>" for a in d.agreements)
    return _table(header, [[e(c) for c in r] for r in rows]) + f"<ul>{agree}</ul>" + routes


def _verdict_class(verdict: str) -> str:
    return "good" if verdict.startswith("measures something") else "bad"


SCORE_HEADER = [
    "scorer",
    "metric",
    "what it samples",
    "median",
    "IQR",
    "scored",
    "failed",
    "undefined",
    "confident",
    "lift over floor [95% CI]",
    "controls",
    "shuffled median",
    "gap [95% CI]",
    "verdict",
]


def _score_cells(summary: dict[str, dict]) -> list[list[str]]:
    """The scores table as text cells (escaped by the caller for its format)."""
    return [
        [
            s,
            v["metric"],
            v["samples"],
            _num(v["median"]),
            f"{_num(v['q25'])}–{_num(v['q75'])}",
            f"{v['n_ok']:,} of {v['n_features']:,}",
            f"{v['n_failed']:,}",
            f"{v['n_undefined']:,}",
            f"{v['n_confident']:,} (p < {v['alpha']:g})",
            _lift(v),
            f"{v['n_controls']:,} ({v['control']})",
            _num(v["shuffled_median"]),
            f"{_num(v['gap'])} [{_num(v['gap_low'])}, {_num(v['gap_high'])}] over {v['n_pairs']:,} pairs"
            + (f", {v['n_pairs_undefined']:,} undefined" if v["n_pairs_undefined"] else ""),
            v["verdict"],
        ]
        for s, v in summary.items()
    ]


def _lift(v: dict) -> str:
    """The mean score less the constant answer's (the scorer's chance), with its interval; — for
    summaries stored before lifts were."""
    lift = v.get("lift")
    if lift is None or math.isnan(lift):
        return "—"
    low, high = (_num(v[k]) if math.isnan(v[k]) else f"{v[k]:+.3f}" for k in ("lift_low", "lift_high"))
    return f"{lift:+.3f} [{low}, {high}] over {_num(v['chance'])}"


def _score_rows(summary: dict[str, dict]) -> list[list[str]]:
    rows = []
    for cells in _score_cells(summary):
        verdict = cells[-1]
        rows.append([e(c) for c in cells[:-1]] + [f'<span class="{_verdict_class(verdict)}">{e(verdict)}</span>'])
    return rows


def _category_rows(result: SaturationResult, limit: int) -> tuple[list[list[str]], str]:
    """The `limit` largest categories as table rows, and a line counting those left out."""
    mapped = result.categories[result.categories.status == "ok"]
    rows = []
    for _, group in mapped.groupby("category", sort=False):
        feats = [int(f) for f in group.feature]
        links = " ".join(f'<a href="#f{f}">#{f}</a>' for f in feats[:8]) + (" …" if len(feats) > 8 else "")
        examples = "; ".join(e(str(label)) for label in group.label[:3])
        rows.append(
            (
                len(feats),
                [e(str(group.code.iloc[0])), f"{len(feats):,}", f"{len(feats) / len(mapped):.1%}", links, examples],
            )
        )
    rows.sort(key=lambda x: -x[0])
    rest = rows[limit:]
    note = f"{len(rest):,} smaller categories ({sum(n for n, _ in rest):,} features) not listed" if rest else ""
    return [r for _, r in rows[:limit]], note


def _saturation_facts(result: SaturationResult) -> list[tuple[str, str]]:
    s = result.summary
    v = s["verdict"]
    facts = [
        ("merge rule", s["merge_rule"]),
        ("labels", f"{s['n_labels']:,} ({s['n_failed']:,} left unmapped by failed merge calls)"),
    ]
    if v is None:
        return facts + [("verdict", "no label was mapped to a category")]
    c, x = v["chao1"], s.get("extrapolation") or {}
    return facts + [
        (
            "verdict",
            ("saturated" if v["saturated"] else "not saturated") + (f": {v['meaning']}" if v.get("meaning") else ""),
        ),
        ("categories", f"{v['distinct']:,}"),
        (
            "Chao1 (95% CI)",
            f"{c['estimate']:,.1f} [{c['ci_low']:,.1f}, {c['ci_high']:,.1f}], completeness {c['completeness']:.0%}",
        ),
        (
            "coverage",
            f"{_num(v['coverage'])} (target {v['target_coverage']}); next feature opens a new category with p = "
            f"{_num(1 - v['coverage'])}",
        ),
        (
            "labels to reach the target",
            f"{x['labels_to_target']:,} more" if x.get("labels_to_target") is not None else "never, by extrapolation",
        ),
        (
            "Guest ratio of the last run",
            _num(v["guest_ratio"]) if v["guest_ratio"] is not None else "undefined (too few labels)",
        ),
    ]


def _saturation_html(d: ReportData) -> str:
    if not d.saturation:
        return f'<p class="muted">{NOT_SATURATED_YET}</p>'
    parts = []
    for r in d.saturation:
        reasons = "".join(f"<li>{e(x)}</li>" for x in (r.summary["verdict"] or {}).get("reasons", []))
        figure = saturation_figure(r) if len(r.steps) else ""
        parts.append(
            f"<h3>{e(r.summary['method'])} merge</h3>" + _kv(_saturation_facts(r)) + f"<ul>{reasons}</ul>" + figure
        )
    return "".join(parts)


def _categories_html(d: ReportData, limit: int) -> str:
    if not d.saturation:
        return f'<p class="muted">{NOT_SATURATED_YET}</p>'
    header = ["category", "features", "share", "feature cards", "example labels"]
    parts = []
    for r in d.saturation:
        rows, note = _category_rows(r, limit)
        parts.append(
            f'<h3>{e(r.summary["method"])} merge</h3><div class="scroll">'
            + _table(header, rows, (1, 2))
            + f'</div><p class="muted">{note}</p>'
        )
    return "".join(parts)


def _snippet_html(s: Snippet, max_activation: float) -> str:
    parts = []
    for piece, a in zip(s.tokens, s.values()):
        text = e(piece.replace("\n", "⏎").replace("\t", "⇥"))
        if a > 0:
            strength = min(9, max(1, math.ceil(9 * a / max_activation))) if max_activation > 0 else 9
            parts.append(f'<mark class="a{strength}" title="{a:.3g}">{text}</mark>')
        else:
            parts.append(text)
    title = f"{e(s.split)} split, context {s.context_id}, peak {s.max_activation:.3g}"
    return f'<p class="snip" title="{title}">{"".join(parts)}</p>'


def _histogram_html(hist: tuple[str, float | None, float | None, int]) -> str:
    """The activation histogram with its axes: counts up to the tallest bin, activations low to high
    (left out for a run that stored no bin edges)."""
    uri, low, high, top = hist
    head = (
        f"<figure class='hist'><span class='yaxis'>{top:,}<br>0</span>"
        f'<img alt="activation histogram" width="160" height="40" src="{uri}">'
    )
    if low is None or high is None:
        return head + "<figcaption>tokens per activation bin (this run stored no bin edges)</figcaption></figure>"
    return (
        head + f"<span class='xaxis'><span>{low:.3g}</span><span>{high:.3g}</span></span>"
        f"<figcaption>tokens per activation bin (log-spaced), activation {low:.3g} to {high:.3g}</figcaption></figure>"
    )


TRIVIAL_NOTE = (
    "the label names only punctuation or function words: the feature fires on tokens nearly every window holds, "
    "so its scores rest on a trivial split; sorting by score puts it after the other labels"
)
SNIPPET_KINDS = {"top": "top", "quantile": "quantile bin", "negative": "no activation"}
EFFECT_KINDS = {"promoted": "promotes", "suppressed": "suppresses", "amplified": "amplified, makes likelier"}


def card_flags(c: FeatureCard) -> list[str]:
    """The card's flags, which the page filters on (and "trivial" cards sort after the others by score)."""
    return (
        (["low"] if c.low_confidence else [])
        + (["watch"] if c.watch else [])
        + (["dead"] if c.dead else [])
        + (["dense"] if c.dense else [])
        + (["trivial"] if c.label and names_only_function_tokens(c.label) else [])
        + ["flagged" if c.low_confidence or c.watch else "clear"]
    )


def _card_html(
    c: FeatureCard, hist: tuple[str, float | None, float | None, int] | None, scorers: list[str], alpha: float
) -> str:
    flags = card_flags(c)
    search = f"#{c.feature} {c.label or ''} {' '.join(c.other_labels.values())} {' '.join(c.watch)}".lower()
    attrs = (
        f'id="f{c.feature}" class="card" data-f="{c.feature}" data-flags="{" ".join(flags)}" '
        f'data-search="{e(search)}" data-density="{c.density:.6g}" data-max="{c.max_activation:.6g}"'
    )
    attrs += "".join(
        f' data-s-{s}="{c.scores[s].value:.4f}"' for s in scorers if s in c.scores and not math.isnan(c.scores[s].value)
    )
    label = (
        e(c.label)
        if c.label
        else f'<span class="muted">{"dead: never fired" if c.dead else e(c.label_status or "not labelled")}</span>'
    )
    badges = "".join(
        [
            f'<span class="b low" title="{e("; ".join(d for _, d in c.low_confidence))}">low confidence</span>'
            if c.low_confidence
            else ""
        ]
        + [f'<span class="b watch">watch: {e(w)}</span>' for w in c.watch]
        + [
            '<span class="b dead">dead</span>' if c.dead else "",
            '<span class="b dense">dense</span>' if c.dense else "",
            f'<span class="b trivial" title="{e(TRIVIAL_NOTE)}">function words</span>' if "trivial" in flags else "",
        ]
    )
    rows = "".join(
        f"<tr><th>{e(s)}</th><td>{_num(v.value)} <span class='muted'>[{_num(v.ci_low)}, {_num(v.ci_high)}] n={v.n}, "
        f"p={_num(v.p_value, 4)}</span>"
        + (
            f" <span class='bad'>{e(v.status)}</span>"
            if v.status != "ok"
            else " <span class='good'>confident</span>"
            if v.p_value < alpha
            else " <span class='bad'>not above the null</span>"
        )
        + "</td></tr>"
        for s, v in c.scores.items()
    )
    figure = _histogram_html(hist) if hist else ""
    snippets = "".join(
        f"<div class='kind'>{SNIPPET_KINDS[s.kind]}"
        + (f" {s.quantile}" if s.kind == "quantile" else "")
        + "</div>"
        + _snippet_html(s, c.max_activation)
        for s in c.snippets
    )
    others = "".join(f"<div class='muted'>{e(name)}: {e(label)}</div>" for name, label in c.other_labels.items())
    effects = "".join(
        f"<div class='effects'><span class='muted'>{EFFECT_KINDS[kind]}:</span> "
        + " ".join(f"<code>{e(visible_token(t))}</code>" for t in tokens)
        + "</div>"
        for kind, tokens in sorted(c.effects.items(), key=lambda kv: list(EFFECT_KINDS).index(kv[0]))
    )
    stats = f"density {c.density:.3%} · {c.n_firing:,} firing · max {c.max_activation:.3g}"
    return (
        f"<article {attrs}><h3><a href='#f{c.feature}'>#{c.feature}</a>{label}</h3>{badges}"
        f"{others}<div class='muted'>{stats}</div><table>{rows}</table>{effects}{figure}{snippets}</article>"
    )


def render_html(d: ReportData, cfg: ReportConfig) -> str:
    with rc_context(MPL_STYLE):
        return _page(d, cfg)


def _page(d: ReportData, cfg: ReportConfig) -> str:
    run = d.run
    scorers = list(d.summary)
    usage_rows, usage_total = _usage_rows(d.usage)
    prompt_rows = [
        [
            e(str(p.stage)),
            e(str(p.judge)),
            e(_text(p.prompt_hash)) if _text(p.prompt_hash) else '<span class="muted">none recorded</span>',
            f"{p.n:,}",
        ]
        for p in d.prompts.itertuples()
    ]
    versions = "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in run["versions"].items())
    n_low = sum(bool(c.low_confidence) for c in d.cards)
    watched = [c for c in d.cards if c.watch]
    watch_rows = [
        [f'<a href="#f{c.feature}">#{c.feature}</a>', e(", ".join(c.watch)), e(c.label or "")] for c in watched
    ]
    reason_counts = pd.Series([k for c in d.cards for k, _ in c.low_confidence], dtype=object).value_counts()
    watch_terms = "; ".join(k + ": " + ", ".join(v) for k, v in cfg.watch.items())
    sort_options = (
        [("f", "feature index"), ("label", "label A–Z")]
        + [(f"s-{s}", f"{s} score ↓ (function-word labels last)") for s in scorers]
        + [("density", "density ↓"), ("max", "max activation ↓")]
    )

    painter = HistogramPNG(run["histogram_edges"])
    carded = sorted(d.cards, key=lambda c: (c.dead, c.feature))[: cfg.max_cards]  # alive features first
    cards = "".join(
        _card_html(c, None if c.dead else painter.render(c.histogram), scorers, d.alpha)
        for c in sorted(carded, key=lambda c: c.feature)
    )
    left_out = len(d.cards) - len(carded)
    beyond = (
        (
            f'<p class="muted">{left_out:,} more features are left out of this page, which holds at most '
            f"{cfg.max_cards:,} cards "
            f"(alive features first) so it opens quickly: browse every feature with <code>autointerp serve --project "
            f"{e(str(d.db_path.parent))}</code>.</p>"
        )
        if left_out
        else ""
    )

    dense_threshold = run["config"].get("gather", {}).get("dense_threshold")
    density_svg = density_figure(d.cards, dense_threshold) or '<p class="muted">no feature fired</p>'
    scores_svg = scores_figure(d.headline, scorers) or ""
    sections = [
        (
            "audit",
            "Audit trail",
            _kv(_audit_pairs(d))
            + "<h3>Prompts</h3>"
            + (
                _table(["stage", "judge", "prompt hash", "features"], prompt_rows, (3,))
                if prompt_rows
                else '<p class="muted">no labels or scores stored</p>'
            )
            + f"<h3>LLM usage</h3><p>{e(usage_total)} <span class='muted'>(calls logged for this run)</span></p>"
            + (
                _table(
                    [
                        "provider",
                        "model",
                        "purpose",
                        "calls",
                        "failed",
                        "prompt tokens",
                        "of them cached",
                        "completion tokens",
                        "cost",
                    ],
                    usage_rows,
                    (3, 4, 5, 6, 7, 8),
                )
                if usage_rows
                else ""
            )
            + f"<h3>Package versions at gather time</h3><table>{versions}</table>"
            + "<h3>Rows stored</h3>"
            + _kv([(k, f"{v:,}") for k, v in d.counts.items()])
            + "<details><summary>run "
            f"configuration</summary><pre>{e(json.dumps(run['config'], indent=1, default=str))}</pre></details>",
        ),
        ("health", "SAE health", _kv(_health(d)) + density_svg),
        *([("steering", "Steering", _steering_html(d))] if len(d.steering) else []),
        ("explainers", "Explainers", _explainers_html(d)),
        (
            "scores",
            "Scores",
            (
                _table(SCORE_HEADER, _score_rows(d.summary), (3, 5, 6, 7, 8, 9, 10, 11))
                + "<p class='muted'>confident: the feature's one-sided permutation test rejects a label unrelated to "
                "the activations, "
                "on the feature's own snippets. The shuffle control scores a sample of features with another feature's "
                "label.</p>" + _lines_html(d.baseline) + scores_svg
            )
            if scorers
            else '<p class="muted">no scores stored — run autointerp score</p>',
        ),
        ("saturation", "Saturation", _saturation_html(d)),
        ("categories", "Categories", _categories_html(d, cfg.n_categories)),
        (
            "flags",
            "Flags",
            f"<p>{n_low:,} of {len(d.cards):,} features have a low-confidence label ({e(cfg.confidence_scorer)} not "
            f"above its permutation null at p &lt; {d.alpha:g}, "
            "a failed or undefined score, or no label).</p>"
            + _kv([(k, f"{v:,}") for k, v in reason_counts.items()])
            + f"<h3>Watch-list hits ({len(watched):,})</h3><p class='muted'>concepts: {e(watch_terms)}</p>"
            + (_table(["feature", "concepts", "label"], watch_rows) if watch_rows else "<p>none</p>"),
        ),
    ]
    body = "".join(f'<section id="{sid}"><h2>{title}</h2>{content}</section>' for sid, title, content in sections)
    nav = "".join(f'<a href="#{sid}">{title}</a>' for sid, title, _ in sections) + '<a href="#features">Features</a>'
    controls = (
        '<div id="controls"><input id="q" type="search" placeholder="search labels, #feature, watch concept" '
        'aria-label="search">'
        '<select id="only" aria-label="show"><option value="">all features</option><option '
        'value="flagged">flagged</option>'
        '<option value="low">low confidence</option><option value="watch">watch-list hits</option><option '
        'value="clear">not flagged</option>'
        '<option value="dead">dead</option><option value="trivial">function-word labels</option></select>'
        '<select id="sort" aria-label="sort">'
        + "".join(f'<option value="{k}">{v}</option>' for k, v in sort_options)
        + f'</select><span><span id="shown">{len(carded):,}</span> of {len(carded):,} shown</span></div>{beyond}'
    )
    title = f"autointerp report — {run['run_id']}"
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_csp()}">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1"><title>{e(title)}</title>'
        f"<style>{STYLE}</style><script>{TRAP_JS}</script></head>"
        f'<body data-js="pending"><nav>{nav}</nav><main><h1>{e(title)}</h1>'
        f'<pre id="js-errors" class="bad" hidden></pre>{body}'
        f'<section id="features"><h2>Features</h2>{controls}<div id="cards">{cards}</div></section>'
        f"</main><script>{CARDS_JS}</script></body></html>"
    )


def steering_facts(row) -> list[tuple[str, str]]:
    """One steering experiment as (what, text) pairs, the same in HTML and Markdown."""
    what = "added" if row.mode == "add" else "clamped at"
    label = _text(row.label)
    return [
        ("feature", f"{int(row.feature)}" + (f", labelled {label!r} by {row.explainer}" if label else "")),
        ("how it was picked", _text(row.why) or "—"),
        (
            "edit",
            f"{what} {row.scale:.3g} × max activation; vector norm {row.added_norm:.3g} = "
            f"{row.added_norm / row.residual_norm:.2f} × the hookpoint's median norm on the prompt; "
            f"seed {int(row.seed)}, " + ("greedy" if not row.temperature else f"temperature {row.temperature:g}"),
        ),
        ("prompt", str(row.prompt)),
        ("unsteered", str(row.unsteered)),
        ("steered", str(row.steered)),
    ]


def _steering_html(d: ReportData) -> str:
    return (
        "<p class='muted'>The feature's decoder direction added at the SAE's hookpoint while the model continues the "
        "prompt; the unsteered continuation has the same seed, so every difference is the edit's.</p>"
        + "".join(_kv(steering_facts(row)) for row in d.steering.itertuples())
    )


# ----------------------------------------------------------------------------- Markdown


def _md(text: object) -> str:
    """A database string made inert in Markdown: no HTML, no table breaks, no emphasis or links."""
    s = html.escape(" ".join(str(text).split()), quote=False)
    return re.sub(r"([\\`*_{}\[\]|~])", r"\\\1", s)


def render_markdown(d: ReportData, cfg: ReportConfig, html_name: str) -> str:
    def table(header: list[str], rows: list[list[str]]) -> list[str]:
        return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
            "| " + " | ".join(r) + " |" for r in rows
        ]

    out = [
        f"# autointerp report — {_md(d.run['run_id'])}",
        "",
        f"Generated {d.generated_at} from {_md(d.db_path)}; full report with feature cards: {_md(html_name)}.",
        "",
        "## Audit trail",
        "",
    ]
    out += table(["", ""], [[_md(k), _md(v)] for k, v in _audit_pairs(d)])
    out += [
        "",
        "Prompt hashes: "
        + (
            ", ".join(f"{_md(p.stage)} {_md(p.prompt_hash)}" for p in d.prompts.itertuples() if _text(p.prompt_hash))
            or "none recorded"
        ),
        "",
        "LLM usage (this run): " + _md(_usage_rows(d.usage)[1]),
        "",
        "Versions: " + ", ".join(f"{_md(k)} {_md(v)}" for k, v in d.run["versions"].items()),
        "",
        "## SAE health",
        "",
    ]
    out += table(["", ""], [[k, v] for k, v in _health(d)])
    if len(d.steering):
        out += ["", "## Steering"]
    for row in d.steering.itertuples():
        out += [""] + table(["", ""], [[k, _md(v)] for k, v in steering_facts(row)])
    out += ["", "## Scores", ""]
    if d.summary:
        out += table(SCORE_HEADER, [[_md(c) for c in cells] for cells in _score_cells(d.summary)])
        out += [""] + [f"- {_md(line)}" for line in d.baseline] if d.baseline else []
    else:
        out.append("no scores stored — run autointerp score")
    if len(d.explainers) > 1:
        header, rows = _explainer_table(d)
        out += (
            ["", "## Explainers", ""]
            + table(header, [[_md(c) for c in r] for r in rows])
            + [""]
            + [f"- {_md(a.line())}" for a in d.agreements]
        )
    out += [""] + [f"- {_md(line)}" for line in d.routes] if d.routes else []
    out += ["", "## Saturation", ""]
    if not d.saturation:
        out.append(NOT_SATURATED_YET)
    for r in d.saturation:
        out += (
            [f"### {_md(r.summary['method'])} merge", ""]
            + table(["", ""], [[k, _md(v)] for k, v in _saturation_facts(r)])
            + [""]
        )
    n_low = sum(bool(c.low_confidence) for c in d.cards)
    watched = [c for c in d.cards if c.watch]
    out += [
        "",
        "## Flags",
        "",
        f"- {n_low:,} of {len(d.cards):,} features have a low-confidence label "
        f"({cfg.confidence_scorer} not above its permutation null at p < {d.alpha:g}, a failed or undefined score, or "
        "no label).",
        f"- {len(watched):,} labels mention a watch-list concept ({', '.join(_md(k) for k in cfg.watch)}).",
        "",
    ]
    if watched:
        out += table(
            ["feature", "concepts", "label"], [[str(c.feature), _md(", ".join(c.watch)), _md(c.label)] for c in watched]
        )
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------- entry point


def report_paths(project: str | Path, run_id: str, out: str | Path | None) -> tuple[Path, Path]:
    """out: an .html file, or a directory; default <project>/reports/. The Markdown sits beside the HTML."""
    if out is not None and Path(out).suffix == ".html":
        page = Path(out)
    else:
        page = Path(out if out is not None else Path(project) / "reports") / (file_stem(run_id) + ".html")
    return page, page.with_suffix(".md")


def _write_atomic(path: Path, text: str) -> None:
    """Write beside the target, then rename over it: a kill mid-write leaves the previous file whole."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


def write_report(
    project: str | Path, run_id: str | None = None, out: str | Path | None = None, cfg: ReportConfig | None = None
) -> ReportFiles:
    """Read a run from the project's database and write its HTML report and Markdown summary."""
    cfg = cfg or ReportConfig()
    t0 = time.perf_counter()
    with Store(project, read_only=True) as store:
        data = collect(store, run_id, cfg)
    page, markdown = report_paths(project, data.run["run_id"], out)
    try:
        page.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(page, render_html(data, cfg))
        _write_atomic(markdown, render_markdown(data, cfg, page.name))
    except OSError as e:  # a read-only project, an --out in a folder that is not ours
        raise AutointerpError(
            f"cannot write the report to {page.parent}: {e.strerror or e}",
            "pass --out with a file or directory you can write, or make the project writable",
        ) from None
    return ReportFiles(page, markdown, time.perf_counter() - t0, len(data.cards))
