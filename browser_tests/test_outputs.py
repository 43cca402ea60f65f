"""The printed outputs of the executed chapters follow the book's rules.

Read from the book build's execution cache (``_build/.jupyter_cache``, the
record that matches each chapter's current code), without a browser: printed lines fit the column (at most 80 characters), and
no cell leaves a stray repr of an object (``<matplotlib.legend.Legend at 0x..>``,
``np.float64(3.72)``, a widget's return value) under its figure.
"""
import json
import re

import pytest

from conftest import SITE

CACHE = SITE.parent / ".jupyter_cache"
SOURCES = sorted((SITE.parent.parent / "chapters").glob("*.ipynb"))
MAX_LINE = 80
#: reprs no reader should see: in a printed line anywhere, or as a cell's value
STRAY_ANYWHERE = re.compile(r"<[\w.]+(?: object)? at 0x[0-9a-f]+>|\bnp\.(?:float|int|bool_?)\w*\(")
STRAY_VALUE = re.compile(r"^\[?<matplotlib|^Text\(|^interactive\(|^<Figure size|^\(<Figure|"
                         r"^<IPython\.core")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _texts(cell):
    for out in cell.get("outputs", []):
        if out["output_type"] == "stream" and out.get("name") == "stdout":
            yield "stream", "".join(out["text"])
        elif out["output_type"] in ("execute_result", "display_data"):
            data = out.get("data", {})
            if set(data) == {"text/plain"}:  # nothing richer to show instead
                yield out["output_type"], "".join(data["text/plain"])


def executed(nb_path):
    """The executed version of a chapter from the build's cache, or None."""
    import nbformat
    from jupyter_cache import get_cache
    from jupyter_cache.base import CachingError
    if not CACHE.is_dir():
        return None
    cache = get_cache(CACHE)
    try:
        record = cache.match_cache_notebook(nbformat.read(nb_path, as_version=4))
    except (KeyError, CachingError):
        return None
    return json.loads(nbformat.writes(cache.get_cache_bundle(record.pk).nb))


@pytest.mark.parametrize("nb_path", SOURCES, ids=lambda p: p.stem)
def test_printed_lines_fit_and_no_stray_reprs(nb_path):
    nb = executed(nb_path)
    if nb is None:
        pytest.skip(f"{nb_path.name} is not in the build's execution cache: build the book")
    cells = nb["cells"]
    long_lines, stray = [], []
    for i, cell in enumerate(c for c in cells if c["cell_type"] == "code"):
        for kind, text in _texts(cell):
            text = ANSI.sub("", text)
            long_lines += [f"code cell {i}: {len(line)} chars: {line[:50]}..."
                           for line in text.splitlines() if len(line) > MAX_LINE]
            found = STRAY_ANYWHERE.search(text) or (
                kind == "execute_result" and STRAY_VALUE.search(text.strip()))
            if found:
                stray.append(f"code cell {i}: ...{text[max(0, found.start() - 20):][:70]}")
    assert not (long_lines or stray), (
        f"stray reprs (end the cell with ';' or plt.show()): {stray[:5]}; "
        f"{len(long_lines)} printed lines over {MAX_LINE} characters: {long_lines[:5]}")
