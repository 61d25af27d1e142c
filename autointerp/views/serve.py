"""`autointerp serve`: a local web app over a project's DuckDB file, read-only, that stays fast at 65,536+ features.

Pages (all server-rendered HTML, no script, nothing loaded from elsewhere):
  /                 the feature table, one page at a time: sort, filter, search labels (?q=)
                    and the tokens features fire on (?token=)
  /feature/<index>  one feature: every explainer's label side by side, scores with intervals, top windows
  /saturation       the saturation curves (inline SVG)
  /scores           score distributions (inline SVG histograms) and the stored summaries

The database is opened through its own read-only DuckDB connection, so the server can never write it
(while it runs, a pipeline stage cannot open the project for writing: stop the server first). Every list
query is paged; no page loads all features. All corpus text, labels and names are HTML-escaped, and the
Content-Security-Policy forbids scripts and every outside resource, so hostile corpus text stays inert.

Its queries are store.Browser's. This module imports only the standard library at import time (the
store, and with it duckdb, when the server opens the database), so building the command-line parser stays fast.

Who may reach it: by default it listens on 127.0.0.1, this machine only. Bound to any other address it
prints a warning to stderr, since labels and corpus text are then served to anyone who can reach the
port. Every request's Host header must name the server as it was bound, with the bound port (no port:
80), or it is refused with 421 (a foreign page resolving its own name to this address, DNS rebinding,
reaches the server under a foreign name):
  - bound to a loopback address or localhost: localhost, 127.0.0.1, [::1] and the bound host;
  - bound to another name or address: that name or address only;
  - bound to every interface (0.0.0.0, ::): the loopback names, this machine's host name and fully
    qualified name, and any IP address literal (rebinding needs a name, so an address is safe).
To browse under other names too (a reverse proxy's, a DNS name of this machine), list them with
--allow-host; or bind to the name: --host <that name>.
"""

from __future__ import annotations

import errno
import html
import ipaddress
import math
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlencode, urlsplit

from autointerp.config import ScoreConfig, ServeConfig, default_of
from autointerp.errors import AutointerpError
from autointerp.records import text_pieces

if TYPE_CHECKING:
    from autointerp.store import Browser

# No script is needed, so none is allowed: stricter than "script-src 'unsafe-inline'".
CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; img-src data:; script-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
META_CSP = CSP.replace(
    "; frame-ancestors 'none'", ""
)  # a saved page keeps the policy; browsers ignore frame-ancestors in <meta>
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
DEFAULT_PER_PAGE = 50
MAX_PER_PAGE = 500
MAX_SVG_POINTS = 600  # saturation curves are thinned in SQL to about this many points
HIST_BINS = 20


class BadRequest(Exception):
    """A query string the app cannot serve; the message is shown to the user (escaped)."""


class NotFound(Exception):
    pass


# ------------------------------------------------------------------------------------- rendering helpers


def esc(value) -> str:
    """Text (None → '') escaped for HTML text and for attribute values in double or single quotes."""
    return html.escape("" if value is None else str(value), quote=True)


