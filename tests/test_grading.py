"""The grading self-test: nbgrader grades the reference answers (full points),
the untouched student copies (zero) and a set of cheating answers (zero), and
writes one CSV row per submission and feedback that gives nothing away.

It runs `python -m grading grade` on submissions made here from the chapters
(the reference answers) and from fresh student copies; each submission runs
its setup cell and exercise cells only (a few seconds each).
"""
import csv
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from grading import course as C  # noqa: E402
from grading import grade as G  # noqa: E402

CHEATS = {
    # every helper called straight from the package
    "cheat-package": {
        "ch01-ex-fedavg": '''
def fedavg_update(model, x, y, lr, steps):
    return lb.fl.client_update(model, x, y, lr=lr, local_steps=steps)''',
        "ch01-ex-count": '''
def update_size(num_classes, in_channels, image_size):
    net = lb.models.build("lenet_dlg", num_classes=num_classes,
                          in_channels=in_channels, image_size=image_size)
    return sum(p.numel() for p in net.parameters())''',
        "ch01-ex-recover": '''
def recover_input(grad_weight, grad_bias):
    return lb.attacks.invert_fc(grad_weight, grad_bias).input''',
        "ch02-ex-rows": '''
def isolating_rows(layer, x):
    return (layer(x) > 0).any(0)''',
        "ch02-ex-certify": '''
def certified_inputs(grad_weight, grad_bias, tol):
    return lb.attacks.invert_fc(grad_weight, grad_bias, agree_tol=tol).samples''',
        "ch02-ex-rank": '''
def delta_rank(logits, labels):
    return min(len(labels), logits.shape[1] - 1)''',
    },
    # aliases taken before the tests, values pasted in, the truth of the notebook
    "cheat-alias": {
        "ch01-ex-fedavg": '''
cu = lb.fl.client_update


def fedavg_update(model, x, y, lr, steps):
    return cu(model, x, y, lr=lr, local_steps=steps)''',
        "ch01-ex-count": '''
def update_size(num_classes, in_channels, image_size):
    return 85036''',
        "ch01-ex-recover": '''
def recover_input(grad_weight, grad_bias):
    return secret.flatten()''',
        "ch02-ex-rows": '''
def isolating_rows(layer, x):
    return (layer(x) > 0).sum(0) <= 1''',
        "ch02-ex-certify": '''
def certified_inputs(grad_weight, grad_bias, tol):
    keep = grad_bias != 0
    return grad_weight[keep] / grad_bias[keep, None]''',
        "ch02-ex-rank": '''
def delta_rank(logits, labels):
    for r in range(20):
        if lb.exercises.check("ch02-ex-rank", lambda *a: r):
            return r''',
    },
    # attacks on the grader itself, and a near miss (+0.9)
    "cheat-hack": {
        "ch01-ex-fedavg": '''
import sys


def fedavg_update(model, x, y, lr, steps):
    saved = sys.getprofile()
    sys.setprofile(None)
    try:
        fn = getattr(lb.fl, "client_update")
        return fn(model, x, y, lr=lr, local_steps=steps)
    finally:
        sys.setprofile(saved)''',
        "ch01-ex-count": '''
def update_size(num_classes, in_channels, image_size):
    side = image_size
    for stride in (2, 2, 1):
        side = (side - 1) // stride + 1
    convs = (12 * in_channels * 25 + 12) + 2 * (12 * 12 * 25 + 12)
    return convs + (12 * side * side + 1) * num_classes + 0.9''',
        "ch01-ex-recover": '''
lb.exercises.check = lambda *args, **kwargs: True


def recover_input(grad_weight, grad_bias):
    return grad_weight[0]''',
        "ch02-ex-rows": '''
import torch


def isolating_rows(layer, x):
    torch.equal = lambda *args: True
    return torch.zeros(layer.out_features, dtype=torch.bool)''',
        "ch02-ex-certify": '''
def certified_inputs(grad_weight, grad_bias, tol):
    lb.exercises.verdict = lambda ok, hint="": True
    return grad_weight[:0]''',
        "ch02-ex-rank": '''
@print
def delta_rank(logits, labels):
    return 9''',
    },
}


def _chapters():
    return [p for p in C.chapter_paths() if p.name[:2] in ("01", "02")]


