"""R-GAP: the recursive gradient attack, solved from the output layer down.

Taught in chapter 07 (Zhu & Blaschko, ICLR 2021). For one sample and a
network of Conv2d/Linear layers with invertible activations:

1. The head gives its input and its backpropagated signal in closed form:
   with a bias, by the ratio dL/dW = (dL/db) h^T; without a bias and with
   one logit under the logistic loss, by <dL/dW, W> = l'(mu) mu, a scalar
   equation for the margin mu = y f.
2. Going down, each layer knows its output (the inverse activation of the
   input just recovered above) and its signal delta = (W^T delta_above) *
   act'(z); its input solves the linear system of
   :class:`~leakbook.attacks.layer_system.LayerSystem`.
"""
from __future__ import annotations

import copy
import math
import numbers
import time

import torch
from torch import nn

from .. import checks, threads
from ..checks import check_grads
from .layer_system import LayerSystem
from .linear_systems import MAX_MEMORY_GB
from .layers import Activation, Block, activations_of, blocks
from .result import Reconstruction

#: the margin where mu -> -mu / (1 + e^mu) has its minimum (1 + e^m - m e^m = 0)
_MU_TURN = 1.2784645427610738
#: relative misfit of dL/dW = dL/db h^T above which the head saw more than one sample
#: (float32 gradients of one sample fit to ~1e-7)
ONE_SAMPLE_RTOL = 1e-4
#: the two roots of the logistic head's margin equation
BRANCHES = ("small", "large")


def _labels(labels, parts: list[Block]):
    """labels as a (1,) int64 tensor (None stays None); a plain int is one label."""
    if labels is None:
        return None
    if isinstance(labels, torch.Tensor) and labels.dim() == 0:
        labels = labels.reshape(1)
    elif isinstance(labels, numbers.Integral) and not isinstance(labels, bool):
        labels = [labels]
    outputs = parts[-1].layer.out_features
    return checks.labels(labels, "labels", batch_size=1,
                         num_classes=2 if outputs == 1 else outputs,
                         context=f" (the head has {outputs} output"
                                 f"{'s' if outputs > 1 else ': logistic labels'})"
                         ).clone()


def _prepare(model: nn.Module, grads, input_shape, clip: float, branch: str = "small",
             labels=None):
    """A float64, gradient-free copy of the model, its blocks, the float64 grads
    and the labels as a (1,) tensor (or None).

    Checks every argument before any work: the gradients line up with the
    model and are not all zero, input_shape is a shape, branch is known.
    """
    checks.module(model)
    grads = check_grads(model, grads)
    if input_shape is None:
        checks.fail("input_shape", "one sample's shape such as (3, 32, 32)", None,
                    TypeError)
    input_shape = checks.shape(input_shape, "input_shape")
    checks.choice(branch, "branch", BRANCHES)
    clip = checks.number(clip, "clip", above=0, below=0.5)
    if all(not bool(g.ne(0).any()) for g in grads):
        raise ValueError(f"grads must hold a non-zero gradient, got {len(grads)} "
                         "all-zero tensors: every gradient is zero, so there is "
                         "nothing to invert (a saturated loss or an all-zero update)")
    parts = blocks(model, input_shape)     # reads the structure only
    labels = _labels(labels, parts)
    net = copy.deepcopy(model).double()
    for p in net.parameters():
        p.requires_grad_(False)
    parts = blocks(net, input_shape)
    acts = activations_of(parts, clip)
    return net, parts, acts, [g.detach().double().clone() for g in grads], labels


def _options(grad_weight, scale, dense_limit, max_memory_gb) -> None:
    """Check the options rgap and copa share."""
    checks.number(grad_weight, "grad_weight", above=0)
    checks.flag(scale, "scale")
    checks.integer(dense_limit, "dense_limit", minimum=0)
    checks.number(max_memory_gb, "max_memory_gb", above=0, finite=False)


def _margin_equation(mu: float) -> float:
    return -mu / (1.0 + math.exp(mu)) if mu < 700 else 0.0


