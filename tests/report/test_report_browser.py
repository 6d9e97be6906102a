"""report.html in a real browser: Debian's Chromium driven by Playwright (its own browser
download is never used; `executable_path` points at the system Chromium that
scripts/setup.sh installs with apt). Skipped only when no Chromium is installed."""

from __future__ import annotations

import io
import os
import shutil

import numpy as np
import pytest

from tests.report.conftest import HOSTILE, hostile_summary, make_run_folder
from trimtab.report import write_report_for_run

SECTIONS = ("decision", "pareto", "candidates", "search", "scenario", "notes", "sensitivity", "layers",
            "calibration", "lint", "plan", "reproduce")
CHROMIUM = os.environ.get("TRIMTAB_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install chromium; scripts/setup.sh does it)"
)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # a dev dependency: a missing one is a broken set-up, not a skip
        raise AssertionError("playwright is missing: pip install -e '.[dev]'") from exc
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


class Watched:
    """A page with every console error, page error, dialog and non-local request recorded."""

    def __init__(self, browser, **context_options) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 900}, **context_options)
        self.page = self.context.new_page()
        self.page.set_default_timeout(15_000)
        self.errors, self.dialogs, self.requests = [], [], []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", self._dialog)
        self.page.on("request", lambda r: self.requests.append(r.url))

    def _dialog(self, dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def open(self, path) -> Watched:
        self.page.goto(path.as_uri(), wait_until="load")
        return self

    def remote_requests(self) -> list[str]:
        return [url for url in self.requests if not url.startswith(("file:", "data:"))]


@pytest.fixture
def report(tmp_path):
    return write_report_for_run(make_run_folder(tmp_path / "run"))


def _distinct_colours(png: bytes) -> int:
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3).astype(np.uint32)
    return len(np.unique(pixels[:, 0] << 16 | pixels[:, 1] << 8 | pixels[:, 2]))


def test_report_renders_in_chromium_without_errors(browser, report):
    watched = Watched(browser).open(report)
    page = watched.page
    for anchor in SECTIONS:
        assert page.locator(f"section#{anchor}").is_visible(), anchor
    assert page.locator("script").count() == 0
    for selector in ("svg.pareto-plot", "svg.sensitivity-chart"):
        box = page.locator(selector).bounding_box()
        assert box and box["width"] > 300 and box["height"] > 150, selector
    assert page.locator("svg.pareto-plot circle.point").count() == len(hostile_summary().candidates)
    assert page.locator("svg.pareto-plot circle.chosen").count() == 1
    assert page.locator("svg.sensitivity-chart rect.bar").count() == 15
    widths = page.locator("svg.sensitivity-chart rect.bar").evaluate_all("bars => bars.map(b => b.getBBox().width)")
    assert min(widths) > 0
    images = page.locator("#calibration img")
    assert images.count() == 2
    assert images.evaluate_all("imgs => imgs.every(i => i.complete && i.naturalWidth > 0)")
    assert watched.errors == [] and watched.dialogs == [] and watched.remote_requests() == []
    watched.context.close()


def test_hostile_names_show_as_text_even_with_the_content_security_policy_off(browser, report):
    # With the CSP bypassed an unescaped <script> would run: escaping alone must keep it text.
    watched = Watched(browser, bypass_csp=True).open(report)
    page = watched.page
    assert page.locator("table.candidates tr.chosen td").first.inner_text() == HOSTILE
    assert page.locator("table.candidates tr.chosen td").first.is_visible()
    assert page.locator("svg.pareto-plot text.label", has_text=HOSTILE).count() == 1
    assert page.locator("svg.sensitivity-chart text.label", has_text=HOSTILE).count() == 1
    assert page.locator("#lint td", has_text=HOSTILE).count() >= 2
    assert page.locator("#notes li", has_text=HOSTILE).is_visible()
    assert page.evaluate("document.querySelectorAll('script').length") == 0
    assert watched.dialogs == [] and watched.errors == []
    watched.context.close()


def test_screenshot_is_not_blank(browser, report, tmp_path):
    watched = Watched(browser).open(report)
    page = watched.page
    whole = page.screenshot(full_page=True, path=str(tmp_path / "report.png"))
    assert _distinct_colours(whole) > 200
    plot = page.locator("svg.pareto-plot").screenshot()
    chart = page.locator("svg.sensitivity-chart").screenshot()
    for png in (plot, chart):
        assert _distinct_colours(png) > 8
    from PIL import Image

    pixels = np.asarray(Image.open(io.BytesIO(plot)).convert("L"), dtype=np.float64)
    assert pixels.std() > 5.0  # not a uniform box: axes, points and labels are drawn
    watched.context.close()
