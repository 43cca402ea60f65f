"""A feed-forward network seen as a chain of (linear map, activation) blocks.

Taught in chapter 07. Layer-wise attacks (R-GAP, COPA) walk a network from the
output down. ``blocks(model, input_shape)`` splits an ``nn.Sequential`` of
Conv2d, Linear, Flatten and elementwise activations into :class:`Block`\\ s,
each knowing its input and output shape for one sample and where its weight
and bias sit in ``model.parameters()``. ``Activation`` inverts the
activations that can be inverted.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .. import checks
from .linear_systems import output_shape

ACTIVATION_TYPES = (nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Identity, nn.ReLU,
                    nn.Softplus, nn.SiLU, nn.ELU, nn.GELU)


class Activation:
    """An elementwise activation with its inverse and derivative.

    Invertible: LeakyReLU (slope > 0), Sigmoid and Tanh (outputs clipped
    ``clip`` inside their range before inverting), Identity. Anything else
    (ReLU erases negative pre-activations) raises ``ValueError``.
    """

    def __init__(self, module: nn.Module | None, clip: float = 1e-7, where: str = ""):
        if module is not None and not isinstance(module, nn.Module):
            checks.fail("module", "an activation module or None", module, TypeError)
        self.module = module
        self.clip = checks.number(clip, "clip", above=0, below=0.5)
        kind = "identity" if module is None else type(module).__name__.lower()
        if kind == "leakyrelu" and module.negative_slope <= 0:
            kind = "relu"
        if kind not in ("identity", "leakyrelu", "sigmoid", "tanh"):
            place = f"{where}: " if where else ""
            raise ValueError(f"{place}the activation must be invertible (LeakyReLU, "
                             f"Sigmoid, Tanh or none), got {type(module).__name__}, "
                             "which is not invertible, so its input cannot be "
                             "recovered from its output (ReLU erases every negative "
                             "pre-activation)")
        self.kind = kind

    def inverse(self, a: torch.Tensor) -> torch.Tensor:
        """z with act(z) = a (a clipped into the open range of sigmoid/tanh)."""
        if self.kind == "leakyrelu":
            return torch.where(a < 0, a / self.module.negative_slope, a)
        if self.kind == "sigmoid":
            a = a.clamp(self.clip, 1 - self.clip)
            return torch.log(a) - torch.log1p(-a)
        if self.kind == "tanh":
            return torch.atanh(a.clamp(-1 + self.clip, 1 - self.clip))
        return a

    def derivative(self, z: torch.Tensor) -> torch.Tensor:
        """act'(z), elementwise."""
        if self.kind == "leakyrelu":
            return torch.where(z < 0, torch.full_like(z, self.module.negative_slope),
                               torch.ones_like(z))
        if self.kind == "sigmoid":
            s = torch.sigmoid(z)
            return s * (1 - s)
        if self.kind == "tanh":
            return 1 - torch.tanh(z) ** 2
        return torch.ones_like(z)

    def second_derivative(self, z: torch.Tensor) -> torch.Tensor:
        """act''(z), elementwise (0 for the piecewise linear ones)."""
        if self.kind == "sigmoid":
            s = torch.sigmoid(z)
            return s * (1 - s) * (1 - 2 * s)
        if self.kind == "tanh":
            t = torch.tanh(z)
            return -2 * t * (1 - t ** 2)
        return torch.zeros_like(z)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        """act(z)."""
        return z if self.module is None else self.module(z)