def solve_margin(value: float, branch: str = "small") -> float:
    """mu with -mu / (1 + e^mu) = value (the logistic head's <dL/dW, W>).

    A positive value has one root, mu < 0 (the label disagrees with the
    prediction). A negative value above the minimum -0.2785 has two roots,
    0 < mu1 < 1.2785 < mu2, that give identical gradients for a bias-free
    LeakyReLU network: ``branch`` picks "small" or "large".
    """
    value = checks.number(value, "value")
    checks.choice(branch, "branch", BRANCHES)
    g_min = _margin_equation(_MU_TURN)
    if value < g_min:
        raise ValueError(f"value must be at least the minimum {g_min:.4g} of "
                         f"-mu/(1+e^mu), got {value:.4g}: this <dL/dW, W> is not "
                         "from a gradient of the logistic loss")
    if value == 0.0:
        return 0.0
    if value > 0:
        lo, hi = -1.0, 0.0
        while _margin_equation(lo) < value:
            lo *= 2.0
    elif branch == "small":
        lo, hi = 0.0, _MU_TURN
    elif branch == "large":
        lo, hi = _MU_TURN, 2.0 * _MU_TURN
        while _margin_equation(hi) < value:
            hi *= 2.0
    else:
        raise ValueError(f"branch must be 'small' or 'large', got {branch!r}")
    # bisection: g is monotone on [lo, hi] (decreasing left of the turn)
    decreasing = hi <= _MU_TURN
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        above = _margin_equation(mid) > value
        if above == decreasing:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def invert_head(head: Block, grads: list[torch.Tensor], labels, branch: str = "small"):
    """Input h (n,) and signal delta = dL/dz (m,) of the last Linear layer, and stats.

    With a bias: h = (dL/dW)^T g_b / |g_b|^2 and delta = g_b (any loss, any
    activation after the head). Without a bias: one logit and the logistic
    loss (labels 0/1), the output either the logit or LeakyReLU of it (as
    R-GAP's FCN3): LeakyReLU(z) = LeakyReLU'(z) z keeps <dL/dW, W> = l'(mu) mu.
    Raises ValueError if the head's gradient is not that of one sample.
    """
    if not isinstance(head, Block) or not isinstance(head.layer, nn.Linear):
        checks.fail("head", "a Block of a Linear layer (the last of blocks())", head,
                    TypeError)
    if not isinstance(grads, (list, tuple)):
        checks.fail("grads", "a list of tensors", grads, TypeError)
    checks.choice(branch, "branch", BRANCHES)
    gw = grads[head.weight_index]
    if head.bias_index is not None:
        gb = grads[head.bias_index]
        norm2 = float(gb @ gb)
        if norm2 < 1e-300:
            raise ValueError("grads must have a non-zero bias gradient at the head, "
                             "got zero: the loss is saturated and the ratio "
                             "dL/dW / dL/db is undefined")
        h = gw.T @ gb / norm2
        fit = float((torch.outer(gb, h) - gw).norm() / gw.norm())
        if fit > ONE_SAMPLE_RTOL:
            raise ValueError(f"grads must be the gradient of one sample, got a head "
                             f"weight gradient that is not rank one (relative "
                             f"misfit {fit:.2g} of dL/dW = dL/db h^T): these are the "
                             "gradients of a batch, and this attack inverts one sample")
        return h, gb.clone(), {"head": "bias ratio", "residual_gradient": fit}
    if head.layer.out_features != 1:
        raise ValueError(f"model must have one logit (the logistic loss, R-GAP's "
                         f"setting) when its head has no bias, got "
                         f"{head.layer.out_features} logits: a multi-class head "
                         "needs a bias")
    kind = Activation(head.act, where=f"layer {head.name}").kind
    if kind not in ("identity", "leakyrelu"):
        raise ValueError(f"model must have no activation or a LeakyReLU after a "
                         f"bias-free logistic head (the margin equation), got "
                         f"{type(head.act).__name__} after layer {head.name}")
    if labels is None:
        checks.fail("labels", "the label (0 or 1) of a bias-free logistic head",
                    None)
    y = torch.as_tensor(labels).flatten()
    if y.numel() != 1 or y.is_floating_point() or int(y[0]) not in (0, 1):
        checks.fail("labels", "one label 0 or 1 for the logistic head", y)
    sign = 2.0 * int(y[0]) - 1.0
    value = float((gw * head.layer.weight.detach()).sum())
    mu = solve_margin(value, branch)
    k = -sign / (1.0 + math.exp(mu))
    if kind == "leakyrelu" and sign * mu < 0:      # output, hence z, negative
        k *= head.act.negative_slope
    if abs(k) < 1e-300:
        raise ValueError("grads must come from an unsaturated loss, got a logistic "
                         "margin so large that dL/df = 0")
    h = gw[0] / k
    return h, torch.tensor([k], dtype=gw.dtype), {
        "head": "logistic margin", "margin": mu, "inner_product": value,
        "two_roots": value < 0}


def step_down(upper: Block, act: Activation, x_upper: torch.Tensor,
              delta_upper: torch.Tensor,
              lower: Block) -> tuple[torch.Tensor, torch.Tensor]:
    """From the input x and signal delta of ``upper``, the output z (pre-activation)
    and signal delta of the block below."""
    for name, value in (("upper", upper), ("lower", lower)):
        if not isinstance(value, Block):
            checks.fail(name, "a Block (from attacks.layers.blocks)", value, TypeError)
    if not isinstance(act, Activation):
        checks.fail("act", "an Activation", act, TypeError)
    checks.tensor(x_upper, "x_upper", "float")
    checks.tensor(delta_upper, "delta_upper", "float")
    if x_upper.numel() != math.prod(lower.out_shape):
        checks.fail("x_upper", f"{math.prod(lower.out_shape)} entries (the output of "
                    "lower)", x_upper)
    if delta_upper.numel() != math.prod(upper.out_shape):
        checks.fail("delta_upper", f"{math.prod(upper.out_shape)} entries (the output "
                    "of upper)", delta_upper)
    z = act.inverse(x_upper.reshape(lower.out_shape))
    back = upper.backward(delta_upper.reshape(upper.out_shape)).reshape(lower.out_shape)
    return z, back * act.derivative(z)


