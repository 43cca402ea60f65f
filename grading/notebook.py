"""The one rule that splits a chapter into what students get and what they do not.

Every cell of a chapter's exercise section carries exactly one of these tags
(cell metadata ``tags``):

- ``ex-task``      markdown, the exercise statement (``{exercise-start}`` ...
                   ``{exercise-end}``): kept
- ``ex-given``     code the student runs unchanged: kept
- ``ex-answer``    code the student writes: in the chapter the reference
                   functions, in the student copy their signatures and
                   docstrings with ``raise NotImplementedError()``
- ``ex-check``     the public check, ``lb.exercises.check("label", fn)``: kept
- ``ex-written``   markdown, a written answer: in the chapter the model
                   answer, in the student copy "YOUR ANSWER HERE"; graded by hand
- ``ex-solution``  everything else of a solution (``{solution-start}`` and
                   ``{solution-end}`` cells, prose, demonstrations): removed

The section runs from the first tagged cell to the last; an untagged cell
inside it, a directive outside it, or a solution cell that is not between
its ``{solution-start}`` and ``{solution-end}`` is an error, so no cell can
slip through. Answers, checks and written answers sit inside the solution
(hidden in the book); tasks and given code sit outside it.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field

ROLES = ("ex-task", "ex-given", "ex-answer", "ex-check", "ex-written", "ex-solution")
DIRECTIVE = re.compile(r"\{(exercise|solution)(-start|-end)?\}")
LABEL = re.compile(r"^:label:\s*(\S+)\s*$", re.M)
SOLUTION_START = re.compile(r"\{solution-start\}\s*(\S+)")
CHECK_CALL = "lb.exercises.check"


class StructureError(ValueError):
    """A chapter's exercise section breaks the tagging rule."""


@dataclass
class Exercise:
    """One exercise of a chapter: its label and the indices of its cells by role."""
    label: str
    cells: dict[str, list[int]] = field(default_factory=dict)

    def of(self, role: str) -> list[int]:
        return self.cells.get(role, [])

    @property
    def written(self) -> bool:
        return bool(self.of("ex-written"))

    @property
    def coded(self) -> bool:
        return bool(self.of("ex-answer"))


@dataclass
class Layout:
    """Where a chapter's exercises are: roles per cell, exercises in order."""
    roles: list[str | None]
    labels: list[str | None]
    exercises: list[Exercise]
    start: int | None          # first cell of the exercise section
    stop: int | None           # one past its last cell

    @property
    def converted(self) -> bool:
        return self.start is not None


def role_of(cell) -> str | None:
    """The ex-* tag of a cell; an error if it carries two."""
    tags = [t for t in cell.get("metadata", {}).get("tags", []) if t in ROLES]
    if len(tags) > 1:
        raise StructureError(f"cell {cell.get('id')!r} has two exercise tags {tags}")
    return tags[0] if tags else None


def source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def has_directive(cell) -> bool:
    return cell.get("cell_type") == "markdown" and bool(DIRECTIVE.search(source(cell)))


def check_call(src: str) -> tuple[str, str] | None:
    """(label, answer name) of the ``lb.exercises.check("label", name)`` in src."""
    for node in ast.walk(ast.parse(src)):
        if (isinstance(node, ast.Call) and ast.unparse(node.func) == CHECK_CALL
                and len(node.args) >= 2 and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[1], ast.Name)):
            return node.args[0].value, node.args[1].id
    return None


def answer_names(src: str) -> list[str]:
    """Names of the functions an answer cell defines."""
    return [n.name for n in ast.parse(src).body if isinstance(n, ast.FunctionDef)]


