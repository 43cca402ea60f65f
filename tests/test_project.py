"""The project's own files agree with each other."""
import json
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pyproject_requirements() -> set[str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = set(meta["dependencies"])
    for extra in meta["optional-dependencies"].values():
        reqs |= set(extra)
    return {r.replace(" ", "") for r in reqs}


def _environment_requirements() -> set[str]:
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    return {r.replace(" ", "") for r in pip if not r.startswith("-e")}


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    missing = _pyproject_requirements() - _environment_requirements()
    extra = _environment_requirements() - _pyproject_requirements()
    assert not missing and not extra, f"environment.yml lacks {missing}, adds {extra}"


def test_torch_is_pinned_to_the_cpu_build():
    assert "torch==2.13.0" in _pyproject_requirements()


def test_notebooks_are_committed_without_outputs():
    for nb_path in sorted((ROOT / "chapters").glob("*.ipynb")):
        nb = json.loads(nb_path.read_text())
        dirty = [i for i, c in enumerate(nb["cells"])
                 if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
        assert not dirty, f"{nb_path.name}: cells {dirty} carry outputs; strip them"


def test_every_chapter_is_in_the_table_of_contents():
    toc = (ROOT / "_toc.yml").read_text()
    for nb_path in sorted((ROOT / "chapters").glob("*.ipynb")):
        assert f"chapters/{nb_path.stem}" in toc, f"{nb_path.name} is not in _toc.yml"


def test_every_exercise_has_a_solution_and_a_check():
    for nb_path in sorted((ROOT / "chapters").glob("*.ipynb")):
        cells = json.loads(nb_path.read_text())["cells"]
        text = "\n".join("".join(c["source"]) for c in cells)
        labels = [line.split(":label:")[1].strip() for line in text.splitlines()
                  if line.startswith(":label:")]
        assert labels, f"{nb_path.name} has no exercises"
        for label in labels:
            assert f"{{solution-start}} {label}" in text, f"{nb_path.name}: {label} has no solution"
        assert "lb.exercises." in text, f"{nb_path.name}: no auto-checked exercise"


def test_cited_keys_exist_in_references_bib():
    import re
    bib = (ROOT / "references.bib").read_text()
    keys = set(re.findall(r"@\w+\{([^,]+),", bib))
    sources = [p.read_text() for p in [*ROOT.glob("chapters/*.ipynb"), ROOT / "intro.md"]]
    cited = {k.strip() for s in sources for group in re.findall(r"\{(?:foot)?cite[:a-z]*\}`([^`]+)`", s)
             for k in group.split(",")}
    assert cited and cited <= keys, f"cited but not in references.bib: {cited - keys}"


def test_titles_carry_the_chapter_number_and_sections_none():
    """The title is '# 7. Title' (the book's chapter number, from the file name,
    so a gap in the plan keeps the numbers readers see in the text); section
    headings carry no hand-made numbers."""
    import re
    for nb_path in sorted((ROOT / "chapters").glob("*.ipynb")):
        cells = [c for c in json.loads(nb_path.read_text())["cells"] if c["cell_type"] == "markdown"]
        title = "".join(cells[0]["source"]).splitlines()[0]
        assert title.startswith(f"# {int(nb_path.name[:2])}. "), f"{nb_path.name}: title {title!r}"
        for cell in cells:
            src = "".join(cell["source"])
            bad = re.findall(r"(?m)^#{2,6}\s+\d+(?:\.\d+)*\.?\s", src)
            assert not bad, f"{nb_path.name}: numbered heading {bad}"
