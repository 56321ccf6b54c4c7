"""The HTML report as a reader sees it: opened in headless Chromium with the network off.

Every equation is typeset (MathML laid out: fraction numerators above denominators), every
image loads, nothing is requested from the network, the console has no errors, and every
table-of-contents link lands on an element. A screenshot is saved to artifacts/.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def page_report(executed_report):
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install -e '.[dev]')"
    )
    browser_path = find_browser()
    if browser_path is None:
        pytest.skip("no Chromium found: install Debian's 'chromium' package "
                    "(.ci/run does) to run the browser test")
    report, _ = executed_report
    executed = nbformat.read(report.notebook, as_version=4)
    n_plots = sum("image/png" in o.get("data", {}) for c in executed.cells
                  for o in c.get("outputs", []))
    console_errors: list[str] = []
    requests: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=browser_path,
            args=["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update",
                  "--disable-sync"],
        )
        try:
            context = browser.new_context(offline=True, viewport={"width": 1200, "height": 900})
            page = context.new_page()
            page.on("console", lambda m: m.type == "error" and console_errors.append(m.text))
            page.on("pageerror", lambda e: console_errors.append(str(e)))

            def record(route):
                requests.append(route.request.url)
                if route.request.url.startswith(("file:", "data:")):
                    route.continue_()
                else:
                    route.abort()

            page.route("**/*", record)
            page.goto(report.html.resolve().as_uri(), wait_until="load")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "report-top.png"))
            facts = page.evaluate(_FACTS_JS)
        finally:
            browser.close()
    facts["n_plots"] = n_plots
    return facts, console_errors, requests


_FACTS_JS = r"""
() => {
  const rect = (e) => e.getBoundingClientRect();
  const maths = [...document.querySelectorAll('math')];
  const unlaid = maths.filter(m => rect(m).width === 0 || rect(m).height === 0)
                      .map(m => m.getAttribute('data-tex'));
  const badFractions = [...document.querySelectorAll('mfrac')].filter(f => {
      const [num, den] = f.children;
      return !(num && den && rect(num).bottom <= rect(den).top + 1);
  }).map(f => f.closest('math').getAttribute('data-tex'));
  const images = [...document.images];
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0))
                       .map(i => i.src.slice(0, 60));
  const links = [...document.querySelectorAll('a[href^="#"]')].map(a => a.getAttribute('href'));
  const dangling = links.filter(h => !document.getElementById(decodeURIComponent(h.slice(1))));
  // TeX left in prose (outside code and outside MathML) means an unconverted formula
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const rawTex = [];
  while (walker.nextNode()) {
    const node = walker.currentNode;
    if (node.parentElement.closest('pre, code, math, script, style, .jp-OutputArea')) continue;
    if (/\$[^$\s][^$]*\$|\\(frac|mathbf|boldsymbol|sum|left|right)\b/.test(node.textContent))
      rawTex.push(node.textContent.trim().slice(0, 80));
  }
  const n_fractions = document.querySelectorAll('mfrac').length;
  return {n_math: maths.length, unlaid, badFractions, n_fractions,
          n_images: images.length, broken, n_links: links.length, dangling, rawTex};
}
"""


@pytest.mark.slow
def test_equations_are_typeset(page_report):
    facts, _, _ = page_report
    assert facts["n_math"] > 20 and facts["n_fractions"] > 5
    assert facts["unlaid"] == [], f"equations with no layout: {facts['unlaid'][:5]}"
    assert facts["badFractions"] == [], f"fractions not stacked: {facts['badFractions'][:5]}"
    assert facts["rawTex"] == [], f"TeX left unconverted in the text: {facts['rawTex'][:5]}"


@pytest.mark.slow
def test_images_load_and_nothing_reaches_the_network(page_report):
    facts, _, requests = page_report
    assert facts["n_images"] == facts["n_plots"] > 0, "not every plot became an image"
    assert facts["broken"] == [], facts["broken"]
    remote = [u for u in requests if not u.startswith(("file:", "data:"))]
    assert remote == [], f"the page asked the network for {remote[:5]}"


@pytest.mark.slow
def test_no_console_errors_and_links_resolve(page_report):
    facts, console_errors, _ = page_report
    assert console_errors == [], console_errors[:5]
    assert facts["n_links"] > 3 and facts["dangling"] == [], facts["dangling"]
    assert (ARTIFACTS / "report-top.png").stat().st_size > 10_000
