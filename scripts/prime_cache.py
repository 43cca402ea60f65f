"""Execute the chapters into the book's jupyter-cache on every core, before
the book build: myst-nb then finds each chapter in the cache instead of
running them one after another (the build is the slowest step of make test).

A chapter already cached (same code) is not run again. A chapter that fails
is reported with its traceback and the script exits 1.
"""
from __future__ import annotations

import sys
from pathlib import Path

from jupyter_cache import get_cache
from jupyter_cache.executors import load_executor

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    cache = get_cache(ROOT / "_build" / ".jupyter_cache")
    for nb in sorted((ROOT / "chapters").glob("[0-9][0-9]_*.ipynb")):
        cache.add_nb_to_project(str(nb))
    executor = load_executor("local-parallel", cache)
    result = executor.run_and_cache(timeout=300, allow_errors=False)
    for uri in result.succeeded:
        print(f"executed {Path(uri).name}")
    failed = result.excepted + result.errored
    for uri in failed:
        record = cache.get_project_record(uri)
        print(f"FAILED {Path(uri).name}\n{record.traceback}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
