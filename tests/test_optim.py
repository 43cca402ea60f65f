"""Tests of the package's one L-BFGS (leakbook.optim)."""
import math
import time

import numpy as np
import pytest
import torch

from leakbook import optim


def quad(z):
    w = torch.tensor([1.0, 100.0], dtype=torch.float64)
    return float((w * z * z).sum()), 2 * w * z


def rosenbrock(z, pause=0.0):
    if pause:
        time.sleep(pause)
    a, b = z[0], z[1]
    f = (1 - a) ** 2 + 100 * (b - a * a) ** 2
    g = torch.stack([-2 * (1 - a) - 400 * a * (b - a * a), 200 * (b - a * a)])
    return float(f), g


def test_compact_history_equals_two_loop_recursion():
    rng = np.random.default_rng(0)
    n, m = 30, 5
    a = rng.standard_normal((n, n))
    a = a @ a.T + n * np.eye(n)
    mem, pairs = optim._History(n, m), []
    for _ in range(8):  # more pairs than slots: the ring buffer wraps
        s = rng.standard_normal(n)
        mem.push(s, a @ s)
        pairs = (pairs + [(s, a @ s)])[-m:]
    g = rng.standard_normal(n)
    q, alphas = g.copy(), []
    for s, y in reversed(pairs):
        alphas.append((s @ q) / (s @ y))
        q -= alphas[-1] * y
    q *= (pairs[-1][0] @ pairs[-1][1]) / (pairs[-1][1] @ pairs[-1][1])
    for (s, y), al in zip(pairs, reversed(alphas)):
        q += (al - (y @ q) / (s @ y)) * s
    assert np.allclose(mem.direction(g), -q)


def test_pairs_without_positive_curvature_are_skipped():
    mem = optim._History(3, 4)
    mem.push(np.array([1.0, 0, 0]), np.array([-1.0, 0, 0]))
    assert mem.count == 0
    g = np.array([1.0, 2.0, 3.0])
    assert np.allclose(mem.direction(g), -g / 6)  # scaled steepest descent


def test_converges_to_the_tolerance_without_an_iteration_cap():
    run = optim.lbfgs(rosenbrock, torch.tensor([-1.2, 1.0], dtype=torch.float64),
                      max_iter=None, tol=1e-20, stall=None)
    assert run["status"] == "converged" and run["f"] <= 1e-20
    assert np.allclose(run["z"].numpy(), [1.0, 1.0], atol=1e-8)
    assert run["iterations"] == len(run["history"]) - 1 > 10


def test_iteration_cap_and_callback():
    seen = []
    run = optim.lbfgs(rosenbrock, torch.tensor([-1.2, 1.0], dtype=torch.float64),
                      max_iter=5, callback=lambda it, z, f: seen.append((it, f)))
    assert run["status"] == "max_iter" and run["iterations"] == 5
    assert [it for it, _ in seen] == list(range(5))
    assert [f for _, f in seen] == run["history"][1:]


def test_stalls_when_the_objective_stops_falling():
    def flat(z):  # a plateau: no direction decreases it
        return 1.0, torch.zeros_like(z)

    run = optim.lbfgs(flat, torch.ones(3, dtype=torch.float64), max_iter=None,
                      stall=7)
    assert run["status"] == "stalled" and run["iterations"] == 7


def test_time_budget_stops_a_slow_run():
    start = time.perf_counter()
    run = optim.lbfgs(lambda z: rosenbrock(z, pause=0.02),
                      torch.tensor([-1.2, 1.0], dtype=torch.float64), max_iter=None,
                      stall=None, max_time=0.1)
    assert run["status"] == "time"
    assert run["f"] > 1e-6  # far from converged: the budget, not the tolerance
    assert run["seconds"] <= time.perf_counter() - start


def test_divergence_is_flagged():
    def nan(z):
        return math.nan, torch.zeros_like(z)

    run = optim.lbfgs(nan, torch.ones(2, dtype=torch.float64))
    assert run["status"] == "diverged"
    run = optim.lbfgs(quad, torch.ones(2, dtype=torch.float64), tol=1e-20)
    assert run["status"] == "converged"


@pytest.mark.parametrize("kw, word", [({"max_iter": -1}, "max_iter"),
                                      ({"history": 0}, "history"),
                                      ({"tol": -1.0}, "tol"),
                                      ({"stall": 0}, "stall"),
                                      ({"max_time": -2.0}, "max_time")])
def test_bad_options_are_named(kw, word):
    with pytest.raises(ValueError, match=word):
        optim.lbfgs(quad, torch.ones(2, dtype=torch.float64), **kw)
