"""The report and the comparison page in a real browser: headless Chromium from the distribution's packages
(the README's test command installs it), driven by Playwright, never a downloaded browser.

Each page is opened from a file:// path. A test fails on a JavaScript error or console error, on any request that
is not the file itself or a data: URI (every such request is also blocked), on a dialog (an injected
`alert`), on a blank page; and it reads the per-class table back from the DOM and compares it with summary.json.
Where no chromium executable is installed, the tests are skipped with that reason.
"""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from test_report import NASTY, fake_run

from conftest import tiny_run
from zoo.report.page import write_report
from zoo.report.runs import compare_runs

CHROMIUM = next((path for name in ("chromium", "chromium-browser") if (path := shutil.which(name))), None)
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,  # a browser start each: out of the inner loop, run by the full suite
    pytest.mark.skipif(
        CHROMIUM is None,
        reason="no chromium executable on PATH: install the distribution's package (apt-get install chromium), "
        "as the README's test command does",
    ),
]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -c constraints.txt -e '.[test]')"
    )
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM)
        yield chromium
        chromium.close()


class Opened:
    """A page opened from a file, and everything it did that a self-contained page must not do."""

    def __init__(self, browser, path):
        self.errors, self.requests, self.blocked, self.failed, self.dialogs = [], [], [], [], []
        self.path = path
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("requestfailed", lambda r: self.failed.append(r.url))
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.route("**/*", self._route)
        self.page.goto(path.resolve().as_uri(), wait_until="load")

    def _route(self, route):
        url = route.request.url
        if url.startswith("data:") or url == self.path.resolve().as_uri():
            route.continue_()
        else:
            self.blocked.append(url)
            route.abort()

    def check_clean(self) -> None:
        """No error, no request but the file and data: URIs, no failed request or image, no dialog, not blank."""
        assert self.errors == [], self.errors
        assert self.blocked == [] and self.failed == [], (self.blocked, self.failed)
        assert all(u.startswith(("file://", "data:")) for u in self.requests), self.requests
        assert self.dialogs == [], self.dialogs
        broken = self.page.eval_on_selector_all("img", "i => i.filter(i => !i.complete || !i.naturalWidth).length")
        assert broken == 0
        assert len(self.page.inner_text("body")) > 400
        shot = np.asarray(Image.open(io.BytesIO(self.page.screenshot(full_page=True))).convert("L"), dtype=np.float32)
        assert shot.shape[0] > 900 and shot.std() > 20  # drawn: not one colour

    def table(self, selector: str) -> list[list[str]]:
        return self.page.eval_on_selector_all(
            f"{selector} tbody tr", "rows => rows.map(r => Array.from(r.cells).map(c => c.textContent.trim()))"
        )

    def close(self) -> None:
        self.page.close()


def figures(row: dict, multi_label: bool = False) -> list[str]:
    """A per-class row of summary.json as the page must show it."""
    cells = [row["class"], *(f"{row[k]:.4f}" for k in ("precision", "recall", "f1")), str(row["support"])]
    if "ap" in row:
        cells.append(f"{row['ap']:.4f}" if row["ap"] is not None else "–")
    if multi_label:
        cells.append(f"{row['threshold']:.3f}")
    return cells


def test_report_in_chromium(tmp_path, browser):
    run = fake_run(tmp_path, classes=NASTY, test=True)
    (run / "model.json").write_text(json.dumps({
        "zoo_report": "export", "path": str(run / "model.onnx"), "exporter": "dynamo", "opset": 18, "passed": True,
        "images": "8 val images", "precision": "fp32", "provider": "cpu", "notes": [], "checks": [
            {"batch": 1, "output": "logits", "torch_shape": [1, 3], "onnx_shape": [1, 3], "max_abs_diff": 1e-6,
             "atol": 1e-4, "top1_agreement": 1.0, "failures": []}]}))  # fmt: skip
    page = Opened(browser, write_report(run, heatmaps=False).path)
    try:
        page.check_clean()
        for section in ("overview", "config", "data", "skipped", "curves", "figures-val", "figures-test", "exports"):
            assert page.page.is_visible(f"#{section}"), section
        for key in ("val", "test"):
            for part in ("per-class", "confusion", "pairs", "gallery", "calibration"):
                assert page.page.is_visible(f"#{part}-{key}"), f"{part}-{key}"
            assert page.page.eval_on_selector_all(f"#gallery-{key} img", "i => i.length") == 16
        assert page.page.eval_on_selector_all("#curves svg", "s => s.length") == 3
        # labels are text: the classes read back exactly, and the page holds its one script only
        summary = json.loads((run / "summary.json").read_text())
        assert page.table("#per-class-val") == [figures(r) for r in summary["per_class"]]
        assert page.table("#per-class-test") == [figures(r) for r in summary["test"]["per_class"]]
        assert [r[0] for r in page.table("#class-counts")] == list(NASTY)
        assert page.page.evaluate("document.scripts.length") == 1
        assert page.page.inner_text("#skipped + div").count(NASTY[0]) == 1
        # sortable: F1 descending, then ascending
        page.page.click("#per-class-val thead th:nth-child(4)")
        f1 = [float(r[3]) for r in page.table("#per-class-val")]
        assert f1 == sorted(f1, reverse=True)
        page.page.click("#per-class-val thead th:nth-child(4)")
        assert [float(r[3]) for r in page.table("#per-class-val")] == sorted(f1)
        page.check_clean()
    finally:
        page.close()


def test_multi_label_report_in_chromium(tmp_path, browser):
    run = fake_run(tmp_path, classes=NASTY, multi_label=True)
    page = Opened(browser, write_report(run, heatmaps=False).path)
    try:
        page.check_clean()
        summary = json.loads((run / "summary.json").read_text())
        assert page.table("#per-class-val") == [figures(r, multi_label=True) for r in summary["per_class"]]
        assert not page.page.query_selector("#confusion-val")
    finally:
        page.close()


def test_compare_page_in_chromium(tmp_path, browser):
    a = fake_run(tmp_path / "a", NASTY[1], classes=NASTY)
    b = fake_run(tmp_path / "b", "b", classes=NASTY, seed=4, epochs=6)
    page = Opened(browser, compare_runs([a, b], tmp_path / "compare.html"))
    try:
        page.check_clean()
        for section in ("runs", "curves", "per-class"):
            assert page.page.is_visible(f"#{section}")
        rows = page.table("#per-class-compare")
        per_run = [json.loads((r / "summary.json").read_text())["per_class"] for r in (a, b)]
        expected = [[c, *(f"{run[i][k]:.4f}" for run in per_run for k in ("precision", "recall", "f1"))]
                    for i, c in enumerate(NASTY)]  # fmt: skip
        assert rows == expected
        assert [r[0] for r in page.table("#headline")] == [NASTY[1], "b"]
        assert page.page.eval_on_selector_all("#curves polyline", "p => p.length") == 6  # val, train, accuracy each
    finally:
        page.close()


@pytest.mark.slow
def test_a_real_runs_report_in_chromium(tmp_path, browser):
    """The page `zoo finetune` wrote at the end of a run of the tiny backbone, heat maps included."""
    with tiny_run(tmp_path) as (result, _, _):
        page = Opened(browser, result.run_dir / "report.html")
        try:
            page.check_clean()
            assert page.table("#per-class-val") == [figures(r) for r in result.summary["per_class"]]
            assert page.page.eval_on_selector_all("#gallery-val img", "i => i.length") == 2 * 16  # photo + heat map
            assert "Grad-CAM" in page.page.inner_text("#overview")
        finally:
            page.close()
