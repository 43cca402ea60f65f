"""One L-BFGS for every attack that optimises (chapters 04, 05 and 07).

A small float64 implementation on flat vectors: the compact representation of
Byrd, Nocedal & Schnabel (a few matrix-vector products per step), an Armijo
backtracking line search that shrinks tenfold on NaN, and stopping rules on a
tolerance, a stall, an iteration cap and a time budget. ``torch.optim.LBFGS``
spends about half of each iteration in bookkeeping at history 100 and has no
line search by default; this one is the package's only quasi-Newton solver.
"""
from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np
import torch
from scipy.linalg import solve_triangular

class _History:
    """L-BFGS curvature pairs in a ring buffer, in the compact (matrix) form.

    Byrd, Nocedal & Schnabel's representation of the inverse Hessian needs
    only a few matrix-vector products per step instead of 2m small loops; the
    m x m products S^T Y and Y^T Y are updated one row and column at a time.
    """

    def __init__(self, n: int, size: int):
        self.s, self.y = np.zeros((size, n)), np.zeros((size, n))
        self.sy, self.yy = np.zeros((size, size)), np.zeros((size, size))
        self.size, self.count, self.head = size, 0, 0

    def push(self, s: np.ndarray, y: np.ndarray) -> None:
        sy = float(s @ y)
        if sy <= 1e-10 * float(y @ y):  # no positive curvature: skip the pair
            return
        k = self.head
        self.s[k], self.y[k] = s, y
        self.sy[k, :], self.sy[:, k] = self.y @ s, self.s @ y
        self.yy[k, :] = self.yy[:, k] = self.y @ y
        self.head = (k + 1) % self.size
        self.count = min(self.count + 1, self.size)

    def direction(self, g: np.ndarray) -> np.ndarray:
        """-H g (steepest descent, scaled, if the history is empty)."""
        if self.count == 0:
            return -g * min(1.0, 1.0 / max(np.abs(g).sum(), 1e-300))
        idx = np.array([(self.head - self.count + i) % self.size
                        for i in range(self.count)])  # oldest to newest
        sy, yy = self.sy[np.ix_(idx, idx)], self.yy[np.ix_(idx, idx)]
        newest = idx[-1]
        gamma = self.sy[newest, newest] / self.yy[newest, newest]
        a, b = (self.s @ g)[idx], (self.y @ g)[idx]  # no copy of the buffers
        r = np.triu(sy)
        u = solve_triangular(r, a, lower=False)
        p1 = solve_triangular(r, np.diag(sy) * u + gamma * (yy @ u) - gamma * b,
                              lower=False, trans="T")
        cs, cy = np.zeros(self.size), np.zeros(self.size)
        cs[idx], cy[idx] = p1, -gamma * u
        return -(gamma * g + cs @ self.s + cy @ self.y)

    def reset(self) -> None:
        self.count = 0


def lbfgs(fun: Callable, z0: torch.Tensor, max_iter: int = 500, history: int = 100,
          tol: float = 0.0, stall: int | None = 50, max_time: float | None = None,
          callback: Callable | None = None) -> dict:
    """Minimise ``fun(z) -> (f, grad)`` by L-BFGS with a backtracking line search.

    z0: (n,) start. Stops when f <= tol, after ``stall`` iterations without a
    1e-3 relative decrease of the best f (never if None), at ``max_iter``, or after
    ``max_time`` seconds. Returns dict(z, f, history, status, evaluations).
    Status "diverged" means f became NaN/infinite or grew 1e6-fold.
    """
    z = z0.detach().clone()
    f, g = fun(z)
    if not math.isfinite(f):
        return {"z": z, "f": f, "history": [f], "status": "diverged", "evaluations": 1}
    mem, hist, evals = _History(z.numel(), history), [f], 1
    zn, gn = z.numpy(), g.numpy()
    best, since, start, status = f, 0, time.perf_counter(), "max_iter"
    for it in range(max_iter):
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
        z_new = zn + t * d
        mem.push(z_new - zn, g_new.numpy() - gn)
        zn, gn, f = z_new, g_new.numpy(), f_new
        hist.append(f)
        if callback is not None:
            callback(it, torch.from_numpy(zn), f)
        if f <= tol:
            status = "converged"
            break
        if f > 1e6 * hist[0]:
            status = "diverged"
            break
        if f < best * (1 - 1e-3):
            best, since = f, 0
        else:
            since += 1
            if stall is not None and since >= stall:
                status = "stalled"
                break
        if max_time is not None and time.perf_counter() - start > max_time:
            status = "time"
            break
    return {"z": torch.from_numpy(zn), "f": f, "history": hist, "status": status,
            "evaluations": evals}
