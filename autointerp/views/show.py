"""One feature in the terminal: its labels, scores, statistics, output effects and top windows,
the active tokens highlighted (ANSI colour on a terminal, «marks» elsewhere). Read from the store."""

from __future__ import annotations

import math

from autointerp.config import ShowConfig, default_of
from autointerp.errors import AutointerpError
from autointerp.store import Store
from autointerp.views.text import visible_token


def _fmt(x) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def highlight(tokens, values, peak: float, colour: bool) -> str:
    """The window's text with each active token marked; on a terminal, brighter for stronger."""
    out = []
    for tok, v in zip(tokens, values):
        if v <= 0:
            out.append(tok)
        elif colour:
            level = min(5, max(1, math.ceil(5 * v / peak))) if peak > 0 else 5
            out.append(f"\x1b[1;38;5;{(196, 202, 208, 214, 220)[5 - level]}m{tok}\x1b[0m")
        else:
            out.append(f"«{tok}»")
    return "".join(out).replace("\n", "⏎")


def feature_lines(
    store: Store,
    run_id: str | None,
    feature: int,
    *,
    explainer: str | None = None,
    n: int = default_of(ShowConfig, "n"),
    colour: bool = False,
) -> list[str]:
    run = store.run(run_id)
    run_id = run["run_id"]
    features = store.features(run_id)
    row = features[features.feature == feature]
    if row.empty:
        raise AutointerpError(
            f"run '{run_id}' has no feature {feature}", f"pick a feature from 0 to {int(features.feature.max())}"
        )
    r = row.iloc[0]
    lines = [
        f"feature {feature} of run {run_id} ({run['model']} at {run['hookpoint']})",
        f"  density {r.density:.4%} · {int(r.n_firing):,} firing tokens · max activation {r.max_activation:.4g}"
        + (" · dead" if r.dead else "")
        + (" · ultra-dense" if r.dense else ""),
    ]
    labels = store.explanations(run_id)
    labels = labels[labels.feature == feature]
    if explainer:
        labels = labels[labels.explainer == explainer]
    if labels.empty:
        lines.append("  not labelled" + (f" by {explainer}" if explainer else ""))
    scores = store.scores(run_id)
    scores = scores[(scores.feature == feature) & (scores.label_source == "true")]
    summaries = {}
    for x in labels.itertuples():
        text = x.label if x.status == "ok" else f"({x.status}: {x.error})"
        lines.append(f"  label by {x.explainer}: {text}")
        if x.explainer not in summaries:
            summaries[x.explainer] = {
                s["scorer"]: s for s in store.score_summaries(run_id, x.explainer).to_dict("records")
            }
        for s in scores[scores.explainer == x.explainer].itertuples():
            alpha = summaries[x.explainer].get(s.scorer, {}).get("alpha", 0.01)
            verdict = s.status if s.status != "ok" else ("confident" if s.p_value < alpha else "not above the null")
            lines.append(
                f"    {s.scorer:<12} {s.metric} {_fmt(s.value)} [{_fmt(s.ci_low)}, {_fmt(s.ci_high)}] n={int(s.n)} "
                f"p={_fmt(s.p_value)} {verdict}"
            )
    effects = store.output_effects(run_id, [feature])
    for kind, group in effects.groupby("kind", sort=False):
        lines.append(f"  {kind}: " + " ".join(repr(visible_token(t)) for t in group.token))
    snippets = store.feature_snippets(
        run_id, [feature], split="explain", max_per_kind={"top": n, "quantile": 0, "negative": 0}
    )
    if snippets and snippets[0].explain:
        lines.append(f"  top {min(n, len(snippets[0].explain))} windows (explain split):")
        for s in snippets[0].explain[:n]:
            lines.append(
                f"    {s.max_activation:7.3f}  {highlight(s.tokens, s.values(), float(r.max_activation), colour)}"
            )
    return lines
