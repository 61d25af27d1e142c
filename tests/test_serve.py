"""`autointerp serve` at 65,536 features: paged pages answer in under a second, searches return exactly the
features they should, hostile corpus text and labels stay inert (in a real browser too), and the server
never writes the database."""

from __future__ import annotations

import hashlib
import html
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from autointerp.store import DB_NAME, RunRecord, Store
from autointerp.views.serve import CSP, make_server, serve_in_thread

RUN = "big"
EXPLAINER = "standin:judge-1"
OTHER = "local:small"
N = 65_536
WINDOW = 32
N_WORDS = 3000
SCRIPT_TOKEN = "<script>document.title='pwned-by-snippet'</script>"
IMG_TOKEN = '"><img src=x onerror="document.title=\'pwned-by-img\'">'
HOSTILE_LABEL = (
    "<img src=x onerror=\"document.title='pwned-by-label'\"> firearms & <b>guns</b> </td></tr><script>alert(1)</script>"
)
VOCAB = [f"Ġw{i}" for i in range(N_WORDS)] + ["Ġzebra", SCRIPT_TOKEN, IMG_TOKEN]
ZEBRA, SCRIPT_ID, IMG_ID = N_WORDS, N_WORDS + 1, N_WORDS + 2
ZEBRA_TOP = [5, 4242, 65_535]  # the only features with "zebra" in a top window
ZEBRA_QUANTILE_ONLY = 77  # has it in a quantile sample only: not a match
ZEBRA_SILENT = 9  # has it in a top window, but is silent there: not a match
HOSTILE = 3  # label and top windows hostile
TRIVIAL = list(range(7, N, 2003))  # labels naming only punctuation or function words


def synthetic(seed: int = 0) -> dict:
    """Every value the store is given, so tests compute expectations from it independently of the app."""
    rng = np.random.default_rng(seed)
    f = np.arange(N)
    dead = f % 50 == 49
    dense = f % 333 == 1
    labels = [f"concept {i % 1000} kind {i % 7}" for i in range(N)]
    for i in range(1, N, 4099):
        labels[i] = f"haystack needle {i}"
    labels[30_000] = "sharp needles"
    labels[60_000] = "a NEEDLE, upper case"
    labels[HOSTILE] = HOSTILE_LABEL
    trivial = np.zeros(N, bool)
    trivial[TRIVIAL] = True
    for k, i in enumerate(TRIVIAL):
        labels[i] = ['token "the"', '","', "commas"][k % 3]
    failed = (f % 97 == 96) & ~dead
    labelled = [i for i in range(N) if not dead[i]]
    scored = [i for i in labelled if not failed[i]]
    det = rng.uniform(0.3, 1.0, N)
    det[TRIVIAL] = 0.999  # near the top: a sort by score must still put them after every other label
    fuz = rng.uniform(0.2, 0.9, N)
    return dict(
        dead=dead,
        dense=dense,
        labels=labels,
        trivial=trivial,
        failed=failed,
        labelled=labelled,
        scored=scored,
        detection=det,
        detection_low=det - rng.uniform(0.02, 0.2, N),
        fuzzing=fuz,
        fuzzing_low=fuz - 0.1,
    )


TOP = 10  # top windows per feature per split
ROWS = 2 * TOP + 1  # and one quantile sample


