"""What a reader sees, on every page, at a desktop's 1280 px and a phone's 390 px.

Each page is opened once per width (``visit``): the page is typeset, measured
by ``audit.js``, photographed into ``_build/screenshots/`` and then clicked
(the chapter drawer, a solution). The tests below judge those records, so one
failing check names the page, the width and what is wrong.
"""
import json
import re
from pathlib import Path
from urllib.parse import urlparse

import pytest

from conftest import SHOTS, WIDTHS, book_pages

PAGES = [p for p in book_pages() if p != "index.html"]
CHAPTERS = [p for p in PAGES if p.startswith("chapters/")]
AUDIT = (Path(__file__).with_name("audit.js")).read_text()
MIN_TEXT_PX = 9.0
_RECORDS: dict = {}


def _visible_chapter_links(page) -> int:
    return page.evaluate("""() => [...document.querySelectorAll(
            '#pst-primary-sidebar a[href], .bd-sidebar-primary a[href], dialog a[href]')]
        .filter(a => a.href.includes('/chapters/') && !a.href.includes('#'))
        .filter(a => { const r = a.getBoundingClientRect();
                       return r.width > 0 && r.height > 0 && r.left >= 0 &&
                              r.right <= innerWidth + 1 && r.top >= 0 && r.top < innerHeight &&
                              getComputedStyle(a).visibility !== 'hidden'; }).length""")


def _sidebar_shown(page) -> bool:
    return page.evaluate("""() => { const s = document.querySelector('#pst-primary-sidebar');
        if (!s) return false; const r = s.getBoundingClientRect();
        return r.width > 50 && r.right > 0 && r.left < innerWidth &&
               getComputedStyle(s).visibility !== 'hidden'; }""")


def _click_visible(page, selector) -> bool:
    for handle in page.query_selector_all(selector):
        if handle.is_visible():
            handle.click()
            page.wait_for_timeout(400)
            return True
    return False


def visit(browser, site_url, path, width):
    """Open path at one width once per session; return its record."""
    key = (path, width)
    if key in _RECORDS:
        return _RECORDS[key]
    w, h = WIDTHS[width]
    page = browser.new_page(viewport={"width": w, "height": h})
    requests, errors = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{site_url}/{path}", wait_until="networkidle")
    if page.evaluate("() => !!(window.MathJax && MathJax.startup)"):
        page.wait_for_function("() => MathJax.startup.promise")
        page.evaluate("() => MathJax.startup.promise")
    page.wait_for_timeout(200)
    rec = page.evaluate(AUDIT)
    rec["broken_images"] = page.evaluate("""() => [...document.images]
        .filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src.slice(-60))""")
    rec["traceback"] = "Traceback" in page.inner_text("main")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{Path(path).stem}-{w}.png"))
    # interactions, after the measurements
    rec["sidebar_before"] = _sidebar_shown(page)
    rec["links_before"] = _visible_chapter_links(page)
    rec["toggle_found"] = _click_visible(page, "button.primary-toggle, label.primary-toggle")
    rec["sidebar_after"] = _sidebar_shown(page)
    rec["links_after"] = _visible_chapter_links(page)
    page.keyboard.press("Escape")
    page.wait_for_timeout(200)
    if rec["solutions"]:
        page.reload(wait_until="networkidle")
        title = page.locator(".solution .admonition-title").first
        title.scroll_into_view_if_needed()
        title.click()
        page.wait_for_timeout(400)
        rec["solution_opens"] = page.evaluate("""() => { const s = document.querySelector('.solution');
            return [...s.children].some(c => !c.matches('.admonition-title') &&
                c.getClientRects().length > 0 && c.getBoundingClientRect().height > 2); }""")
    host = urlparse(site_url).netloc
    rec["foreign"] = [r for r in requests if urlparse(r).scheme not in ("data", "blob", "about")
                      and urlparse(r).netloc != host]
    rec["errors"] = errors
    page.close()
    _RECORDS[key] = rec
    return rec


def chapter_number(path: str) -> int:
    return int(re.match(r"chapters/(\d\d)_", path).group(1))


both = pytest.mark.parametrize("width", list(WIDTHS))
every_page = pytest.mark.parametrize("path", PAGES)


@every_page
@both
def test_page_is_offline_and_clean(browser, site_url, path, width):
    rec = visit(browser, site_url, path, width)
    assert not rec["foreign"], f"requests left 127.0.0.1: {rec['foreign'][:3]}"
    assert not rec["errors"], f"console errors: {rec['errors'][:3]}"
    assert not rec["broken_images"], f"images that did not load: {rec['broken_images']}"
    assert not rec["traceback"], "a traceback is shown"


@every_page
@both
def test_no_tex_or_dollar_left_in_prose(browser, site_url, path, width):
    rec = visit(browser, site_url, path, width)
    assert not rec["texLeft"], f"raw TeX or $ in the text: {rec['texLeft']}"


