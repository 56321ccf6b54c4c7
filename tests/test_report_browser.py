"""The HTML report as a reader sees it: opened in headless Chromium with the network off.

Every equation is typeset (MathML laid out: fraction numerators above denominators, inline
fractions at a readable size), every image loads, nothing is requested from the network,
the console has no errors, and every link lands on an element. As a reader: each question's
heading shows its id (and topic), its answer is set off with the list of checks visible
beneath it, the long explanation and the evidence code are folded and open when clicked,
a link leads back to the summary; the summary table shows no raw Markdown; the page is at
most 30,000 px tall at 1280 px wide and nothing is wider than the viewport at 800 px.
Screenshots at 1280 and 800 px are saved to artifacts/.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import nbformat
import pytest

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PAGE_HEIGHT_LIMIT_PX = 30_000
WIDE, NARROW = 1280, 800


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
            page = _open(browser, report, WIDE, console_errors, requests)
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "report-top.png"))
            page.screenshot(path=str(ARTIFACTS / f"report-{WIDE}.png"))
            facts = page.evaluate(_FACTS_JS)
            facts["reader"] = page.evaluate(_READER_JS)
            facts["expanded"] = _expand_folds(page)
            first_answer = page.locator(".dls-answer").first
            if first_answer.count():
                first_answer.scroll_into_view_if_needed()
                page.screenshot(path=str(ARTIFACTS / f"report-{WIDE}-question.png"))
            page.close()
            narrow = _open(browser, report, NARROW, console_errors, requests)
            narrow.screenshot(path=str(ARTIFACTS / f"report-{NARROW}.png"))
            facts["narrow"] = narrow.evaluate(_OVERFLOW_JS)
            narrow.close()
        finally:
            browser.close()
    facts["n_plots"] = n_plots
    return facts, console_errors, requests


def _open(browser, report, width, console_errors, requests):
    context = browser.new_context(offline=True, viewport={"width": width, "height": 900})
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
    return page


def _expand_folds(page) -> dict:
    """Click the first folded explanation and the first folded code: both must open and
    show their content."""
    out = {}
    for kind in ("dls-detail", "dls-code"):
        summary = page.locator(f"details.{kind} > summary").first
        if not summary.count():
            out[kind] = None
            continue
        summary.click()
        out[kind] = summary.evaluate(
            "s => { const d = s.parentElement; const body = [...d.children].filter(c => c !== s);"
            " return d.open && body.some(c => c.getBoundingClientRect().height > 10); }")
    return out


_READER_JS = r"""
() => {
  const rect = (e) => e.getBoundingClientRect();
  const visible = (e) => rect(e).height > 0 && !e.closest('details:not([open])');
  const h3s = [...document.querySelectorAll('h3')];
  const heads = [...document.querySelectorAll('a[id^="q-"]')].map(a => {
    const h = h3s.find(x => a.compareDocumentPosition(x) & Node.DOCUMENT_POSITION_FOLLOWING);
    return h ? h.textContent.replace(/\u00b6/g, '').trim() : null;
  });
  const cells = [...document.querySelectorAll('.dls-table td')].map(td => td.textContent);
  const rawMarkdown = cells.filter(t => /\*\*|`/.test(t)).map(t => t.slice(0, 80));
  const checks = [...document.querySelectorAll('.dls-checks')];
  const inlineFractions = [...document.querySelectorAll('math:not([display="block"]) mfrac')];
  const small = inlineFractions.filter(f => {
    const text = f.closest('p, li, td') || f.parentElement;
    const base = parseFloat(getComputedStyle(text).fontSize);
    return [...f.children].some(c => parseFloat(getComputedStyle(c).fontSize) < 0.8 * base);
  }).map(f => f.closest('math').getAttribute('data-tex'));
  return {
    n_questions: heads.length, heads,
    n_answers: document.querySelectorAll('.dls-answer').length,
    n_checks: checks.length, hidden_checks: checks.filter(c => !visible(c)).length,
    n_back: document.querySelectorAll('.dls-back a[href^="#row-q-"]').length,
    n_folded_code: document.querySelectorAll('details.dls-code:not([open])').length,
    n_folded_detail: document.querySelectorAll('details.dls-detail:not([open])').length,
    rawMarkdown, n_inline_fractions: inlineFractions.length, small_fractions: small,
    height: document.documentElement.scrollHeight,
  };
}
"""

_OVERFLOW_JS = r"""
() => {
  const width = document.documentElement.clientWidth;
  const inScroller = (e) => {
    for (let p = e.parentElement; p; p = p.parentElement) {
      const o = getComputedStyle(p).overflowX;
      if (o === 'auto' || o === 'scroll' || o === 'hidden') return true;
    }
    return false;
  };
  const wide = [...document.body.querySelectorAll('*')].filter(e => {
    const r = e.getBoundingClientRect();
    return r.width > 0 && r.right > width + 1 && !inScroller(e)
           && !e.closest('details:not([open])');
  }).slice(0, 5)
    .map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right));
  return {width, scrollWidth: document.documentElement.scrollWidth, wide};
}
"""


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


@pytest.mark.slow
def test_each_question_reads_as_heading_answer_checks_and_folded_details(page_report):
    facts, _, _ = page_report
    reader = facts["reader"]
    n = reader["n_questions"]
    assert n >= 27, reader["heads"]
    bad_heads = [h for h in reader["heads"] if not h or not re.match(
        r"^[a-z]+\.\d+( \u00b7 \S.*)?$", h)]
    assert bad_heads == [], f"headings without their id (and topic): {bad_heads[:5]}"
    assert reader["n_answers"] == n, "not every question has its answer set off"
    assert reader["n_back"] == n, "not every question links back to the summary"
    assert reader["n_checks"] > 0 and reader["hidden_checks"] == 0, "checks lists are hidden"
    assert reader["n_folded_code"] >= n, "the evidence code is not folded"
    assert facts["expanded"]["dls-code"] is True, "folded code does not open when clicked"
    assert facts["expanded"]["dls-detail"] in (True, None), "folded details do not open"


@pytest.mark.slow
def test_summary_table_renders_markdown(page_report):
    facts, _, _ = page_report
    assert facts["reader"]["rawMarkdown"] == [], facts["reader"]["rawMarkdown"][:5]


@pytest.mark.slow
def test_inline_fractions_are_readable(page_report):
    facts, _, _ = page_report
    assert facts["reader"]["small_fractions"] == [], facts["reader"]["small_fractions"][:5]


@pytest.mark.slow
def test_page_height_and_no_horizontal_overflow(page_report):
    facts, _, _ = page_report
    assert facts["reader"]["height"] <= PAGE_HEIGHT_LIMIT_PX, \
        f"the page is {facts['reader']['height']} px tall at {WIDE} px"
    narrow = facts["narrow"]
    assert narrow["scrollWidth"] <= narrow["width"], f"wider than {NARROW} px: {narrow}"
    assert narrow["wide"] == [], narrow["wide"]
    for name in (f"report-{WIDE}.png", f"report-{NARROW}.png"):
        assert (ARTIFACTS / name).stat().st_size > 10_000, name