def _examples(rng: np.random.Generator, data: dict) -> pa.Table:
    # per feature: TOP top windows in each of the explain and score splits, then one quantile sample
    kinds = np.array(["top"] * (2 * TOP) + ["quantile"])
    splits = np.array(["explain"] * TOP + ["score"] * TOP + ["explain"])
    ranks = np.array(list(range(TOP)) * 2 + [0], np.int32)
    n_rows = N * ROWS
    feature = np.repeat(np.arange(N, dtype=np.int32), ROWS)
    ids = rng.integers(0, N_WORDS, (n_rows, WINDOW), dtype=np.int32)
    acts = np.where(rng.random((n_rows, WINDOW)) < 0.3, rng.uniform(0.1, 3.0, (n_rows, WINDOW)), 0.0).astype(np.float32)
    peak = rng.integers(0, WINDOW, n_rows)
    acts[np.arange(n_rows), peak] = 4.0
    for feat in ZEBRA_TOP:
        ids[feat * ROWS + 1, 4] = ZEBRA  # explain top #1
        acts[feat * ROWS + 1, 4] = 2.5  # fires there: at least half the window's peak (4.0)
    silent = ZEBRA_SILENT * ROWS + 2
    ids[silent, (peak[silent] + 1) % WINDOW] = ZEBRA
    acts[silent, (peak[silent] + 1) % WINDOW] = 0.0
    ids[ZEBRA_QUANTILE_ONLY * ROWS + ROWS - 1, 2] = ZEBRA
    ids[HOSTILE * ROWS, 2], ids[HOSTILE * ROWS, 3] = SCRIPT_ID, IMG_ID
    peak[HOSTILE * ROWS] = 2
    acts[HOSTILE * ROWS] = 0.0
    acts[HOSTILE * ROWS, 2:4] = [4.0, 2.0]
    data["top_ids"] = ids.reshape(N, ROWS, WINDOW)[:, : 2 * TOP]  # what a token search must find
    data["top_acts"] = acts.reshape(N, ROWS, WINDOW)[:, : 2 * TOP]
    kind_i = np.tile(np.arange(ROWS), N)

    def lists(values: np.ndarray, typ) -> pa.Array:
        return pa.ListArray.from_arrays(
            pa.array(np.arange(0, values.size + 1, WINDOW, dtype=np.int32)), pa.array(values.ravel(), typ)
        )

    return pa.table(
        {
            "feature": pa.array(feature),
            "split": pa.array(splits[kind_i]),
            "kind": pa.array(kinds[kind_i]),
            "rank": pa.array(ranks[kind_i]),
            "quantile": pa.array(np.where(kind_i == ROWS - 1, 3, 0), pa.int32(), mask=kind_i != ROWS - 1),
            "context_id": pa.array(np.arange(n_rows, dtype=np.int64) % 1000),
            "doc_id": pa.array(np.zeros(n_rows, np.int64)),
            "doc_offset": pa.array(np.zeros(n_rows, np.int64)),
            "peak": pa.array(peak.astype(np.int32)),
            "max_activation": pa.array(acts.max(axis=1).astype(np.float64)),
            "token_ids": lists(ids, pa.int32()),
            "activations": lists(acts, pa.float32()),
        }
    )


