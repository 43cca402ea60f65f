"""Chapters -> an nbgrader course: source and release notebooks, student copies.

For a converted chapter (see ``notebook.py``) the nbgrader *source* notebook is
the chapter's setup cell (its first code cell) and its exercise section
without the ``ex-solution`` cells; answers carry BEGIN/END SOLUTION markers
around each function body, each coded exercise gets a hidden-test cell worth
its points, each written answer is a manually graded cell.
``nbgrader generate_assignment`` turns it into the *release*; a student copy is
the chapter with its exercise section replaced by the release's cells.

A chapter whose exercises are not yet converted (``PENDING``) gets a student
copy without its exercise section at all: nothing between its first and its
last exercise directive survives.
"""
from __future__ import annotations

import ast
import copy
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell

from leakbook.exercises import SALT_VARIABLE

from .notebook import DIRECTIVE, Layout, check_call, has_directive, layout

ROOT = Path(__file__).resolve().parents[1]
CHAPTERS = ROOT / "chapters"
POINTS = ROOT / "grading" / "exercises.toml"
NBGRADER_CONFIG = """\
# Written by `python -m grading`; edit grading/course.py instead.
c = get_config()
c.CourseDirectory.course_id = "leakbook"
c.CourseDirectory.root = {root!r}
c.ClearSolutions.code_stub = {{
    "python": "# YOUR CODE HERE\\nraise NotImplementedError()"}}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
c.Execute.timeout = 300
c.Execute.interrupt_on_timeout = True
c.Execute.extra_arguments = []
c.GenerateFeedback.preprocessors = [
    "nbgrader.preprocessors.GetGrades",
    "nbconvert.preprocessors.CSSHTMLHeaderPreprocessor",
    "nbgrader.preprocessors.ClearHiddenTests",
]
c.ClearHiddenTests.enforce_metadata = False
"""


def chapter_paths() -> list[Path]:
    return sorted(CHAPTERS.glob("[0-9][0-9]_*.ipynb"))


def assignment_of(path: Path) -> str:
    """The nbgrader assignment id of a chapter: ``ch01`` for 01_*.ipynb."""
    return f"ch{path.name[:2]}"


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def points() -> dict[str, dict]:
    """grading/exercises.toml: points, minutes and difficulty per exercise."""
    return tomllib.loads(POINTS.read_text())


def setup_index(nb) -> int:
    """The chapter's setup cell: its first code cell (CONTRIBUTING.md)."""
    return next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")


def marked_answer(src: str) -> str:
    """Answer code with ### BEGIN/END SOLUTION around every function body
    (after its docstring), so nbgrader keeps signatures and docstrings."""
    lines = src.split("\n")
    funcs = [n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef)]
    for fn in reversed(funcs):
        body = fn.body
        doc = (isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
               and isinstance(body[0].value.value, str))
        if doc and len(body) == 1:
            continue
        first = body[1] if doc else body[0]
        indent = " " * first.col_offset
        lines.insert(fn.end_lineno, f"{indent}### END SOLUTION")
        lines.insert(first.lineno - 1, f"{indent}### BEGIN SOLUTION")
    return "\n".join(lines)


def _grader(cell, grade_id: str, *, grade: bool, solution: bool, locked: bool,
            points_: float | None = None):
    meta = {"grade": grade, "grade_id": grade_id, "locked": locked,
            "schema_version": 3, "solution": solution, "task": False}
    if grade:
        meta["points"] = points_
    cell.metadata["nbgrader"] = meta
    return cell


def hidden_test_cell(label: str, name: str, pts: float):
    src = (f"# Hidden tests of {label} ({pts:g} points) run here when graded.\n"
           "### BEGIN HIDDEN TESTS\n"
           "import leakbook as lb\n"
           f'assert lb.exercises.check("{label}", {name}, hidden=True)\n'
           "### END HIDDEN TESTS")
    cell = new_code_cell(src)
    cell.id = f"{label}-tests"
    cell.metadata["tags"] = ["ex-tests"]
    return _grader(cell, f"{label}-tests", grade=True, solution=False, locked=True,
                   points_=pts)


