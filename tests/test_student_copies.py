"""Student copies: every exercise cell classified, no solution survives, the
data is there, and the exercises fail exactly at their checks when run.

`make test` also runs every student notebook in full (the `notebooks` step:
nbval on `student/`, where a check cell may raise): that catches a chapter
that cannot run from the student folder. The last test here runs the setup
and exercise cells as the grader does and requires every check to raise
NotImplementedError and nothing else to fail, so a solution or a passing
check that survives is caught.
"""
import re
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from grading import course as C  # noqa: E402
from grading.notebook import StructureError, layout, source  # noqa: E402

#: chapters whose exercises still wait for the course kit (grading/PLAN.md);
#: their student copies leave the exercise section out. Remove a chapter
PENDING: set[str] = set()


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    C.write_student(out, tmp_path_factory.mktemp("course"))
    return out


def test_every_chapter_is_converted_or_pending():
    for path in C.chapter_paths():
        converted = layout(C.read(path)).converted
        assert converted != (path.name[:2] in PENDING), (
            f"{path.name}: {'converted' if converted else 'not converted'}; "
            "update PENDING in this test")


def test_every_cell_between_exercises_is_classified():
    for path in C.chapter_paths():
        lay = layout(C.read(path))        # raises StructureError on any gap
        if lay.converted:
            assert all(lay.roles[i] for i in range(lay.start, lay.stop))
            assert len(lay.exercises) >= 3, f"{path.name}: at least 3 exercises"


def test_every_converted_chapter_has_an_exercise_that_builds_an_attack_piece():
    """At least one answer must be written with a package function forbidden."""
    from leakbook.exercises import ANSWER_CHECKS
    for path in C.chapter_paths():
        lay = layout(C.read(path))
        if lay.converted:
            assert any(ANSWER_CHECKS[e.label].forbid for e in lay.exercises
                       if e.label in ANSWER_CHECKS), path.name


def test_every_exercise_has_points():
    table = C.points()
    labels = set()
    for path in C.chapter_paths():
        for ex in layout(C.read(path)).exercises:
            labels.add(ex.label)
            spec = table[ex.label]
            assert ex.coded == ("tests" in spec) and ex.written == ("written" in spec)
            assert spec["difficulty"] in (1, 2, 3) and spec["minutes"] > 0
    assert labels == set(table), "grading/exercises.toml and the chapters disagree"


def test_the_instructor_guide_shows_the_current_exercise_table():
    from grading.guide import table
    guide = (ROOT / "instructor.md").read_text()
    start = guide.index("% exercise table")
    stop = guide.index("% end of exercise table")
    shown = guide[start:stop].split("\n", 1)[1].strip()
    assert shown == table(), "run `python -m grading table` and paste it"
    assert "file: instructor" in (ROOT / "_toc.yml").read_text()


# --- the rule refuses every way a solution could slip through ---------------

def _nb(*cells):
    nb = new_notebook(cells=[new_code_cell("import leakbook as lb")])
    for role, kind, text in cells:
        cell = (new_markdown_cell if kind == "md" else new_code_cell)(text)
        if role:
            cell.metadata["tags"] = [role]
        nb.cells.append(cell)
    return nb


TASK = ("ex-task", "md", "```{exercise-start}\n:label: ch99-ex-a\n```\nDo.\n"
        "```{exercise-end}\n```")
START = ("ex-solution", "md", "```{solution-start} ch99-ex-a\n:class: dropdown\n```")
ANSWER = ("ex-answer", "code", "def f(x):\n    return x + 1")
CHECK = ("ex-check", "code", 'assert lb.exercises.check("ch99-ex-a", f)')
END = ("ex-solution", "md", "```{solution-end}\n```")
GOOD = [TASK, START, ANSWER, CHECK, END]


def test_the_rule_accepts_a_well_formed_exercise():
    lay = layout(_nb(*GOOD))
    assert [e.label for e in lay.exercises] == ["ch99-ex-a"]