def _finished_labels(image: torch.Tensor, labels, grads, parts):
    """The labels a layer-wise attack returns, once its image is checked finite:
    the given ones, else the head bias gradient's most negative entry (iDLG's
    rule), else None. Refuses a non-finite image (a singular system)."""
    if not torch.isfinite(image).all():
        raise ValueError("grads must give a finite reconstruction, got a "
                         "non-finite one: a layer's system is singular")
    if labels is None and parts[-1].bias_index is not None:
        return grads[parts[-1].bias_index].argmin().reshape(1)
    return labels


def check_one_sample(head_stats: dict, stats: dict, layer: str) -> None:
    """ValueError if the first layer below a logistic head cannot fit its gradient.

    Its output and signal come exactly from the head, so for one sample its
    system is consistent (float32 gradients: relative residual ~1e-6); the
    gradients of a batch leave a residual of order 0.1-1. (A bias head is
    checked by ``invert_head`` already; a rank-deficient layer fits anything.)
    """
    if head_stats.get("head") != "logistic margin" or stats.get("deficiency", 0):
        return
    if stats.get("residual_gradient", 0.0) > ONE_SAMPLE_RTOL * 10:
        raise ValueError(f"grads must be the gradient of one sample, got a misfit "
                         f"of {stats['residual_gradient']:.2g} (relative) at layer "
                         f"{layer} below the head: these are the gradients of a "
                         "batch, and this attack inverts one sample")


def layer_system(block: Block, z: torch.Tensor, delta: torch.Tensor,
                 grads: list[torch.Tensor], grad_weight: float = 10.0,
                 scale: bool = True) -> LayerSystem:
    """The system of ``block`` given its pre-activation z and signal delta."""
    if not isinstance(block, Block):
        checks.fail("block", "a Block (from attacks.layers.blocks)", block, TypeError)
    checks.tensor(z, "z", "float")
    if block.bias_index is not None:
        z = z - block.layer.bias.reshape(-1, *[1] * (len(block.out_shape) - 1))
    return LayerSystem(block, delta, grads[block.weight_index], z, grad_weight, scale)


def rgap(model: nn.Module, grads, labels=None, *, input_shape,
         grad_weight: float = 10.0, scale: bool = True, diagnostics: bool = True,
         spectrum: bool = False, branch: str = "small", clip: float = 1e-7,
         dense_limit: int = 6000,
         max_memory_gb: float = MAX_MEMORY_GB) -> Reconstruction:
    """Reconstruct one input from its shared gradient, layer by layer from the output.

    model: nn.Sequential of Conv2d/Linear (with or without bias), Flatten and
        invertible activations (LeakyReLU; Sigmoid and Tanh, clipped by
        ``clip``), ending in a Linear head: with bias (any loss, e.g. CE), or
        bias-free with one logit and the logistic loss (labels 0/1).
    grads: aligned with ``model.parameters()``, for a batch of ONE sample.
    input_shape: one sample's shape, e.g. (3, 32, 32).
    grad_weight, scale: the scale fix (rows normalised per block, gradient
        block weighted); ``scale=False`` solves the raw system as R-GAP's code.
    diagnostics: report extreme singular values, condition and rank per
        layer; ``spectrum`` also all singular values (slower: an eigh per layer).
    branch: which margin to take when the logistic head has two ("small"/"large").
    Returns a Reconstruction with images (1, *input_shape) in the model's
    dtype and ``stats["layers"]``, one dict per layer from the top down
    (unknowns, rows, rank, deficiency, condition, residuals, and the
    recovered ``input`` of that layer, flat, float64).
    A layer's dense solve past ``max_memory_gb`` is refused (MemoryError, with
    the estimate) before it is built. The model and the gradients are not
    changed (the attack works on a float64 copy); it computes on one thread.
    """
    start = time.perf_counter()
    _options(grad_weight, scale, dense_limit, max_memory_gb)
    checks.flag(diagnostics, "diagnostics")
    checks.flag(spectrum, "spectrum")
    net, parts, acts, grads, labels = _prepare(model, grads, input_shape, clip, branch,
                                               labels)
    dtype = checks.model_dtype(model)
    input_shape = tuple(int(s) for s in input_shape)     # checked by _prepare
    with threads.one_thread():
        x, delta, head_stats = invert_head(parts[-1], grads, labels, branch)
        layer_stats = [{"layer": parts[-1].name, **head_stats, "input": x}]
        for i in range(len(parts) - 2, -1, -1):
            z, delta = step_down(parts[i + 1], acts[i], x, delta, parts[i])
            system = layer_system(parts[i], z, delta, grads, grad_weight, scale)
            x, stats = system.solve(diagnostics, spectrum, dense_limit=dense_limit,
                                    max_memory_gb=max_memory_gb)
            if i == len(parts) - 2:
                check_one_sample(head_stats, stats, parts[i].name)
            layer_stats.append({"layer": parts[i].name, **stats, "input": x})
        labels_out = _finished_labels(x, labels, grads, parts)
    return Reconstruction(x.reshape(1, *input_shape).to(dtype), labels_out, [],
                          time.perf_counter() - start, {"layers": layer_stats})
