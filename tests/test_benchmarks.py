"""The book's benchmark numbers come from the code as it is now.

Every registered benchmark's JSON records its provenance, and a cheap
configuration of it, re-run here, gives the numbers stored beside the full
result (within the benchmark's stated TOLERANCE). A change to the package
that would move a chapter's numbers fails this test until ``make bench`` is
re-run.
"""
import importlib
import math

import pytest

from benchmarks import REGISTRY
from benchmarks.common import DATA, load

PROVENANCE_KEYS = {"commit", "command", "started", "finished", "torch", "threads",
                   "machine", "load_average_start", "load_average_end", "wall_seconds"}


#: result files whose benchmark does not follow the protocol yet; each entry is
#: removed when its benchmark is registered (the set must end up empty)
PENDING: set[str] = set()


def test_every_result_file_has_a_registered_benchmark():
    files = {p.name for p in DATA.glob("*.json")} - PENDING
    assert files == set(REGISTRY.values()), (
        f"unregistered results: {files - set(REGISTRY.values())}; "
        f"missing results: {set(REGISTRY.values()) - files}")


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_result_records_its_provenance(name):
    record = load(REGISTRY[name])["provenance"]
    assert PROVENANCE_KEYS <= set(record), f"{name}: missing {PROVENANCE_KEYS - set(record)}"
    assert f"benchmarks.{name}" in record["command"] or f"{name}.py" in record["command"]


def _close(a, b, rel: float, abs_: float, path: str) -> list[str]:
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys differ"
        return [e for k in a for e in _close(a[k], b[k], rel, abs_, f"{path}.{k}")]
    if isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{path}: lengths differ"
        return [e for i, (u, v) in enumerate(zip(a, b))
                for e in _close(u, v, rel, abs_, f"{path}[{i}]")]
    if isinstance(a, (int, float)) and not isinstance(a, bool) and a is not None:
        if math.isinf(a) and a == b:
            return []
        if not math.isclose(a, b, rel_tol=rel, abs_tol=abs_):
            return [f"{path}: committed {b}, now {a}"]
        return []
    return [] if a == b else [f"{path}: committed {b!r}, now {a!r}"]


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_cheap_configuration_reproduces_the_committed_numbers(name):
    module = importlib.import_module(f"benchmarks.{name}")
    tol = getattr(module, "TOLERANCE", {"rel": 1e-6, "abs": 1e-9})
    committed = load(REGISTRY[name])["cheap"]
    errors = _close(module.cheap(), committed, tol["rel"], tol["abs"], name)
    assert not errors, "\n".join(errors[:20])
