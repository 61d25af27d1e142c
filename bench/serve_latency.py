"""Latency of `autointerp serve` on a store of 65,536 features (the synthetic store of tests/test_serve.py,
written through the store's own API): the first page, a label search, a token search and a feature page,
cold and warm (median of 5), through HTTP; and, when Debian's chromium is installed, the time to a
rendered DOM (browser start included).

    python bench/serve_latency.py          # writes reports/serve_latency.{json,md}
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from test_serve import N, build_big_project, fetch, synthetic  # noqa: E402

from autointerp.views.serve import make_server, serve_in_thread  # noqa: E402

PAGES = {
    "first page": "",
    "label search": "?q=needle",
    "token search": "?token=zebra",
    "feature page": "feature/5",
    "saturation": "saturation",
}


def main() -> None:
    tmp = Path(tempfile.mkdtemp())
    t = time.perf_counter()
    project = build_big_project(tmp, synthetic())
    built = time.perf_counter() - t
    srv = make_server(project, port=0, quiet=True)
    thread = serve_in_thread(srv)
    rows = {}
    try:
        for name, path in PAGES.items():
            cold = fetch(srv.url + path)[3]
            warm = statistics.median(fetch(srv.url + path)[3] for _ in range(5))
            rows[name] = {"cold_ms": round(cold * 1000, 1), "warm_ms": round(warm * 1000, 1)}
        chromium = shutil.which("chromium")
        if chromium:
            for name in ("first page", "label search"):
                t = time.perf_counter()
                subprocess.run(
                    [
                        chromium,
                        "--headless",
                        "--no-sandbox",
                        f"--user-data-dir={tmp / 'profile'}",
                        "--dump-dom",
                        srv.url + PAGES[name],
                    ],
                    capture_output=True,
                    timeout=60,
                    check=True,
                )
                rows[name]["chromium_dump_dom_s"] = round(time.perf_counter() - t, 2)
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(5)
    out = {"features": N, "build_seconds": round(built, 1), "pages": rows}
    (ROOT / "reports").mkdir(exist_ok=True)
    (ROOT / "reports" / "serve_latency.json").write_text(json.dumps(out, indent=2))
    lines = [
        f"# autointerp serve at {N:,} features (stdlib HTTP, read-only DuckDB)",
        "",
        "| page | cold (ms) | warm median of 5 (ms) | chromium --dump-dom, start included (s) |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {k} | {v['cold_ms']} | {v['warm_ms']} | {v.get('chromium_dump_dom_s', '—')} |" for k, v in rows.items()
    ]
    (ROOT / "reports" / "serve_latency.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
