"""Print each chapter's execution time from the book build's cache."""
from pathlib import Path

from jupyter_cache import get_cache

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    cache = get_cache(ROOT / "_build" / ".jupyter_cache")
    latest = {}
    for rec in sorted(cache.list_cache_records(), key=lambda r: r.created):
        if Path(rec.uri).parent == ROOT / "chapters" and Path(rec.uri).exists():
            latest[Path(rec.uri).name] = rec.data.get("execution_seconds")
    rows = sorted(latest.items())
    if not rows:
        raise SystemExit("no executed notebooks in _build/.jupyter_cache: build the book first")
    print("chapter execution times (book build):")
    for name, secs in rows:
        print(f"  {secs:7.1f} s  {name}" if secs is not None else f"      ?    {name}")
    print(f"  {sum(s or 0 for _, s in rows):7.1f} s  total")


if __name__ == "__main__":
    main()