def build_big_project(root: Path, data: dict) -> Path:
    """A run of 65,536 features through the Store's public write API, two explainers, two scorers, saturation."""
    rng = np.random.default_rng(1)
    density = np.where(data["dead"], 0.0, rng.uniform(1e-5, 0.05, N))
    features = pd.DataFrame(
        {
            "feature": np.arange(N),
            "n_firing": (density * 1e6).astype(np.int64),
            "density": density,
            "max_activation": np.where(data["dead"], 0.0, 4.0),
            "mean_activation": np.where(data["dead"], 0.0, 1.0),
            "dead": data["dead"],
            "dense": data["dense"],
            "histogram": [np.array([0, 3, 2, 1], np.int64)] * N,
        }
    )
    contexts = pd.DataFrame({"context_id": np.arange(1000), "split": ["explain", "score"] * 500})
    documents = pd.DataFrame({"doc_id": [0], "name": ["<b>doc</b>"]})
    run = RunRecord(
        run_id=RUN,
        model="tiny/<model>",
        hookpoint="blocks.1.hook_resid_post",
        hook_module="h.1",
        d_model=32,
        sae_source="./sae",
        sae_format="saelens",
        sae_architecture="topk",
        d_sae=N,
        corpus="docs.jsonl",
        n_tokens=10**6,
    )
    labelled, scored = data["labelled"], data["scored"]
    with Store(root) as store:
        store.write_gather(run, features, _examples(rng, data), contexts, documents, VOCAB)
        failed = data["failed"]
        store.write_explanations(
            RUN,
            EXPLAINER,
            pd.DataFrame(
                {
                    "feature": labelled,
                    "label": [None if failed[i] else data["labels"][i] for i in labelled],
                    "status": ["failed" if failed[i] else "ok" for i in labelled],
                    "error": ["parse error: <b>no label</b>" if failed[i] else None for i in labelled],
                    "raw": ["raw"] * len(labelled),
                    "prompt_hash": ["abc"] * len(labelled),
                    "n_snippets": [4] * len(labelled),
                }
            ),
        )
        store.write_explanations(
            RUN,
            OTHER,
            pd.DataFrame(
                {
                    "feature": range(1000),
                    "label": [f"other view {i}" for i in range(1000)],
                    "status": ["ok"] * 1000,
                    "error": [None] * 1000,
                    "raw": ["r"] * 1000,
                    "prompt_hash": ["x"] * 1000,
                    "n_snippets": [4] * 1000,
                }
            ),
        )
        s = np.array(scored)
        for scorer, metric in (("detection", "balanced_accuracy"), ("fuzzing", "balanced_accuracy")):
            value, low = data[scorer][s], data[f"{scorer}_low"][s]
            base = pd.DataFrame(
                {
                    "feature": s,
                    "judge": EXPLAINER,
                    "label_source": "true",
                    "label_feature": s,
                    "metric": metric,
                    "value": value,
                    "ci_low": low,
                    "ci_high": np.minimum(value + 0.1, 1.0),
                    "n": 20,
                    "method": "bootstrap",
                    "status": "ok",
                    "n_failed": 0,
                    "error": None,
                    "prompt_hash": "def",
                    "p_value": np.where(low > 0.5, 0.001, 0.3),
                }
            )
            store.write_scores(RUN, EXPLAINER, scorer, base)
            store.write_scores(
                RUN,
                EXPLAINER,
                scorer,
                base.assign(
                    label_source="shuffled", value=rng.uniform(0.3, 0.7, len(s)), ci_low=0.2, ci_high=0.8, p_value=0.5
                ),
                label_source="shuffled",
            )
        store.write_score_summaries(
            RUN,
            EXPLAINER,
            pd.DataFrame(
                {
                    "scorer": ["detection", "fuzzing"],
                    "judge": [EXPLAINER] * 2,
                    "metric": ["balanced_accuracy"] * 2,
                    "chance": [0.5, 0.5],
                    "n_features": [len(s)] * 2,
                    "n_ok": [len(s)] * 2,
                    "n_failed": [0, 0],
                    "median": [0.65, 0.55],
                    "q25": [0.5, 0.4],
                    "q75": [0.8, 0.7],
                    "n_confident": [1000, 500],
                    "shuffled_median": [0.5, 0.5],
                    "gap": [0.15, 0.05],
                    "gap_low": [0.14, 0.04],
                    "gap_high": [0.16, 0.06],
                    "verdict": ["labels beat the control", "<b>weak</b>"],
                }
            ),
        )
        ok = [i for i in labelled if not failed[i]]
        n = len(ok)
        category = np.minimum(np.arange(n), (np.sqrt(np.arange(n)) * 20).astype(int))
        distinct = np.maximum.accumulate(category) + 1
        store.write_saturation(
            RUN,
            EXPLAINER,
            "embedding",
            pd.DataFrame(
                {
                    "position": np.arange(1, n + 1),
                    "feature": ok,
                    "label": [data["labels"][i] for i in ok],
                    "category": category.astype(np.int32),
                    "code": None,
                    "status": "ok",
                    "error": None,
                    "raw": None,
                    "merge_rule": "cosine",
                }
            ),
            pd.DataFrame(
                {
                    "step": np.arange(1, n + 1),
                    "feature": ok,
                    "category": category,
                    "total": np.arange(1, n + 1),
                    "n_categories": distinct,
                    "its_ratio": distinct / np.arange(1, n + 1),
                    "its_rolling": 0.1,
                    "guest_ratio": 0.5,
                    "guest_saturated": False,
                    "coverage": 1 - 1 / np.sqrt(np.arange(1, n + 1)),
                    "p_new": 0.1,
                    "chao1": distinct * 1.2,
                    "chao1_low": distinct * 1.1,
                    "chao1_high": distinct * 1.4,
                    "expected_new_next_n": 5.0,
                    "merge_rule": "cosine",
                }
            ),
            {
                "merge_rule": "cosine",
                "params": {},
                "n_labels": n,
                "n_mapped": n,
                "n_failed": 0,
                "n_categories": int(distinct[-1]),
                "saturated": False,
                "verdict": None,
                "rarefaction": None,
                "bootstrap": None,
                "extrapolation": None,
            },
        )
    return root


@pytest.fixture(scope="module")
def data():
    return synthetic()


