"""Defences as transforms of a shared update (a list of gradients or weight deltas).

Each function takes the update a client is about to send, aligned with
``model.parameters()``, and returns a new list; the input is never changed.
The server (and any attack it runs) only sees the returned list.
Taught in chapter 10.
"""
from __future__ import annotations

import math

import torch

from .checks import float_tensor

__all__ = ["clip", "gaussian_noise", "clip_and_noise", "prune", "quantize",
           "global_norm", "DEFENSES"]


def _check_update(update) -> list[torch.Tensor]:
    """A non-empty list of finite floating tensors, or a clear error."""
    if isinstance(update, torch.Tensor):
        raise TypeError("update must be a list of tensors (one per parameter), "
                        "got a single tensor; wrap it in a list")
    try:
        update = list(update)
    except TypeError:
        raise TypeError(f"update must be a list of tensors, "
                        f"got {type(update).__name__}") from None
    if not update:
        raise ValueError("update is empty")
    return [float_tensor(t, f"update[{i}]") for i, t in enumerate(update)]


def _number(value, name: str, low: float = 0.0, strict: bool = False) -> float:
    """A finite float >= low (> low if strict), or a clear error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a number, "
                            f"got {type(value).__name__}") from None
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if value < low or (strict and value == low):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {low}, got {value}")
    return value


def global_norm(update) -> float:
    """The L2 norm of the whole update, all tensors flattened into one vector."""
    update = _check_update(update)
    return float(torch.sqrt(sum((t.double() ** 2).sum() for t in update)))


def clip(update, max_norm: float) -> list[torch.Tensor]:
    """Scale the update so that its global L2 norm is at most ``max_norm``.

    u -> u * min(1, max_norm / ||u||); an update already inside the ball is
    returned unchanged (copied). max_norm > 0. Taught in chapter 10.
    """
    update = _check_update(update)
    max_norm = _number(max_norm, "max_norm", strict=True)
    norm = global_norm(update)
    scale = min(1.0, max_norm / norm) if norm > 0 else 1.0
    return [t * scale for t in update]


def gaussian_noise(update, sigma: float, seed: int = 0) -> list[torch.Tensor]:
    """Add i.i.d. N(0, sigma^2) noise to every entry, drawn from ``seed``.

    sigma >= 0 is the standard deviation (DLG's "variance 1e-2" is sigma = 0.1).
    Taught in chapter 10.
    """
    update = _check_update(update)
    sigma = _number(sigma, "sigma")
    gen = torch.Generator().manual_seed(int(seed))
    return [t + sigma * torch.randn(t.shape, generator=gen, dtype=t.dtype)
            for t in update]


def clip_and_noise(update, max_norm: float, noise_multiplier: float,
                   seed: int = 0) -> list[torch.Tensor]:
    """The Gaussian mechanism on a whole client update: clip to C, add N(0, (z C)^2).

    This is update-level (user-level) privatisation as in DP-FedAvg: one clip
    of the client's whole update, then noise of standard deviation
    ``noise_multiplier * max_norm`` per entry. It is *not* per-example
    DP-SGD (Abadi et al., 2016), which clips every example's gradient before
    averaging. A guarantee (epsilon, delta) needs an accountant over all
    rounds (moments / RDP accounting) with the sampling rate of clients and
    the number of rounds; this function only applies one step of noise.
    Taught in chapter 10.
    """
    z = _number(noise_multiplier, "noise_multiplier")
    clipped = clip(update, max_norm)
    return gaussian_noise(clipped, z * float(max_norm), seed=seed)


def prune(update, fraction: float, per_tensor: bool = False) -> list[torch.Tensor]:
    """Zero the ``fraction`` of entries with the smallest magnitude.

    fraction in [0, 1): the share of entries set to zero, over the whole
    update (default) or within each tensor (``per_tensor=True``). Ties at the
    threshold are broken by position, so exactly round(fraction * n) entries
    are zeroed. DLG's "gradient pruning" / sparsification defence.
    Taught in chapter 10.
    """
    update = _check_update(update)
    fraction = _number(fraction, "fraction")
    if not fraction < 1:
        raise ValueError(f"fraction must lie in [0, 1), got {fraction}")

    def zero_smallest(flat: torch.Tensor) -> torch.Tensor:
        k = int(round(fraction * flat.numel()))
        out = flat.clone()
        if k > 0:
            out[flat.abs().argsort(stable=True)[:k]] = 0
        return out

    if per_tensor:
        return [zero_smallest(t.flatten()).reshape(t.shape) for t in update]
    flat = zero_smallest(torch.cat([t.flatten() for t in update]))
    return [p.reshape(t.shape) for p, t in
            zip(flat.split([t.numel() for t in update]), update)]


def quantize(update, bits: int, stochastic: bool = False,
             seed: int = 0) -> list[torch.Tensor]:
    """Uniform quantisation of each tensor to 2**bits levels on [min, max].

    Each tensor t is mapped to lo + step * k, k in {0, ..., 2**bits - 1},
    step = (max - min) / (2**bits - 1). Deterministic rounding by default;
    ``stochastic=True`` rounds up with probability equal to the remainder
    (unbiased: E[q(t)] = t), drawn from ``seed``. bits >= 1 (int).
    A constant tensor is returned unchanged. Taught in chapter 10.
    """
    update = _check_update(update)
    if isinstance(bits, bool) or not isinstance(bits, int):
        raise TypeError(f"bits must be an int, got {type(bits).__name__}")
    if bits < 1:
        raise ValueError(f"bits must be at least 1, got {bits}")
    gen = torch.Generator().manual_seed(int(seed))
    levels = 2 ** bits - 1
    out = []
    for t in update:
        lo, hi = t.min(), t.max()
        if hi == lo:
            out.append(t.clone())
            continue
        step = (hi - lo) / levels
        k = (t - lo) / step
        if stochastic:
            k = torch.floor(k + torch.rand(t.shape, generator=gen, dtype=t.dtype))
        else:
            k = torch.round(k)
        out.append(lo + step * k.clamp(0, levels))
    return out


# name -> (function, name of its strength parameter); every function takes the
# update first and returns a new list (clip_and_noise also needs max_norm).
DEFENSES = {
    "clip": (clip, "max_norm"),
    "noise": (gaussian_noise, "sigma"),
    "clip_and_noise": (clip_and_noise, "noise_multiplier"),
    "prune": (prune, "fraction"),
    "quantize": (quantize, "bits"),
}
