"""Sphinx extension of the solution-free book (``make book STUDENT=1``).

After sphinx-exercise has merged each ``{solution-start}`` ... ``{solution-end}``
pair into one solution node (with the notebook cells between them), this
removes every solution node from the page, so neither the HTML nor the search
index holds a solution. A chapter whose exercises are not yet converted to
the course kit (no ``ex-*`` cell tags) loses its whole exercise part, from
the first exercise to the end of that section, as its student copy does: its
solutions are not marked reliably enough to cut them out one by one. The
chapters still execute as usual (from the cache of ``make book``).
"""
import sys
from pathlib import Path

from docutils import nodes

ROOT = Path(__file__).resolve().parents[1]
NOTE = ("The exercises of this chapter are being converted to the course kit "
        "and are not part of the student edition yet.")


def _kinds():
    from sphinx_exercise import nodes as ex
    solutions = tuple(getattr(ex, n) for n in (
        "solution_node", "solution_start_node", "solution_end_node") if hasattr(ex, n))
    exercises = tuple(getattr(ex, n) for n in (
        "exercise_node", "exercise_enumerable_node", "exercise_end_node")
        if hasattr(ex, n))
    return solutions, exercises


def _pending(app, docname: str) -> bool:
    path = Path(app.env.doc2path(docname))
    if path.suffix != ".ipynb":
        return False
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import nbformat

    from grading.notebook import has_directive, layout
    nb = nbformat.read(path, as_version=4)
    return any(has_directive(c) for c in nb.cells) and not layout(nb).converted


def _cut_exercise_part(doctree, kinds) -> None:
    first = next(iter(doctree.findall(lambda n: isinstance(n, kinds))), None)
    if first is None:
        return
    child = first
    while not isinstance(child.parent, (nodes.section, nodes.document)):
        child = child.parent
    parent = child.parent
    start = parent.index(child)
    for node in list(parent.children[start:]):
        parent.remove(node)
    parent += nodes.note("", nodes.paragraph(text=NOTE))


def remove_solutions(app, doctree: nodes.document) -> None:
    solutions, exercises = _kinds()
    if _pending(app, app.env.docname):
        _cut_exercise_part(doctree, solutions + exercises)
    for node in list(doctree.findall(lambda n: isinstance(n, solutions))):
        node.parent.remove(node)
    registry = getattr(app.env, "sphinx_exercise_registry", {})
    doc = app.env.docname
    for label in [k for k, v in registry.items()
                  if v.get("type") == "solution" and v.get("docname") == doc]:
        del registry[label]


def setup(app):
    app.connect("doctree-read", remove_solutions)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
