"""COPA-style attack (leakbook's variant): exact linear solves, then a joint fit.

Taught in chapter 07. After Chen & Campbell's COPA (combined optimisation
attack, 2021) and their hybrid method (2022), which solve each layer's
linear system and correct it layer by layer with Adam on a cosine, TV and
soft linear-constraint objective. This variant differs:

1. Going down from the head as R-GAP does, every layer whose linear system
   has full column rank is solved exactly (float64).
2. At the first rank-deficient layer t the linear solve only gives the
   minimum-norm input, wrong along the null space. The constraints that pin
   it down are the *pull-back* constraints of the layers below: their
   gradients depend on the input through act'(z) and on their own inputs.
   So layers 0..t are fitted *jointly* for the image x (not layer by layer),
   by least squares on every constraint, each block scaled by its norm:

       |z_t(x) - z_t|^2 / |z_t|^2 + sum_{j<=t} |dW_j(x) - g_j|^2 / |g_j|^2
       (+ the same for the biases of layers j < t),

   where dW_j(x) is what backpropagating the known signal delta_t through
   layers 0..t gives at x. No image prior (no TV), no cosine.
3. The fit is float64 L-BFGS (``leakbook.optim.lbfgs``), preconditioned by
   the Gauss-Newton matrix J^T J of the residuals (J analytic and sparse,
   refreshed a few times): the problem is badly conditioned, and plain
   first-order steps stall far from the solution.
4. Pixels that reach no gradient (strides and padding never read them) are
   not unknowns; they are filled afterwards (``fill_blind``) from the
   recovered visible pixels only.
"""
from __future__ import annotations

import math
import time

import numpy as np
import scipy.sparse as sp
from scipy import linalg
from scipy.linalg import blas
import torch
import torch.nn.functional as F
from torch import nn

from .. import checks, threads
from ..optim import lbfgs
from .layer_system import LayerSystem
from .layers import Block
from .linear_systems import MAX_MEMORY_GB, check_dense, conv_csr, patch_indices
from .recursive import (_finished_labels, _options, _prepare, check_one_sample,
                        invert_head, layer_system, step_down)
from .result import Reconstruction

#: how copa and psnr_cap can fill the pixels no gradient depends on
FILLS = ("mean", "nearest", "inpaint")
#: L-BFGS iterations per Gauss-Newton preconditioner before it is refreshed
ROUND_STEPS = 150


# --- pixels no gradient sees, and how to fill them ---------------------------------


def reached_inputs(parts: list[Block], top: int) -> torch.Tensor:
    """Mask (*in_shape) of the network input entries that some layer <= top reads
    through a chain of entries that are read in turn (the others reach no gradient
    of those layers, nor their outputs)."""
    if (not isinstance(parts, (list, tuple)) or not parts
            or not all(isinstance(b, Block) for b in parts)):
        checks.fail("parts", "a non-empty list of Block (from attacks.layers.blocks)",
                    parts, TypeError)
    top = checks.integer(top, "top", minimum=0, maximum=len(parts) - 1)
    read = torch.ones(parts[top].out_shape, dtype=torch.bool).flatten()
    for j in range(top, -1, -1):
        layer = parts[j].layer
        if isinstance(layer, nn.Linear):
            used = read.any() & (layer.weight[read] != 0).any(0)
            read = used
            continue
        idx = patch_indices(layer, parts[j].in_shape)                 # (C*k*k, L)
        live = read.reshape(layer.out_channels, -1).any(0)           # (L,)
        taps = idx[:, live].flatten()
        read = torch.zeros(parts[j].n_in, dtype=torch.bool)
        read[taps[taps >= 0]] = True
    return read.reshape(parts[0].in_shape)


