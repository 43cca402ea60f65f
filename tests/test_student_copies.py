"""Student copies keep the exercises and drop every solution."""
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from strip_solutions import strip  # noqa: E402


def test_student_copies_have_no_solutions():
    for path in sorted((ROOT / "chapters").glob("*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        n_solutions = sum("{solution-start}" in c.source for c in nb.cells)
        student = strip(nb)
        text = "\n".join(c.source for c in student.cells)
        assert "{solution-start}" not in text and "{solution-end}" not in text
        assert text.count("# Your answer here.") == n_solutions
        assert "{exercise-start}" in text
