"""Screenshot of report cards, as a reader's browser renders them: headless Chromium opens a copy of
a run's HTML report with the sections above the cards left out, filtered by its own search box
(`?q=`), and the picture is cropped to what is drawn.

    python bench/report_cards.py project/reports/<run>.html 'query' reports/demo_report_cards.png [height]
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

import matplotlib.image
import numpy as np

WIDTH, HEIGHT = 900, 2400  # two columns of cards


def screenshot(report: Path, query: str, out: Path, height: int = HEIGHT) -> None:
    with tempfile.TemporaryDirectory() as profile:
        full, page = Path(profile) / "full.png", Path(profile) / "cards.html"
        html = re.sub(r'<section id="(?!features")[^"]*">.*?</section>', "", report.read_text(), flags=re.S)
        page.write_text(re.sub(r"<nav>.*?</nav>", "", html, flags=re.S))
        subprocess.run(
            [
                "chromium",
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--window-size={WIDTH},{HEIGHT}",
                f"--screenshot={full}",
                f"{page.as_uri()}?q={quote(query)}",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        pixels = matplotlib.image.imread(full)[..., :3]
    ink = np.flatnonzero((pixels.min(axis=2) < 0.9).any(axis=1))  # rows with anything drawn
    if not len(ink):
        sys.exit(f"nothing drawn for {report}")
    matplotlib.image.imsave(out, pixels[: min(ink[-1] + 20, height)])
    print(f"{out}: the cards of {report.name} that {query!r} finds")


if __name__ == "__main__":
    screenshot(Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), *map(int, sys.argv[4:5]))
