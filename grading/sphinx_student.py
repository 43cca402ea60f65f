"""Sphinx extension of the solution-free book (``make book STUDENT=1``).

After sphinx-exercise has merged each ``{solution-start}`` ... ``{solution-end}``
pair into one solution node (with the notebook cells between them), this
removes every solution node from the page, so neither the HTML nor the search
index holds a solution. The chapters still execute as usual (from the build
cache when the full book was built first).
"""
from docutils import nodes


def _solution_types():
    from sphinx_exercise import nodes as ex
    return tuple(getattr(ex, name) for name in (
        "solution_node", "solution_start_node", "solution_end_node")
        if hasattr(ex, name))


def remove_solutions(app, doctree: nodes.document) -> None:
    kinds = _solution_types()
    for node in list(doctree.findall(lambda n: isinstance(n, kinds))):
        node.parent.remove(node)
    registry = getattr(app.env, "sphinx_exercise_registry", {})
    for label in [k for k, v in registry.items() if v.get("type") == "solution"]:
        del registry[label]


def setup(app):
    app.connect("doctree-read", remove_solutions)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
