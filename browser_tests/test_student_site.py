"""The book without solutions (`make book STUDENT=1`) shows none.

A real browser opens every chapter of `_build/student/_build/html` and finds
no solution block and no line of the chapter's solutions (reference answers,
written model answers, solution prose) in the page; the HTML files are also
read as text, and no source notebook or instructor guide is published.
"""
import html.parser
import sys
from pathlib import Path

import pytest

from conftest import ROOT, serve

sys.path.insert(0, str(ROOT))
from grading import course  # noqa: E402

STUDENT_SITE = ROOT / "_build" / "student" / "_build" / "html"


class _Text(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.parts = []

    def handle_data(self, data):
        self.parts.append(data)


def page_text(path: Path) -> str:
    parser = _Text()
    parser.feed(path.read_text(errors="replace"))
    return " ".join(" ".join(parser.parts).split())


@pytest.fixture(scope="module")
def student_url():
    if not (STUDENT_SITE / "index.html").exists():
        pytest.fail("no student site: run `make book STUDENT=1` first")
    yield from serve(STUDENT_SITE)


CHAPTERS = sorted(p.relative_to(STUDENT_SITE).as_posix()
                  for p in STUDENT_SITE.glob("chapters/*.html"))


@pytest.mark.parametrize("path", CHAPTERS)
def test_a_chapter_shows_its_exercises_and_no_solution(browser, student_url, path):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{student_url}/{path}", wait_until="networkidle")
    assert page.locator(".solution, .solution-start, .solution-end").count() == 0
    text = " ".join(page.inner_text("main").split())
    nb = course.read(course.CHAPTERS / (Path(path).stem + ".ipynb"))
    if course.layout(nb).converted:
        assert page.locator(".exercise").count() >= 3, "the exercises are still there"
    else:
        assert "being converted to the course kit" in text
    for line in course.fingerprints(nb):
        assert " ".join(line.split()) not in text, f"{path} shows {line!r}"
    page.close()


def test_no_page_of_the_site_holds_a_solution():
    assert not list(STUDENT_SITE.rglob("*.ipynb")), "source notebooks are copied"
    assert not (STUDENT_SITE / "instructor.html").exists(), "the answer key is shown"
    for path in course.chapter_paths():
        page = STUDENT_SITE / "chapters" / f"{path.stem}.html"
        if not page.exists():
            continue
        prints = [" ".join(line.split()) for line in course.fingerprints(course.read(path))]
        text = page_text(page)
        hits = [line for line in prints if line in text]
        assert prints and not hits, f"{page.name} holds {hits[:2]}"