def _harmonic(channel: torch.Tensor, hole: torch.Tensor) -> torch.Tensor:
    """Fill hole (H, W) bool of one channel (H, W): each filled pixel is the mean of
    its 4-neighbours inside the image (a discrete Laplace equation whose boundary
    values are the visible pixels around the hole)."""
    h, w = channel.shape
    ids = torch.full((h, w), -1, dtype=torch.long)
    where = torch.nonzero(hole)
    ids[hole] = torch.arange(len(where))
    rows, cols, vals = [], [], []
    rhs = np.zeros(len(where))
    for k, (i, j) in enumerate(where.tolist()):
        nbrs = [(a, b) for a, b in ((i - 1, j), (i + 1, j), (i, j - 1), (i, j + 1))
                if 0 <= a < h and 0 <= b < w]
        rows.append(k), cols.append(k), vals.append(float(len(nbrs)))
        for a, b in nbrs:
            if hole[a, b]:
                rows.append(k), cols.append(int(ids[a, b])), vals.append(-1.0)
            else:
                rhs[k] += float(channel[a, b])
    lap = sp.csr_matrix((vals, (rows, cols)), shape=(len(where), len(where)))
    out = channel.clone()
    out[hole] = torch.from_numpy(sp.linalg.spsolve(lap, rhs)).to(channel.dtype)
    return out


def fill_blind(image: torch.Tensor, blind: torch.Tensor, how="mean") -> torch.Tensor:
    """Fill the blind entries of one image from its visible entries only.

    image: (C, H, W); blind: bool (C, H, W), True where no gradient sees the
    pixel. how: "mean" (per channel, the mean of the visible pixels),
    "nearest" (the nearest visible pixel of the channel), "inpaint" (harmonic:
    each blind pixel the mean of its neighbours, the visible ones fixed; a
    hole without visible neighbours in its channel falls back to the mean)
    or a number. Returns a new tensor. Taught in chapters 07 and 08.
    """
    checks.tensor(image, "image", "float", dims=3, nonempty=True)
    checks.tensor(blind, "blind", "any", dims=3)
    if blind.dtype != torch.bool:
        checks.fail("blind", "a bool mask", blind, TypeError)
    if blind.shape != image.shape:
        checks.fail("blind", f"a mask of the image's shape {tuple(image.shape)}", blind)
    how = _fill(how, "how", allow_none=False)
    out = image.clone()
    if isinstance(how, (int, float)) and not isinstance(how, bool):
        out[blind] = float(how)
        return out
    for c in range(image.shape[0]):
        hole = blind[c]
        if not bool(hole.any()):
            continue
        if bool(hole.all()):
            raise ValueError(f"blind must leave a visible entry in every channel, got "
                             f"channel {c} entirely blind: nothing to fill from")
        seen = image[c][~hole]
        if how == "mean":
            out[c][hole] = seen.mean()
        elif how == "nearest":
            vis = torch.nonzero(~hole).to(torch.float64)
            hid = torch.nonzero(hole).to(torch.float64)
            near = vis[torch.cdist(hid, vis).argmin(dim=1)].long()
            out[c][hole] = image[c][near[:, 0], near[:, 1]]
        else:
            out[c] = _harmonic(image[c], hole)
    return out


# --- the joint fit of layers 0..t ---------------------------------------------------


