"""Check functions that tell a learner whether an exercise answer is right.

Each check prints a short verdict with a hint and returns True or False, so a
learner can call it in a notebook and a solution cell can assert on it.
Chapter-specific checks are registered by name and called as
``check("ch01-update", answer, ...)``.
"""
from __future__ import annotations

from typing import Callable

import torch

CHECKS: dict[str, Callable[..., bool]] = {}


def register(name: str):
    """Decorator: add a check function under an exercise label."""
    def wrap(fn):
        CHECKS[name] = fn
        return fn
    return wrap


def verdict(ok: bool, hint: str = "") -> bool:
    """Print a verdict for the learner and return ``ok``."""
    print("Correct!" if ok else f"Not yet. {hint}".strip())
    return ok


def check(name: str, answer, *args, **kwargs) -> bool:
    """Run the check registered for exercise ``name`` on ``answer``."""
    if name not in CHECKS:
        raise KeyError(f"no check for exercise {name!r}; known: {sorted(CHECKS)}")
    return CHECKS[name](answer, *args, **kwargs)


def close(answer, expected, rtol: float = 1e-5, atol: float = 1e-8, hint: str = "") -> bool:
    """Is a tensor (or number) answer close to the expected one, with the right shape?"""
    try:
        a = torch.as_tensor(answer, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return verdict(False, f"Expected a tensor or a number, got {type(answer).__name__}.")
    e = torch.as_tensor(expected, dtype=torch.float64)
    if a.shape != e.shape:
        return verdict(False, f"Expected shape {tuple(e.shape)}, got {tuple(a.shape)}.")
    return verdict(bool(torch.allclose(a, e, rtol=rtol, atol=atol)), hint)


def same_multiset(answer, expected, hint: str = "") -> bool:
    """Do two label lists hold the same labels, counted with multiplicity?"""
    a = sorted(torch.as_tensor(answer).flatten().tolist())
    e = sorted(torch.as_tensor(expected).flatten().tolist())
    return verdict(a == e, hint)


# --- chapter 01 -------------------------------------------------------------

@register("ch01-ex-fedavg")
def _ch01_fedavg(answer, model, x, y, lr=0.5, steps=3) -> bool:
    from .fl import client_update
    expected = client_update(model, x, y, lr=lr, local_steps=steps)
    if not isinstance(answer, (list, tuple)) or len(answer) != len(expected):
        return verdict(False, f"Expected a list of {len(expected)} tensors, one per "
                              "parameter tensor of the model.")
    ok = all(torch.as_tensor(a).shape == e.shape and torch.allclose(
        torch.as_tensor(a, dtype=e.dtype), e, atol=1e-8) for a, e in zip(answer, expected))
    return verdict(ok, "Take the steps on a copy of the model and return new minus old "
                       "weights (not the gradients).")


@register("ch01-ex-count")
def _ch01_count(answer) -> bool:
    from .models import build
    expected = sum(p.numel() for p in build("lenet_dlg", num_classes=100).parameters())
    return verdict(int(answer) == expected, "Count weights and biases of all four layers; "
                                            "the linear layer sees 12 x 8 x 8 features.")


@register("ch01-ex-recover")
def _ch01_recover(answer, secret) -> bool:
    return close(answer, secret, rtol=0, atol=1e-8,
                 hint="Divide a row of the weight gradient by its bias gradient entry.")


# --- chapter 02 -------------------------------------------------------------


@register("ch02-ex-recover")
def _ch02_recover(answer, truth) -> bool:
    """An image recovered from one sample's first-layer gradient, vs the truth."""
    truth = torch.as_tensor(truth, dtype=torch.float64)
    try:
        a = torch.as_tensor(answer, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return verdict(False, f"Expected a tensor, got {type(answer).__name__}.")
    if a.numel() != truth.numel():
        return verdict(False, f"Expected {truth.numel()} pixels (shape "
                       f"{tuple(truth.shape)}), got shape {tuple(a.shape)}.")
    a, t = a.flatten(), truth.flatten()
    if not torch.isfinite(a).all():
        return verdict(False, "Your answer has NaN or inf: did you divide by a zero "
                       "bias gradient? Keep only rows with a non-zero one.")
    cos = float(a @ t / (a.norm() * t.norm()).clamp_min(1e-300))
    if (a - t).norm() <= 1e-6 * t.norm():
        return verdict(True)
    if abs(cos) > 1 - 1e-9:
        return verdict(False, "Right direction, wrong scale (or sign): divide a row "
                       "of the weight gradient by the same row's bias gradient.")
    return verdict(False, "Not the image: use a row i with grad_bias[i] != 0 and "
                   "compute grad_weight[i] / grad_bias[i].")


@register("ch02-ex-rows")
def _ch02_rows(answer, pre_activations) -> bool:
    """Rows that isolate one sample: active (u > 0) for exactly one image."""
    u = torch.as_tensor(pre_activations)
    expected = (u > 0).sum(0) == 1
    try:
        a = torch.as_tensor(answer)
    except (TypeError, ValueError, RuntimeError):
        return verdict(False, f"Expected a boolean mask, got "
                       f"{type(answer).__name__}.")
    if a.dtype != torch.bool or a.shape != expected.shape:
        return verdict(False, f"Expected a boolean mask of shape "
                       f"{tuple(expected.shape)}, got {a.dtype} of shape "
                       f"{tuple(a.shape)}.")
    if torch.equal(a, expected):
        return verdict(True)
    return verdict(False, f"You marked {int(a.sum())} rows, {int(expected.sum())} "
                   "isolate a sample: a row isolates one when exactly one image has "
                   "u > 0 there.")


@register("ch02-ex-rank")
def _ch02_rank(answer, batch_sizes, num_classes: int = 10) -> bool:
    """Ranks of the softmax deltas (B, C) of a C-class linear model: min(B, C - 1)."""
    expected = [min(int(b), num_classes - 1) for b in batch_sizes]
    got = [int(r) for r in torch.as_tensor(answer).flatten().tolist()]
    if got == expected:
        return verdict(True)
    return verdict(False, f"Expected {len(expected)} ranks. Hint: each delta "
                   "softmax(z) - y sums to zero over the classes; how many "
                   "independent directions does that leave?")


# --- chapter 03 -------------------------------------------------------------


# --- chapters 04-05 ---------------------------------------------------------


# --- chapters 07-08 ---------------------------------------------------------


# --- chapters 09-10 ---------------------------------------------------------


@register("ch09-ex-sigmoid")
def _ch09_sigmoid(answer) -> bool:
    """c_3 = E[sigmoid'''(z)], z ~ N(0, 1), to 1e-4."""
    from .attacks.tensor import hermite_coefficient
    expected = hermite_coefficient(torch.sigmoid, 3)
    try:
        a = float(answer)
    except (TypeError, ValueError):
        return verdict(False, f"Expected a number, got {type(answer).__name__}.")
    if abs(a - expected) <= 1e-4:
        return verdict(True)
    if abs(a + expected) <= 1e-4:
        return verdict(False, "Right size, wrong sign: check the third derivative.")
    return verdict(False, "Average the third derivative of the sigmoid against the "
                   "standard normal density; sigmoid(z) = (1 + tanh(z / 2)) / 2 gives "
                   "E[tanh'''(z / 2)] / 16 as a cross-check.")


@register("ch09-ex-targets")
def _ch09_targets(answer, truth, tol: float = 0.1) -> bool:
    """Regression targets recovered from the CP weights, in any order, to ``tol``."""
    e = torch.as_tensor(truth, dtype=torch.float64).flatten().sort().values
    try:
        a = torch.as_tensor(answer, dtype=torch.float64).flatten()
    except (TypeError, ValueError, RuntimeError):
        return verdict(False, f"Expected a tensor, got {type(answer).__name__}.")
    if a.numel() != e.numel() or not torch.isfinite(a).all():
        return verdict(False, f"Expected {e.numel()} finite targets, got {a.numel()}.")
    if (a.sort().values - e).abs().max() <= tol:
        return verdict(True)
    if ((-a).sort().values - e).abs().max() <= tol:
        return verdict(False, "All signs are flipped: use the sign-corrected "
                       "directions and flip the weights with them.")
    return verdict(False, "y_i = f(x_i) - (B / 2) r_i with r_i = lambda_i / c_3, where "
                   "lambda_i is the weight of the (sign-corrected) direction x_i.")


@register("ch09-ex-width")
def _ch09_width(answer, rows, d: int = 20, B: int = 5, gradient: str = "output",
                target: float = 0.05) -> bool:
    """Width for a target tensor error under error = C / sqrt(m), C fitted; 10 %."""
    sel = [r for r in rows if (r["d"], r["B"], r["gradient"]) == (d, B, gradient)]
    consts = [r["tensor_error"] * r["m"] ** 0.5 for r in sel]
    expected = (sum(consts) / len(consts) / target) ** 2
    try:
        a = float(answer)
    except (TypeError, ValueError):
        return verdict(False, f"Expected a number, got {type(answer).__name__}.")
    if abs(a - expected) <= 0.1 * expected:
        return verdict(True)
    if abs(a ** 0.5 - expected) <= 0.1 * expected:
        return verdict(False, "Solve C / sqrt(m) = target for m: square the ratio.")
    return verdict(False, "Fit C = error * sqrt(m) on the output-layer rows at d = 20, "
                   "B = 5, then m = (C / 0.05)^2.")
