"""The built book works in a real browser, offline, and talks to no other host."""
from pathlib import Path
from urllib.parse import urlparse

import pytest

from conftest import ROOT, SITE

PAGES = sorted(str(p.relative_to(SITE)) for p in SITE.glob("chapters/*.html")) + [
    "intro.html", "api.html", "bibliography.html", "execution_times.html"]
SHOTS = ROOT / "_build" / "screenshots"


def visit(browser, url):
    """Open url; return the page, every requested URL and every console error."""
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    requests, errors = [], []
    page.on("request", lambda r: requests.append(r.url))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(url, wait_until="networkidle")
    return page, requests, errors


def local_only(requests, base):
    host = urlparse(base).netloc
    return [r for r in requests
            if urlparse(r).scheme not in ("data", "blob", "about") and urlparse(r).netloc != host]


@pytest.mark.parametrize("path", PAGES)
def test_page_is_offline_and_clean(browser, site_url, path):
    page, requests, errors = visit(browser, f"{site_url}/{path}")
    page.wait_for_timeout(500)
    assert not local_only(requests, site_url), f"requests left 127.0.0.1: {local_only(requests, site_url)}"
    assert not errors, f"console errors on {path}: {errors}"
    broken = page.evaluate("""() => [...document.images]
        .filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)""")
    assert not broken, f"images that did not load on {path}: {broken}"
    assert "Traceback" not in page.inner_text("main"), f"a traceback is shown on {path}"
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / (Path(path).stem + ".png")), full_page=False)
    page.close()


@pytest.mark.parametrize("path", [p for p in PAGES if p.startswith("chapters/")])
def test_math_renders_and_figures_show(browser, site_url, path):
    page, _, _ = visit(browser, f"{site_url}/{path}")
    page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise")
    page.evaluate("() => MathJax.startup.promise")
    assert page.locator("mjx-container").count() > 0, f"no rendered math on {path}"
    assert page.locator("main img").count() > 0, f"no figure on {path}"
    raw = page.evaluate("() => document.querySelector('main').innerText")
    assert "\\frac" not in raw, f"raw LaTeX left on {path}"
    page.close()


def test_widgets_render(browser, site_url):
    page, _, errors = visit(browser, f"{site_url}/chapters/01_what_the_server_sees.html")
    page.wait_for_selector(".widget-slider, .jupyter-widgets", timeout=15000)
    assert page.locator(".widget-slider, .widget-hslider").count() >= 2
    assert page.locator(".widget-dropdown").count() >= 1
    assert not errors
    page.close()


def test_search_finds_pages(browser, site_url):
    page, requests, errors = visit(browser, f"{site_url}/search.html?q=gradient")
    page.wait_for_selector("#search-results li, ul.search li", timeout=15000)
    assert page.locator("#search-results li, ul.search li").count() >= 2
    assert not local_only(requests, site_url) and not errors
    page.close()


def test_solutions_are_hidden_by_default(browser, site_url):
    page, _, _ = visit(browser, f"{site_url}/chapters/01_what_the_server_sees.html")
    solutions = page.locator(".solution")
    assert solutions.count() >= 3
    assert not solutions.first.locator(".cell").first.is_visible()
    page.close()