@pytest.fixture(scope="module")
def project(tmp_path_factory, data):
    started = time.perf_counter()
    root = build_big_project(tmp_path_factory.mktemp("serve"), data)
    print(f"\nbuilt {N:,} features in {time.perf_counter() - started:.1f}s")
    return root


@pytest.fixture(scope="module")
def server(project):
    with running(make_server(project, port=0, quiet=True)) as srv:
        yield srv


@contextmanager
def running(srv):
    """The server serving in a thread until the block ends, then shut down and closed."""
    thread = serve_in_thread(srv)
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def fetch(url: str, method: str = "GET") -> tuple[int, dict, str, float]:
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=30) as r:
            status, headers, body = r.status, dict(r.headers), r.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        status, headers, body = e.code, dict(e.headers), e.read().decode("utf-8")
    return status, headers, body, time.perf_counter() - started


def shown(page: str) -> list[int]:
    return [int(f) for f in re.findall(r"<tr class='row' data-feature='(\d+)'>", page)]


def total(page: str) -> int:
    return int(re.search(r"data-total='(\d+)'", page).group(1))


def test_first_page_label_search_and_token_search(server, data):
    # Their latency is measured by bench/serve_latency.py, not asserted here.
    for name, path in (("first page", ""), ("label search", "?q=needle"), ("token search", "?token=zebra")):
        status, headers, page, _ = fetch(server.url + path)
        assert status == 200, (name, page)
    status, headers, page, _ = fetch(server.url)
    assert headers["Content-Security-Policy"] == CSP and "default-src 'none'" in CSP and "script-src 'none'" in CSP
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert shown(page) == list(range(50)) and total(page) == N
    assert "<script" not in page  # the app sends no script at all


def test_label_search_shows_exactly_the_features_whose_label_contains_the_term(server, data):
    expected = [i for i in data["labelled"] if not data["failed"][i] and "needle" in data["labels"][i].lower()]
    assert 30_000 in expected and 60_000 in expected and len(expected) >= 17
    page = fetch(server.url + "?q=needle&per=500")[2]
    assert shown(page) == expected and total(page) == len(expected)
    page = fetch(server.url + "?q=NEEDLE&per=5&page=2")[2]  # case-insensitive, paged
    assert shown(page) == expected[5:10] and total(page) == len(expected)
    page = fetch(server.url + "?q=%25")[2]  # a LIKE wildcard is a literal character here
    assert shown(page) == [] and "no feature matches" in page


def test_token_search_shows_exactly_the_features_that_fire_on_the_token_in_a_top_window(server, data):
    page = fetch(server.url + "?token=zebra")[2]
    # Not 77 (a quantile sample only) nor 9 (silent on it): a token near the firing one is no match.
    assert shown(page) == ZEBRA_TOP and total(page) == len(ZEBRA_TOP)
    assert shown(fetch(server.url + "?token=no-such-token")[2]) == []
    assert shown(fetch(server.url + "?token=%C4%A0zebra")[2]) == ZEBRA_TOP  # the raw vocabulary entry, Ġzebra, too
    words = fetch(server.url + "?token=w7&per=500")[2]  # a common token: every feature firing on it in a top window
    acts = data["top_acts"]
    fires = (data["top_ids"] == 7) & (acts >= 0.5 * acts.max(axis=2, keepdims=True))
    expected = np.nonzero(fires.any(axis=(1, 2)))[0].tolist()
    assert 1000 < len(expected) < N and total(words) == len(expected) and shown(words) == expected[:500]
    # A token search combines with the other filters.
    assert shown(fetch(server.url + "?token=zebra&sort=feature&order=desc")[2]) == ZEBRA_TOP[::-1]