def num(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def density_text(d) -> str:
    return "—" if d is None else f"{d:.3g}"


def verdict_html(own: dict, explainer: str) -> str:
    """The label-free verdict on an untrusted label (report.interpretability_verdict), from the feature's
    score rows (explainer, scorer) → (..., p at 7, status at 9, ...); empty when there is none."""
    from autointerp.stages.score.scorers import LABEL_FREE
    from autointerp.views.report import interpretability_verdict

    alpha = default_of(ScoreConfig, "alpha")
    detection = own.get((explainer, "detection"))
    free = [row for name in LABEL_FREE if (row := own.get((explainer, name))) is not None and row[9] == "ok"]
    if detection is None or not free:
        return ""
    trusted = detection[9] == "ok" and detection[7] is not None and detection[7] < alpha
    verdict = interpretability_verdict(trusted, [row[7] for row in free], alpha)
    return f" <span class='flag'>{esc(verdict)}</span>" if verdict else ""


def score_cell(value, low, high) -> str:
    if value is None or not math.isfinite(value):
        return "<td class='num muted'>—</td>"
    interval = (
        f" <span class='ci'>[{num(low, 2)}, {num(high, 2)}]</span>" if low is not None and high is not None else ""
    )
    return f"<td class='num'>{value:.3f}{interval}</td>"


def href(path: str, **params) -> str:
    """A link to one of the app's own pages, escaped for an attribute."""
    kept = {k: v for k, v in params.items() if v not in (None, "")}
    return esc(path + ("?" + urlencode(kept) if kept else ""))


STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#253040;color:#fff;padding:.5em 1em;display:flex;gap:1.5em;align-items:baseline;flex-wrap:wrap}
header a{color:#cde}header b{font-size:1.1em}main{padding:1em}
table{border-collapse:collapse;background:#fff}
th,td{border-bottom:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
th{background:#eef1f5;position:sticky;top:0}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.ci{color:#777;font-size:.85em}.muted{color:#888}.bad{color:#a00}
.flag{font-size:.8em;padding:0 .3em;border-radius:3px;background:#eee}
form.filters{display:flex;gap:.8em;flex-wrap:wrap;align-items:end;margin-bottom:1em}
form.filters label{display:flex;flex-direction:column;font-size:.85em}
.pager{margin:.8em 0;display:flex;gap:1em}
.win{font-family:ui-monospace,monospace;white-space:pre-wrap;background:#fff;border:1px solid #ddd;
padding:.3em .5em;margin:.2em 0}
.tok{border-radius:2px}.peak{outline:1px solid #c60}.grid{display:flex;gap:1.5em;flex-wrap:wrap}
.detail{white-space:normal;max-width:20em;margin-left:auto}#labels td:nth-child(2){min-width:16em;max-width:32em}
svg{background:#fff;border:1px solid #ddd}svg text{font:11px system-ui,sans-serif;fill:#444}
"""


def page(title: str, body: str, run: str, runs: list[tuple]) -> str:
    options = "".join(
        f"<option value='{esc(r[0])}'{' selected' if r[0] == run else ''}>{esc(r[0])}</option>" for r in runs
    )
    nav = (
        f"<b>autointerp</b> <a href='{href('/', run=run)}'>features</a> <a "
        f"href='{href('/scores', run=run)}'>scores</a> "
        f"<a href='{href('/saturation', run=run)}'>saturation</a>"
        f"<form method='get' action='/'><select name='run' aria-label='run'>{options}</select> <button>open "
        "run</button></form>"
    )
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta http-equiv='Content-Security-Policy' content=\"{esc(META_CSP)}\">"
        f"<title>{esc(title)}</title><style>{STYLE}</style></head>\n"
        f"<body><header>{nav}</header><main>\n{body}\n</main></body></html>\n"
    )


# ------------------------------------------------------------------------------------- SVG charts


def tick(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"


def svg_lines(
    series: list[tuple[str, str, list[tuple[float, float]]]],
    xlabel: str,
    ylabel: str,
    band: list[tuple[float, float, float]] | None = None,
    width: int = 560,
    height: int = 260,
    y_range: tuple[float, float] | None = None,
) -> str:
    """Line chart: series of (name, colour, points); band: (x, low, high) drawn shaded behind."""
    pts = [p for _, _, s in series for p in s] + [(x, v) for x, lo, hi in (band or []) for v in (lo, hi)]
    pts = [(x, y) for x, y in pts if x is not None and y is not None and math.isfinite(x) and math.isfinite(y)]
    if not pts:
        return "<p class='muted'>nothing to plot</p>"
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = y_range or (min(0.0, min(p[1] for p in pts)), max(p[1] for p in pts))
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1)
    left, right, top, bottom = 64, 12, 12, 34
    sx = lambda x: left + (x - x0) / (x1 - x0) * (width - left - right)  # noqa: E731
    sy = lambda y: height - bottom - (y - y0) / (y1 - y0) * (height - top - bottom)  # noqa: E731
    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
        f"aria-label='{esc(ylabel)} by {esc(xlabel)}'>"
    ]
    out.append(
        f"<line x1='{left}' y1='{height - bottom}' x2='{width - right}' y2='{height - bottom}' stroke='#888'/>"
        f"<line x1='{left}' y1='{top}' x2='{left}' y2='{height - bottom}' stroke='#888'/>"
    )
    for i in range(5):
        yv, xv = y0 + (y1 - y0) * i / 4, x0 + (x1 - x0) * i / 4
        out.append(
            f"<text x='{left - 4}' y='{sy(yv) + 4:.1f}' text-anchor='end'>{tick(yv)}</text>"
            f"<text x='{sx(xv):.1f}' y='{height - bottom + 14}' "
            f"text-anchor='{'start' if i == 0 else 'end' if i == 4 else 'middle'}'>{tick(xv)}</text>"
        )
    out.append(
        f"<text x='{(left + width - right) / 2}' y='{height - 4}' text-anchor='middle'>{esc(xlabel)}</text>"
        f"<text x='10' y='{(top + height - bottom) / 2}' transform='rotate(-90 10 {(top + height - bottom) / 2})' "
        f"text-anchor='middle'>{esc(ylabel)}</text>"
    )
    good = [
        (x, lo, hi) for x, lo, hi in (band or []) if None not in (lo, hi) and math.isfinite(lo) and math.isfinite(hi)
    ]
    if good:
        poly = (
            " ".join(f"{sx(x):.1f},{sy(hi):.1f}" for x, _, hi in good)
            + " "
            + " ".join(f"{sx(x):.1f},{sy(lo):.1f}" for x, lo, _ in reversed(good))
        )
        out.append(f"<polygon points='{poly}' fill='#9ab' fill-opacity='0.3' stroke='none'/>")
    for k, (name, colour, s) in enumerate(series):
        line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in s if y is not None and math.isfinite(y))
        out.append(
            f"<polyline points='{line}' fill='none' stroke='{esc(colour)}' "
            f"stroke-width='1.8'><title>{esc(name)}</title></polyline>"
            f"<text x='{left + 8}' y='{top + 12 + 14 * k}' style='fill:{esc(colour)}'>{esc(name)}</text>"
        )
    out.append("</svg>")
    return "".join(out)


def svg_histogram(
    title: str,
    lo: float,
    hi: float,
    counts: dict[str, list[int]],
    colours: dict[str, str],
    width: int = 420,
    height: int = 200,
) -> str:
    """Bars of counts per label source over HIST_BINS bins of [lo, hi]; sources drawn side by side in each bin."""
    left, right, top, bottom = 44, 10, 22, 30
    peak = max((c for cs in counts.values() for c in cs), default=0) or 1
    bw = (width - left - right) / HIST_BINS
    out = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
        f"aria-label='{esc(title)}'>"
        f"<text x='{left}' y='14'>{esc(title)}</text>"
        f"<line x1='{left}' y1='{height - bottom}' x2='{width - right}' y2='{height - bottom}' stroke='#888'/>"
        f"<text x='{left - 4}' y='{top + 8}' text-anchor='end'>{peak}</text><text x='{left - 4}' y='{height - bottom}' "
        "text-anchor='end'>0</text>"
        f"<text x='{left}' y='{height - bottom + 14}' text-anchor='middle'>{lo:.3g}</text>"
        f"<text x='{width - right}' y='{height - bottom + 14}' text-anchor='middle'>{hi:.3g}</text>"
    ]
    sources = list(counts)
    for k, source in enumerate(sources):
        sub = bw / len(sources)
        for b, c in enumerate(counts[source]):
            if not c:
                continue
            h = c / peak * (height - top - bottom)
            x = left + b * bw + k * sub
            a, z = lo + (hi - lo) * b / HIST_BINS, lo + (hi - lo) * (b + 1) / HIST_BINS
            out.append(
                f"<rect x='{x:.1f}' y='{height - bottom - h:.1f}' width='{max(sub - 1, 1):.1f}' height='{h:.1f}' "
                f"fill='{esc(colours.get(source, '#888'))}'><title>{esc(source)} [{a:.3g}, {z:.3g}): {c}</title></rect>"
            )
    for k, source in enumerate(sources):
        out.append(
            f"<text x='{width - right - 4}' y='{top + 12 * k + 4}' text-anchor='end' "
            f"style='fill:{esc(colours.get(source, '#888'))}'>"
            f"{esc('own labels' if source == 'true' else source + ' control')}</text>"
        )
    out.append("</svg>")
    return "".join(out)


# ------------------------------------------------------------------------------------- pages


@dataclass
class TableQuery:
    """The feature table's query string, validated."""

    run: str
    explainer: str | None
    scorer: str | None
    q: str
    token: str
    sort: str
    order: str
    min: float | None
    low: float | None
    dead: str
    dense: str
    page: int
    per: int

    def link(self, **changes) -> str:
        p = {
            k: getattr(self, k)
            for k in (
                "run",
                "explainer",
                "scorer",
                "q",
                "token",
                "sort",
                "order",
                "min",
                "low",
                "dead",
                "dense",
                "page",
                "per",
            )
        }
        p.update(changes)
        if p["page"] == 1:
            p["page"] = None
        if p["per"] == DEFAULT_PER_PAGE:
            p["per"] = None
        return href("/", **p)


def _one(params: dict, name: str, default: str = "") -> str:
    values = params.get(name)
    return values[-1].strip() if values else default


def _float(params: dict, name: str) -> float | None:
    text = _one(params, name)
    if not text:
        return None
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"{name} must be a number, not {text!r}") from None
    if not math.isfinite(value):
        raise BadRequest(f"{name} must be a finite number")
    return value


def _int(params: dict, name: str, default: int, lo: int, hi: int) -> int:
    text = _one(params, name)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number, not {text!r}") from None
    return min(max(value, lo), hi)


def _choice(params: dict, name: str, allowed: tuple[str, ...], default: str) -> str:
    value = _one(params, name, default) or default
    if value not in allowed:
        raise BadRequest(f"{name} must be one of {', '.join(allowed)}, not {value!r}")
    return value


class App:
    """Renders each page from the database: (status, HTML)."""

    def __init__(self, db: Browser):
        self.db = db

    # -- shared lookups

    def _run(self, params: dict) -> tuple[str, list[tuple]]:
        runs = self.db.runs()
        run = _one(params, "run") or self.db.default_run
        if run not in {r[0] for r in runs}:
            raise NotFound(f"no run {run!r} in this project")
        return run, runs

    def _explainer(self, params: dict, run: str) -> tuple[str | None, list[tuple]]:
        explainers = self.db.explainers(run)
        names = [e[0] for e in explainers]
        chosen = _one(params, "explainer") or (names[0] if names else None)
        if chosen is not None and chosen not in names:
            raise BadRequest(f"no explainer {chosen!r} labelled run {run!r}")
        return chosen, explainers

    # -- /

    def index(self, params: dict) -> str:
        run, runs = self._run(params)
        explainer, explainers = self._explainer(params, run)
        scorers = self.db.scorers(run, explainer) if explainer else []
        scorer = _one(params, "scorer") or (scorers[0] if scorers else None)
        if scorer is not None and scorer not in scorers:
            raise BadRequest(f"no scores by {scorer!r} for explainer {explainer!r}")
        t = TableQuery(
            run=run,
            explainer=explainer,
            scorer=scorer,
            q=_one(params, "q"),
            token=_one(params, "token"),
            sort=_choice(params, "sort", tuple(self.db.SORT_KEYS), "feature"),
            order=_choice(params, "order", ("", "asc", "desc"), ""),
            min=_float(params, "min"),
            low=_float(params, "low"),
            dead=_choice(params, "dead", ("", "1", "0"), ""),
            dense=_choice(params, "dense", ("", "1", "0"), ""),
            page=_int(params, "page", 1, 1, 10**9),
            per=_int(params, "per", DEFAULT_PER_PAGE, 1, MAX_PER_PAGE),
        )
        if t.sort == "score" and scorer is None:
            raise BadRequest("there are no scores to sort by")
        if not t.order:
            t.order = "desc" if t.sort in ("score", "density", "activation") else "asc"
        note, token_ids = "", None
        if t.token:
            token_ids = self.db.token_ids(run, t.token)
            note = (
                f"<p class='muted'>token {esc(t.token)!s}: {len(token_ids)} vocabulary "
                f"entr{'y' if len(token_ids) == 1 else 'ies'} "
                "matched; features whose top windows contain one are shown</p>"
            )
        for name in ("min", "low"):
            if getattr(t, name) is not None and scorer is None:
                raise BadRequest(f"{name} filters on a score, and there are none")
        total, rows = self.db.feature_table(
            run,
            explainer,
            scorer,
            sort=t.sort,
            descending=t.order == "desc",
            limit=t.per,
            offset=(t.page - 1) * t.per,
            q=t.q,
            token_ids=token_ids,
            min=t.min,
            low=t.low,
            dead={"": None, "1": True, "0": False}[t.dead],
            dense={"": None, "1": True, "0": False}[t.dense],
        )
        cells: dict[tuple[int, str], tuple] = {}
        if rows and explainer:
            for f, sc, v, lo, hi, p in self.db.page_scores(run, explainer, [r[0] for r in rows]):
                cells[f, sc] = (v, lo, hi, p)
        return page(
            f"autointerp — {run}", self._index_body(t, rows, total, scorers, explainers, cells, note), run, runs
        )

    def _index_body(self, t: TableQuery, rows, total, scorers, explainers, cells, note) -> str:
        n_features = self.db.n_features(t.run)
        ex_opts = "".join(
            f"<option value='{esc(e[0])}'{' selected' if e[0] == t.explainer else ''}>{esc(e[0])} ({e[1]:,})</option>"
            for e in explainers
        )
        sc_opts = "".join(f"<option{' selected' if s == t.scorer else ''}>{esc(s)}</option>" for s in scorers)
        sort_opts = "".join(f"<option{' selected' if k == t.sort else ''}>{k}</option>" for k in self.db.SORT_KEYS)
        tri = lambda name, v: "".join(  # noqa: E731
            f"<option value='{val}'{' selected' if v == val else ''}>{text}</option>"
            for val, text in (("", "any"), ("1", f"only {name}"), ("0", f"not {name}"))
        )
        form = (
            f"<form class='filters' method='get' action='/'><input type='hidden' name='run' value='{esc(t.run)}'>"
            f"<label>label contains<input name='q' value='{esc(t.q)}' placeholder='substring'></label>"
            f"<label>fires on token<input name='token' value='{esc(t.token)}' placeholder='token'></label>"
            + (f"<label>explainer<select name='explainer'>{ex_opts}</select></label>" if explainers else "")
            + (f"<label>score<select name='scorer'>{sc_opts}</select></label>" if scorers else "")
            + "<label>min score<input name='min' size='5' "
            f"value='{esc(num(t.min, 6) if t.min is not None else '')}'></label>"
            "<label>interval low ≥<input name='low' size='5' "
            f"value='{esc(num(t.low, 6) if t.low is not None else '')}'></label>"
            f"<label>dead<select name='dead'>{tri('dead', t.dead)}</select></label>"
            f"<label>dense<select name='dense'>{tri('dense', t.dense)}</select></label>"
            f"<label>sort<select name='sort'>{sort_opts}</select></label>"
            f"<label>order<select name='order'><option{' selected' if t.order == 'asc' else ''}>asc</option>"
            f"<option{' selected' if t.order == 'desc' else ''}>desc</option></select></label>"
            f"<label>per page<input name='per' size='4' value='{t.per}'></label><button>apply</button>"
            f" <a href='{href('/', run=t.run)}'>reset</a></form>"
        )
        first = (t.page - 1) * t.per
        shown = f"{first + 1:,}–{first + len(rows):,}" if rows else "none"
        pages = max(1, -(-total // t.per))
        pager = (
            f"<nav class='pager'><span id='matched' data-total='{total}'>{total:,} of {n_features:,} features match; "
            f"showing {shown}</span>"
            + (f"<a rel='prev' href='{t.link(page=t.page - 1)}'>← previous</a>" if t.page > 1 else "")
            + f"<span>page {t.page:,} of {pages:,}</span>"
            + (f"<a rel='next' href='{t.link(page=t.page + 1)}'>next →</a>" if t.page < pages else "")
            + "</nav>"
        )

        def sort_link(key: str, text: str, scorer: str | None = None) -> str:
            active = t.sort == key and (scorer is None or scorer == t.scorer)
            order = (
                ("asc" if t.order == "desc" else "desc")
                if active
                else ("asc" if key in ("feature", "label") else "desc")
            )
            arrow = (" ▼" if t.order == "desc" else " ▲") if active else ""
            return (
                f"<a href='{t.link(sort=key, order=order, page=1, scorer=scorer or t.scorer)}'>{esc(text)}{arrow}</a>"
            )

        head = (
            "<tr><th class='num'>"
            + sort_link("feature", "feature")
            + "</th><th>"
            + sort_link("label", "label")
            + "</th><th>explainer</th>"
            + "".join(f"<th class='num'>{sort_link('score', s, s)}</th>" for s in scorers)
            + f"<th class='num'>{sort_link('density', 'density')}</th><th>flags</th></tr>"
        )
        body = []
        last = self.db.ranks_last or (lambda label: False)
        for feature, label, status, density, _n, _max, dead, dense in rows:
            trivial = label is not None and status == "ok" and last(label)
            flags = " ".join(
                f"<span class='flag'>{n}</span>"
                for n, on in (("dead", dead), ("dense", dense), ("function words", trivial))
                if on
            )
            label_html = (
                f"<span class='lbl'>{esc(label)}</span>"
                if label is not None and status == "ok"
                else f"<span class='muted'>{esc(status) if status else 'no label'}</span>"
            )
            body.append(
                f"<tr class='row' data-feature='{feature}'><td class='num'><a "
                f"href='{href(f'/feature/{feature}', run=t.run)}'>{feature}</a></td>"
                f"<td>{label_html}</td><td class='muted'>{esc(t.explainer) if label is not None else ''}</td>"
                + "".join(score_cell(*cells.get((feature, s), (None, None, None, None))[:3]) for s in scorers)
                + f"<td class='num'>{density_text(density)}</td><td>{flags}</td></tr>"
            )
        table = f"<table id='features'><thead>{head}</thead><tbody>{''.join(body)}</tbody></table>"
        empty = "" if rows else "<p class='muted' id='empty'>no feature matches</p>"
        return f"<h1>{esc(t.run)}</h1>{form}{note}{pager}{table}{empty}{pager if len(rows) > 20 else ''}"

    # -- /feature/<index>

    def feature(self, index: int, params: dict) -> str:
        run, runs = self._run(params)
        row = self.db.feature(run, index)
        if row is None:
            raise NotFound(f"no feature {index} in run {run!r}")
        feature, n_firing, density, max_act, mean_act, dead, dense = row
        prev_f, next_f = self.db.neighbours(run, index)
        labels = self.db.feature_labels(run, index)
        scores = self.db.feature_scores(run, index)
        examples = self.db.feature_windows(run, index)
        pieces = self.db.pieces(run, sorted({i for ex in examples if ex[7] is None for i in ex[5] or []}))

        nav = (
            (
                f"<a rel='prev' href='{href(f'/feature/{prev_f}', run=run)}'>← {prev_f}</a> "
                if prev_f is not None
                else ""
            )
            + f"<a href='{href('/', run=run)}'>all features</a>"
            + (
                f" <a rel='next' href='{href(f'/feature/{next_f}', run=run)}'>{next_f} →</a>"
                if next_f is not None
                else ""
            )
        )
        flag_text = " ".join(n for n, on in (("dead", dead), ("dense", dense)) if on) or "—"
        stats = (
            f"<table class='stats'><tr><th>firing</th><td class='num'>{n_firing:,}</td><th>density</th><td "
            f"class='num'>{density_text(density)}</td>"
            f"<th>max activation</th><td class='num'>{num(max_act)}</td><th>mean activation</th><td "
            f"class='num'>{num(mean_act)}</td>"
            f"<th>flags</th><td>{flag_text}</td></tr></table>"
        )

        # Labels of every explainer side by side, each with its own scores (own labels) and the shuffled control.
        scorers = sorted({s[1] for s in scores})
        own = {(s[0], s[1]): s for s in scores if s[2] == "true"}
        control = {(s[0], s[1]): s for s in scores if s[2] == "shuffled"}
        explainers = [lab[0] for lab in labels] + sorted({s[0] for s in scores} - {lab[0] for lab in labels})
        by_explainer = {lab[0]: lab for lab in labels}
        head = (
            "<tr><th>explainer</th><th>label</th>"
            + "".join(f"<th class='num'>{esc(s)}</th>" for s in scorers)
            + "</tr>"
        )
        lines = []
        for ex in explainers:
            _, label, status, error = by_explainer.get(ex, (ex, None, None, None))
            if status == "ok":
                label_html = f"<span class='lbl'>{esc(label)}</span>" + verdict_html(own, ex)
            else:
                label_html = f"<span class='bad'>{esc(status or 'no label')}</span>" + (
                    f" <span class='muted'>{esc(error)}</span>" if error else ""
                )
            tds = []
            for s in scorers:
                r = own.get((ex, s))
                if r is None:
                    tds.append("<td class='num muted'>—</td>")
                    continue
                _, _, _, metric, v, lo, hi, p, n, st, judge, err = r
                c = control.get((ex, s))
                extra = (
                    f"<div class='ci detail'>{esc(metric)}, n={n if n is not None else '—'}, p={num(p, 3)}"
                    + (f", control {num(c[4])}" if c is not None else "")
                    + (f", judge {esc(judge)}" if judge else "")
                    + (f", <span class='bad'>{esc(st)}: {esc(err)}</span>" if st not in (None, "ok") else "")
                    + "</div>"
                )
                tds.append(score_cell(v, lo, hi)[:-5] + extra + "</td>")
            lines.append(
                f"<tr data-explainer='{esc(ex)}'><td "
                f"class='muted'>{esc(ex)}</td><td>{label_html}</td>{''.join(tds)}</tr>"
            )
        labels_html = (
            f"<table id='labels'><thead>{head}</thead><tbody>{''.join(lines)}</tbody></table>"
            if lines
            else "<p class='muted'>no labels stored — run autointerp explain</p>"
        )

        def window(ex) -> str:
            split, kind, rank, quantile, peak_act, token_ids, acts, source, ends = ex
            top = max((a for a in (acts or []) if a is not None), default=0.0) or 1.0
            peak_i = max(range(len(acts)), key=lambda i: acts[i]) if acts else -1
            shown = text_pieces(source, ends) if source is not None else [pieces.get(t, f"[{t}]") for t in token_ids]
            spans = []
            for i, piece in enumerate(shown):
                text = esc(piece)
                a = acts[i] if acts is not None and i < len(acts) and acts[i] is not None else 0.0
                if a > 0:
                    alpha = min(1.0, 0.15 + 0.85 * a / top)
                    spans.append(
                        f"<span class='tok act{' peak' if i == peak_i else ''}' "
                        f"style='background:rgba(255,140,0,{alpha:.2f})' "
                        f"title='{a:.3f}'>{text}</span>"
                    )
                else:
                    spans.append(text)
            what = f"{esc(split)} #{rank}" if kind == "top" else f"{esc(split)} quantile {quantile} #{rank}"
            caption = f"<span class='muted'>{what} · max {num(peak_act)}</span>"
            return f"<div class='win' data-kind='{esc(kind)}'>{caption}\n{''.join(spans)}</div>"

        tops = [window(ex) for ex in examples if ex[1] == "top"]
        quantiles = [window(ex) for ex in examples if ex[1] == "quantile"]
        body = (
            f"<h1>feature {feature}</h1><p>{nav}</p>{stats}<h2>labels and scores</h2>{labels_html}"
            f"<h2>top windows</h2>{''.join(tops) or '<p class=muted>no windows stored</p>'}"
            + (
                f"<details><summary>quantile samples ({len(quantiles)})</summary>{''.join(quantiles)}</details>"
                if quantiles
                else ""
            )
        )
        return page(f"feature {feature} — {run}", body, run, runs)

    # -- /saturation

    def saturation(self, params: dict) -> str:
        run, runs = self._run(params)
        summaries = self.db.saturation_summaries(run)
        parts = []
        for explainer, method, n_labels, n_mapped, n_categories, saturated, meaning in summaries:
            curve = self.db.saturation_curve(run, explainer, method, MAX_SVG_POINTS)
            steps = [c[0] for c in curve]
            chart = svg_lines(
                [
                    ("categories", "#c60", list(zip(steps, [c[2] for c in curve]))),
                    ("Chao1 estimate", "#357", list(zip(steps, [c[4] for c in curve]))),
                ],
                "labels seen",
                "distinct categories",
                band=[(c[0], c[5], c[6]) for c in curve],
            )
            cover = svg_lines(
                [("coverage", "#383", list(zip(steps, [c[3] for c in curve])))],
                "labels seen",
                "coverage",
                width=380,
                y_range=(0.0, 1.0),
            )
            verdict = "<b>saturated</b>" if saturated else "not saturated yet"
            parts.append(
                f"<section class='sat'><h2>{esc(explainer)} · {esc(method)}</h2><p>{verdict}: {n_categories or 0:,} "
                "categories from "
                f"{n_mapped or 0:,} mapped of {n_labels or 0:,} labels ({len(curve):,} points drawn)</p>"
                + (f"<p>{esc(meaning)}</p>" if meaning else "")
                + f"<div class='grid'>{chart}{cover}</div></section>"
            )
        body = "<h1>saturation</h1>" + (
            "".join(parts) or "<p class='muted'>no saturation stored — run autointerp saturate</p>"
        )
        return page(f"saturation — {run}", body, run, runs)

    # -- /scores

    def scores(self, params: dict) -> str:
        run, runs = self._run(params)
        explainer, explainers = self._explainer(params, run)
        links = " ".join(
            f"<a href='{href('/scores', run=run, explainer=e[0])}'>"
            f"{'<b>' + esc(e[0]) + '</b>' if e[0] == explainer else esc(e[0])}</a>"
            for e in explainers
        )
        if explainer is None:
            return page(
                f"scores — {run}",
                "<h1>scores</h1><p class='muted'>no labels stored — run autointerp explain</p>",
                run,
                runs,
            )
        summaries = self.db.score_summaries(run, explainer)
        hist: dict[str, dict] = {}
        for scorer, source, lo, hi, b, n in self.db.score_histograms(run, explainer, HIST_BINS):
            h = hist.setdefault(scorer, {"lo": lo, "hi": hi, "counts": {}})
            h["counts"].setdefault(source, [0] * HIST_BINS)[b] += n
        charts = "".join(
            svg_histogram(
                f"{s} ({sum(h['counts'].get('true', [])):,} features)",
                h["lo"],
                h["hi"],
                dict(sorted(h["counts"].items(), key=lambda kv: kv[0] != "true")),
                {"true": "#e8871e", "shuffled": "#8a9bb0"},
            )
            for s, h in hist.items()
        )
        head = (
            "<tr><th>scorer</th><th>metric</th><th class='num'>chance</th><th class='num'>features</th><th "
            "class='num'>ok</th>"
            "<th class='num'>failed</th><th class='num'>median [q25, q75]</th><th class='num'>confident</th>"
            "<th class='num'>control median</th><th class='num'>gap [interval]</th><th>verdict</th></tr>"
        )
        rows = "".join(
            f"<tr><td>{esc(r[0])}</td><td>{esc(r[1])}</td><td class='num'>{num(r[2])}</td><td "
            f"class='num'>{num(r[3])}</td>"
            f"<td class='num'>{num(r[4])}</td><td class='num'>{num(r[5])}</td>{score_cell(r[6], r[7], r[8])}<td "
            f"class='num'>{num(r[9])}</td>"
            f"<td class='num'>{num(r[10])}</td>{score_cell(r[11], r[12], r[13])}<td>{esc(r[14])}</td></tr>"
            for r in summaries
        )
        table = (
            f"<table id='summaries'><thead>{head}</thead><tbody>{rows}</tbody></table>"
            if summaries
            else "<p class='muted'>no score summaries stored</p>"
        )
        body = (
            f"<h1>scores</h1><p>explainer: {links}</p>{table}<h2>distributions</h2>"
            f"<div class='grid'>{charts or '<p class=muted>no scores stored — run autointerp score</p>'}</div>"
        )
        return page(f"scores — {run}", body, run, runs)


# ------------------------------------------------------------------------------------- HTTP

FEATURE_PATH = re.compile(r"/feature/(\d{1,10})/?")


class Handler(BaseHTTPRequestHandler):
    server_version = "autointerp-serve"
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def _refuse(self) -> None:
        self._send(
            HTTPStatus.METHOD_NOT_ALLOWED,
            "<p>this server is read-only: GET and HEAD only</p>",
            True,
            {"Allow": "GET, HEAD"},
        )

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    def _respond(self, send_body: bool) -> None:
        started = time.perf_counter()
        server: Server = self.server  # type: ignore[assignment]
        host = self.headers.get("Host") or ""
        if not server.host_allowed(host):
            # A page elsewhere resolving its own name to this address (DNS rebinding) reaches the server under a foreign
            # Host (see the module's docstring for the names allowed).
            self._send(
                HTTPStatus.MISDIRECTED_REQUEST,
                f"<p>unexpected Host {esc(host)}: this server answers to {esc(server.host_rule)}; to browse under "
                "another name, list it with --allow-host &lt;that name&gt;</p>",
                send_body,
            )
            return
        url = urlsplit(self.path)
        params = parse_qs(url.query, keep_blank_values=True)
        try:
            if url.path == "/":
                body = server.app.index(params)
            elif (m := FEATURE_PATH.fullmatch(url.path)) is not None:
                body = server.app.feature(int(m.group(1)), params)
            elif url.path in ("/saturation", "/saturation/"):
                body = server.app.saturation(params)
            elif url.path in ("/scores", "/scores/"):
                body = server.app.scores(params)
            elif url.path == "/favicon.ico":
                self._send(HTTPStatus.NO_CONTENT, "", send_body)
                return
            else:
                raise NotFound(f"no page {url.path}")
            status = HTTPStatus.OK
        except BadRequest as e:
            status, body = HTTPStatus.BAD_REQUEST, _error_page("bad request", str(e))
        except NotFound as e:
            status, body = HTTPStatus.NOT_FOUND, _error_page("not found", str(e))
        except Exception as e:  # noqa: BLE001 - shown to the local user, escaped, and logged
            status, body = HTTPStatus.INTERNAL_SERVER_ERROR, _error_page("server error", f"{type(e).__name__}: {e}")
            self.log_error("error serving %s: %r", self.path, e)
        self._send(status, body, send_body, {"Server-Timing": f"app;dur={(time.perf_counter() - started) * 1000:.1f}"})

    def _send(self, status: HTTPStatus, body: str, send_body: bool, extra: dict | None = None) -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for k, v in {**SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        if send_body and status != HTTPStatus.NO_CONTENT:
            self.wfile.write(data)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the base class's name
        if not self.server.quiet:  # type: ignore[attr-defined]
            super().log_message(format, *args)


def _error_page(title: str, message: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body><main><h1>{esc(title)}</h1>"
        f"<p class='bad'>{esc(message)}</p><p><a href='/'>back to the features</a></p></main></body></html>\n"
    )


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", ""})


def is_loopback(host: str) -> bool:
    """Whether binding to host keeps the server on this machine (localhost, 127.0.0.0/8, ::1)."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def split_host(header: str) -> tuple[str, int | None] | None:
    """A Host header as (lower-case name without brackets or trailing dot, port or None); None if malformed."""
    header = header.strip().lower()
    if header.startswith("["):  # [v6]:port
        name, close, rest = header[1:].partition("]")
        if not close or (rest and not rest.startswith(":")):
            return None
        port_text = rest[1:] if rest else None
    else:
        name, colon, port_text = header.partition(":")
        port_text = port_text if colon else None
    if port_text is not None and not (port_text.isascii() and port_text.isdigit() and len(port_text) <= 5):
        return None
    return name.rstrip("."), (int(port_text) if port_text is not None else None)


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _own_names() -> set[str]:
    """This machine's host name and fully qualified name (lower case)."""
    names = set()
    for get in (socket.gethostname, socket.getfqdn):
        try:
            names.add(get().lower().rstrip("."))
        except OSError:
            pass
    return names - {""}


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, db: Browser, host: str, port: int, quiet: bool = False, allow_hosts: tuple[str, ...] = ()):
        if ":" in host:  # an IPv6 address (:: is every interface)
            self.address_family = socket.AF_INET6
        super().__init__((host.strip("[]"), port), Handler)
        self.db, self.app, self.quiet = db, App(db), quiet
        self.port = self.server_address[1]
        self.wildcard = host in WILDCARD_HOSTS
        bound = host.lower().strip("[]").rstrip(".")
        if self.wildcard:
            self.names = set(LOOPBACK_NAMES) | _own_names()
        else:
            self.names = ({bound} | LOOPBACK_NAMES) if is_loopback(host) else {bound}
        self.names |= {name.lower().strip("[]").rstrip(".") for name in allow_hosts}
        ip_rule = " or an IP address" if self.wildcard else ""
        self.host_rule = f"{', '.join(sorted(self.names))}{ip_rule}, port {self.port}"

    def host_allowed(self, header: str) -> bool:
        """Whether a request's Host header names this server (the rule in the module's docstring).
        A request without one (HTTP/1.0) is served: browsers always send it."""
        if not header:
            return True
        parts = split_host(header)
        if parts is None:
            return False
        name, port = parts
        if (80 if port is None else port) != self.port:
            return False
        return name in self.names or (self.wildcard and _is_ip(name))

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"

    def server_close(self) -> None:
        super().server_close()
        db = getattr(self, "db", None)  # unset when binding failed: make_server closes it then
        if db is not None:
            db.close()


def make_server(
    project: str | Path,
    run_id: str | None = None,
    host: str = default_of(ServeConfig, "host"),
    port: int = default_of(ServeConfig, "port"),
    quiet: bool = False,
    allow_hosts: tuple[str, ...] = (),
) -> Server:
    """A server over the project's database, bound but not yet serving (port 0: a free port). Call
    serve_forever() (in a thread, for tests), then shutdown() and server_close()."""
    from autointerp.judges.judge import names_only_function_tokens
    from autointerp.store import Browser

    db = Browser(project, run_id, ranks_last=names_only_function_tokens)
    try:
        return Server(db, host, port, quiet, allow_hosts)
    except OSError as e:
        db.close()
        if e.errno == errno.EADDRINUSE:
            raise AutointerpError(
                f"port {port} on {host or '0.0.0.0'} is already in use (another `autointerp serve` or another program)",
                "pass another --port, or --port 0 for any free one (the address is printed), or stop what holds it",
            ) from None
        fix = "pass another --port (or --port 0 for any free one)"
        if isinstance(e, socket.gaierror) or e.errno == errno.EADDRNOTAVAIL:
            fix = (
                "pass an address of this machine to --host: 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
            )
        raise AutointerpError(f"cannot listen on {host}:{port}: {e.strerror or e}", fix) from None


def serve_in_thread(server: Server) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="autointerp-serve", daemon=True)
    thread.start()
    return thread


# ------------------------------------------------------------------------------------- command line


def serve(project: str, run_id: str | None, cfg: ServeConfig) -> None:
    """Serve the project until Ctrl-C (`autointerp serve`)."""
    server = make_server(project, run_id, cfg.host, cfg.port, quiet=cfg.quiet, allow_hosts=cfg.allow_hosts)
    if not is_loopback(cfg.host):
        port = server.port
        print(
            f"warning: listening on {cfg.host or '0.0.0.0'}, not this machine only: anyone who can reach port {port} "
            f"can read {server.db.path} (labels, scores and corpus text), without a password. To keep it private, "
            f"serve on 127.0.0.1 (the default) and browse from elsewhere through `ssh -L {port}:127.0.0.1:{port} "
            "<this machine>`, or allow only trusted addresses to this port in a firewall.",
            file=sys.stderr,
            flush=True,
        )
    try:  # the announcement inside: a Ctrl-C right after it stops the server as cleanly
        print(
            f"serving {server.db.path} (run {server.db.default_run}) read-only at {server.url}\npress Ctrl-C to stop",
            flush=True,
        )
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()
