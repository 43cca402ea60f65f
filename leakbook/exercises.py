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


# --- chapter 02 -------------------------------------------------------------


# --- chapter 03 -------------------------------------------------------------


@register("ch03-ex-idlg")
def _ch03_idlg(answer, grad_bias) -> bool:
    """The label of one sample from its bias gradient (C,): the one negative entry."""
    expected = int(torch.as_tensor(grad_bias).argmin())
    try:
        a = torch.as_tensor(answer)
    except (TypeError, ValueError, RuntimeError):
        kind = type(answer).__name__
        return verdict(False, f"Expected one integer label, got {kind}.")
    got = int(a.flatten()[0]) if a.numel() == 1 else None
    return verdict(got == expected, "Which entry of the bias gradient is p_c - 1 < 0?")


@register("ch03-ex-counts")
def _ch03_counts(answer, grad_bias, softmax_mean, batch_size) -> bool:
    """Class counts (C,) from the bias gradient and the true softmax mean."""
    g = torch.as_tensor(grad_bias, dtype=torch.float64)
    p = torch.as_tensor(softmax_mean, dtype=torch.float64)
    expected = (batch_size * (p - g)).round()
    return close(answer, expected, atol=1e-6,
                 hint="Counts are n = B (p_mean - dL/db), rounded to integers.")


@register("ch03-ex-tolerance")
def _ch03_tolerance(answer, batch_size) -> bool:
    """The largest error of a softmax-mean estimate that rounding always forgives."""
    return close(answer, 1 / (2 * batch_size), rtol=1e-3,
                 hint="Rounding B (p_hat - dL/db) is exact while "
                      "B |p_hat - p_mean| < 1/2.")


# --- chapters 04-05 ---------------------------------------------------------


# --- chapters 07-08 ---------------------------------------------------------


# --- chapters 09-10 ---------------------------------------------------------
