"""Serve the built book on 127.0.0.1 and drive Debian's headless Chromium.

LEAKBOOK_SITE=/path/to/html runs the tests on another build (for example the
book as it was before a change).
"""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = Path(os.environ.get("LEAKBOOK_SITE", ROOT / "_build" / "html")).resolve()
SHOTS = ROOT / "_build" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: a desktop browser and a phone (iPhone 12-15 class: 390 CSS pixels)
WIDTHS = {"desktop": (1280, 900), "phone": (390, 844)}


def book_pages() -> list[str]:
    """Every page of the book (from the _toc.yml of the build's source), as
    paths relative to the site; a page left over from an older build is not
    checked."""
    import yaml
    toc_path = SITE.parent.parent / "_toc.yml"
    if not toc_path.exists():
        return []
    toc = yaml.safe_load(toc_path.read_text())
    files = [toc["root"]] + [c["file"] for part in toc.get("parts", [])
                             for c in part.get("chapters", [])]
    return [f"{f}.html" for f in files if (SITE / f"{f}.html").exists()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(directory: Path):
    """Serve ``directory`` on a free loopback port; yields its URL (a generator
    for fixtures: the server stops when the fixture ends)."""
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                               "127.0.0.1", "-d", str(directory)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture(scope="session")
def site_url():
    if not (SITE / "index.html").exists():
        pytest.fail(f"no built book in {SITE}: run `make book` first")
    yield from serve(SITE)


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/ensure_chromium.sh")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield b
        b.close()
