"""The built book's machinery works in a real browser: math, widgets, search.

What a reader sees on each page at both widths is checked in test_reader.py.
"""
import pytest

from test_reader import CHAPTERS, visit


@pytest.mark.parametrize("path", CHAPTERS)
def test_chapters_have_rendered_math_and_figures(browser, site_url, path):
    rec = visit(browser, site_url, path, "desktop")
    assert rec["mathItems"] > 0, "no rendered math"
    assert rec["figures"], "no figure"


def test_widgets_render(browser, site_url):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{site_url}/chapters/01_what_the_server_sees.html", wait_until="networkidle")
    page.wait_for_selector(".widget-slider, .jupyter-widgets", timeout=15000)
    assert page.locator(".widget-slider, .widget-hslider").count() >= 2
    assert page.locator(".widget-dropdown").count() >= 1
    assert not errors
    page.close()


def test_search_finds_pages(browser, site_url):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{site_url}/search.html?q=gradient", wait_until="networkidle")
    page.wait_for_selector("#search-results li, ul.search li", timeout=15000)
    assert page.locator("#search-results li, ul.search li").count() >= 2
    assert not errors
    page.close()
