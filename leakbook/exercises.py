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


# --- chapters 04-05 ---------------------------------------------------------


# --- chapters 07-08 ---------------------------------------------------------


@register("ch08-ex-rank")
def _ch08_rank(answer, in_channels=3, out_channels=2, kernel=3, stride=1,
               size=7) -> bool:
    """The rank of a conv layer's system [K; A] (chapter 08)."""
    from torch import nn

    from . import security
    if not isinstance(answer, int):
        return verdict(False, f"Give the rank as an int, got {type(answer).__name__}.")
    conv = nn.Conv2d(in_channels, out_channels, kernel, stride)
    rank = security.audit(nn.Sequential(conv), (in_channels, size, size)).layers[0].rank
    return verdict(answer == rank, "Count gradient rows and forward rows, then "
                   "subtract the directions identity B puts in both: O * min(O, L).")


@register("ch08-ex-blind")
def _ch08_blind(answer, model=None, input_shape=None) -> bool:
    """The blind-spot mask of a model (chapter 08)."""
    from . import security
    mask = security.blind_spot(model, input_shape)
    a = torch.as_tensor(answer)
    if a.shape != mask.shape:
        return verdict(False, f"Expected a mask of shape {tuple(mask.shape)}, "
                       f"got {tuple(a.shape)}.")
    wrong = int((a.bool() != mask).sum())
    return verdict(wrong == 0, f"{wrong} entries differ. Follow which output positions "
                   "the layer above reads, from the top down.")


@register("ch08-ex-safer")
def _ch08_safer(answer, size=16) -> bool:
    """Widest second conv of cnn3_c1 that still leaves its layer rank-deficient."""
    from torch import nn

    from . import security
    if not isinstance(answer, int) or answer < 1:
        return verdict(False, "Give a positive int: the number of output channels.")
    n_in = (size - 2)

    def deficient(o):
        conv = nn.Conv2d(6, o, 4, 2)
        return security.rank_bound(conv, (6, n_in, n_in)) < 6 * n_in * n_in

    ok = deficient(answer) and not deficient(answer + 1)
    return verdict(ok, "Audit the two-layer net for each width and watch the "
                   "deficiency of the second conv reach 0.")


# --- chapters 09-10 ---------------------------------------------------------