def _fill(nb, answers: dict[str, str]):
    """A student copy with the answer cells of ``answers`` replaced."""
    for cell in nb.cells:
        gid = cell.metadata.get("nbgrader", {}).get("grade_id", "")
        label = gid.rsplit("-", 1)[0]
        if gid.endswith("-answer") and label in answers:
            cell.source = answers[label].strip("\n")
    return nb


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    base = tmp_path_factory.mktemp("grading")
    copies, subs = base / "student", base / "submissions"
    C.write_student(copies, base / "course0")
    for path in _chapters():
        blank = C.read(copies / path.name)
        for who, nb in [("reference", C.read(path)), ("untouched", blank)]:
            (subs / who).mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, subs / who / path.name)
        # the reference answers pasted into a copy whose cell metadata is lost
        plain = C.read(copies / path.name)
        ref = {c.id: c for c in C.read(path).cells}
        for cell in plain.cells:
            tags = cell.metadata.get("tags", [])
            if "ex-answer" in tags:
                cell.source = ref[cell.id].source
            cell.metadata = {}
        (subs / "pasted").mkdir(exist_ok=True)
        nbformat.write(plain, subs / "pasted" / f"{path.stem}-mine.ipynb")
        for who, answers in CHEATS.items():
            (subs / who).mkdir(exist_ok=True)
            nbformat.write(_fill(C.read(copies / path.name), answers),
                           subs / who / path.name)
    out = base / "out"
    results = G.grade(subs, out)
    return out, results


def _rows(out: Path, aid: str) -> dict[str, dict]:
    with open(out / f"grades_{aid}.csv") as f:
        return {r["student"]: r for r in csv.DictReader(f)}


def test_reference_answers_get_full_points_and_cheats_zero(graded):
    out, _ = graded
    for aid, max_auto, n_written in [("ch01", 8, 2), ("ch02", 8, 1)]:
        rows = _rows(out, aid)
        print(f"\ngrades_{aid}.csv")
        print((out / f"grades_{aid}.csv").read_text())
        for who in ("reference", "pasted"):
            assert float(rows[who]["auto"]) == max_auto, rows[who]
        assert rows["reference"]["written_pending"] == str(n_written)
        for who in ("untouched", *CHEATS):
            assert float(rows[who]["total"]) == 0, rows[who]
            assert rows[who]["written_pending"] == "0"
        assert f"{aid}-ex-" in ",".join(rows["reference"]), "points per exercise"


def test_feedback_explains_without_giving_the_answer(graded):
    out, _ = graded
    fb = out / "feedback"
    blank = (fb / "untouched" / "ch01.md").read_text()
    assert "NotImplementedError" in blank and "Correct" not in blank
    package = (fb / "cheat-package" / "ch01.md").read_text()
    assert package.count("write it yourself") == 3
    alias = (fb / "cheat-alias" / "ch01.md").read_text()
    assert "NameError" in alias and "the grader dropped `cu = lb.fl.client_update`" in alias
    hack = (fb / "cheat-hack" / "ch01.md").read_text()
    assert "the grader dropped `lb.exercises.check = " in hack
    assert "whole number" in hack and "write it yourself" in hack
    hack2 = (fb / "cheat-hack" / "ch02.md").read_text()
    assert "replaced library code" in hack2 and "dropped `@print" in hack2
    for md in fb.glob("*/*.md"):
        assert "85036" not in md.read_text(), md    # the chapter's LeNet count
    for page in fb.glob("*/*.html"):
        assert "hidden=True" not in page.read_text(), page


def test_written_answers_graded_by_hand_enter_the_csv(graded):
    """The instructor's scores (formgrader writes them to the gradebook) show up
    when the grades are exported again; unchanged submissions are not rerun."""
    from nbgrader.api import Gradebook
    out, first = graded
    course = out / "course"
    with Gradebook(f"sqlite:///{course / 'gradebook.db'}") as gb:
        for gid, pts in [("ch01-ex-secagg-written", 2), ("ch01-ex-localsteps-written", 1)]:
            grade = gb.find_grade(gid, "01_what_the_server_sees", "ch01", "reference")
            grade.manual_score = pts
            grade.needs_manual_grade = False
        gb.db.commit()
    before = (course / "autograded" / "untouched" / "ch01").stat().st_mtime
    subs = out.parent / "submissions"
    G.grade(subs, out, html=False)
    row = _rows(out, "ch01")["reference"]
    assert row["written"] == "3" and row["total"] == "11" and row["written_pending"] == "0"
    assert (course / "autograded" / "untouched" / "ch01").stat().st_mtime == before


def test_hidden_cases_follow_the_salt(tmp_path):
    """With another salt the same answers still pass: nothing is keyed to the
    public default."""
    subs = tmp_path / "subs"
    (subs / "reference").mkdir(parents=True)
    path = _chapters()[1]
    nbformat.write(C.read(path), subs / "reference" / path.name)
    G.grade(subs, tmp_path / "out", salt="a-secret-of-this-term", html=False)
    row = _rows(tmp_path / "out", "ch02")["reference"]
    assert row["auto"] == "8"