class _JointFit:
    """Residuals r(x) of layers 0..t at an image x, their analytic Jacobian, and the
    preconditioned L-BFGS that drives them to zero. x is flat (n_in of layer 0);
    only the ``free`` entries (those some constraint reads) are unknowns."""

    def __init__(self, parts, acts, grads, top, z_top, delta):
        self.parts, self.acts, self.top, self.delta = parts, acts, top, delta
        bias = parts[top].layer.bias
        self.z_target = z_top if bias is None else z_top + bias.reshape(
            -1, *[1] * (len(parts[top].out_shape) - 1))
        self.targets, self.scales = [], []
        for j in range(top, -1, -1):             # order of the residual blocks
            self.targets.append(grads[parts[j].weight_index])
            if j < top and parts[j].bias_index is not None:
                self.targets.append(grads[parts[j].bias_index])
        self.scales = [1.0 / max(float(t.norm()), 1e-300) for t in self.targets]
        self.z_scale = 1.0 / max(float(self.z_target.norm()), 1e-300)
        self.free = reached_inputs(parts, top).flatten()
        self.index = torch.nonzero(self.free)[:, 0]
        self.history: list[float] = []
        self._cache: dict = {}

    # --- residuals (autograd) -----------------------------------------------------
    def _forward(self, x):
        xs, zs, h = [], [], x.reshape(self.parts[0].in_shape)
        for j in range(self.top + 1):
            xs.append(h)
            z = self.parts[j].forward(h[None])[0]
            zs.append(z)
            if j < self.top:
                h = self.acts[j](z).reshape(self.parts[j + 1].in_shape)
        return xs, zs

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """The scaled residual vector at a flat image x (differentiable)."""
        xs, zs = self._forward(x)
        out = [self.z_scale * (zs[-1] - self.z_target).flatten()]
        delta, k = self.delta.reshape(self.parts[self.top].out_shape), 0
        for j in range(self.top, -1, -1):
            part = self.parts[j]
            g = part.weight_gradient(xs[j], delta)
            out.append(self.scales[k] * (g - self.targets[k]).flatten())
            k += 1
            if j < self.top and part.bias_index is not None:
                gb = delta.reshape(part.out_shape[0], -1).sum(1)
                out.append(self.scales[k] * (gb - self.targets[k]))
                k += 1
            if j > 0:
                back = part.backward(delta).reshape(self.parts[j - 1].out_shape)
                delta = back * self.acts[j - 1].derivative(zs[j - 1])
        return torch.cat(out)

    def objective(self, x: torch.Tensor) -> tuple[float, torch.Tensor]:
        """f = |r(x)|^2 and its gradient on the free entries."""
        v = x.detach().requires_grad_(True)
        r = self.residual(v)
        f = (r * r).sum()
        (g,) = torch.autograd.grad(f, [v])
        return float(f.detach()), g[self.index]

    # --- the Jacobian (scipy sparse, analytic) -----------------------------------
    def _matrix(self, j):
        """A_j with A_j x_j = z_j - b_j (sparse, cached: it depends on W only)."""
        if j not in self._cache:
            part = self.parts[j]
            layer = part.layer
            if isinstance(layer, nn.Linear):
                self._cache[j] = sp.csr_matrix(layer.weight.detach().numpy())
            else:
                self._cache[j] = conv_csr(layer, part.in_shape, layer.weight)
        return self._cache[j]

    def _grad_matrix(self, j, delta):
        """K with K x_j = dW_j (flat)."""
        part, layer = self.parts[j], self.parts[j].layer
        if isinstance(layer, nn.Linear):
            return sp.kron(sp.csr_matrix(delta.reshape(-1, 1).numpy()),
                           sp.identity(part.n_in), format="csr")
        return conv_csr(layer, part.in_shape, delta, gradient=True)

    def _patch_matrix(self, j, x):
        """U with U delta_j = dW_j (flat): dW is bilinear in (x_j, delta_j)."""
        layer = self.parts[j].layer
        if isinstance(layer, nn.Linear):
            return sp.kron(sp.identity(layer.out_features),
                           sp.csr_matrix(x.reshape(-1, 1).numpy()), format="csr")
        cols = F.unfold(x[None], layer.kernel_size, padding=layer.padding,
                        stride=layer.stride)[0]                       # (C k k, L)
        return sp.kron(sp.identity(layer.out_channels), sp.csr_matrix(cols.numpy()),
                       format="csr")

    def _sum_matrix(self, j):
        part = self.parts[j]
        positions = math.prod(part.out_shape[1:]) if len(part.out_shape) > 1 else 1
        return sp.kron(sp.identity(part.out_shape[0]), np.ones((1, positions)),
                       format="csr")

    def jacobian(self, x: torch.Tensor) -> sp.csr_matrix:
        """dr/dx on the free entries: (rows of r, free entries), sparse."""
        with torch.no_grad():
            xs, zs = self._forward(x)
        n_free = len(self.index)
        jx = sp.csr_matrix((np.ones(n_free), (self.index.numpy(), np.arange(n_free))),
                           shape=(self.parts[0].n_in, n_free))
        mats, jxs, jzs = [], [], []
        for j in range(self.top + 1):
            a = self._matrix(j)
            mats.append(a)
            jxs.append(jx)
            jzs.append(sp.csr_matrix(a @ jx))
            if j < self.top:
                d = self.acts[j].derivative(zs[j]).flatten().numpy()
                jx = sp.csr_matrix(sp.diags(d) @ jzs[j])
        blocks = [self.z_scale * jzs[-1]]
        delta = self.delta.reshape(self.parts[self.top].out_shape)
        jd, k = None, 0                                    # d delta_j / dx
        for j in range(self.top, -1, -1):
            part = self.parts[j]
            jg = self._grad_matrix(j, delta) @ jxs[j]
            if jd is not None:
                jg = jg + self._patch_matrix(j, xs[j]) @ jd
            blocks.append(self.scales[k] * sp.csr_matrix(jg))
            k += 1
            if j < self.top and part.bias_index is not None:
                jb = (sp.csr_matrix((part.out_shape[0], n_free)) if jd is None
                      else self._sum_matrix(j) @ jd)
                blocks.append(self.scales[k] * sp.csr_matrix(jb))
                k += 1
            if j > 0:
                act = self.acts[j - 1]
                beta = part.backward(delta).reshape(self.parts[j - 1].out_shape)
                d1 = act.derivative(zs[j - 1])
                d2 = act.second_derivative(zs[j - 1])
                new = sp.diags((beta * d2).flatten().numpy()) @ jzs[j - 1]
                if jd is not None:
                    new = new + sp.diags(d1.flatten().numpy()) @ (mats[j].T @ jd)
                jd = sp.csr_matrix(new)
                delta = beta * d1
        return sp.vstack(blocks, format="csr")

    def preconditioner(self, x: torch.Tensor) -> torch.Tensor:
        """Cholesky factor L of J^T J + lambda I at x (lambda: 1e-10 of its mean
        diagonal), the Gauss-Newton curvature of f / 2: an upper triangle by one
        symmetric rank-k update (BLAS syrk), then LAPACK's Cholesky."""
        jac = np.asfortranarray(self.jacobian(x).toarray())
        gram = blas.dsyrk(1.0, jac, trans=1)                  # upper triangle of J^T J
        del jac
        shift = 1e-10 * float(np.diagonal(gram).mean()) + 1e-300
        gram[np.diag_indices_from(gram)] += shift
        upper = linalg.cholesky(gram, lower=False, overwrite_a=True, check_finite=False)
        return torch.from_numpy(np.ascontiguousarray(upper.T))

    def check_memory(self, max_memory_gb: float) -> None:
        """MemoryError with the estimate if the dense Jacobian (rows x free) and
        J^T J (free x free) of ``preconditioner`` pass the limit."""
        free = len(self.index)
        rows = math.prod(self.parts[self.top].out_shape) + sum(
            t.numel() for t in self.targets)
        check_dense(rows + free, free, "copa's Gauss-Newton preconditioner (set "
                    "refresh=0 for plain L-BFGS)", max_memory_gb)

    # --- the solve --------------------------------------------------------------
    def solve(self, x0, steps, warmup, refresh, max_time, tol):
        """Plain L-BFGS for ``warmup`` steps, then up to ``refresh`` rounds of
        L-BFGS in the variables u with x = x_ref + L^-T u (L from x_ref), until
        f <= tol, a round stalls without a tenfold decrease, or the budget ends."""
        start, x = time.perf_counter(), x0.clone()

        def left():
            return None if max_time is None else max(
                0.0, max_time - (time.perf_counter() - start))

        def plain(z):
            y = x.clone()
            y[self.index] = z
            f, g = self.objective(y)
            self.history.append(f)
            return f, g

        out = lbfgs(plain, x[self.index], max_iter=min(warmup, steps) if refresh
                    else steps, history=30, stall=None, tol=tol, max_time=left())
        x[self.index] = out["z"]
        used, status, rounds = len(out["history"]) - 1, out["status"], 0
        while (rounds < refresh and used < steps and status != "converged"
               and (left() is None or left() > 0)):
            chol, before = self.preconditioner(x), self.history[-1]
            rounds += 1
            ref = x[self.index].clone()

            def lift(u, chol=chol, ref=ref):
                return ref + torch.linalg.solve_triangular(
                    chol.T, u[:, None], upper=True)[:, 0]

            def pre(u, chol=chol, lift=lift):
                y = x.clone()
                y[self.index] = lift(u)
                f, g = self.objective(y)
                self.history.append(f)
                return f, torch.linalg.solve_triangular(chol, g[:, None],
                                                        upper=False)[:, 0]

            out = lbfgs(pre, torch.zeros_like(ref),
                        max_iter=min(steps - used, ROUND_STEPS), history=30,
                        stall=20, tol=tol, max_time=left())
            x[self.index] = lift(out["z"])
            used += len(out["history"]) - 1
            status = out["status"]
            if out["f"] > 0.1 * before and out["status"] != "max_iter":
                break
        return x, {"iterations": used, "preconditioner_rounds": rounds,
                   "status": status, "objective": float(self.history[-1]),
                   "seconds": round(time.perf_counter() - start, 3)}


