"""The project's own files agree with each other, and the chapters' sources
follow the conventions a reader depends on (CONTRIBUTING.md): what can be
caught without building the book is caught here."""
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))
PAGES = sorted(p for p in ROOT.glob("*.md") if p.name not in ("README.md", "CONTRIBUTING.md"))
chapter = pytest.mark.parametrize("nb_path", CHAPTERS, ids=lambda p: p.stem[:2])


def _cells(nb_path, kind=None):
    cells = json.loads(nb_path.read_text())["cells"]
    return [c for c in cells if kind is None or c["cell_type"] == kind]


def _markdown_sources():
    """(where, text) of every markdown cell of every chapter and every page."""
    for nb_path in CHAPTERS:
        for i, cell in enumerate(_cells(nb_path)):
            if cell["cell_type"] == "markdown":
                yield f"{nb_path.name} cell {i}", "".join(cell["source"])
    for page in PAGES:
        yield page.name, page.read_text()


def _prose_lines(text):
    """(number, line) of lines outside code fences. A directive fence
    (```{note} ... ```) holds prose, so its lines are kept."""
    stack = []  # open fences: (marker, is_directive)
    for n, line in enumerate(text.splitlines()):
        stripped = line.strip()
        m = re.match(r"^(`{3,}|~{3,})(\{[^}]*\})?", stripped)
        if m and stack and not stack[-1][1] and stripped.rstrip("`~") == "" \
                and len(stripped) >= len(stack[-1][0]):
            stack.pop()             # end of a code block
            continue
        if stack and not stack[-1][1]:
            continue                # inside a code block
        if m and m.group(2):
            stack.append((m.group(1), True))
            continue
        if m and stripped.rstrip("`~") == "" and stack:
            stack.pop()             # end of a directive
            continue
        if m:
            stack.append((m.group(1), False))
            continue
        yield n, line


