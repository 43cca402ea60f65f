"""Grade a folder of submitted notebooks with nbgrader: CSV and feedback.

    python -m grading grade SUBMISSIONS [--out _build/grading] [--salt SECRET]

A submission is one student copy of a chapter (``.ipynb``) anywhere under
SUBMISSIONS. The student id is the name of the folder that holds it, or the
file name when it lies directly in SUBMISSIONS; the chapter comes from the
notebook's metadata (written by ``make student``) or the file name (``01_``).

For each submission the grader takes the chapter's release notebook (setup
cell and exercise cells only, so a submission runs in seconds, not a
chapter's minute) and puts in the student's answer and written cells, found
by their nbgrader id, else by their tag and exercise, else by the function
they define. Only imports, functions and constants of an answer cell are
kept (code that would run before the tests, such as a patch of the library,
is dropped and reported). ``nbgrader autograde`` then restores every test
cell from the gradebook, runs the notebook with the hidden tests, and
records the points; written answers wait for the instructor (formgrader).

Output in ``--out``: ``grades_chNN.csv`` (one row per submission: points per
exercise, total), ``feedback/<student>/chNN.md`` (points and the check's
message per exercise, never the expected value) and nbgrader's HTML
feedback next to it; the nbgrader course folder is ``course/``.
"""
from __future__ import annotations

import ast
import copy
import csv
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from . import course as C
from .notebook import LABEL, allowed_statement, answer_names, layout

STUDENT_ID = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class Submission:
    path: Path
    student: str
    assignment: str
    notes: list[str] = field(default_factory=list)


def find_submissions(folder: Path, known: dict[str, Path]) -> list[Submission]:
    """Every notebook under ``folder`` with its student id and assignment."""
    subs, seen = [], set()
    for path in sorted(folder.rglob("*.ipynb")):
        if ".ipynb_checkpoints" in path.parts:
            continue
        rel = path.relative_to(folder)
        student = rel.parts[0] if len(rel.parts) > 1 else path.stem
        student = STUDENT_ID.sub("_", student).strip("_") or "student"
        try:
            meta = C.read(path).metadata.get("leakbook", {})
        except Exception as err:  # noqa: BLE001 - an unreadable file is reported
            raise ValueError(f"{path}: not a notebook ({err})") from None
        aid = meta.get("assignment") or (f"ch{path.name[:2]}"
                                         if path.name[:2].isdigit() else None)
        if aid not in known:
            raise ValueError(f"{path}: cannot tell which converted chapter this is "
                             f"(found {aid!r}; known: {sorted(known)})")
        if (student, aid) in seen:
            raise ValueError(f"{path}: a second submission of {aid} by {student}")
        seen.add((student, aid))
        subs.append(Submission(path, student, aid))
    return subs


def _role(cell) -> str | None:
    tags = cell.get("metadata", {}).get("tags", [])
    return next((t for t in tags if t.startswith("ex-")), None)


def student_cells(nb) -> dict[str, object]:
    """The submission's answer and written cells, keyed by nbgrader grade id."""
    found, by_tag, label = {}, {}, None
    for cell in nb.cells:
        if _role(cell) == "ex-task" or LABEL.search(cell.get("source", "")):
            hit = LABEL.search(cell.source)
            label = hit.group(1) if hit else label
        gid = cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")
        if gid and (gid.endswith("-answer") or gid.endswith("-written")):
            found.setdefault(gid, cell)
        role = _role(cell)
        if label and role in ("ex-answer", "ex-written"):
            by_tag.setdefault(f"{label}-{role[3:]}", cell)
    for gid, cell in by_tag.items():
        found.setdefault(gid, cell)
    return found


def by_function(nb, names: list[str]):
    """The last code cell that defines all of ``names`` (a fallback)."""
    hit = None
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        try:
            defined = answer_names(cell.source)
        except SyntaxError:
            continue
        if set(names) <= set(defined):
            hit = cell
    return hit


def sanitize(src: str) -> tuple[str, list[str]]:
    """Keep only imports, plain functions and constants of an answer cell."""
    try:
        tree = ast.parse(src)
    except SyntaxError:
        return src, []            # it fails when run, and the feedback says why
    lines, dropped = src.split("\n"), []
    for node in reversed(tree.body):
        if allowed_statement(node):
            continue
        first = ast.unparse(node).splitlines()[0][:60]
        dropped.append(first)
        start = min([node.lineno, *[d.lineno for d in
                                    getattr(node, "decorator_list", [])]]) - 1
        lines[start:node.end_lineno] = [f"# dropped by the grader: {first}"]
    return "\n".join(lines), dropped[::-1]


def graded_notebook(release, submitted, sub: Submission):
    """The release notebook with the student's answers and written cells in."""
    theirs = student_cells(submitted)
    out = copy.deepcopy(release)
    for cell in out.cells:
        meta = cell.metadata.get("nbgrader", {})
        gid = meta.get("grade_id", "")
        if not meta.get("solution"):
            continue
        cand = theirs.get(gid)
        if cand is None and cell.cell_type == "code":
            cand = by_function(submitted, answer_names(cell.source))
        if cand is None or cand.cell_type != cell.cell_type:
            sub.notes.append(f"{gid}: no such cell in the submission; graded as empty")
            continue
        src = cand.source
        if cell.cell_type == "code":
            src, dropped = sanitize(src)
            for d in dropped:
                sub.notes.append(f"{gid}: the grader dropped `{d}` (an answer cell "
                                 "keeps imports, functions and constants only)")
        cell.source = src
    out.metadata = copy.deepcopy(release.metadata)
    return out


