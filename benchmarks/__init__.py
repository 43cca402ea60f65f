"""Benchmarks: the slow measurements whose numbers the chapters show.

Each module writes one JSON file under ``chapters/data/`` (see ``REGISTRY``)
with its numbers, a ``provenance`` record (``common.provenance``) and a
``cheap`` section: the result of ``cheap()``, a configuration small enough
for a unit test to re-run and compare within the module's ``TOLERANCE``.
``make bench`` regenerates them all (``scripts/bench.py``).
"""

#: benchmark module -> the JSON file it writes under chapters/data/
REGISTRY = {
    "fc_isolation": "fc_isolation.json",
    "fedavg": "fedavg_bench.json",
    "matching_tuning": "matching_tuning.json",
    "dlg_speed": "dlg_speed.json",
    "matching": "matching_bench.json",
    "inverting": "inverting_bench.json",
    "gradinversion": "gradinversion_bench.json",
    "tensor": "tensor_bench.json",
    "labels": "labels_bench.json",
    "defenses": "defenses_bench.json",
    "linear_systems": "linear_systems_bench.json",
    "security": "security_bench.json",
}
