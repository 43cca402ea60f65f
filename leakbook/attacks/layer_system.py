"""The linear system that one layer's gradient and output put on its input.

Taught in chapter 07. For a block z = W x + b (Conv2d or Linear) of one
sample, with delta = dL/dz known from the layer above:

- gradient rows: K(delta) x = vec dL/dW (linear in x once delta is known);
- forward rows:  A x = z - b (z known through the inverse activation).

Padding is not an unknown: padded entries are zeros and drop out of K and A.
The two blocks of rows live on different scales (outputs ~1, gradients
~1e-2), so each block is divided by the norm of its right-hand side and the
gradient block is weighted by ``grad_weight`` (~10): without this the
forward rows, which carry the error of the layer above, swamp the exact
gradient rows. With fewer rows than unknowns, the minimum-norm solution comes
from the small matrix N N^T; otherwise from the normal equations (Cholesky, or an eigen-
decomposition that also gives the singular values and the rank), or
matrix-free by CGLS when the layer has too many unknowns for a dense matrix.
"""
from __future__ import annotations

import math

import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from .. import checks, threads
from .layers import Block
from .linear_systems import MAX_MEMORY_GB, check_dense, conv_csr, patch_indices

_TINY = 1e-300


class LayerSystem:
    """Scaled gradient (and forward) constraints on one block's input.

    block: the layer; delta: dL/dz (*block.out_shape); grad_w: dL/dW (weight
    shape); z: W x = pre-activation minus bias (*out_shape), or None for no
    forward rows. All float64.
    """

    def __init__(self, block: Block, delta: torch.Tensor, grad_w: torch.Tensor,
                 z: torch.Tensor | None = None, grad_weight: float = 10.0,
                 scale: bool = True):
        if not isinstance(block, Block):
            checks.fail("block", "a Block (from attacks.layers.blocks)", block, TypeError)
        out = math.prod(block.out_shape)
        for name, t, size in (("delta", delta, out), ("z", z, out),
                              ("grad_w", grad_w, block.layer.weight.numel())):
            if t is None and name == "z":
                continue
            checks.tensor(t, name, "float")
            if t.numel() != size:
                raise ValueError(f"{name} must have {size} entries (the block's "
                                 f"{'weight' if name == 'grad_w' else 'output'}), "
                                 f"got {checks.describe(t)}")
        grad_weight = checks.number(grad_weight, "grad_weight", above=0)
        scale = checks.flag(scale, "scale")
        self.block, self.delta, self.grad_w, self.z = block, delta, grad_w, z
        self.n = block.n_in
        g_norm = float(grad_w.detach().norm())
        self.cg = 0.0 if g_norm < _TINY else (grad_weight / g_norm if scale else 1.0)
        if z is None:
            self.cf = 0.0
        else:
            z_norm = float(z.detach().norm())
            self.cf = (1.0 / z_norm if scale else 1.0) if z_norm > _TINY else 1.0

    # --- counts ---------------------------------------------------------------
    def counts(self) -> dict:
        """Unknowns, gradient rows and forward rows (before any rank argument)."""
        return {"unknowns": self.n, "gradient_rows": self.grad_w.numel(),
                "forward_rows": 0 if self.z is None else self.z.numel()}

    # --- matrix-free products -------------------------------------------------
    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        layer = self.block.layer
        if isinstance(layer, nn.Linear):
            return F.linear(x, layer.weight)
        return F.conv2d(x[None], layer.weight, None, layer.stride, layer.padding)[0]

    def matvec(self, x: torch.Tensor) -> torch.Tensor:
        """N x for a flat x (n,): the scaled gradient rows, then the forward rows."""
        x = x.reshape(self.block.in_shape)
        parts = [self.cg * self.block.weight_gradient(x, self.delta).flatten()]
        if self.z is not None:
            parts.append(self.cf * self._linear(x).flatten())
        return torch.cat(parts)

    def rhs(self) -> torch.Tensor:
        """The scaled right-hand side b of N x = b."""
        parts = [self.cg * self.grad_w.flatten()]
        if self.z is not None:
            parts.append(self.cf * self.z.flatten())
        return torch.cat(parts)

    def rmatvec(self, y: torch.Tensor) -> torch.Tensor:
        """N^T y for y (rows,) -> (n,)."""
        m = self.grad_w.numel()
        out = self._grad_transpose(y[:m].reshape(self.grad_w.shape)) * self.cg
        if self.z is not None:
            back = self.block.backward(y[m:].reshape(self.z.shape))
            out = out + self.cf * back.flatten()
        return out

    def _grad_transpose(self, u: torch.Tensor) -> torch.Tensor:
        """K^T u for u shaped like the weight -> (n,)."""
        layer = self.block.layer
        if isinstance(layer, nn.Linear):
            return u.T @ self.delta
        o = layer.out_channels
        d = self.delta.reshape(o, -1)                                  # (O, L)
        cols = u.reshape(o, -1).T @ d                                  # (C*k*k, L)
        _, h, w = self.block.in_shape
        return F.fold(cols[None], (h, w), layer.kernel_size, padding=layer.padding,
                      stride=layer.stride).flatten()

    # --- dense normal equations -----------------------------------------------
    def gram(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Normal equations (N^T N (n, n), N^T b (n,)) from the layer's structure."""
        layer, n = self.block.layer, self.n
        if isinstance(layer, nn.Linear):
            ktk = (self.delta @ self.delta) * torch.eye(n, dtype=self.delta.dtype)
        else:
            ktk = self._conv_ktk()
        gram = self.cg ** 2 * ktk
        rhs = self.cg ** 2 * self._grad_transpose(self.grad_w)
        if self.z is not None:
            gram = gram + self.cf ** 2 * self._ata()
            rhs = rhs + self.cf ** 2 * self.block.backward(self.z).flatten()
        return gram, rhs

    def _conv_ktk(self) -> torch.Tensor:
        """K^T K = I_C (x) S: channels never mix in a weight gradient."""
        layer = self.block.layer
        c, h, w = self.block.in_shape
        taps = layer.kernel_size[0] * layer.kernel_size[1]
        spatial = patch_indices(layer, self.block.in_shape)[:taps]    # (k*k, L)
        d = self.delta.reshape(layer.out_channels, -1)
        dd = d.T @ d                                                   # (L, L)
        s = torch.zeros(h * w, h * w, dtype=d.dtype)
        for tap in spatial:
            keep = tap >= 0
            v = tap[keep]
            s.index_put_((v[:, None], v[None, :]), dd[keep][:, keep], accumulate=True)
        return torch.kron(torch.eye(c, dtype=d.dtype), s)

    def _ata(self) -> torch.Tensor:
        """A^T A = sum over tap pairs (m, m') of (W_m^T W_m') (x) P_mm', where P_mm'
        counts the output positions whose taps m and m' read pixels p and p'."""
        layer = self.block.layer
        if isinstance(layer, nn.Linear):
            return layer.weight.T @ layer.weight
        c, h, w = self.block.in_shape
        hw, taps = h * w, layer.kernel_size[0] * layer.kernel_size[1]
        spatial = patch_indices(layer, self.block.in_shape)[:taps]    # (k*k, L)
        pix = spatial[:, None, :].expand(taps, taps, -1)
        pix2 = spatial[None, :, :].expand(taps, taps, -1)
        pair = torch.arange(taps * taps).reshape(taps, taps, 1).expand_as(pix)
        keep = (pix >= 0) & (pix2 >= 0)
        where = torch.stack([pix[keep] * hw + pix2[keep], pair[keep]])
        ones = torch.ones(where.shape[1], dtype=layer.weight.dtype)
        counts = torch.sparse_coo_tensor(where, ones,
                                         (hw * hw, taps * taps),
                                         check_invariants=True).coalesce()
        wt = layer.weight.reshape(layer.out_channels, c, taps)
        gram_taps = torch.einsum("oim,ojn->mnij", wt, wt).reshape(taps * taps, c * c)
        out = torch.sparse.mm(counts, gram_taps)                       # (hw*hw, c*c)
        return out.reshape(hw, hw, c, c).permute(2, 0, 3, 1).reshape(self.n, self.n)

    # --- solving ----------------------------------------------------------------
    def solve(self, diagnostics: bool = True, spectrum: bool = False,
              rank_rtol: float = 1e-7, dense_limit: int = 6000,
              iterations: int = 300,
              max_memory_gb: float = MAX_MEMORY_GB) -> tuple[torch.Tensor, dict]:
        """Least-squares x (n,) (the minimum-norm one if the system is rank-deficient).

        A Cholesky solve of the normal equations when they are well posed;
        otherwise (or with ``spectrum``) an eigendecomposition, which gives all
        singular values and the minimum-norm solution. ``diagnostics`` adds
        the largest and smallest singular value (power iterations, cheap),
        the condition number and the numerical rank (sv > rank_rtol * sv_max).
        Layers with more than ``dense_limit`` unknowns are solved matrix-free
        by CGLS from x = 0 (which tends to the minimum-norm solution); their
        rank is only bounded by counting. A dense matrix (the normal equations,
        or N N^T) is estimated first: past ``max_memory_gb`` (three copies
        during an eigendecomposition) the solve refuses with a MemoryError
        that gives the estimate; lower ``dense_limit`` to go matrix-free.
        Runs on one thread (bit-identical at any thread count).
        """
        diagnostics = checks.flag(diagnostics, "diagnostics")
        spectrum = checks.flag(spectrum, "spectrum")
        rank_rtol = checks.number(rank_rtol, "rank_rtol", above=0, below=1)
        dense_limit = checks.integer(dense_limit, "dense_limit", minimum=0)
        iterations = checks.integer(iterations, "iterations", minimum=1)
        stats = self.counts()
        rows = stats["gradient_rows"] + stats["forward_rows"]
        dual = rows < self.n and rows <= dense_limit and not spectrum and isinstance(
            self.block.layer, nn.Conv2d)
        if dual:
            check_dense(rows, rows, "this layer's solve", max_memory_gb, copies=3)
        elif self.n <= dense_limit:
            check_dense(self.n, self.n, "this layer's solve", max_memory_gb, copies=3)
        with threads.one_thread():
            if dual:
                x = self._dual_solve(rank_rtol, stats)
            elif self.n > dense_limit:
                x = self._cgls(iterations)
                stats.update(method="cgls", rank=None,
                             deficiency_bound=max(0, self.n - rows))
            else:
                gram, rhs = self.gram()
                x = None if spectrum else self._cholesky_solve(
                    gram, rhs, diagnostics, rank_rtol, stats)
                if x is None:
                    x = self._eigh_solve(gram, rhs, rank_rtol, stats)
            stats.update(self.residuals(x))
        return x, stats

    def _dual_solve(self, rank_rtol, stats) -> torch.Tensor:
        """Fewer rows than unknowns: x = N^T (N N^T)^+ b, the minimum-norm solution,
        from the small rows x rows matrix (and its rank)."""
        layer, shape = self.block.layer, self.block.in_shape
        blocks = [self.cg * conv_csr(layer, shape, self.delta, gradient=True)]
        if self.z is not None:
            blocks.append(self.cf * conv_csr(layer, shape, layer.weight))
        mat = sp.vstack(blocks, format="csr")
        small = torch.from_numpy((mat @ mat.T).toarray())
        evals, evecs = torch.linalg.eigh(small)
        sv = evals.clamp_min(0).sqrt().flip(0)
        rank = int((sv > rank_rtol * sv[0]).sum())
        keep = evals > (rank_rtol * sv[0]) ** 2
        inv = torch.where(keep, 1.0 / evals.clamp_min(_TINY), 0.0)
        b = self.rhs()
        y = evecs @ (inv * (evecs.T @ b))
        stats.update(method="dual", rank=rank, deficiency=self.n - rank,
                     sv_max=float(sv[0]), condition=math.inf)
        return torch.from_numpy(mat.T @ y.numpy())

    def _cholesky_solve(self, gram, rhs, diagnostics, rank_rtol, stats):
        """x by Cholesky, or None if the normal matrix is (nearly) singular."""
        chol, info = torch.linalg.cholesky_ex(gram)
        if int(info) != 0:
            return None
        if diagnostics:
            sv_max, sv_min = _extreme_singular_values(gram, chol)
            if sv_min <= rank_rtol * sv_max:
                return None
            stats.update(rank=self.n, deficiency=0, sv_max=sv_max, sv_min=sv_min,
                         condition=sv_max / sv_min)
        else:
            stats.update(rank=None)
        stats["method"] = "cholesky"
        return _chol_solve(chol, rhs[:, None])[:, 0]

    def _eigh_solve(self, gram, rhs, rank_rtol, stats) -> torch.Tensor:
        evals, evecs = torch.linalg.eigh(gram)
        sv = evals.clamp_min(0).sqrt().flip(0)                        # descending
        rank = int((sv > rank_rtol * sv[0]).sum())
        keep = evals > (rank_rtol * sv[0]) ** 2
        inv = torch.where(keep, 1.0 / evals.clamp_min(_TINY), 0.0)
        stats.update(method="eigh", rank=rank, deficiency=self.n - rank,
                     sv_max=float(sv[0]), sv_min=float(sv[-1]),
                     condition=float(sv[0] / sv[-1]) if sv[-1] > 0 else math.inf,
                     singular_values=sv)
        return evecs @ (inv * (evecs.T @ rhs))

    def _cgls(self, iterations: int) -> torch.Tensor:
        """CGLS for min ||N x - b|| from x = 0."""
        b = self.rhs()
        x = torch.zeros(self.n, dtype=b.dtype)
        r = b.clone()
        s = self.rmatvec(r)
        p, gamma = s.clone(), float(s @ s)
        for _ in range(iterations):
            if gamma < _TINY:
                break
            q = self.matvec(p)
            alpha = gamma / max(float(q @ q), _TINY)
            x += alpha * p
            r -= alpha * q
            s = self.rmatvec(r)
            gamma_new = float(s @ s)
            p = s + (gamma_new / gamma) * p
            gamma = gamma_new
        return x

    def residuals(self, x: torch.Tensor) -> dict:
        """Relative residuals of the gradient and forward rows at x (unscaled)."""
        x = x.reshape(self.block.in_shape)
        g = self.block.weight_gradient(x, self.delta)
        out = {"residual_gradient": float((g - self.grad_w).norm()
                                          / max(float(self.grad_w.norm()), _TINY))}
        if self.z is not None:
            out["residual_forward"] = float((self._linear(x) - self.z).norm()
                                            / max(float(self.z.norm()), _TINY))
        return out


def _extreme_singular_values(gram: torch.Tensor, chol: torch.Tensor, block: int = 4,
                             iterations: int = 12) -> tuple[float, float]:
    """Estimates of the largest and smallest singular value of N from N^T N = gram:
    block power iteration on gram and on its inverse (through the Cholesky factor)."""
    gen = torch.Generator().manual_seed(0)
    top = torch.randn(gram.shape[0], block, dtype=gram.dtype, generator=gen)
    bottom = top.clone()
    for _ in range(iterations):
        top = torch.linalg.qr(gram @ top).Q
        bottom = torch.linalg.qr(_chol_solve(chol, bottom)).Q
    high = torch.linalg.eigvalsh(top.T @ gram @ top)[-1]
    low = torch.linalg.eigvalsh(bottom.T @ gram @ bottom)[0]
    return float(high.clamp_min(0)) ** 0.5, float(low.clamp_min(0)) ** 0.5


def _chol_solve(chol: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve (L L^T) x = rhs by two triangular solves (faster than cholesky_solve)."""
    half = torch.linalg.solve_triangular(chol, rhs, upper=False)
    return torch.linalg.solve_triangular(chol.T, half, upper=True)