def _linear_chain(parts, acts, grads, top, z, delta, grad_weight, dense_limit,
                  max_memory_gb):
    """Minimum-norm linear solves from layer ``top`` (output z - bias, signal
    delta) down to the input."""
    for i in range(top, -1, -1):
        if i < top:
            z, delta = step_down(parts[i + 1], acts[i], x, delta, parts[i])
            system = layer_system(parts[i], z, delta, grads, grad_weight)
        else:
            system = LayerSystem(parts[i], delta, grads[parts[i].weight_index], z,
                                 grad_weight)
        x, _ = system.solve(diagnostics=False, dense_limit=dense_limit,
                            max_memory_gb=max_memory_gb)
    return x


def _fill(how, name: str, allow_none: bool = True):
    """A fill: one of FILLS, a finite number (not a bool), or None if allowed."""
    if how is None and allow_none:
        return None
    if isinstance(how, str):
        return checks.choice(how, name, FILLS)
    if isinstance(how, (int, float, np.number)) and not isinstance(how, (bool, np.bool_)):
        return checks.number(how, name)
    listed = ", ".join(repr(f) for f in FILLS)
    checks.fail(name, f"one of {listed}, a number{' or None' if allow_none else ''}",
                how, TypeError)


def _check_options(steps, warmup, refresh, max_time, fill, start):
    for name, value in (("steps", steps), ("warmup", warmup), ("refresh", refresh)):
        checks.integer(value, name, minimum=0)
    if max_time is not None:
        checks.number(max_time, "max_time", above=0, finite=False)
    _fill(fill, "fill")
    checks.choice(start, "start", ("zeros", "linear"))