def test_paging_sorting_and_filters_match_the_data(server, data):
    assert shown(fetch(server.url + "?page=3&per=100")[2]) == list(range(200, 300))
    last = fetch(server.url + f"?page={N // 256}&per=256")[2]
    assert shown(last) == list(range(N - 256, N)) and "rel='next'" not in last and "page 256 of 256" in last
    assert shown(fetch(server.url + "?page=999999")[2]) == []  # past the end: an empty page, not an error
    scored = data["scored"]
    det = data["detection"]
    trivial = data["trivial"]
    top = sorted(scored, key=lambda i: (trivial[i], -det[i], i))[:20]
    assert shown(fetch(server.url + "?sort=score&scorer=detection&per=20")[2]) == top
    # Function-word labels come after all the others however high they score, flagged as such.
    page = fetch(server.url + "?sort=score&scorer=detection&min=0.997&per=500")[2]
    best = sorted((i for i in scored if det[i] >= 0.997), key=lambda i: (trivial[i], -det[i], i))
    assert shown(page) == best and sum(trivial[best]) >= 20 and page.count(">function words<") == sum(trivial[best])
    fuz = data["fuzzing"]
    assert (
        shown(fetch(server.url + "?sort=score&scorer=fuzzing&order=asc&per=20")[2])
        == sorted(scored, key=lambda i: (trivial[i], fuz[i], i))[:20]
    )
    page = fetch(server.url + "?scorer=detection&min=0.95&low=0.9&dense=0&per=500")[2]
    expected = [i for i in scored if det[i] >= 0.95 and data["detection_low"][i] >= 0.9 and not data["dense"][i]]
    assert total(page) == len(expected) and shown(page) == expected[:500]
    page = fetch(server.url + "?dead=1&per=500")[2]
    dead = [i for i in range(N) if data["dead"][i]]
    assert total(page) == len(dead) and shown(page) == dead[:500]
    page = fetch(server.url + "?explainer=local%3Asmall&q=other+view+99")[2]
    assert shown(page) == [99] + list(range(990, 1000))
    for bad in ("?min=abc", "?sort=drop+table", "?scorer=nope", "?explainer=nope", "?dead=maybe"):
        assert fetch(server.url + bad)[0] == 400, bad
    assert fetch(server.url + "feature/99999999")[0] == 404 and fetch(server.url + "nowhere")[0] == 404
    assert fetch(server.url, method="POST")[0] == 405


def test_feature_page_shows_every_explainer_scores_and_highlighted_windows(server, data):
    status, _, page, seconds = fetch(server.url + "feature/5")
    assert status == 200
    assert (
        "<h1>feature 5</h1>" in page
        and "data-explainer='standin:judge-1'" in page
        and "data-explainer='local:small'" in page
    )
    assert html.escape(data["labels"][5]) in page and "other view 5" in page
    det = data["detection"][5]
    assert f"{det:.3f} <span class='ci'>[{data['detection_low'][5]:.2f}, {min(det + 0.1, 1.0):.2f}]</span>" in page
    assert page.count("<div class='win' data-kind='top'>") == 2 * TOP and page.count("data-kind='quantile'") == 1
    assert page.count("class='tok act peak'") == ROWS and " zebra" in page  # the peak of each window, byte-level pieces
    assert "rel='prev' href='/feature/4?run=big'" in page and "rel='next' href='/feature/6?run=big'" in page
    failed = next(i for i in data["labelled"] if data["failed"][i])
    assert "parse error: &lt;b&gt;no label&lt;/b&gt;" in fetch(server.url + f"feature/{failed}")[2]


def test_hostile_labels_and_corpus_text_render_as_text(server):
    table = fetch(server.url)[2]
    assert html.escape(HOSTILE_LABEL) in table and "<img" not in table and "<b>guns" not in table
    page = fetch(server.url + f"feature/{HOSTILE}")[2]
    assert html.escape(SCRIPT_TOKEN) in page and html.escape(IMG_TOKEN) in page and html.escape(HOSTILE_LABEL) in page
    assert "<script" not in page and "<img" not in page and 'onerror="' not in page
    scores = fetch(server.url + "scores")[2]
    assert "&lt;b&gt;weak&lt;/b&gt;" in scores and "<b>weak" not in scores


def test_score_and_saturation_pages_draw_inline_svg(server, data):
    status, _, page, seconds = fetch(server.url + "scores")
    assert status == 200
    assert page.count("<svg") == 2 and "own labels" in page and "shuffled control" in page
    bars = [int(n) for n in re.findall(r"<title>true \[[^)]*\): (\d+)</title>", page.split("<svg")[1])]
    assert sum(bars) == len(data["scored"])  # every detection score of the own labels is in a bin
    status, _, page, seconds = fetch(server.url + "saturation")
    assert status == 200 and page.count("<svg") == 2 and "not saturated yet" in page
    drawn = int(re.search(r"\(([\d,]+) points drawn\)", page).group(1).replace(",", ""))
    assert 100 < drawn <= 602  # thinned in SQL, not one point per label


