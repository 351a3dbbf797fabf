"""docs/report.png: a screenshot of a real run's report, taken in headless Chromium (the tests' browser).

    zoo finetune efficientnet_lite0 ../shared/data/hymenoptera --policy feature-extract
    python bench/report_screenshot.py runs/efficientnet_lite0-feature-extract

The picture is the page's title bar, then the learning curves through the first row of the top-loss gallery, then
the calibration section, at 1280 pixels wide, in 192 colours (so that it stays near 100 KB).
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
BOX = "e => { const r = e.getBoundingClientRect(); return [r.top + window.scrollY, r.bottom + window.scrollY]; }"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="the run folder (its report.html is written by zoo finetune)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "report.png")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("no chromium executable: apt-get install chromium")
    page_file = (args.run / "report.html").resolve()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(page_file.as_uri(), wait_until="load")
        curves = page.eval_on_selector("#curves", BOX)
        gallery = page.eval_on_selector("#gallery-val", BOX)
        card = page.eval_on_selector("#gallery-val .card", "e => e.getBoundingClientRect().height")
        calibration = page.eval_on_selector("#calibration-val", BOX)
        full = Image.open(io.BytesIO(page.screenshot(full_page=True))).convert("RGB")
        browser.close()
    parts = [
        full.crop((0, 0, 1280, 110)),  # the title bar and the section links
        full.crop((0, int(curves[0]) - 12, 1280, int(gallery[0] + card) + 8)),
        full.crop((0, int(calibration[0]) - 40, 1280, int(calibration[1]) + 16)),  # with its heading
    ]
    canvas = Image.new("RGB", (1280, sum(p.height for p in parts)), "white")
    y = 0
    for part in parts:
        canvas.paste(part, (0, y))
        y += part.height
    canvas.quantize(colors=192, method=Image.Quantize.MEDIANCUT).save(args.out, optimize=True)
    print(f"{args.out}: {canvas.width}x{canvas.height}, {args.out.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