def copa(model: nn.Module, grads, labels=None, *, input_shape, steps: int = 1000,
         warmup: int = 50, refresh: int = 4, tol: float = 1e-12,
         max_time: float | None = 120.0, fill="mean", start: str = "zeros",
         grad_weight: float = 10.0, rank_rtol: float = 1e-7, clip: float = 1e-7,
         dense_limit: int = 6000, branch: str = "small",
         max_memory_gb: float = MAX_MEMORY_GB) -> Reconstruction:
    """COPA-style attack (leakbook's variant; see the module doc) on one sample.

    model, grads, labels, input_shape: as for :func:`~leakbook.attacks.rgap`
        (one sample; Conv2d/Linear with or without bias; invertible activations).
    steps: L-BFGS iterations of the joint fit, in all (0: linear solves only).
    warmup: plain L-BFGS iterations before the first Gauss-Newton
        preconditioner; refresh: how many preconditioners at most (0: plain
        L-BFGS throughout, a first-order fit); tol: stop when the objective
        (a sum of squared relative misfits) is below it; max_time: seconds
        for the fit.
    fill: the input entries that reach no gradient (see ``reached_inputs``)
        are set from the recovered visible entries (``fill_blind``): "mean"
        (per channel, the default), "nearest", "inpaint" (harmonic: inferred
        from their visible neighbours), a number, or None (left at the start).
    start: the fit starts from "zeros" or from the "linear" chain of
        minimum-norm solves.
    Returns a Reconstruction with images (1, *input_shape) in the model's
    dtype, the fit's objective per evaluation, and stats: ``layers``
    (per-layer system stats from the top down), ``deficient_layer`` (the
    first rank-deficient layer's name, or None), ``fit`` (iterations,
    preconditioner rounds, status, objective, seconds), ``linear_images``
    (the minimum-norm linear solves alone; only with start="linear" or
    steps=0, else None), ``invisible`` (how many entries reach no
    gradient), ``inferred`` (bool mask (1, *input_shape) of the entries
    that were filled, not recovered) and ``fill`` (how).
    max_memory_gb: the dense linear solves and the fit's Gauss-Newton
    preconditioner (a dense Jacobian and J^T J) are estimated first and
    refused past this limit (MemoryError, with the estimate). The model and
    the gradients are not changed; the attack computes on one thread.
    """
    t0 = time.perf_counter()
    _check_options(steps, warmup, refresh, max_time, fill, start)
    checks.number(tol, "tol", minimum=0)
    checks.number(rank_rtol, "rank_rtol", above=0, below=1)
    _options(grad_weight, True, dense_limit, max_memory_gb)
    net, parts, acts, grads, labels = _prepare(model, grads, input_shape, clip, branch,
                                               labels)
    dtype = checks.model_dtype(model)
    input_shape = tuple(int(s) for s in input_shape)     # checked by _prepare
    with threads.one_thread():
        return _copa(parts, acts, grads, labels, input_shape, dtype, t0, steps, warmup,
                     refresh, tol, max_time, fill, start, grad_weight, rank_rtol,
                     dense_limit, branch, max_memory_gb)