def test_a_read_only_server_never_writes_the_database(project):
    path = project / DB_NAME
    before = (
        path.stat().st_mtime_ns,
        hashlib.sha256(path.read_bytes()).hexdigest(),
        sorted(p.name for p in project.iterdir()),
    )
    srv = make_server(project, port=0, quiet=True)
    thread = serve_in_thread(srv)
    try:
        for p in (
            "",
            "?q=needle",
            "?token=zebra",
            "?sort=score&scorer=fuzzing",
            "feature/3",
            "feature/0",
            "scores",
            "saturation",
        ):
            assert fetch(srv.url + p)[0] == 200, p
        assert fetch(srv.url, method="POST")[0] == 405
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)
    after = (
        path.stat().st_mtime_ns,
        hashlib.sha256(path.read_bytes()).hexdigest(),
        sorted(p.name for p in project.iterdir()),
    )
    assert after == before  # same bytes, same mtime, no WAL or other file left beside it


def test_parser_flags_and_a_light_import():
    from autointerp.cli import build_parser, parse

    parser, commands = build_parser()
    p = commands["serve"].parser
    assert p.epilog.startswith("examples:\n") and p.description
    a = parse(["serve"])
    assert (a.project, a.run_id, a.host, a.port, a.quiet) == (None,) * 5 and a.func.__name__ == "cmd_serve"
    from autointerp.cli import _where
    from autointerp.config import ServeConfig
    from autointerp.flags import build

    assert _where(a) == ("project", None)
    assert build(ServeConfig, a) == ServeConfig("127.0.0.1", 8765, (), False)  # the defaults, written once
    a = parse(["serve", "--project", "p", "--run-id", "r", "--host", "0.0.0.0", "--port", "0", "--quiet"])
    assert (a.project, a.run_id, a.host, a.port, a.quiet) == ("p", "r", "0.0.0.0", 0, True)
    heavy = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, autointerp.views.serve; "
            "print(sorted(m for m in ('duckdb', 'pandas', 'torch', 'numpy') if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert heavy.stdout.strip() == "[]"


def test_a_foreign_host_header_is_refused(server):
    req = urllib.request.Request(server.url, headers={"Host": "evil.example:80"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=10)
    assert e.value.code == 421


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--enable-logging=stderr",
    "--v=0",
]


def _dump_dom(profile: Path, url: str) -> tuple[subprocess.CompletedProcess, float]:
    started = time.perf_counter()
    run = subprocess.run(
        [CHROMIUM, *BROWSER_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=90,
    )
    return run, time.perf_counter() - started


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install -y chromium)")
def test_pages_render_in_a_real_browser_with_hostile_text_inert(server, tmp_path, data, record_property):
    timings = {}
    for name, path in (
        ("first page", ""),
        ("label search", "?q=needle&per=500"),
        ("token search", "?token=zebra"),
        ("hostile feature", f"feature/{HOSTILE}"),
        ("scores", "scores"),
        ("saturation", "saturation"),
    ):
        run, seconds = _dump_dom(tmp_path / "profile", server.url + path)
        timings[name] = seconds
        assert run.returncode == 0, run.stderr
        console = [line for line in run.stderr.splitlines() if ":CONSOLE" in line]
        assert console == [], (name, console)  # no error, warning or CSP report from the page
        dom = run.stdout
        assert "<title>" in dom and "pwned" not in dom.split("</title>")[0], name
        assert "<img" not in dom and "<script" not in dom.lower().split("</head>")[1], (
            name
        )  # no element injected by the data
        if name == "first page":
            rows = re.findall(r'<tr class="row" data-feature="(\d+)">', dom)
            assert rows == [str(i) for i in range(50)]
            assert (
                html.escape(HOSTILE_LABEL, quote=False) in dom
            )  # shown as text: the DOM holds a text node, not an element
        elif name == "label search":
            expected = [
                str(i) for i in data["labelled"] if not data["failed"][i] and "needle" in data["labels"][i].lower()
            ]
            assert re.findall(r'<tr class="row" data-feature="(\d+)">', dom) == expected
        elif name == "token search":
            assert re.findall(r'<tr class="row" data-feature="(\d+)">', dom) == [str(i) for i in ZEBRA_TOP]
        elif name == "hostile feature":
            assert html.escape(SCRIPT_TOKEN, quote=False) in dom and html.escape(IMG_TOKEN, quote=False) in dom
            assert dom.count('class="tok act') >= 5
        else:
            assert dom.count("<svg") == 2
    record_property("chromium dump-dom seconds", {k: round(v, 2) for k, v in timings.items()})
    print("chromium --dump-dom (browser start included): " + ", ".join(f"{k} {v:.2f}s" for k, v in timings.items()))


