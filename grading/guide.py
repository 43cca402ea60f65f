"""Numbers for the instructor guide: the exercise table and compute times.

``python -m grading table`` prints the table that ``instructor.md`` shows
between its ``% exercise table`` markers (a test keeps the two equal);
``python -m grading timings`` measures the CPU time of each exercise's
hidden tests on the reference answer, at one thread, for the ``compute_s``
entries of ``grading/exercises.toml``.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import time

import torch

from . import course as C
from .notebook import check_call, layout

KIND = {(True, False): "code", (False, True): "written", (True, True): "code + written"}
STARS = {1: "easy", 2: "medium", 3: "hard"}


def title(task_src: str) -> str:
    hit = re.search(r"\{exercise-start\}[ \t]*([^\n]*)", task_src)
    return hit.group(1).strip() if hit else ""


def converted() -> list[tuple]:
    """(chapter path, notebook, layout) of every converted chapter."""
    out = []
    for path in C.chapter_paths():
        nb = C.read(path)
        lay = layout(nb)
        if lay.converted:
            out.append((path, nb, lay))
    return out


def table() -> str:
    """The markdown table of the converted exercises."""
    spec = C.points()
    lines = ["| chapter | exercise | kind | points | difficulty | minutes | "
             "compute (s) |", "|---|---|---|---|---|---|---|"]
    for path, nb, lay in converted():
        for ex in lay.exercises:
            s = spec[ex.label]
            pts = s.get("tests", 0) + s.get("written", 0)
            name = title(nb.cells[ex.of("ex-task")[0]].source)
            compute = f"{s['compute_s']:.2f}" if "compute_s" in s else "-"
            lines.append(f"| {path.name[:2]} | `{ex.label}` {name} | "
                         f"{KIND[(ex.coded, ex.written)]} | {pts} | "
                         f"{STARS[s['difficulty']]} | {s['minutes']} | {compute} |")
    return "\n".join(lines)


def reference_answers(path, nb, lay) -> dict[str, object]:
    """label -> the chapter's reference function (its setup cell run first)."""
    ns: dict = {}
    cwd = os.getcwd()
    os.chdir(path.parent)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(nb.cells[C.setup_index(nb)].source, str(path), "exec"), ns)
            for ex in lay.exercises:
                for i in ex.of("ex-answer"):
                    exec(compile(nb.cells[i].source, str(path), "exec"), ns)
    finally:
        os.chdir(cwd)
    out = {}
    for ex in lay.exercises:
        for i in ex.of("ex-check"):
            out[ex.label] = ns[check_call(nb.cells[i].source)[1]]
    return out


def timings() -> dict[str, float]:
    """CPU seconds of each exercise's hidden tests on its reference answer."""
    import leakbook as lb
    torch.set_num_threads(1)
    out = {}
    for path, nb, lay in converted():
        refs = reference_answers(path, nb, lay)
        torch.set_num_threads(1)
        for label, fn in refs.items():
            t = time.process_time()
            with contextlib.redirect_stdout(io.StringIO()):
                ok = lb.exercises.check(label, fn, hidden=True)
            out[label] = time.process_time() - t
            if not ok:
                raise AssertionError(f"{label}: the reference answer fails its tests")
    return out


def print_timings() -> None:
    load = os.getloadavg()
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; one thread")
    for label, secs in timings().items():
        print(f"{label:24s} compute_s = {secs:.2f}")