def _copa(parts, acts, grads, labels, input_shape, dtype, t0, steps, warmup, refresh,
          tol, max_time, fill, start, grad_weight, rank_rtol, dense_limit, branch,
          max_memory_gb) -> Reconstruction:
    """The body of :func:`copa`, on checked arguments and a float64 copy."""
    x, delta, head_stats = invert_head(parts[-1], grads, labels, branch)
    layer_stats, top = [{"layer": parts[-1].name, **head_stats}], None
    for i in range(len(parts) - 2, -1, -1):
        z, delta = step_down(parts[i + 1], acts[i], x, delta, parts[i])
        system = layer_system(parts[i], z, delta, grads, grad_weight)
        counts = system.counts()
        short = counts["unknowns"] - counts["gradient_rows"] - counts["forward_rows"]
        if short > 0:                     # fewer rows than unknowns: deficient
            x_i, stats = None, {**counts, "method": "count", "deficiency_bound": short}
        else:
            x_i, stats = system.solve(True, rank_rtol=rank_rtol,
                                      dense_limit=dense_limit,
                                      max_memory_gb=max_memory_gb)
        if i == len(parts) - 2:
            check_one_sample(head_stats, stats, parts[i].name)
        layer_stats.append({"layer": parts[i].name, **stats})
        if stats.get("deficiency", 0) > 0 or stats.get("deficiency_bound", 0) > 0:
            top, z_top, delta_top = i, system.z, delta
            break
        x = x_i
    fit_stats, history, linear = None, [], None
    if top is None:                       # every layer was full rank: R-GAP is exact
        image = x
    else:
        if start == "linear" or steps == 0:
            linear = _linear_chain(parts, acts, grads, top, z_top, delta_top,
                                   grad_weight, dense_limit, max_memory_gb)
        problem = _JointFit(parts, acts, grads, top, z_top, delta_top)
        if steps and refresh:
            problem.check_memory(max_memory_gb)
        x0 = torch.zeros(parts[0].n_in, dtype=torch.float64) if linear is None \
            else linear.clone()
        if steps:
            image, fit_stats = problem.solve(x0, steps, warmup, refresh, max_time, tol)
        else:
            image, fit_stats = linear.clone(), {"iterations": 0}
        history = problem.history
    hidden = ~reached_inputs(parts, len(parts) - 2 if top is None else top)
    image = image.reshape(input_shape)
    if fill is not None and bool(hidden.any()):
        image = fill_blind(image, hidden.reshape(input_shape), fill)
    labels_out = _finished_labels(image, labels, grads, parts)
    shape = (1, *input_shape)
    how = ("none" if fill is None else fill if isinstance(fill, str)
           else f"constant {fill:g}")
    return Reconstruction(
        image.reshape(shape).to(dtype), labels_out, history, time.perf_counter() - t0,
        {"layers": layer_stats,
         "deficient_layer": None if top is None else parts[top].name,
         "fit": fit_stats, "invisible": int(hidden.sum()),
         "inferred": hidden.reshape(shape),
         "fill": how if bool(hidden.any()) else "none needed",
         "linear_images": None if linear is None else linear.reshape(shape).to(dtype)})