def exercise_columns(release) -> list[tuple[str, str, float]]:
    """(column, grade id, points) of every graded cell, in notebook order."""
    cols = []
    for cell in release.cells:
        meta = cell.metadata.get("nbgrader", {})
        if not meta.get("grade"):
            continue
        gid = meta["grade_id"]
        label = gid.rsplit("-", 1)[0]
        name = f"{label} (written)" if gid.endswith("-written") else label
        cols.append((name, gid, float(meta["points"])))
    return cols


def _fmt(x) -> str:
    return "" if x is None else f"{x:g}"


def export(course: Path, aid: str, notebook: str, students: list[str], release,
           out: Path) -> list[dict]:
    """One CSV row per submission: points per exercise, totals."""
    from nbgrader.api import Gradebook
    cols = exercise_columns(release)
    rows = []
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for student in students:
            nb = gb.find_submission_notebook(notebook, aid, student)
            grades = {g.name: g for g in nb.grades}
            row = {"student": student}
            auto = written = 0.0
            pending = 0
            for name, gid, _ in cols:
                g = grades[gid]
                score = g.score if not g.needs_manual_grade else None
                if gid.endswith("-written"):
                    pending += score is None
                    written += score or 0.0
                else:
                    auto += score or 0.0
                row[name] = _fmt(score)
            row.update(auto=_fmt(auto), written=_fmt(written),
                       total=_fmt(auto + written), max=_fmt(sum(p for *_, p in cols)),
                       written_pending=str(pending))
            rows.append(row)
    header = ["student", *[c[0] for c in cols], "auto", "written", "total", "max",
              "written_pending"]
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def _message(cell) -> str:
    """What a test cell printed, or the error it raised (without traceback)."""
    parts = []
    for o in cell.get("outputs", []):
        if o.get("output_type") == "stream":
            parts.append(o.get("text", "").strip())
        elif o.get("output_type") == "error":
            said = " ".join(parts)
            if (o.get("ename") == "AssertionError" and parts) or (
                    o.get("ename", "?") in said):
                continue
            value = str(o.get("evalue", "")).strip()
            parts.append(f"{o.get('ename')}{': ' + value if value else ''}")
    return " ".join(p for p in parts if p)[:500]


def feedback(course: Path, sub: Submission, notebook: str, row: dict, release,
             out: Path) -> Path:
    """A short markdown report for one submission."""
    graded = C.read(course / "autograded" / sub.student / sub.assignment /
                    f"{notebook}.ipynb")
    msgs = {}
    for cell in graded.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id", "")
        if gid.endswith("-tests") or gid.endswith("-check"):
            msgs[gid] = _message(cell)
        elif gid.endswith("-written"):
            empty = cell.source.strip() in ("", "YOUR ANSWER HERE")
            msgs[gid] = "not answered" if empty else "graded by hand"
    lines = [f"# {sub.assignment}: feedback for {sub.student}", "",
             f"Points: {row['total']} of {row['max']}"
             + (f" ({row['written_pending']} written answer(s) not graded yet)"
                if row["written_pending"] != "0" else ""), "",
             "| exercise | points | message |", "|---|---|---|"]
    for name, gid, pts in exercise_columns(release):
        got = row[name] if row[name] != "" else "to be graded"
        label = gid.rsplit("-", 1)[0]
        msg = msgs.get(gid) or msgs.get(f"{label}-check", "")
        lines.append(f"| {name} | {got} / {pts:g} | {msg.replace('|', '/')} |")
    if sub.notes:
        lines += ["", "Notes of the grader:", ""] + [f"- {n}" for n in sub.notes]
    path = out / "feedback" / sub.student / f"{sub.assignment}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def grade(folder: Path, out: Path, salt: str | None = None, html: bool = True) -> dict:
    """Grade every submission under ``folder``; returns the rows per assignment."""
    folder, out = Path(folder), Path(out)
    course = out / "course"
    chapters = {C.assignment_of(p): p for p in C.chapter_paths()
                if layout(C.read(p)).converted}
    subs = find_submissions(folder, chapters)
    if not subs:
        raise ValueError(f"no submissions (*.ipynb) under {folder}")
    releases = C.build_course(course, sorted({chapters[s.assignment] for s in subs}))
    env = {"OMP_NUM_THREADS": "1"}
    if salt is not None:
        env[C.SALT_VARIABLE] = salt
    results, t0 = {}, time.perf_counter()
    for aid, release_path in releases.items():
        mine = [s for s in subs if s.assignment == aid]
        if not mine:
            continue
        release = C.read(release_path)
        notebook = release_path.stem
        for sub in mine:
            graded = graded_notebook(release, C.read(sub.path), sub)
            dest = course / "submitted" / sub.student / aid / release_path.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            text = nbformat.writes(graded)
            done = course / "autograded" / sub.student / aid
            if not dest.exists() or dest.read_text() != text or not done.exists():
                dest.write_text(text)
                if done.exists():
                    shutil.rmtree(done)
        C.nbgrader(["autograde", aid], course, env)
        rows = export(course, aid, notebook, [s.student for s in mine], release,
                      out / f"grades_{aid}.csv")
        if html:
            C.nbgrader(["generate_feedback", aid, "--force"], course, env)
        for sub, row in zip(mine, rows):
            feedback(course, sub, notebook, row, release, out)
            page = course / "feedback" / sub.student / aid / f"{notebook}.html"
            if html and page.exists():
                target = out / "feedback" / sub.student / f"{aid}.html"
                target.write_bytes(page.read_bytes())
        results[aid] = rows
    results["seconds"] = time.perf_counter() - t0
    return results
