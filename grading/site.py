"""Build the book without solutions: ``make book STUDENT=1``.

The student site is the normal book with three changes, made in a generated
configuration under ``_build/student/`` (``_config.yml`` and ``_toc.yml`` stay
as they are): the ``sphinx_student`` extension removes every solution from
the pages (and so from the search index), the pages offer no download or
copy of their source notebook, and the instructor guide is left out. It
reuses the execution cache of ``make book``, so after a full build it only
re-renders. The HTML lands in ``_build/student/_build/html``.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from .course import ROOT

GUIDE = "instructor"


def student_config() -> dict:
    cfg = yaml.safe_load((ROOT / "_config.yml").read_text())
    sphinx = cfg.setdefault("sphinx", {})
    local = {k: str((ROOT / v).resolve())
             for k, v in (sphinx.get("local_extensions") or {}).items()}
    local["sphinx_student"] = str(ROOT / "grading")
    sphinx["local_extensions"] = local
    conf = sphinx.setdefault("config", {})
    conf["html_copy_source"] = False
    conf["html_show_sourcelink"] = False
    theme = conf.setdefault("html_theme_options", {})
    theme["use_download_button"] = False
    theme["use_source_button"] = False
    cfg.setdefault("execute", {})["cache"] = str(ROOT / "_build" / ".jupyter_cache")
    cfg["title"] = cfg.get("title", "leakbook") + " (student edition)"
    return cfg


def _keep(entry, chapters) -> bool:
    name = entry.get("file", "") if isinstance(entry, dict) else ""
    if name == GUIDE:
        return False
    if chapters is not None and name.startswith("chapters/"):
        return name.split("/", 1)[1][:2] in chapters
    return True


def _filter(entries: list, chapters) -> list:
    out = []
    for e in entries:
        if not _keep(e, chapters):
            continue
        if isinstance(e, dict):
            e = dict(e)
            for key in ("chapters", "sections", "parts"):
                if key in e:
                    e[key] = _filter(e[key], chapters)
            if any(k in e for k in ("chapters", "sections")) and not (
                    e.get("chapters") or e.get("sections")) and "file" not in e:
                continue      # a part left empty
        out.append(e)
    return out


def student_toc(chapters: set[str] | None = None) -> dict:
    """The table of contents without the instructor guide and, if ``chapters``
    is given (two-digit numbers), without the chapters not yet handed out."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    for key in ("chapters", "sections", "parts"):
        if key in toc:
            toc[key] = _filter(toc[key], chapters)
    return toc


def build(out: Path, chapters: set[str] | None = None, strict: bool = False) -> int:
    """Write the configuration and run jupyter-book; its exit code."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "_config.yml").write_text(yaml.safe_dump(student_config(), sort_keys=False))
    (out / "_toc.yml").write_text(yaml.safe_dump(student_toc(chapters),
                                                 sort_keys=False))
    html = out / "_build" / "html"
    if html.exists():
        shutil.rmtree(html)
    jb = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(jb), "build", str(ROOT), "--config", str(out / "_config.yml"),
           "--toc", str(out / "_toc.yml"), "--path-output", str(out), "--all",
           "--keep-going"]
    if strict:
        cmd.append("-W")
    code = subprocess.call(cmd, cwd=ROOT)
    if code == 0:
        print(f"\nThe book without solutions is in {html}/index.html")
    return code