@pytest.mark.parametrize("cells,why", [
    ([TASK, START, ANSWER, CHECK, (None, "code", "print(1)"), END], "no ex-* tag"),
    ([TASK, START, ANSWER, CHECK, END, (None, "code", "x = f(1)"), TASK[:2] + (
        TASK[2].replace("ch99-ex-a", "ch99-ex-b"),)], "no ex-* tag"),
    # chapter 08's bug: code after a solution-end that closes in the same cell
    ([TASK, ("ex-solution", "md", START[2] + "\nProse.\n```{solution-end}\n```"),
      ANSWER, CHECK], "one {solution-start} per cell"),
    ([TASK, START, ("ex-given", "code", "x = 1"), ANSWER, CHECK, END], "inside a "
     "solution"),
    ([TASK, ANSWER, START, CHECK, END], "outside its solution"),
    ([TASK, START, ANSWER, CHECK], "no {solution-end}"),
    ([TASK, START, ("ex-answer", "code", "def f(x):\n    return x\nprint(f(2))"),
      CHECK, END], "only imports, functions"),
    ([TASK, START, ANSWER, ("ex-check", "code", 'lb.exercises.check("ch99-ex-b", f)'),
      END], "ex-check cell calls"),
    ([TASK, START, (None, "md", "```{solution-end}\n```")], "outside the tagged"),
    ([TASK, START, ANSWER, CHECK, ("ex-solution", "md", "```{solution-end}\n```\nMore"
                                   " text")], "holds nothing else"),
])
def test_the_rule_refuses(cells, why):
    with pytest.raises(StructureError, match=re.escape(why)):
        layout(_nb(*cells))


def test_a_directive_outside_the_tagged_section_is_refused():
    nb = _nb(*GOOD)
    nb.cells.append(new_markdown_cell("```{solution-start} ch99-ex-a\n```"))
    with pytest.raises(StructureError, match="outside the tagged section"):
        layout(nb)


# --- the copies ---------------------------------------------------------------

def test_no_solution_reaches_a_student_copy(copies):
    for path in C.chapter_paths():
        copy = C.read(copies / path.name)
        text = "\n".join(source(c) for c in copy.cells)
        assert "{solution" not in text, path.name
        prints = C.fingerprints(C.read(path))
        assert prints, f"{path.name}: no solution text to look for?"
        for line in prints:
            assert line not in text, f"{path.name}: {line!r} survives"


def test_a_copy_keeps_every_other_cell_unchanged(copies):
    for path in C.chapter_paths():
        nb, copy = C.read(path), C.read(copies / path.name)
        lay = layout(nb)
        if not lay.converted:
            continue
        body = [(c.id, c.source) for i, c in enumerate(nb.cells)
                if not lay.start <= i < lay.stop]
        kept = [(c.id, c.source) for c in copy.cells
                if not any(t.startswith("ex-") for t in c.metadata.get("tags", []))]
        assert kept == body, path.name


def test_answer_stubs_raise_and_names_match_their_checks(copies):
    from grading.notebook import answer_names, check_call
    for path in C.chapter_paths():
        copy = C.read(copies / path.name)
        if not copy.metadata["leakbook"]["converted"]:
            continue
        defined = set()
        for cell in copy.cells:
            tags = cell.metadata.get("tags", [])
            if "ex-answer" in tags:
                assert cell.source.count("raise NotImplementedError()") == len(
                    answer_names(cell.source)), cell.source
                defined |= set(answer_names(cell.source))
            if "ex-check" in tags:
                assert "raises-exception" in tags
                assert check_call(cell.source)[1] in defined
            if "ex-written" in tags:
                assert cell.source == "YOUR ANSWER HERE"


def test_the_data_the_chapters_read_is_in_the_student_folder(copies):
    for f in (C.CHAPTERS / "data").iterdir():
        assert (copies / "data" / f.name).read_bytes() == f.read_bytes()
    for path in C.chapter_paths():
        for cell in C.read(copies / path.name).cells:
            if cell.cell_type == "code":
                assert not re.search(r"""["']\.\.[/"']""", cell.source), (
                    f"{path.name} reads a ../ path: put what it needs in the package")
                for name in re.findall(r"data/([\w.-]+\.json)", cell.source):
                    assert (copies / "data" / name).exists(), (path.name, name)


def test_exercise_sections_fail_exactly_at_their_checks(copies):
    """Run the setup cell and the exercise cells of each converted copy, as the
    grader does: the only errors are NotImplementedError in the check cells,
    and nothing says Correct."""
    from nbclient import NotebookClient
    for path in C.chapter_paths():
        copy = C.read(copies / path.name)
        if not copy.metadata["leakbook"]["converted"]:
            continue
        first = C.setup_index(copy)
        cells = [copy.cells[first]] + [c for c in copy.cells if any(
            t.startswith("ex-") for t in c.metadata.get("tags", []))]
        nb = new_notebook(cells=cells, metadata=copy.metadata)
        NotebookClient(nb, timeout=300, kernel_name="python3", allow_errors=True,
                       resources={"metadata": {"path": str(copies)}}).execute()
        for cell in nb.cells:
            if cell.cell_type != "code":
                continue
            errors = [o for o in cell.outputs if o.output_type == "error"]
            text = "".join(o.get("text", "") for o in cell.outputs)
            assert "Correct" not in text, (path.name, cell.source)
            if "ex-check" in cell.metadata.get("tags", []):
                assert [e.ename for e in errors] == ["NotImplementedError"], cell.source
            else:
                assert not errors, (path.name, cell.source, errors)