def test_a_small_run_without_labels_scores_or_saturation_is_served(tmp_path):
    from test_report import build_project

    project = build_project(tmp_path / "p", with_labels=False)
    srv = make_server(project, port=0, quiet=True)
    thread = serve_in_thread(srv)
    try:
        status, _, page, _ = fetch(srv.url)
        assert status == 200 and shown(page) == list(range(6)) and page.count("no label") == 6
        assert (
            "no labels stored" in fetch(srv.url + "scores")[2]
            and "no saturation stored" in fetch(srv.url + "saturation")[2]
        )
        assert fetch(srv.url + "?sort=score")[0] == 400  # nothing to sort by
        page = fetch(srv.url + "feature/1")[2]
        assert "no labels stored" in page and "&lt;script&gt;document.title" in page and "<script" not in page
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)


def test_the_command_serves_until_interrupted(tmp_path):
    import signal

    from test_report import build_project

    project = build_project(tmp_path / "p", with_labels=False)
    code = "import sys; from autointerp.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "serve", "--project", str(project), "--port", "0", "--quiet"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ctrl_c_as_in_a_terminal,
    )
    try:
        first = proc.stdout.readline()
        url = re.search(r"at (http://\S+/)", first).group(1)
        assert "(run r1) read-only" in first and fetch(url)[0] == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0 and "stopped" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
    missing = subprocess.run(
        [sys.executable, "-c", code, "serve", "--project", str(tmp_path / "none")], capture_output=True, text=True
    )
    assert (
        missing.returncode == 2
        and "error: no database at" in missing.stderr
        and "Traceback" not in missing.stderr
        and not (tmp_path / "none").exists()
    )


def _ctrl_c_as_in_a_terminal() -> None:
    """In the child: a background job starts with SIGINT ignored, and children inherit that."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _status_for_host(server, host: str) -> int:
    """The status of a request to the server (through 127.0.0.1) that carries this Host header."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=10)
    try:
        conn.request("GET", "/favicon.ico", headers={"Host": host})  # 204 when the Host is accepted
        return conn.getresponse().status
    finally:
        conn.close()


def test_a_loopback_server_answers_only_its_loopback_names_on_its_port(server):
    port = server.server_address[1]
    for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", f"LOCALHOST.:{port}"):
        assert _status_for_host(server, host) == 204, host
    for host in (
        f"evil.example:{port}",
        f"127.0.0.1:{port + 1}",  # the right name on another port: a different origin
        "localhost",  # no port means 80
        f"192.0.2.7:{port}",  # an address of another machine
        f"localhost.evil.example:{port}",
        f"localhost:{port}:1",
        f"[::1:{port}",
    ):
        assert _status_for_host(server, host) == 421, host


def test_a_server_on_every_interface_answers_its_own_names_and_addresses_but_not_foreign_names(tmp_path):
    import socket

    from test_report import build_project

    srv = make_server(build_project(tmp_path / "p", with_labels=False), host="0.0.0.0", port=0, quiet=True)
    with running(srv):
        port = srv.server_address[1]
        for host in (f"localhost:{port}", f"{socket.gethostname()}:{port}", f"192.0.2.7:{port}", f"[::1]:{port}"):
            assert _status_for_host(srv, host) == 204, host
        for host in (f"evil.example:{port}", f"192.0.2.7:{port + 1}", f"{socket.gethostname()}.evil.example:{port}"):
            assert _status_for_host(srv, host) == 421, host


