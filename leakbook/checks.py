"""Input validation shared by the package: clear errors, never silent answers."""
from __future__ import annotations

import torch


def check_batch(x: torch.Tensor, y: torch.Tensor | None = None) -> None:
    """Check an image batch x (B, C, H, W) and, if given, its labels y (B,)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise ValueError(f"x must have a batch dimension, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x is an empty batch")
    if not torch.isfinite(x).all():
        raise ValueError("x contains NaN or infinite values")
    if y is not None and y.shape[0] != x.shape[0]:
        raise ValueError(f"x has {x.shape[0]} samples but y has {y.shape[0]} labels")


def float_tensor(t, name: str) -> torch.Tensor:
    """Check that ``t`` is a finite floating-point tensor; return it detached."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return t.detach()


def check_grads(model: torch.nn.Module, grads) -> list[torch.Tensor]:
    """Check that ``grads`` lines up with ``model.parameters()``; return it as a list."""
    grads = list(grads)
    params = list(model.parameters())
    if len(grads) != len(params):
        raise ValueError(f"got {len(grads)} gradient tensors but the model has "
                         f"{len(params)} parameter tensors: gradients of another model?")
    for i, (g, p) in enumerate(zip(grads, params)):
        if not isinstance(g, torch.Tensor):
            raise TypeError(f"gradient {i} is a {type(g).__name__}, not a tensor")
        if g.shape != p.shape:
            raise ValueError(f"gradient {i} has shape {tuple(g.shape)} but parameter {i} "
                             f"has shape {tuple(p.shape)}: gradients of another model?")
        if not torch.isfinite(g).all():
            raise ValueError(f"gradient {i} contains NaN or infinite values")
    return grads