@dataclass
class Block:
    """One linear map (Conv2d or Linear) and the activation after it (or None)."""

    name: str
    layer: nn.Module
    act: nn.Module | None
    in_shape: tuple          # one sample's input: (C, H, W) or (n,)
    out_shape: tuple         # one sample's pre-activation: (O, h, w) or (m,)
    weight_index: int        # position of the weight in model.parameters()
    bias_index: int | None

    def __post_init__(self) -> None:
        if not isinstance(self.layer, (nn.Conv2d, nn.Linear)):
            checks.fail("layer", "an nn.Conv2d or nn.Linear", self.layer, TypeError)
        if self.act is not None and not isinstance(self.act, nn.Module):
            checks.fail("act", "an activation module or None", self.act, TypeError)
        self.in_shape = checks.shape(self.in_shape, "in_shape", dims=(1, 3))
        self.out_shape = checks.shape(self.out_shape, "out_shape", dims=(1, 3))
        self.weight_index = checks.integer(self.weight_index, "weight_index", minimum=0)
        if self.bias_index is not None:
            self.bias_index = checks.integer(self.bias_index, "bias_index", minimum=0)

    @property
    def n_in(self) -> int:
        return math.prod(self.in_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-activation of a batch x (B, *in_shape) -> (B, *out_shape)."""
        return self.layer(x)

    def backward(self, delta: torch.Tensor) -> torch.Tensor:
        """W^T delta, the gradient at the layer's input: (*out_shape) -> (*in_shape)."""
        w = self.layer.weight
        if isinstance(self.layer, nn.Linear):
            return delta @ w
        conv = self.layer
        return torch.nn.grad.conv2d_input((1, *self.in_shape), w, delta[None],
                                          conv.stride, conv.padding)[0]

    def weight_gradient(self, x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
        """dL/dW for one sample: input x (*in_shape), dL/dz = delta (*out_shape)."""
        if isinstance(self.layer, nn.Linear):
            return torch.outer(delta, x)
        conv = self.layer
        return torch.nn.grad.conv2d_weight(x[None], conv.weight.shape, delta[None],
                                           conv.stride, conv.padding)


def leaves(model: nn.Module, user: str = "this function"):
    """(path, module) of the leaves of a (nested) nn.Sequential, in order.

    The one layer walker of the package (layer-wise attacks, chapter 07, and
    the security audit, chapter 08). Paths are dotted, e.g. "2.0". Raises
    TypeError, naming ``user``, if the model is not an nn.Sequential.
    """
    if not isinstance(model, nn.Sequential):
        raise TypeError(f"{user} needs an nn.Sequential (possibly nested) of "
                        "Conv2d, Linear, Flatten and elementwise activations, whose "
                        f"layers it can read in order; got a {type(model).__name__}")
    yield from _walk(model, "")


def _walk(module: nn.Sequential, prefix: str):
    for name, child in module.named_children():
        path = f"{prefix}.{name}" if prefix else name
        if isinstance(child, nn.Sequential):
            yield from _walk(child, path)
        else:
            yield path, child


def blocks(model: nn.Module, input_shape) -> list[Block]:
    """Split a Sequential network into blocks; check shapes along the way.

    input_shape: one sample's shape, (C, H, W) or (n,). Raises TypeError for
    a layer that is not Conv2d, Linear, Flatten or an elementwise activation.
    """
    checks.module(model, "model", parameters=False)
    shape = checks.shape(input_shape, "input_shape")
    index = {id(p): i for i, p in enumerate(model.parameters())}
    out, pending = [], None
    for name, m in leaves(model, "a layer-wise attack"):
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if isinstance(m, nn.Linear):
                if shape != (m.in_features,):
                    raise ValueError(f"input_shape must fit the model, got one that "
                                     f"does not: layer {name}: Linear expects "
                                     f"{m.in_features} inputs but receives shape {shape}")
                new = (m.out_features,)
            else:
                try:
                    new = output_shape(m, shape)
                except ValueError as err:
                    raise ValueError(f"input_shape must fit the model, got one that "
                                     f"does not: layer {name} receives shape {shape}: "
                                     f"{err}") from None
            bias = None if m.bias is None else index[id(m.bias)]
            pending = Block(name, m, None, shape, new, index[id(m.weight)], bias)
            out.append(pending)
            shape = new
        elif isinstance(m, nn.Flatten):
            shape = (math.prod(shape),)
        elif isinstance(m, ACTIVATION_TYPES):
            if pending is None or pending.act is not None:
                raise TypeError(f"model must have each activation right after a "
                                f"Conv2d or Linear, got {type(m).__name__} at layer "
                                f"{name} after "
                                f"{'nothing' if pending is None else 'an activation'}")
            pending.act = m
        else:
            raise TypeError(f"model must hold only Conv2d, Linear, Flatten and "
                            f"elementwise activations, got {type(m).__name__} at layer "
                            f"{name}, which is not supported")
    if not out or not isinstance(out[-1].layer, nn.Linear):
        last = "no Conv2d or Linear" if not out else type(out[-1].layer).__name__
        raise TypeError(f"model must end with a Linear layer (the head), got {last}")
    return out


def activations_of(blocks_: list[Block], clip: float = 1e-7) -> list[Activation]:
    """The invertible activation of every block but the head (ValueError otherwise)."""
    if not isinstance(blocks_, (list, tuple)) or not all(isinstance(b, Block)
                                                          for b in blocks_):
        checks.fail("blocks_", "a list of Block (from blocks())", blocks_, TypeError)
    clip = checks.number(clip, "clip", above=0, below=0.5)
    return [Activation(b.act, clip, where=f"layer {b.name}") for b in blocks_[:-1]]

