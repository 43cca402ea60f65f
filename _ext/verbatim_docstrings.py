"""Show package docstrings verbatim in the API page, as plain text.

The package's docstrings are short plain text with tensor shapes, written to
be read in a notebook's help(). Shown as a literal block of language "text"
(class "docstring", styled by _js/leakbook.css) they render exactly as
written, are not coloured as if they were Python code, wrap on a narrow
screen, and can never break the strict build. reST inline markup that would
otherwise show raw (``name``, :func:`name`) is reduced to the bare name.
"""
import re

_ROLE = re.compile(r":(?:[a-z]+:)?[a-z]+:`~?([^`<]+?)(?:\s*<[^>]+>)?`")
_LITERAL = re.compile(r"``([^`]+)``")


def _verbatim(app, what, name, obj, options, lines):
    if not lines:
        return
    plain = [_LITERAL.sub(r"\1", _ROLE.sub(r"\1", line)) for line in lines]
    body = ["   " + line if line.strip() else "" for line in plain]
    lines[:] = [".. code-block:: text", "   :class: docstring", ""] + body + [""]


def setup(app):
    app.connect("autodoc-process-docstring", _verbatim)
    return {"parallel_read_safe": True}