def test_serving_beyond_loopback_warns_and_loopback_does_not(tmp_path):
    import signal

    from test_report import build_project

    project = build_project(tmp_path / "p", with_labels=False)
    code = "import sys; from autointerp.cli import main; sys.exit(main(sys.argv[1:]))"
    stderr = {}
    for host in ("0.0.0.0", "127.0.0.1"):
        proc = subprocess.Popen(
            [sys.executable, "-c", code, "serve", "--project", str(project), "--host", host, "--port", "0", "--quiet"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_ctrl_c_as_in_a_terminal,
        )
        try:
            assert "read-only at http://" in proc.stdout.readline()
            proc.send_signal(signal.SIGINT)
            assert proc.wait(20) == 0
            stderr[host] = proc.stderr.read()
        finally:
            if proc.poll() is None:
                proc.kill()
    warned = stderr["0.0.0.0"]
    assert warned.startswith("warning: listening on 0.0.0.0") and "anyone who can reach port" in warned
    assert "127.0.0.1" in warned and "ssh -L" in warned  # how to restrict it
    assert "warning" not in stderr["127.0.0.1"]


def test_a_port_in_use_is_a_clear_error_naming_the_port_and_the_fix(tmp_path, capsys):
    import socket

    from test_report import build_project

    from autointerp.cli import main
    from autointerp.errors import AutointerpError

    project = build_project(tmp_path / "p", with_labels=False)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        with pytest.raises(AutointerpError) as e:
            make_server(project, port=port, quiet=True)
        assert f"port {port}" in e.value.problem and "in use" in e.value.problem
        assert "--port 0" in e.value.fix
        assert main(["serve", "--project", str(project), "--port", str(port), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert f"error: port {port} on 127.0.0.1 is already in use" in err and "--port" in err
        assert "Traceback" not in err and "AttributeError" not in err
        srv = make_server(project, port=0, quiet=True)  # the database was closed again: it opens
        srv.server_close()
    finally:
        holder.close()


def test_allowed_host_names_are_answered_and_others_still_refused(tmp_path):
    """--allow-host adds names (a reverse proxy's); it opens nothing else, and a malformed name is refused."""
    from test_report import build_project

    from autointerp.cli import parse
    from autointerp.config import ServeConfig
    from autointerp.flags import build

    project = build_project(tmp_path / "p", with_labels=False)
    cfg = build(ServeConfig, parse(["serve", "--port", "0", "--allow-host", "Atlas.Example.org., 10.0.0.5"]))
    assert cfg.allow_hosts == ("Atlas.Example.org.", "10.0.0.5")
    srv = make_server(project, host=cfg.host, port=cfg.port, quiet=True, allow_hosts=cfg.allow_hosts)
    with running(srv):
        port = srv.server_address[1]
        for host in (f"atlas.example.org:{port}", f"10.0.0.5:{port}", f"localhost:{port}"):
            assert _status_for_host(srv, host) == 204, host
        for host in (f"evil.example:{port}", f"atlas.example.org.evil.example:{port}", f"atlas.example.org:{port + 1}"):
            assert _status_for_host(srv, host) == 421, host
    for bad in ("*", "http://atlas.example.org", "atlas.example.org:8080", "a b"):
        done = subprocess.run(
            [sys.executable, "-m", "autointerp.cli", "serve", "--project", str(project), "--allow-host", bad],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2 and "is not a host name" in done.stderr and "Traceback" not in done.stderr, bad


def test_the_feature_page_says_what_coherence_makes_of_an_untrusted_label():
    from autointerp.views.serve import verdict_html

    def rows(detection_p, coherence_p=None):
        row = lambda scorer, p: ("ex", scorer, "true", "m", 0.6, 0.4, 0.8, p, 20, "ok", "j", None)  # noqa: E731
        out = {("ex", "detection"): row("detection", detection_p)}
        return out | ({("ex", "coherence"): row("coherence", coherence_p)} if coherence_p is not None else {})

    assert "label poor, feature interpretable" in verdict_html(rows(0.3, 0.001), "ex")
    assert "feature not interpretable?" in verdict_html(rows(0.3, 0.4), "ex")
    assert verdict_html(rows(0.001, 0.4), "ex") == ""  # a trusted label needs no verdict
    assert verdict_html(rows(0.3), "ex") == ""  # no coherence score, no verdict
    intruder = rows(0.3, 0.4) | {
        ("ex", "intruder"): ("ex", "intruder", "true", "m", 0.9, 0.5, 1, 1e-4, 8, "ok", "j", None)
    }
    assert "label poor, feature interpretable" in verdict_html(intruder, "ex")  # the intruder test found it