def layout(nb) -> Layout:
    """Classify every cell of a notebook, or raise StructureError saying where."""
    cells = nb["cells"]
    roles = [role_of(c) for c in cells]
    tagged = [i for i, r in enumerate(roles) if r]
    labels: list[str | None] = [None] * len(cells)
    if not tagged:
        return Layout(roles, labels, [], None, None)
    start, stop = tagged[0], tagged[-1] + 1
    for i, cell in enumerate(cells):
        if (i < start or i >= stop) and has_directive(cell):
            raise StructureError(f"cell {i} ({cell.get('id')}) holds an exercise or "
                                 "solution directive outside the tagged section")
    exercises: list[Exercise] = []
    current, inside = None, False
    for i in range(start, stop):
        cell, role = cells[i], roles[i]
        where = f"cell {i} ({cell.get('id')})"
        if role is None:
            raise StructureError(f"{where} lies between exercises but has no ex-* tag")
        text = source(cell)
        kind = "markdown" if role in ("ex-task", "ex-written") else "code"
        if role not in ("ex-solution",) and cell["cell_type"] != kind:
            raise StructureError(f"{where}: {role} must be a {kind} cell")
        if role != "ex-task" and re.search(r"\{exercise(-start|-end)?\}", text):
            raise StructureError(f"{where}: only an ex-task cell may hold an exercise")
        if role == "ex-task":
            if inside:
                raise StructureError(f"{where}: an exercise starts inside a solution")
            found = LABEL.findall(text)
            if (len(found) != 1 or text.count("{exercise-start}") != 1
                    or text.count("{exercise-end}") != 1):
                raise StructureError(f"{where}: an ex-task cell holds exactly one "
                                     "{exercise-start} with a :label: and its "
                                     "{exercise-end}")
            if any(e.label == found[0] for e in exercises):
                raise StructureError(f"{where}: label {found[0]} used twice")
            current = Exercise(found[0])
            exercises.append(current)
        elif current is None:
            raise StructureError(f"{where}: {role} before the first ex-task")
        starts = SOLUTION_START.findall(text) if role == "ex-solution" else []
        ends = text.count("{solution-end}") if role == "ex-solution" else 0
        if role != "ex-solution" and "{solution" in text:
            raise StructureError(f"{where}: solution directives belong in ex-solution "
                                 "cells")
        if starts:
            if inside or len(starts) != 1 or ends:
                raise StructureError(f"{where}: one {{solution-start}} per cell, and "
                                     "its {solution-end} in a later cell")
            if starts[0] != current.label:
                raise StructureError(f"{where}: solution of {starts[0]} inside "
                                     f"exercise {current.label}")
            if current.of("ex-solution") and any(
                    SOLUTION_START.search(source(cells[j]))
                    for j in current.of("ex-solution")):
                raise StructureError(f"{where}: {current.label} has two solutions")
            inside = True
        elif ends:
            rest = re.sub(r"(`{3,}|:{3,})\{solution-end\}[^\n]*\n?\1", "", text).strip()
            if not inside or ends != 1 or rest:
                raise StructureError(f"{where}: a {{solution-end}} cell closes an open "
                                     "solution and holds nothing else")
            inside = False
        elif role in ("ex-task", "ex-given"):
            if inside:
                raise StructureError(f"{where}: {role} inside a solution would be "
                                     "hidden in the book")
        elif not inside:
            raise StructureError(f"{where}: {role} outside its solution would show "
                                 "in the book")
        if role == "ex-answer":
            _check_answer_cell(text, where)
        if role == "ex-check":
            call = check_call(text)
            if call is None or call[0] != current.label:
                raise StructureError(f"{where}: an ex-check cell calls "
                                     f'{CHECK_CALL}("{current.label}", your_function)')
            if not current.coded or call[1] not in answer_names(
                    source(cells[current.of("ex-answer")[-1]])):
                raise StructureError(f"{where}: the check must follow the ex-answer "
                                     f"cell that defines {call[1]}")
        current.cells.setdefault(role, []).append(i)
        labels[i] = current.label
    if inside:
        raise StructureError(f"the solution of {current.label} has no {{solution-end}}")
    for ex in exercises:
        if not ex.of("ex-solution") or not (ex.coded or ex.written):
            raise StructureError(f"{ex.label}: needs a solution with an ex-answer "
                                 "or an ex-written cell")
        if ex.coded and not ex.of("ex-check"):
            raise StructureError(f"{ex.label}: an ex-answer needs an ex-check cell")
    return Layout(roles, labels, exercises, start, stop)


ALLOWED = (ast.Import, ast.ImportFrom, ast.FunctionDef)


def _literal(node) -> bool:
    try:
        ast.literal_eval(node)
        return True
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False


def allowed_statement(node) -> bool:
    """Top-level statements an answer cell may hold: imports, plain functions
    (no decorators, literal defaults), constants and docstrings."""
    if isinstance(node, ast.FunctionDef):
        defaults = [*node.args.defaults, *[d for d in node.args.kw_defaults if d]]
        return not node.decorator_list and all(_literal(d) for d in defaults)
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return True
    if isinstance(node, ast.Assign):
        names = all(isinstance(t, ast.Name) for t in node.targets)
        return names and _literal(node.value)
    return isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)


def _check_answer_cell(text: str, where: str) -> None:
    try:
        tree = ast.parse(text)
    except SyntaxError as err:
        raise StructureError(f"{where}: ex-answer does not parse: {err}") from None
    if not answer_names(text):
        raise StructureError(f"{where}: an ex-answer cell defines a function")
    bad = [ast.unparse(n).splitlines()[0] for n in tree.body
           if not allowed_statement(n)]
    if bad:
        raise StructureError(f"{where}: an ex-answer cell holds only imports, "
                             f"functions and constants; move {bad[0]!r} to an "
                             "ex-solution cell")