def _pyproject_requirements() -> set[str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = set(meta["dependencies"])
    for extra in meta["optional-dependencies"].values():
        reqs |= set(extra)
    return {r.replace(" ", "") for r in reqs}


def _environment_requirements() -> set[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    return {r.replace(" ", "") for r in pip if not r.startswith("-e")}


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    missing = _pyproject_requirements() - _environment_requirements()
    extra = _environment_requirements() - _pyproject_requirements()
    assert not missing and not extra, f"environment.yml lacks {missing}, adds {extra}"


def test_torch_is_pinned_to_the_cpu_build():
    assert "torch==2.13.0" in _pyproject_requirements()


def test_notebooks_are_committed_without_outputs():
    for nb_path in sorted((ROOT / "chapters").glob("*.ipynb")):
        nb = json.loads(nb_path.read_text())
        dirty = [i for i, c in enumerate(nb["cells"])
                 if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
        assert not dirty, f"{nb_path.name}: cells {dirty} carry outputs; strip them"


def test_every_chapter_is_in_the_table_of_contents():
    toc = (ROOT / "_toc.yml").read_text()
    for nb_path in sorted((ROOT / "chapters").glob("*.ipynb")):
        assert f"chapters/{nb_path.stem}" in toc, f"{nb_path.name} is not in _toc.yml"


def test_every_exercise_has_a_solution_and_a_check():
    for nb_path in sorted((ROOT / "chapters").glob("*.ipynb")):
        cells = json.loads(nb_path.read_text())["cells"]
        text = "\n".join("".join(c["source"]) for c in cells)
        labels = [line.split(":label:")[1].strip() for line in text.splitlines()
                  if line.startswith(":label:")]
        assert labels, f"{nb_path.name} has no exercises"
        for label in labels:
            assert f"{{solution-start}} {label}" in text, f"{nb_path.name}: {label} has no solution"
        assert "lb.exercises." in text, f"{nb_path.name}: no auto-checked exercise"


def test_cited_keys_exist_in_references_bib():
    bib = (ROOT / "references.bib").read_text()
    keys = set(re.findall(r"@\w+\{([^,]+),", bib))
    sources = [p.read_text() for p in [*CHAPTERS, *PAGES]]
    cited = {k.strip() for s in sources for group in re.findall(r"\{(?:foot)?cite[:a-z]*\}`([^`]+)`", s)
             for k in group.split(",")}
    assert cited and cited <= keys, f"cited but not in references.bib: {cited - keys}"


def _numbered_toc_chapters():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    return [c["file"] for part in toc["parts"] if part.get("numbered")
            for c in part["chapters"]]


def test_chapter_numbers_shown_equal_the_file_numbers():
    """Sphinx numbers chapters by their place in the numbered part of the toc;
    that number must be the NN of the file (titles, figures, equations and
    exercises all carry it). Fails while a chapter of the plan is missing."""
    files = _numbered_toc_chapters()
    assert files, "no numbered part in _toc.yml"
    shown = {f: i for i, f in enumerate(files, start=1)}
    wrong = {f: n for f, n in shown.items() if int(Path(f).name[:2]) != n}
    assert not wrong, ("numbers readers would see differ from the file numbers "
                       f"(file: shown number): {wrong}")


@chapter
def test_titles_carry_no_hand_made_numbers(nb_path):
    """'# Title': the toc numbers chapters and sections; a hand-made '# 7.'
    would be shown as '7. 7. Title'."""
    cells = _cells(nb_path, "markdown")
    title = "".join(cells[0]["source"]).splitlines()[0]
    assert re.match(r"^# [^\d\s]", title), f"title {title!r} should be '# Title'"
    for cell in cells:
        bad = re.findall(r"(?m)^#{1,6}\s+\d+(?:\.\d+)*\.?\s", "".join(cell["source"]))
        assert not bad, f"numbered heading {bad}"


@chapter
def test_objectives_then_threat_model(nb_path):
    """Every chapter opens with Objectives, then the Threat model it assumes."""
    opening = []
    for cell in _cells(nb_path):
        if cell["cell_type"] != "markdown":
            break
        opening.append("".join(cell["source"]))
    text = "\n".join(opening)
    objectives = text.find("{admonition} Objectives")
    threat = text.find("{admonition} Threat model")
    assert objectives >= 0, "no Objectives admonition before the first code cell"
    assert threat > objectives, "no Threat model admonition right after the Objectives"
    heading = re.search(r"(?m)^## ", text[objectives:])
    assert heading is None or objectives + heading.start() > threat, (
        "the Threat model must come before the first section")


def test_display_math_stands_on_its_own():
    """A `$$` block has a blank line before and after and never sits inside a
    paragraph: otherwise MyST pairs the dollars wrongly and prose is typeset
    as math (or TeX is shown raw)."""
    bad = []
    for where, text in _markdown_sources():
        lines = dict(_prose_lines(text))
        all_lines = text.splitlines()

        def blank(n):
            return n < 0 or n >= len(all_lines) or not all_lines[n].strip() or \
                all_lines[n].strip().startswith(("```", ":"))
        open_at = None
        for n in sorted(lines):
            stripped = lines[n].strip()
            count = stripped.count("$$")
            if not count:
                continue
            if open_at is None:
                if not stripped.startswith("$$"):
                    bad.append(f"{where} line {n + 1}: $$ inside a paragraph: {stripped[:50]}")
                    continue
                if not blank(n - 1):
                    bad.append(f"{where} line {n + 1}: no blank line before $$")
                if count >= 2:  # one-line block: $$ x $$ (label)
                    if not re.search(r"\$\$\s*(\([\w-]+\))?$", stripped):
                        bad.append(f"{where} line {n + 1}: text after $$: {stripped[-40:]}")
                    elif not blank(n + 1):
                        bad.append(f"{where} line {n + 1}: no blank line after $$")
                else:
                    open_at = n
            else:
                if count != 1 or not re.search(r"(^|\S\s*)\$\$\s*(\([\w-]+\))?$", stripped):
                    bad.append(f"{where} line {n + 1}: text after the closing $$: {stripped[-40:]}")
                elif not blank(n + 1):
                    bad.append(f"{where} line {n + 1}: no blank line after $$")
                open_at = None
        if open_at is not None:
            bad.append(f"{where} line {open_at + 1}: $$ never closed")
    assert not bad, f"{len(bad)} display-math blocks break the rule: {bad[:8]}"


def test_no_hand_numbered_references():
    """'section 2.5', 'Figure 3' or 'Exercise 13' go stale when anything moves:
    use {ref}, {numref}, {eq} (CONTRIBUTING.md)."""
    pattern = re.compile(r"(?i)\b(sections?|figures?|fig\.|equations?|eqs?\.|"
                         r"exercises?|tables?)\s+\(?\d+(?:\.\d+)*\b")
    bad = []
    for where, text in _markdown_sources():
        for n, line in _prose_lines(text):
            line = re.sub(r"`[^`]*`", "", line)
            bad += [f"{where} line {n + 1}: {m.group(0)!r}" for m in pattern.finditer(line)]
    assert not bad, f"hand-numbered references: {bad[:10]}"


@chapter
def test_every_solution_is_closed(nb_path):
    """A {solution-start} without its {solution-end} leaks the solution's cells
    (and their 'Correct!') below the collapsed dropdown."""
    markers = []
    for i, cell in enumerate(_cells(nb_path)):
        if cell["cell_type"] == "markdown":
            markers += [(i, m) for m in re.findall(
                r"\{(exercise-start|exercise-end|solution-start|solution-end)\}",
                "".join(cell["source"]))]
    expect_end = {"exercise-start": "exercise-end", "solution-start": "solution-end"}
    open_ = None
    for i, marker in markers:
        if open_ is None:
            assert marker in expect_end, f"cell {i}: {{{marker}}} without a start"
            open_ = (i, marker)
        else:
            assert marker == expect_end[open_[1]], (
                f"cell {open_[0]}: {{{open_[1]}}} is not closed before cell {i}'s {{{marker}}}")
            open_ = None
    assert open_ is None, f"cell {open_[0]}: {{{open_[1]}}} is never closed"


@chapter
def test_solution_code_sits_inside_its_solution(nb_path):
    """Code that asserts an exercise check is solution code: it must come after a
    {solution-start} and before its {solution-end}, or the book shows it."""
    inside, bad = False, []
    for i, cell in enumerate(_cells(nb_path)):
        src = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            for marker in re.findall(r"\{(solution-start|solution-end)\}", src):
                inside = marker == "solution-start"
        elif re.search(r"assert\s+(?:lb\.)?exercises\.(?:check|close)\(", src) and not inside:
            bad.append(i)
    assert not bad, f"cells {bad} check an exercise outside any solution dropdown"


@chapter
def test_labels_carry_the_chapter(nb_path):
    """Section, equation and figure labels name their chapter (sec-ch02-...),
    so labels of different chapters cannot collide."""
    nn = nb_path.name[:2]
    text = "\n".join("".join(c["source"]) for c in _cells(nb_path))
    labels = re.findall(r"(?m)^\((\w+-[\w-]+)\)=\s*$", text)
    labels += re.findall(r"\$\$\s*\(([\w-]+)\)\s*$", text, flags=re.M)
    for cell in _cells(nb_path, "code"):
        fig = cell.get("metadata", {}).get("mystnb", {}).get("figure", {})
        if fig.get("name"):
            labels.append(fig["name"])
            assert fig.get("caption"), f"figure {fig['name']} has no caption"
    bad = [lab for lab in labels if not re.match(rf"(sec|eq|fig|tab)-ch{nn}-[a-z0-9-]+$", lab)]
    assert not bad, f"labels should read sec|eq|fig|tab-ch{nn}-name: {bad}"


@chapter
def test_figures_follow_the_book_style(nb_path):
    """The setup cell calls lb.viz.book_style() (SVG, 10-pt fonts); no figure is
    wider than lb.viz.MAX_WIDTH inches or sets a font below lb.viz.MIN_FONT."""
    from leakbook.viz import MAX_WIDTH, MIN_FONT
    code = [("".join(c["source"])) for c in _cells(nb_path, "code")]
    assert "lb.viz.book_style()" in code[0], "the setup cell must call lb.viz.book_style()"
    bad = []
    for i, src in enumerate(code):
        for m in re.finditer(r"\b(?:fontsize|size)\s*=\s*(\d+(?:\.\d+)?)\b", src):
            if float(m.group(1)) < MIN_FONT:
                bad.append(f"code cell {i}: {m.group(0)}")
        for m in re.finditer(r"figsize\s*=\s*\(\s*(\d+(?:\.\d+)?)", src):
            if float(m.group(1)) > MAX_WIDTH:
                bad.append(f"code cell {i}: {m.group(0)}")
    assert not bad, f"figures break the style: {bad}"


@chapter
def test_chapters_read_nothing_outside_the_package_and_data(nb_path):
    """A chapter imports leakbook and reads data/*.json; never ../ or benchmarks/."""
    bad = [i for i, c in enumerate(_cells(nb_path, "code"))
           if re.search(r"\.\./|Path\(\s*[\"']\.\.[\"']\s*\)|\bbenchmarks\b|"
                        r"spec_from_file_location", "".join(c["source"]))]
    assert not bad, f"code cells {bad} read outside the package (move the code to leakbook)"


def _glossary_terms() -> set[str]:
    text = (ROOT / "glossary.md").read_text()
    block = text.split("```{glossary}", 1)[1].split("\n```", 1)[0]
    return {line.strip().lower() for line in block.splitlines()
            if line.strip() and not line.startswith((" ", ":"))}


def test_glossary_terms_used_are_defined():
    defined = _glossary_terms()
    assert {"copa", "ra", "identity b", "jennrich's algorithm", "fedsgd", "fedavg", "dlg",
            "idlg", "llg", "r-gap", "psnr", "ssim", "bn", "tv", "cp decomposition"} <= defined
    used = set()
    for _, text in _markdown_sources():
        for m in re.finditer(r"\{term\}`([^`]+)`", text):
            inner = m.group(1)
            target = re.search(r"<([^>]+)>$", inner)
            used.add((target.group(1) if target else inner).strip().lower())
    assert used, "no {term} links in the book"
    assert used <= defined, f"terms used but not in glossary.md: {sorted(used - defined)}"
