"""One L-BFGS for every attack that optimises (chapters 04, 05 and 07).

A small float64 implementation on flat vectors: the compact representation of
Byrd, Nocedal & Schnabel (a few matrix-vector products per step), an Armijo
backtracking line search that shrinks tenfold on NaN, and stopping rules on a
tolerance, a stall, a time budget and an optional iteration cap.
``torch.optim.LBFGS`` spends a large share of each iteration in bookkeeping at
history 100 and has no line search by default; this one is the package's
only quasi-Newton solver.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch
from scipy.linalg import solve_triangular

from . import checks
from .threads import one_thread


class _History:
    """L-BFGS curvature pairs in a ring buffer, in the compact (matrix) form.

    Byrd, Nocedal & Schnabel's representation of the inverse Hessian needs
    only a few matrix-vector products per step instead of 2m small loops.
    The pairs are stacked in one (2m, n) array [S; Y], so a step reads it
    four times (products with g, the new s and the new y, one to combine),
    and the m x m blocks S^T Y and Y^T Y are updated one row and column at a
    time.
    """

    def __init__(self, n: int, size: int):
        self.size, self.count, self.head = size, 0, 0
        self.pairs = np.zeros((2 * size, n))         # rows: s_0..s_{m-1}, y_0..y_{m-1}
        self.gram = np.zeros((2 * size, 2 * size))   # inner products of those rows
        self.order = np.zeros(0, dtype=int)          # filled slots, oldest first

    def push(self, s: np.ndarray, y: np.ndarray) -> None:
        sy = float(s @ y)
        if sy <= 1e-10 * float(y @ y):  # no positive curvature: skip the pair
            return
        k, m = self.head, self.size
        self.pairs[k], self.pairs[m + k] = s, y
        ps, py = self.pairs @ s, self.pairs @ y  # two gemv beat one thin gemm
        self.gram[:, k] = self.gram[k, :] = ps
        self.gram[:, m + k] = self.gram[m + k, :] = py
        self.head = (k + 1) % m
        self.count = min(self.count + 1, m)
        self.order = (self.head - self.count + np.arange(self.count)) % m

    def direction(self, g: np.ndarray) -> np.ndarray:
        """-H g (steepest descent, scaled, if the history is empty)."""
        if self.count == 0:
            return -g * min(1.0, 1.0 / max(np.abs(g).sum(), 1e-300))
        m, idx = self.size, self.order
        sy = self.gram[np.ix_(idx, m + idx)]        # s_i . y_j
        yy = self.gram[np.ix_(m + idx, m + idx)]
        newest = idx[-1]
        gamma = self.gram[newest, m + newest] / self.gram[m + newest, m + newest]
        v = self.pairs @ g
        a, b = v[idx], v[m + idx]
        r = np.triu(sy)
        u = solve_triangular(r, a, lower=False)
        p1 = solve_triangular(r, np.diag(sy) * u + gamma * (yy @ u) - gamma * b,
                              lower=False, trans="T")
        c = np.zeros(2 * m)
        c[idx], c[m + idx] = p1, -gamma * u
        return -(gamma * g + c @ self.pairs)

    def reset(self) -> None:
        self.count, self.order = 0, np.zeros(0, dtype=int)


def _check_options(max_iter, history, tol, stall, max_time) -> None:
    if max_iter is not None:
        checks.integer(max_iter, "max_iter", minimum=0,
                       what="None or an integer >= 0")
    checks.integer(history, "history", minimum=1, what="a positive integer")
    checks.number(tol, "tol", minimum=0)
    if stall is not None:
        checks.integer(stall, "stall", minimum=1, what="None or a positive integer")
    if max_time is not None:
        checks.number(max_time, "max_time", minimum=0, finite=False)


def lbfgs(fun: Callable, z0: torch.Tensor, max_iter: int | None = 500,
          history: int = 100, tol: float = 0.0, stall: int | None = 50,
          max_time: float | None = None, callback: Callable | None = None, *,
          stall_decrease: float = 1e-3) -> dict:
    """Minimise ``fun(z) -> (f, grad)`` by L-BFGS with a backtracking line search.

    z0: (n,) start (used in float64). Stops when f <= tol ("converged"), after
    ``stall`` iterations in which the best f did not fall by the fraction
    ``stall_decrease`` ("stalled"; never if None), after ``max_time`` seconds
    ("time"), or at ``max_iter`` iterations ("max_iter"; no cap if None).
    callback(iteration, z, f) after every iteration.
    Returns dict(z, f, history, status, evaluations, iterations, seconds).
    Status "diverged" means f became NaN/infinite or grew 1e6-fold; "line
    search failed" that 25 backtracking steps found no decrease.
    """
    checks.function(fun, "fun")
    checks.tensor(z0, "z0", "float", nonempty=True)
    _check_options(max_iter, history, tol, stall, max_time)
    if callback is not None:
        checks.function(callback, "callback")
    stall_decrease = checks.number(stall_decrease, "stall_decrease", minimum=0,
                                   below=1)
    with one_thread():
        return _lbfgs(fun, z0, max_iter, history, tol, stall, max_time, callback,
                      stall_decrease)


def _lbfgs(fun, z0, max_iter, history, tol, stall, max_time, callback,
           stall_decrease) -> dict:
    start = time.perf_counter()
    z = z0.detach().to(torch.float64).flatten().clone()
    f, g = fun(z)
    hist, evals = [f], 1

    def result(zz, status):
        return {"z": torch.from_numpy(zz) if isinstance(zz, np.ndarray) else zz,
                "f": f, "history": hist, "status": status, "evaluations": evals,
                "iterations": len(hist) - 1, "seconds": time.perf_counter() - start}

    if not math.isfinite(f):
        return result(z, "diverged")
    mem = _History(z.numel(), history)
    zn, gn = z.numpy(), g.detach().to(torch.float64).numpy()
    best, since, status, it = f, 0, "max_iter", 0
    while max_iter is None or it < max_iter:
        d = mem.direction(gn)
        gtd = float(gn @ d)
        if not gtd < 0:  # not a descent direction: forget the curvature
            mem.reset()
            d, gtd = mem.direction(gn), -float(gn @ gn)
        t, accepted = 1.0, False
        for _ in range(25):  # Armijo backtracking
            f_new, g_new = fun(torch.from_numpy(zn + t * d))
            evals += 1
            if math.isfinite(f_new) and f_new <= f + 1e-4 * t * gtd:
                accepted = True
                break
            t *= 0.5 if math.isfinite(f_new) else 0.1
        if not accepted:
            status = "line search failed"
            break
        z_new, g_new = zn + t * d, g_new.detach().to(torch.float64).numpy()
        mem.push(z_new - zn, g_new - gn)
        zn, gn, f = z_new, g_new, f_new
        hist.append(f)
        if callback is not None:
            callback(it, torch.from_numpy(zn), f)
        it += 1
        if f <= tol:
            status = "converged"
            break
        if f > 1e6 * hist[0]:
            status = "diverged"
            break
        if f < best * (1 - stall_decrease):
            best, since = f, 0
        else:
            since += 1
            if stall is not None and since >= stall:
                status = "stalled"
                break
        if max_time is not None and time.perf_counter() - start > max_time:
            status = "time"
            break
    return result(zn, status)
