"""Show package docstrings verbatim in the API page.

The package's docstrings are short plain text with tensor shapes, written to
be read in a notebook's help(); shown as a literal block they render exactly
as written and can never break the strict build.
"""


def _verbatim(app, what, name, obj, options, lines):
    if not lines:
        return
    body = ["    " + line if line.strip() else "" for line in lines]
    lines[:] = ["::", ""] + body + [""]


def setup(app):
    app.connect("autodoc-process-docstring", _verbatim)
    return {"parallel_read_safe": True}
