"""Regenerate every benchmark result under chapters/data/ (``make bench``).

    python scripts/bench.py             # all of them, one after the other
    python scripts/bench.py matching    # only the named ones

Each benchmark runs in its own process at one thread (as the book's numbers
were measured); its wall time is printed. Run on a quiet machine: some
benchmarks measure time.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import REGISTRY  # noqa: E402


def main(names: list[str]) -> int:
    unknown = sorted(set(names) - set(REGISTRY))
    if unknown:
        print(f"unknown benchmarks {unknown}; known: {sorted(REGISTRY)}", file=sys.stderr)
        return 2
    total = time.time()
    for name in names or list(REGISTRY):
        start = time.time()
        print(f"== {name} -> chapters/data/{REGISTRY[name]}", flush=True)
        done = subprocess.run([sys.executable, "-m", f"benchmarks.{name}"], cwd=ROOT,
                              env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
        if done.returncode:
            print(f"{name} failed (exit {done.returncode})", file=sys.stderr)
            return done.returncode
        print(f"== {name}: {time.time() - start:.0f} s", flush=True)
    print(f"all benchmarks: {time.time() - total:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