def source_notebook(nb, table: dict[str, dict] | None = None):
    """The nbgrader source of a converted chapter (see the module docstring)."""
    table = points() if table is None else table
    lay = layout(nb)
    if not lay.converted:
        raise ValueError("this chapter's exercises are not converted (no ex-* tags)")
    cells = [copy.deepcopy(nb.cells[setup_index(nb)])]
    for i in range(lay.start, lay.stop):
        role, label = lay.roles[i], lay.labels[i]
        if role == "ex-solution":
            continue
        cell = copy.deepcopy(nb.cells[i])
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        spec = table.get(label)
        if spec is None:
            raise KeyError(f"{label} has no entry in {POINTS.name}")
        if role == "ex-answer":
            cell.source = marked_answer(cell.source)
            _grader(cell, f"{label}-answer", grade=False, solution=True, locked=False)
        elif role == "ex-check":
            _grader(cell, f"{label}-check", grade=False, solution=False, locked=True)
            cells.append(cell)
            cell = hidden_test_cell(label, check_call(cell.source)[1], spec["tests"])
        elif role == "ex-written":
            _grader(cell, f"{label}-written", grade=True, solution=True, locked=False,
                    points_=spec["written"])
        cells.append(cell)
    out = nbformat.v4.new_notebook(cells=cells, metadata=copy.deepcopy(nb.metadata))
    out.nbformat_minor = nb.nbformat_minor
    return out


def write_config(course: Path) -> None:
    course.mkdir(parents=True, exist_ok=True)
    (course / "nbgrader_config.py").write_text(NBGRADER_CONFIG.format(root=str(course)))


def nbgrader(args: list[str], course: Path, env: dict | None = None) -> str:
    """Run an nbgrader command in the course folder; its log on failure."""
    # nbgrader runs `alembic` and the kernel from PATH: put this Python's first
    path = os.pathsep.join([str(Path(sys.executable).parent),
                            os.environ.get("PATH", "")])
    run = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=course,
                         env={**os.environ, "PATH": path, **(env or {})},
                         capture_output=True, text=True)
    if run.returncode != 0:
        raise RuntimeError(f"nbgrader {' '.join(args)} failed:\n{run.stdout}\n"
                           f"{run.stderr}")
    return run.stdout + run.stderr


def build_course(course: Path, paths: list[Path] | None = None) -> dict[str, Path]:
    """Source and release notebooks of every converted chapter; returns
    assignment id -> release notebook."""
    write_config(course)
    table = points()
    releases = {}
    for path in paths or chapter_paths():
        nb = read(path)
        if not layout(nb).converted:
            continue
        aid = assignment_of(path)
        src = course / "source" / aid / path.name
        src.parent.mkdir(parents=True, exist_ok=True)
        new = nbformat.writes(source_notebook(nb, table))
        release = course / "release" / aid / path.name
        if not release.exists() or not src.exists() or src.read_text() != new:
            src.write_text(new)
            nbgrader(["generate_assignment", aid, "--force"], course)
        releases[aid] = release
    return releases


def student_copy(nb, release) -> nbformat.NotebookNode:
    """The chapter with its exercise section replaced by the release's cells."""
    lay = layout(nb)
    section = [copy.deepcopy(c) for c in release.cells[1:]]   # [0] is the setup
    for cell in section:
        if "ex-check" in cell.metadata.get("tags", []):
            cell.metadata["tags"] = ["ex-check", "raises-exception"]
    cells = [copy.deepcopy(c) for c in nb.cells]
    out = copy.deepcopy(nb)
    out.cells = cells[:lay.start] + section + cells[lay.stop:]
    return out


PENDING_NOTE = """\
```{note}
The exercises of this chapter are being converted to the course kit
(answers you write, checks that run them, hidden tests); until then they
are not part of the student copy. See `grading/PLAN.md`.
```"""


