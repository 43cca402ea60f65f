"""leakbook.isolation: which inputs a ReLU layer's gradient returns exactly."""
import json
from pathlib import Path

import pytest
import torch

from leakbook.isolation import isolation_probabilities, isolation_trial

DATA = Path(__file__).resolve().parents[1] / "chapters" / "data" / "fc_isolation.json"


def test_one_sample_leaks_through_any_live_row():
    out = isolation_trial(32, 1, 0)
    assert out == {"leaked": 1, "certified": 1, "false_certified": 0,
                   "isolating_rows": out["isolating_rows"]}
    assert out["isolating_rows"] > 1


def test_counts_are_consistent_and_never_certify_a_mixture():
    for seed in range(3):
        out = isolation_trial(256, 16, seed)
        assert 0 <= out["certified"] <= out["leaked"] <= 16
        assert out["false_certified"] == 0
        assert out["leaked"] <= out["isolating_rows"]


def test_a_wide_layer_returns_more_of_the_batch_than_a_narrow_one():
    narrow = sum(isolation_trial(8, 8, s)["leaked"] for s in range(3))
    wide = sum(isolation_trial(1024, 8, s)["leaked"] for s in range(3))
    assert wide > narrow


def test_isolation_probabilities_are_shares_that_sum_to_at_most_one():
    q = isolation_probabilities(8, 0, rows=4000)
    assert q.shape == (8,) and q.dtype == torch.float64
    assert (q >= 0).all() and q.sum() <= 1
    assert torch.equal(q, isolation_probabilities(8, 0, rows=4000))  # seeded


def test_the_package_reproduces_the_stored_benchmark_cell():
    bench = json.loads(DATA.read_text())
    bi, wi = bench["batch_sizes"].index(16), bench["widths"].index(256)
    again = [isolation_trial(256, 16, t)["leaked"] for t in range(3)]
    assert again == bench["leaked"][bi][wi][:3]


@pytest.mark.parametrize("kwargs, error", [
    (dict(width=0, batch=4, seed=0), ValueError),
    (dict(width=8, batch=2.0, seed=0), TypeError),
])
def test_bad_sizes_are_named(kwargs, error):
    with pytest.raises(error, match="width|batch"):
        isolation_trial(**kwargs)
    with pytest.raises((ValueError, TypeError), match="rows"):
        isolation_probabilities(4, 0, rows=0)
