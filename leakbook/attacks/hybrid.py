"""COPA: layer-wise linear systems, corrected by gradient matching where they fail.

Taught in chapter 07 (after Chen & Campbell, 2021 and 2022). Going down from
the head as R-GAP does, every layer whose linear system has full column rank
is solved exactly. At the first rank-deficient layer i the linear solve only
gives the minimum-norm input, wrong along the null space; the constraints
that pin it down are the *pull-back* constraints of the layers below: their
gradients depend on x_i through act'(z) and on their own inputs. So the
layers 0..i are solved together for the image x, starting from the chain of
minimum-norm linear solves, by fitting (float64 L-BFGS)

    sum_{j<=i} |dW_j(x) - g_j|^2 / |g_j|^2  (+ the same for the biases j < i)
    + |z_i(x) - z_i|^2 / |z_i|^2,

where dW_j(x) are the gradients that backpropagating the known signal delta_i
through layers 0..i gives at x, and z_i is layer i's output known from above.
"""
from __future__ import annotations

import time

import torch
from torch import nn

from ..optim import lbfgs
from .layers import Block
from .linear_systems import patch_indices
from .result import Reconstruction
from .recursive import _prepare, invert_head, layer_system, step_down


def _sub_gradients(parts: list[Block], top: int, x: torch.Tensor, delta: torch.Tensor,
                   params: list[torch.Tensor]):
    """z_top(x) and the gradients of params when dL/dz_top = delta (one sample)."""
    h = x[None]
    for j in range(top + 1):
        h = parts[j].forward(h.reshape(1, *parts[j].in_shape))
        if j < top:
            h = parts[j].act(h) if parts[j].act is not None else h
    z = h[0]
    grads = torch.autograd.grad((z * delta).sum(), params, create_graph=True)
    return z, grads


def reached_inputs(parts: list[Block], top: int) -> torch.Tensor:
    """Mask (*in_shape) of the network input entries that some layer <= top reads
    through a chain of entries that are read in turn (the others reach no gradient
    of those layers, nor their outputs)."""
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


def _linear_chain(parts, acts, grads, top, x, delta, grad_weight, dense_limit):
    """Minimum-norm linear solves from layer ``top`` down to the input."""
    for i in range(top, -1, -1):
        if i < top:
            z, delta = step_down(parts[i + 1], acts[i], x, delta, parts[i])
        else:
            z = None
        if z is not None:
            system = layer_system(parts[i], z, delta, grads, grad_weight)
            x, _ = system.solve(diagnostics=False, dense_limit=dense_limit)
    return x


def copa(model: nn.Module, grads, labels=None, *, input_shape, steps: int = 1000,
         grad_weight: float = 10.0, rank_rtol: float = 1e-7, clip: float = 1e-7,
         dense_limit: int = 6000, branch: str = "small",
         fill: float | None = None) -> Reconstruction:
    """Reconstruct one input: exact linear solves while they are full rank, then a joint
    gradient-matching correction of the rank-deficient lower layers.

    model, grads, labels, input_shape: as for :func:`~leakbook.attacks.rgap`
        (one sample; Conv2d/Linear with or without bias; invertible activations).
    steps: L-BFGS iterations of the correction (0: linear solves only).
    fill: if given, the input entries that reach no gradient (strides and
        padding never read them; see ``unread_pixels``) are set to this value,
        e.g. the centre of the data range; their count is ``stats["invisible"]``.
    Returns a Reconstruction with images (1, *input_shape) in the model's dtype,
    the correction's loss history, and stats: ``layers`` (per-layer system
    stats from the top down), ``deficient_layer`` (name of the first
    rank-deficient layer, or None), ``linear_images`` (the minimum-norm linear
    solve alone, for comparison).
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    start = time.perf_counter()
    dtype = next(model.parameters()).dtype
    net, parts, acts, grads = _prepare(model, grads, input_shape, clip)
    x, delta, head_stats = invert_head(parts[-1], grads, labels, branch)
    layer_stats, top = [{"layer": parts[-1].name, **head_stats}], None
    for i in range(len(parts) - 2, -1, -1):
        z, delta = step_down(parts[i + 1], acts[i], x, delta, parts[i])
        system = layer_system(parts[i], z, delta, grads, grad_weight)
        x_i, stats = system.solve(True, rank_rtol=rank_rtol, dense_limit=dense_limit)
        layer_stats.append({"layer": parts[i].name, **stats})
        if stats.get("deficiency", 0) > 0 or stats.get("deficiency_bound", 0) > 0:
            top, z_top, delta_top, x_top = i, system.z, delta, x_i
            break
        x = x_i
    history = []
    if top is None:                       # every layer was full rank: R-GAP is exact
        image = linear = x
    else:
        linear = _linear_chain(parts, acts, grads, top, x_top, delta_top, grad_weight,
                               dense_limit)
        image, history = _correct(parts, grads, top, z_top, delta_top, linear, steps)
    hidden = ~reached_inputs(parts, len(parts) - 2 if top is None else top)
    if fill is not None:
        image = torch.where(hidden.flatten(), torch.full_like(image, fill), image)
    if not torch.isfinite(image).all():
        raise ValueError("the reconstruction is not finite")
    labels_out = None if labels is None else torch.as_tensor(labels).flatten()
    if labels_out is None and parts[-1].bias_index is not None:
        labels_out = grads[parts[-1].bias_index].argmin().reshape(1)
    shape = (1, *input_shape)
    return Reconstruction(image.reshape(shape).to(dtype), labels_out, history,
                          time.perf_counter() - start,
                          {"layers": layer_stats,
                           "deficient_layer": None if top is None else parts[top].name,
                           "invisible": int(hidden.sum()),
                           "linear_images": linear.reshape(shape).to(dtype)})


def _correct(parts, grads, top, z_top, delta, x0, steps, weight=1.0):
    """Fit the image to the gradients of layers 0..top and to z_top (float64 L-BFGS).

    z_top is the layer's output minus its bias (as in the linear system).
    """
    params, targets = [], []
    for j in range(top + 1):
        layer = parts[j].layer
        params.append(layer.weight)
        targets.append(grads[parts[j].weight_index])
        if j < top and parts[j].bias_index is not None:
            params.append(layer.bias)
            targets.append(grads[parts[j].bias_index])
    for p in params:
        p.requires_grad_(True)
    scales = [weight ** 2 / max(float(t.norm()), 1e-300) ** 2 for t in targets]
    bias = parts[top].layer.bias
    z_target = z_top if bias is None else z_top + bias.detach().reshape(
        -1, *[1] * (len(parts[top].out_shape) - 1))
    z_scale = 1.0 / max(float(z_target.norm()), 1e-300) ** 2
    shape = parts[0].in_shape
    history: list[float] = []

    def objective(x: torch.Tensor):
        x = x.detach().reshape(shape).requires_grad_(True)
        z, g = _sub_gradients(parts, top, x, delta, params)
        loss = z_scale * ((z - z_target) ** 2).sum()
        for gi, t, s in zip(g, targets, scales):
            loss = loss + s * ((gi - t) ** 2).sum()
        (grad,) = torch.autograd.grad(loss, [x])
        history.append(float(loss.detach()))
        return float(loss.detach()), grad.flatten()

    x = lbfgs(objective, x0.detach().double().flatten().clone(), max_iter=steps,
              history=30, stall=None)["z"] if steps else x0.detach().double().flatten()
    for p in params:
        p.requires_grad_(False)
    return x, history