def pending_copy(nb) -> nbformat.NotebookNode:
    """A not yet converted chapter without its exercise section: everything from
    the first exercise or solution directive to the end of the last one goes."""
    hits = [i for i, c in enumerate(nb.cells) if has_directive(c)]
    out = copy.deepcopy(nb)
    if not hits:
        return out
    first, last = hits[0], hits[-1]
    head = DIRECTIVE.search(nb.cells[first].source)
    head_text = nb.cells[first].source[:head.start()]
    head_text = re.sub(r"(`{3,}|:{3,})\s*$", "", head_text).rstrip()
    tail_src = nb.cells[last].source
    ends = list(re.finditer(r"(`{3,}|:{3,})\{(solution|exercise)-end\}[^\n]*\n?\1",
                            tail_src))
    tail_text = tail_src[ends[-1].end():].strip() if ends else ""
    cells = [copy.deepcopy(c) for c in nb.cells[:first]]
    if head_text:
        cell = copy.deepcopy(nb.cells[first])
        cell.source = head_text
        cells.append(cell)
    note = new_markdown_cell(PENDING_NOTE)
    note.id = "exercises-pending"
    cells.append(note)
    if tail_text:
        cell = copy.deepcopy(nb.cells[last])
        cell.source = tail_text
        cells.append(cell)
    cells += [copy.deepcopy(c) for c in nb.cells[last + 1:]]
    out.cells = cells
    return out


def write_student(out: Path, course: Path) -> list[Path]:
    """Student copies of every chapter, with the data they read, into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    releases = build_course(course)
    written = []
    for path in chapter_paths():
        nb = read(path)
        aid = assignment_of(path)
        if aid in releases:
            copy_ = student_copy(nb, read(releases[aid]))
        else:
            copy_ = pending_copy(nb)
        copy_.metadata["leakbook"] = {"assignment": aid, "chapter": path.stem,
                                      "converted": aid in releases}
        nbformat.write(copy_, out / path.name)
        written.append(out / path.name)
    if (out / "data").exists():
        shutil.rmtree(out / "data")
    shutil.copytree(CHAPTERS / "data", out / "data")
    (out / "README.md").write_text(STUDENT_README)
    return written


STUDENT_README = """\
# leakbook: student copies

Each notebook is a chapter of the book with its exercises left for you.
Run it from this folder (it reads `data/`), with the `leakbook` package
installed. For every exercise:

- write your code in the answer cell, in place of `raise NotImplementedError()`,
  keeping the function's name and arguments; put everything your answer
  needs (imports, helper functions) in that cell, since only the setup cell
  and the exercise cells run when your notebook is graded;
- run the check cell below it: it tries your function on a few inputs and
  says "Correct!" or gives a hint. Hidden tests on other inputs decide the
  points;
- write written answers in the cells that say YOUR ANSWER HERE.

Do not delete, split or re-tag the exercise cells.
"""


def significant(text: str) -> list[str]:
    """Lines of a solution distinctive enough to look for in a student copy or
    the student site (signatures, imports and directive lines are shared)."""
    out = []
    for line in text.splitlines():
        s = line.strip()
        if len(s) < 16 or s.startswith(("def ", "import ", "from ", '"""', "#", "```",
                                        ":class:", "assert lb.exercises.check")):
            continue
        out.append(s)
    return out


def removed_and_shown(nb) -> tuple[list[str], str]:
    """Texts of a chapter that students must not see, and the text they may.

    Converted chapters: the ex-solution, ex-answer and ex-written cells. Others:
    everything from the first exercise or solution directive to the end of
    the last one.
    """
    lay = layout(nb)
    texts = [c.source for c in nb.cells]
    if lay.converted:
        hidden = [i for i, r in enumerate(lay.roles)
                  if r in ("ex-solution", "ex-answer", "ex-written")]
        removed = [texts[i] for i in hidden]
    else:
        marked = [i for i, c in enumerate(nb.cells) if has_directive(c)]
        if not marked:
            return [], "\n".join(texts)
        hidden = list(range(marked[0], marked[-1] + 1))
        removed = [texts[i] for i in hidden]
        removed[0] = removed[0][DIRECTIVE.search(removed[0]).start():]
        ends = list(re.finditer(r"\{(solution|exercise)-end\}[^\n]*\n?(`{3,}|:{3,})",
                                removed[-1]))
        removed[-1] = removed[-1][:ends[-1].end()]
    shown = "\n".join(t for i, t in enumerate(texts) if i not in hidden)
    return removed, shown


def fingerprints(nb) -> list[str]:
    """Solution lines of a chapter that appear nowhere else in it."""
    removed, shown = removed_and_shown(nb)
    return sorted({line for chunk in removed for line in significant(chunk)
                   if line not in shown})
