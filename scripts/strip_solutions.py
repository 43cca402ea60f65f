"""Write student copies of the chapters: solutions removed, a stub cell instead.

    python scripts/strip_solutions.py [--out student]

Everything between a ``{solution-start}`` cell and its ``{solution-end}``
cell is replaced by one code cell asking for the learner's answer; the check
call that followed in the solution is kept as a hint.
"""
import argparse
import re
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]


START = re.compile(r"(`{3,}|:{3,})\{solution-start\}.*", re.S)
END = re.compile(r".*?(`{3,}|:{3,})\{solution-end\}[^\n]*\n?\1", re.S)


def strip(nb: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """Replace every solution (prose and code) by one stub code cell."""
    cells, inside, checks = [], False, []
    for cell in nb.cells:
        src = cell.source
        if inside and cell.cell_type == "code":
            checks += re.findall(r"lb\.exercises\.check\(.*\)", src)
            continue
        if inside and cell.cell_type == "markdown":
            if not END.match(src):
                continue
            inside = False
            stub = "# Your answer here.\n" + "".join(f"# Check it: {c}\n" for c in checks)
            cells.append(nbformat.v4.new_code_cell(stub))
            src = END.sub("", src, count=1)
        if cell.cell_type == "markdown" and START.search(src):
            cut = START.search(src).start()
            head, tail = src[:cut], src[cut:]
            if END.match(tail):  # a solution in prose only, inside this cell
                if head.strip():
                    cells.append(nbformat.v4.new_markdown_cell(head.strip("\n")))
                cells.append(nbformat.v4.new_code_cell("# Your answer here.\n"))
                src = END.sub("", tail, count=1)
            else:
                inside, checks, src = True, [], head
        if src.strip():
            cell.source = src.strip("\n")
            cells.append(cell)
    if inside:
        raise ValueError("a {solution-start} has no {solution-end}")
    nb.cells = cells
    return nb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "student"))
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted((ROOT / "chapters").glob("*.ipynb")):
        nbformat.write(strip(nbformat.read(path, as_version=4)), out / path.name)
        print(f"wrote {out / path.name}")


if __name__ == "__main__":
    main()
