"""Analytic inversion of a fully connected layer from its gradient.

Taught in chapter 02. For an FC layer u = A x + c and any loss L,
dL/dA[i, :] = dL/dc[i] * x, so one row of the weight gradient divided by the
matching entry of the bias gradient is the layer's input (Phong et al. 2017).
For a batch (mean loss) each row gives a mixture of the inputs,
``sum_k delta[k, i] x[k] / sum_k delta[k, i]``; rows that only one sample
reaches (a ReLU after the layer makes many) give that sample back exactly.

Without the ratio, the weight gradient is a sum of rank-one terms,
grad_A = sum_k delta[k]^T x[k] (``delta`` (B, m), ``x`` (B, n)); when the error
signals are known the inputs solve a linear system (``solve_fc_inputs``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from .. import checks
from ..checks import float_tensor
from ..threads import one_thread
from .result import Reconstruction

__all__ = ["FCInversion", "FCSystemSolution", "invert_fc", "solve_fc_inputs",
           "last_layer_deltas", "solve_last_layer_inputs"]


def _check_fc_grads(grad_weight, grad_bias) -> tuple[torch.Tensor, torch.Tensor]:
    gw = float_tensor(grad_weight, "grad_weight")
    gb = float_tensor(grad_bias, "grad_bias")
    if gw.dim() == 2 and 0 in gw.shape:
        checks.fail("grad_weight", "a non-empty (out_features, in_features) gradient",
                    gw)
    if gw.dim() != 2:
        raise ValueError(f"grad_weight must be (out_features, in_features), got shape "
                         f"{tuple(gw.shape)}")
    if gb.dim() != 1:
        raise ValueError(f"grad_bias must be (out_features,), got shape "
                         f"{tuple(gb.shape)}")
    if gw.shape[0] != gb.shape[0]:
        raise ValueError(f"grad_weight has {gw.shape[0]} rows but grad_bias has "
                         f"{gb.shape[0]} entries: not the same layer?")
    return gw, gb.to(gw.dtype)


@dataclass
class FCInversion:
    """What the rows of an FC layer's gradient give.

    ratios: (R, n) one candidate input per usable row, grad_A[i] / grad_c[i].
    rows: (R,) indices of the usable rows (|grad_c[i]| above the tolerance).
    skipped: (S,) indices of rows skipped because their bias gradient is ~0.
    groups: lists of row indices whose ratios agree (relative distance below
        ``agree_tol``), largest first; rows that agree nowhere form groups of one.
    samples: (G, n) one input per group of at least ``min_agree`` rows: rows that
        agree are, generically, rows that a single sample reaches alone.
    sample_rows: the row indices behind each entry of ``samples``.
    input: (n,) least-squares estimate of a single input from all usable rows,
        sum_i grad_c[i] grad_A[i] / sum_i grad_c[i]^2 (exact when B = 1).
    single: True if all usable rows agree, as they do for one sample.
    """

    ratios: torch.Tensor
    rows: torch.Tensor
    skipped: torch.Tensor
    groups: list[list[int]]
    samples: torch.Tensor
    sample_rows: list[list[int]]
    input: torch.Tensor
    single: bool
    stats: dict = field(default_factory=dict)

    @property
    def isolating_rows(self) -> list[int]:
        """Row indices judged to isolate one sample (members of ``sample_rows``)."""
        return sorted(r for g in self.sample_rows for r in g)

    def to_reconstruction(self, image_shape) -> Reconstruction:
        """The identified samples as a Reconstruction with images (G, *image_shape)."""
        image_shape = checks.shape(image_shape, "image_shape")
        n = self.samples.shape[1]
        if math.prod(image_shape) != n:
            checks.fail("image_shape", f"a shape of {n} entries (the layer's "
                                       f"in_features)", image_shape)
        images = self.samples.reshape(len(self.samples), *image_shape)
        stats = {"sample_rows": self.sample_rows, "single": self.single, **self.stats}
        return Reconstruction(images=images, stats=stats)

    def __repr__(self) -> str:
        return (f"FCInversion(usable_rows={len(self.rows)}, "
                f"skipped={len(self.skipped)}, groups={len(self.groups)}, "
                f"samples={len(self.samples)}, single={self.single})")


def _usable_rows(gb: torch.Tensor, rtol: float) -> torch.Tensor:
    """Mask of rows whose bias gradient is safely away from zero."""
    scale = gb.abs().max()
    if scale == 0:
        raise ValueError("grad_bias is all zero: no row carries the input (dead layer, "
                         "zero loss, or a layer without bias?)")
    return gb.abs() > rtol * scale


def _agreeing_groups(ratios: torch.Tensor, tol: float) -> list[list[int]]:
    """Groups of rows whose ratios lie within ``tol`` (relative) of the group's first.

    Candidates come from a few seeded random projections (cheap for many rows);
    each candidate is then confirmed on the full vectors.
    """
    r = len(ratios)
    norms = ratios.norm(dim=1).clamp_min(torch.finfo(ratios.dtype).tiny)
    gen = torch.Generator().manual_seed(0)
    proj = torch.randn(ratios.shape[1], 8, generator=gen, dtype=ratios.dtype)
    low = ratios @ (proj / proj.norm(dim=0))
    pairs = torch.maximum(norms[:, None], norms[None, :])
    exact = "donot_use_mm_for_euclid_dist"  # the fast mode loses ~sqrt(eps)
    near = torch.cdist(low, low, compute_mode=exact) <= 3 * tol * pairs
    lonely = near.sum(1) == 1
    groups = [[i] for i in torch.nonzero(lonely).flatten().tolist()]
    free = ~lonely
    for i in torch.nonzero(free).flatten().tolist():
        if not free[i]:
            continue
        cand = torch.nonzero(near[i] & free).flatten()
        dist = (ratios[cand] - ratios[i]).norm(dim=1)
        members = cand[dist <= tol * torch.maximum(norms[cand], norms[i])]
        free[members] = False
        free[i] = False
        groups.append(sorted(set(members.tolist()) | {i}))
    return sorted(groups, key=lambda g: (-len(g), g[0]))


def invert_fc(grad_weight: torch.Tensor, grad_bias: torch.Tensor,
              rtol: float | None = None, agree_tol: float | None = None,
              min_agree: int = 2) -> FCInversion:
    """Read the input(s) of an FC layer with bias off its gradient.

    grad_weight: (m, n) gradient of the weight A of u = A x + c; grad_bias: (m,).
    rtol: rows with |grad_bias[i]| <= rtol * max|grad_bias| are skipped, never
        divided by (default sqrt(machine epsilon) of the dtype); 0 <= rtol < 1,
        so the row of the largest bias gradient is always used.
    agree_tol: relative distance under which two rows' ratios count as the same
        input (default 1e-10 in float64, 1e-5 otherwise: a row that one sample
        reaches carries a single term, so its ratio is exact to round-off).
    min_agree: how many agreeing rows certify a single sample (2 by default; a
        sample that only one row reaches stays among ``ratios`` but is not
        certified, since the gradient alone cannot tell it from a mixture);
        an integer >= 1.

    Returns an :class:`FCInversion`; for one sample, ``invert_fc(gw, gb).input``
    is the input (n,). Agreement is evidence, not proof: it certifies a single
    sample when the error signals of the samples are far from parallel. With a
    single-logit head all rows that the same samples reach give the same
    mixture; with same-label samples at initialisation the mixtures vary
    little from row to row, and two of many rows can agree by chance.
    Raises ValueError for disagreeing shapes, NaN or an all-zero bias gradient.
    Taught in chapter 02.
    """
    with one_thread():
        gw, gb = _check_fc_grads(grad_weight, grad_bias)
        rtol = (torch.finfo(gw.dtype).eps ** 0.5 if rtol is None
                else checks.number(rtol, "rtol", minimum=0, below=1))
        agree_tol = ((1e-10 if gw.dtype == torch.float64 else 1e-5) if agree_tol is None
                     else checks.number(agree_tol, "agree_tol", minimum=0))
        min_agree = checks.integer(min_agree, "min_agree", minimum=1)
        usable = _usable_rows(gb, rtol)
        rows = torch.nonzero(usable).flatten()
        ratios = gw[rows] / gb[rows, None]
        groups_local = _agreeing_groups(ratios, agree_tol)
        groups = [[int(rows[k]) for k in g] for g in groups_local]
        certified = [g for g in groups_local if len(g) >= min_agree]
        samples = (torch.stack([ratios[g].mean(0) for g in certified]) if certified
                   else ratios.new_zeros(0, gw.shape[1]))
        b_used = gb[rows]
        estimate = (b_used[:, None] * gw[rows]).sum(0) / (b_used ** 2).sum()
        return FCInversion(
            ratios=ratios, rows=rows, skipped=torch.nonzero(~usable).flatten(),
            groups=groups,
            samples=samples, sample_rows=[[int(rows[k]) for k in g] for g in certified],
            input=estimate, single=len(groups) == 1,
            stats={"rtol": rtol, "agree_tol": agree_tol, "min_agree": min_agree})


@dataclass
class FCSystemSolution:
    """Least-squares inputs of grad_A = delta^T X (see ``solve_fc_inputs``).

    inputs: (B, n) the minimum-norm least-squares solution X.
    rank: numerical rank of delta (B, m); the system is determined iff rank == B.
    singular_values: (min(B, m),) singular values of delta, largest first.
    residual: ||delta^T X - grad_A|| / ||grad_A||.
    determined: rank == B, i.e. the solution is unique.
    history: for iterative solvers, the relative change of X at each step.
    """

    inputs: torch.Tensor
    rank: int
    singular_values: torch.Tensor
    residual: float
    determined: bool
    history: list[float] = field(default_factory=list)

    @property
    def condition(self) -> float:
        """sigma_max / sigma_min of delta (inf if rank-deficient): noise gain."""
        s = self.singular_values
        return float(s[0] / s[-1]) if self.determined and s[-1] > 0 else float("inf")


def solve_fc_inputs(grad_weight: torch.Tensor, deltas: torch.Tensor,
                    rcond: float | None = None) -> FCSystemSolution:
    """Solve grad_A = sum_k deltas[k]^T x[k] for the inputs x, given the error signals.

    grad_weight: (m, n) weight gradient of an FC layer (bias or not).
    deltas: (B, m) dL/du for each sample, scaled as in the loss (the 1/B of a
        mean included), e.g. from :func:`last_layer_deltas`.
    rcond: singular values below rcond * sigma_max count as zero (default
        max(B, m) * machine epsilon).
    Returns an :class:`FCSystemSolution` with X (B, n), the rank of deltas and
    the residual. With rank < B the minimum-norm solution mixes the inputs.
    Taught in chapter 02 (and the layer-wise chapters 07-08 build on it).
    """
    with one_thread():
        g = float_tensor(grad_weight, "grad_weight")
        d = float_tensor(deltas, "deltas").to(g.dtype)
        if g.dim() != 2:
            raise ValueError(f"grad_weight must be (out_features, in_features), got "
                             f"shape {tuple(g.shape)}")
        if d.dim() != 2 or d.shape[1] != g.shape[0] or d.shape[0] == 0:
            raise ValueError(f"deltas must be (B, out_features={g.shape[0]}) with "
                             f"B >= 1, got shape {tuple(d.shape)}")
        if rcond is not None:
            rcond = checks.number(rcond, "rcond", minimum=0)
        # d.T = u diag(s) vh, (m, B)
        u, s, vh = torch.linalg.svd(d.T, full_matrices=False)
        if s.numel() == 0 or s[0] == 0:
            raise ValueError("deltas are all zero: the gradient carries no input")
        if rcond is None:
            rcond = max(d.shape) * torch.finfo(g.dtype).eps
        rank = int((s > rcond * s[0]).sum())
        x = vh[:rank].T @ ((u[:, :rank].T @ g) / s[:rank, None])
        gnorm = g.norm()
        residual = float((d.T @ x - g).norm() / gnorm) if gnorm > 0 else 0.0
        return FCSystemSolution(inputs=x, rank=rank, singular_values=s,
                                residual=residual, determined=rank == d.shape[0])


def last_layer_deltas(logits: torch.Tensor, labels: torch.Tensor,
                      reduction: str = "mean") -> torch.Tensor:
    """Error signals dL/dz of softmax cross-entropy at the logits: softmax(z) - y.

    logits: (B, C); labels: (B,) integers in 0..C-1 (any integer dtype, bool
        or a list) or (B, C) soft labels (rows of probabilities).
    reduction: "mean" divides by B (as ``leakbook.fl`` does), "sum" does not.
    Returns (B, C). With ``logits = 0`` (a uniform softmax) it is the guess an
    attacker can make from the labels alone. Taught in chapter 02.
    """
    with one_thread():
        z = float_tensor(logits, "logits")
        if z.dim() != 2 or 0 in z.shape:
            checks.fail("logits", "a non-empty (B, C) tensor", z)
        checks.choice(reduction, "reduction", ("mean", "sum"))
        if isinstance(labels, torch.Tensor) and labels.is_floating_point():
            y = checks.soft_labels(labels, "labels", *z.shape).to(z.dtype)
        else:
            labels = checks.labels(labels, "labels", z.shape[0], z.shape[1],
                                   context=f" (logits have {z.shape[1]} classes)")
            y = F.one_hot(labels, z.shape[1]).to(z.dtype)
        d = torch.softmax(z, dim=1) - y
        return d / z.shape[0] if reduction == "mean" else d


def solve_last_layer_inputs(grad_weight: torch.Tensor, weight: torch.Tensor,
                            bias: torch.Tensor | None, labels: torch.Tensor,
                            steps: int = 100, tol: float = 1e-13) -> FCSystemSolution:
    """Inputs of a softmax cross-entropy last layer from gradient, labels and weights.

    The error signals softmax(W x_k + b) - y_k depend on the unknown inputs, so
    start from the labels-only guess (a uniform softmax), solve the linear
    system, recompute the deltas from the solution, and repeat until X moves
    less than ``tol`` (relative). Uses no data, only what the server knows.
    grad_weight: (C, n) gradient of W (mean loss); weight: (C, n); bias: (C,)
    or None; labels: (B,) integers in 0..C-1; steps >= 1; tol >= 0. Returns an
    :class:`FCSystemSolution` whose ``history`` holds the relative change of X
    per step. At most C - 1 inputs can be determined: every delta sums to zero
    over the classes. Samples that share a label start with identical deltas
    and stay identical: the solution is then rank-deficient (``determined`` is
    False).
    Taught in chapter 02.
    """
    with one_thread():
        w = float_tensor(weight, "weight", dims=2, nonempty=True)
        g = float_tensor(grad_weight, "grad_weight", dims=2)
        if w.shape != g.shape:
            raise ValueError(f"weight has shape {tuple(w.shape)} but grad_weight has "
                             f"{tuple(g.shape)}: grad_weight must have weight's shape")
        b = (torch.zeros(w.shape[0], dtype=w.dtype) if bias is None
             else float_tensor(bias, "bias"))
        if b.shape != (w.shape[0],):
            raise ValueError(f"bias must have shape ({w.shape[0]},), got "
                             f"{tuple(b.shape)}")
        labels = checks.labels(labels, "labels", num_classes=w.shape[0],
                               context=f" (the layer has {w.shape[0]} outputs)")
        if len(labels) == 0:
            checks.fail("labels", "at least one label", labels)
        steps = checks.integer(steps, "steps", minimum=1)
        tol = checks.number(tol, "tol", minimum=0)
        b = b.to(g.dtype)
        w = w.to(g.dtype)
        logits = torch.zeros(len(labels), w.shape[0], dtype=g.dtype)
        sol = solve_fc_inputs(g, last_layer_deltas(logits, labels))
        history: list[float] = []
        for _ in range(steps):
            new = solve_fc_inputs(g, last_layer_deltas(sol.inputs @ w.T + b, labels))
            scale = new.inputs.norm().clamp_min(1e-300)
            step = (new.inputs - sol.inputs).norm() / scale
            change = float(step)
            sol = new
            history.append(change)
            if change < tol:
                break
        sol.history = history
        return sol