@every_page
@both
def test_no_math_swallowed_prose_and_no_math_errors(browser, site_url, path, width):
    rec = visit(browser, site_url, path, width)
    assert not rec["mathErrors"], f"MathJax errors: {rec['mathErrors']}"
    assert not rec["swallowed"], f"math that swallowed prose: {rec['swallowed']}"


@every_page
@both
def test_no_raw_myst_markup(browser, site_url, path, width):
    rec = visit(browser, site_url, path, width)
    assert not rec["rawRoles"], f"raw MyST roles or directives: {rec['rawRoles']}"


@every_page
def test_no_stray_reprs(browser, site_url, path):
    rec = visit(browser, site_url, path, "desktop")
    assert not rec["strays"], f"reprs of Python objects in the outputs: {rec['strays']}"


@every_page
@both
def test_solutions_hidden_until_opened(browser, site_url, path, width):
    rec = visit(browser, site_url, path, width)
    assert not rec["shownSolutions"], f"solutions open before a click: {rec['shownSolutions']}"
    assert not rec["leaked"], f"solution cells outside their dropdown: {rec['leaked']}"
    if rec["solutions"]:
        assert rec["solution_opens"], "clicking a solution's title does not open it"


@every_page
@both
def test_nothing_wider_than_the_column(browser, site_url, path, width):
    rec = visit(browser, site_url, path, width)
    assert not rec["wide"], (f"{len(rec['wide'])} blocks wider than the "
                             f"{rec['column']}px column: " + json.dumps(rec["wide"][:6]))


@every_page
@both
def test_page_no_wider_than_the_viewport(browser, site_url, path, width):
    rec = visit(browser, site_url, path, width)
    assert rec["page"]["scroll"] <= rec["page"]["viewport"], rec["page"]


@every_page
@both
def test_figure_text_at_least_9px(browser, site_url, path, width):
    rec = visit(browser, site_url, path, width)
    raster = [f["src"] for f in rec["figures"] if f["kind"] != "svg"]
    assert not raster, (f"raster figures, whose text cannot be measured (call "
                        f"lb.viz.book_style() to draw SVG): {raster[:4]}")
    unreadable = [f for f in rec["figures"] if f["texts"] == 0 and f.get("glyphPaths")]
    assert not unreadable, f"text drawn as paths (svg.fonttype must be 'none'): {unreadable[:2]}"
    small = [f"{f['src']}: {f['minPx']:.1f}px '{f['smallest']}' at {f['rendered']}px wide"
             for f in rec["figures"] if f["minPx"] is not None and f["minPx"] < MIN_TEXT_PX]
    assert not small, f"figure text below {MIN_TEXT_PX}px: {small[:6]}"


@every_page
def test_chapter_drawer_opens_on_a_phone(browser, site_url, path):
    rec = visit(browser, site_url, path, "phone")
    assert rec["toggle_found"], "no visible button opens the chapter list"
    assert rec["links_after"] >= 5, (
        f"after the click only {rec['links_after']} chapter links are on screen")


@every_page
def test_sidebar_button_works_on_a_desktop(browser, site_url, path):
    rec = visit(browser, site_url, path, "desktop")
    assert rec["toggle_found"], "no visible sidebar button"
    assert rec["sidebar_before"] != rec["sidebar_after"], "the sidebar button does nothing"


@every_page
def test_one_search_box_no_second_header_and_the_footer(browser, site_url, path):
    rec = visit(browser, site_url, path, "desktop")
    assert rec["headerHeight"] == 0, f"a second header bar ({rec['headerHeight']}px)"
    assert rec["searchBoxes"] <= 1, f"{rec['searchBoxes']} search boxes"
    assert "Runs offline on a CPU" in rec["footer"], f"footer: {rec['footer'][:120]!r}"


@pytest.mark.parametrize("path", CHAPTERS)
def test_chapter_numbers_follow_the_file_name(browser, site_url, path):
    rec = visit(browser, site_url, path, "desktop")
    n = chapter_number(path)
    assert re.match(rf"{n}\. \D", rec["h1"]), f"title reads {rec['h1']!r}, expected '{n}. ...'"
    bad = [e for e in rec["exercises"] if not re.match(rf"Exercise {n}\.\d+\b", e)]
    assert not bad, f"exercises not numbered {n}.k: {bad[:3]}"
    if rec["exercises"]:
        assert rec["exercises"][0].startswith(f"Exercise {n}.1"), rec["exercises"][0]
    bad = [c for c in rec["captions"] if not re.match(rf"Fig\. {n}\.\d+", c)]
    assert not bad, f"figure numbers not {n}.k: {bad[:3]}"
    bad = [e for e in rec["eqnos"] if not re.match(rf"\({n}\.\d+\)", e)]
    assert not bad, f"equation numbers not ({n}.k): {bad[:3]}"
