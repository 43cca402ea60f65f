"""Turn a percent-format script into a notebook without outputs (an authoring aid).

    python scripts/py2nb.py chapters/src/02_x.py chapters/02_x.ipynb

Cells start with ``# %%`` (code) or ``# %% [markdown]``; tags follow as
``# %% tags=["hide-input"]``. Markdown lines drop their leading ``# ``.
"""
import json
import re
import sys

import nbformat

HEADER = re.compile(r"^# %%(?P<md> \[markdown\])?(?: tags=(?P<tags>\[.*\]))?\s*$")


def convert(text: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python",
                                  "name": "python3"},
                   "language_info": {"name": "python"}}
    cell_lines, kind, tags = None, None, []

    def flush():
        if cell_lines is None:
            return
        body = "\n".join(cell_lines).strip("\n")
        if kind == "md":
            body = "\n".join(l[2:] if l.startswith("# ") else l.lstrip("#") for l in body.splitlines())
            cell = nbformat.v4.new_markdown_cell(body)
        else:
            cell = nbformat.v4.new_code_cell(body)
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)

    for line in text.splitlines():
        m = HEADER.match(line)
        if m:
            flush()
            cell_lines, kind = [], "md" if m.group("md") else "code"
            tags = json.loads(m.group("tags")) if m.group("tags") else []
        elif cell_lines is not None:
            cell_lines.append(line)
    flush()
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"
    return nb


if __name__ == "__main__":
    src, dst = sys.argv[1:3]
    nbformat.write(convert(open(src).read()), dst)
