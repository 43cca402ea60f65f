"""Convolutions as matrices: the linear systems behind layer-wise attacks.

Taught in chapter 07 (and chapter 08 counts their ranks). For a Conv2d with
weight W (O, C, k, k) acting on one input x (C, H, W) with output z (O, h, w):

- forward constraints: ``conv_matrix(conv, shape) @ x.flatten() == z.flatten() - bias``
- gradient constraints: ``conv_gradient_matrix(conv, shape, delta) @ x.flatten()
  == grad_W.flatten()`` where delta = dL/dz (O, h, w) for this one sample.

Padding never enters as an unknown: padded positions are zeros and drop out.
Dense matrices are estimated before they are built (``check_dense``): past
``max_memory_gb`` the call refuses with the estimate instead of exhausting
the machine.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

from .. import checks

#: default ceiling (GB) on one dense matrix built by the layer-wise attacks
MAX_MEMORY_GB = 2.0


def check_dense(rows: int, cols: int, what: str, max_memory_gb: float = MAX_MEMORY_GB,
                copies: int = 1, keyword: str = "max_memory_gb") -> int:
    """Refuse (MemoryError) a dense float64 ``rows x cols`` matrix past the limit.

    copies: how many such matrices the computation holds at once (an
    eigendecomposition needs about three). Returns the estimated bytes. The
    message gives the estimate and the keyword that raises the limit.
    """
    limit = checks.number(max_memory_gb, keyword, above=0, finite=False)
    need = 8 * int(rows) * int(cols) * int(copies)
    if need > limit * 2**30:
        size = (f"{need / 2**30:.1f} GB" if need >= 2**30 else f"{need / 2**20:.0f} MB")
        raise MemoryError(f"{what} needs a dense {rows}x{cols} float64 matrix"
                          f"{f' ({copies} copies)' if copies > 1 else ''}: about "
                          f"{size}, over {keyword}={limit:g}; use a smaller input or "
                          f"a sparse form, or raise {keyword}")
    return need


def _check_conv(conv: nn.Module, input_shape, name: str = "conv") -> tuple[int, int, int]:
    if not isinstance(conv, nn.Conv2d):
        checks.fail(name, "an nn.Conv2d", conv, TypeError)
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.padding_mode != "zeros":
        raise ValueError(f"{name} must be a Conv2d with groups=1, dilation=1 and zero "
                         f"padding, got groups={conv.groups}, dilation={conv.dilation},"
                         f" padding_mode={conv.padding_mode!r}")
    if isinstance(conv.padding, str):
        raise ValueError(f"{name} must have its padding as numbers, got "
                         f"padding={conv.padding!r}")
    shape = checks.shape(input_shape, "input_shape", dims=3)
    if shape[0] != conv.in_channels:
        raise ValueError(f"input_shape must be (C={conv.in_channels}, H, W), "
                         f"got {shape}")
    kh, kw = conv.kernel_size
    (ph, pw) = conv.padding
    if shape[1] + 2 * ph < kh or shape[2] + 2 * pw < kw:
        raise ValueError(f"input_shape must be at least the kernel "
                         f"({kh}x{kw}, padding {ph}x{pw}), got {shape}")
    return shape


def patch_indices(conv: nn.Conv2d, input_shape) -> torch.Tensor:
    """Which input entry each kernel tap reads, for every output position.

    Returns idx (C*k*k, L) int64 with L = h_out*w_out: the flat index into
    x.flatten() read by tap m at output position l, or -1 where the tap reads
    padding. (Unfold of an image of indices.)
    """
    c, h, w = _check_conv(conv, input_shape)
    ids = torch.arange(1, c * h * w + 1, dtype=torch.float64).reshape(1, c, h, w)
    cols = F.unfold(ids, conv.kernel_size, padding=conv.padding, stride=conv.stride)
    return cols[0].round().long() - 1


def output_shape(conv: nn.Conv2d, input_shape) -> tuple[int, int, int]:
    """(O, h_out, w_out) of the conv applied to one input of input_shape (C, H, W)."""
    _, h, w = _check_conv(conv, input_shape)
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    return conv.out_channels, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def _scatter(rows_per_tap: torch.Tensor, values: torch.Tensor, idx: torch.Tensor,
             n_rows: int, n_cols: int, sparse: bool) -> torch.Tensor:
    """Accumulate values at (rows, idx) over the taps that read real input."""
    keep = idx >= 0
    rows, cols, vals = rows_per_tap[..., keep], idx[..., keep], values[..., keep]
    coo = torch.sparse_coo_tensor(torch.stack([rows.flatten(), cols.flatten()]),
                                  vals.flatten(),
                                  (n_rows, n_cols), check_invariants=True).coalesce()
    return coo if sparse else coo.to_dense()


def conv_matrix(conv: nn.Conv2d, input_shape, sparse: bool = False,
                max_memory_gb: float = MAX_MEMORY_GB) -> torch.Tensor:
    """Matrix A (O*h*w, C*H*W) with A @ x.flatten() == conv(x).flatten() - bias.

    Same dtype as the conv's weight; a sparse COO tensor if ``sparse``. A
    dense matrix past ``max_memory_gb`` is refused (MemoryError) before it is
    built.
    """
    input_shape = _check_conv(conv, input_shape)
    sparse = checks.flag(sparse, "sparse")
    if not sparse:
        check_dense(math.prod(output_shape(conv, input_shape)), math.prod(input_shape),
                    "conv_matrix", max_memory_gb)
    idx = patch_indices(conv, input_shape)                  # (M, L)
    o = conv.out_channels
    m, l = idx.shape
    weight = conv.weight.detach().reshape(o, m)             # (O, M)
    rows = (torch.arange(o)[:, None, None] * l
            + torch.arange(l)[None, None, :]).expand(o, m, l)
    values = weight[:, :, None].expand(o, m, l)
    n = input_shape[0] * input_shape[1] * input_shape[2]
    return _scatter(rows, values, idx.expand(o, m, l), o * l, n, sparse)


def conv_gradient_matrix(conv: nn.Conv2d, input_shape, delta: torch.Tensor,
                         sparse: bool = False,
                         max_memory_gb: float = MAX_MEMORY_GB) -> torch.Tensor:
    """Matrix K (O*C*k*k, C*H*W) with K @ x.flatten() == dL/dW.flatten() for one sample.

    delta: dL/dz of that sample, shape (O, h_out, w_out) (or (1, O, h, w)).
    A dense matrix past ``max_memory_gb`` is refused before it is built.
    """
    input_shape = _check_conv(conv, input_shape)
    _check_delta(conv, input_shape, delta)
    sparse = checks.flag(sparse, "sparse")
    if not sparse:
        check_dense(conv.weight.numel(), math.prod(input_shape),
                    "conv_gradient_matrix", max_memory_gb)
    idx = patch_indices(conv, input_shape)                  # (M, L)
    o = conv.out_channels
    m, l = idx.shape
    delta = delta.detach().reshape(-1)
    delta = delta.reshape(o, l).to(conv.weight.dtype)
    rows = (torch.arange(o)[:, None, None] * m
            + torch.arange(m)[None, :, None]).expand(o, m, l)
    values = delta[:, None, :].expand(o, m, l)
    n = input_shape[0] * input_shape[1] * input_shape[2]
    return _scatter(rows, values, idx.expand(o, m, l), o * m, n, sparse)


def _check_delta(conv: nn.Conv2d, input_shape, delta, name: str = "delta") -> None:
    """delta: a finite float tensor with one entry per output of the conv."""
    checks.tensor(delta, name, "float")
    out = output_shape(conv, input_shape)
    if delta.numel() != math.prod(out):
        raise ValueError(f"{name} must have one entry per output of the conv, "
                         f"{math.prod(out)} = {out}, got {delta.numel()} entries "
                         f"({checks.describe(delta)})")


def unread_pixels(conv: nn.Conv2d, input_shape) -> torch.Tensor:
    """Boolean mask (C, H, W) of input entries that no kernel tap ever reads."""
    input_shape = _check_conv(conv, input_shape)
    idx = patch_indices(conv, input_shape)
    seen = torch.zeros(input_shape[0] * input_shape[1] * input_shape[2],
                       dtype=torch.bool)
    seen[idx[idx >= 0]] = True
    return ~seen.reshape(tuple(input_shape))


def conv_csr(conv: nn.Conv2d, input_shape, values: torch.Tensor,
             gradient: bool = False) -> sp.csr_matrix:
    """``conv_matrix`` (values = the weight) or, with ``gradient``,
    ``conv_gradient_matrix`` (values = delta) as a SciPy CSR matrix, built
    directly from the tap indices (fast, for large layers)."""
    input_shape = _check_conv(conv, input_shape)
    if checks.flag(gradient, "gradient"):
        _check_delta(conv, input_shape, values, "values")
    else:
        checks.tensor(values, "values", "float")
        if values.numel() != conv.weight.numel():
            checks.fail("values", f"the conv's weight ({conv.weight.numel()} entries)",
                        values)
    idx = patch_indices(conv, input_shape).numpy()                   # (M, L)
    o = conv.out_channels
    m, n_pos = idx.shape
    oo = np.arange(o)[:, None, None]
    values = values.detach().double()
    if gradient:
        rows = oo * m + np.arange(m)[None, :, None]
        vals = values.reshape(o, n_pos).numpy()[:, None, :]
        n_rows = o * m
    else:
        rows = oo * n_pos + np.arange(n_pos)[None, None, :]
        vals = values.reshape(o, m).numpy()[:, :, None]
        n_rows = o * n_pos
    full = (o, m, n_pos)
    sel = np.broadcast_to(idx >= 0, full)
    return sp.csr_matrix((np.broadcast_to(vals, full)[sel],
                          (np.broadcast_to(rows, full)[sel],
                           np.broadcast_to(idx, full)[sel])),
                         shape=(n_rows, math.prod(input_shape)))
