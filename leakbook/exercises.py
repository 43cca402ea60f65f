"""Checks that tell a learner whether an exercise answer is right.

Converted exercises (chapters 01-02; ``grading/PLAN.md`` lists the rest) ask
for a *function*. ``check(label, fn)`` draws fresh inputs from fixed seeds,
computes the reference value itself, runs ``fn`` with the package helpers
that the exercise forbids made unavailable, and prints "Correct!" or a hint
that never shows the expected value. ``check(label, fn, hidden=True)`` adds
cases drawn from the grader's salt (environment variable
``LEAKBOOK_GRADING_SALT``): the hidden tests that ``make grade`` runs. A
function that still raises ``NotImplementedError`` (the stub of a student
copy) makes the check raise it too, so an unfinished exercise fails loudly.

Older checks (``register``) take a value and the data it came from,
``check(label, answer, *args)``; they are converted chapter by chapter.
"""
from __future__ import annotations

import hashlib
import importlib
import math
import os
import random
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

CHECKS: dict[str, Callable[..., bool]] = {}
#: label -> the check of an exercise whose answer is a function
ANSWER_CHECKS: dict[str, "AnswerCheck"] = {}
#: environment variable that holds the grader's salt for the hidden cases
SALT_VARIABLE = "LEAKBOOK_GRADING_SALT"
DEFAULT_SALT = "leakbook"
F64 = torch.float64


def register(name: str):
    """Decorator: add a value check function under an exercise label."""
    def wrap(fn):
        CHECKS[name] = fn
        return fn
    return wrap


def verdict(ok: bool, hint: str = "") -> bool:
    """Print a verdict for the learner and return ``ok``."""
    print("Correct!" if ok else f"Not yet. {hint}".strip())
    return ok


def check(name: str, answer, *args, hidden: bool = False, **kwargs) -> bool:
    """Run the check registered for exercise ``name`` on ``answer``.

    For an exercise whose answer is a function, ``hidden=True`` adds the
    grader's salted cases to the public ones.
    """
    if name in ANSWER_CHECKS:
        if args or kwargs:
            raise TypeError(f"check({name!r}, fn) takes your function only: the "
                            "check builds its own inputs")
        return ANSWER_CHECKS[name](answer, hidden=hidden)
    if name not in CHECKS:
        known = sorted([*CHECKS, *ANSWER_CHECKS])
        raise KeyError(f"no check for exercise {name!r}; known: {known}")
    return CHECKS[name](answer, *args, **kwargs)


# --- answers that are functions: guarded calls ------------------------------


class ForbiddenHelper(Exception):
    """An answer called a package function that its exercise asks to write."""


class Tampering(Exception):
    """An answer changed a library module while it ran."""


class AnswerRaised(Exception):
    """The learner's function raised; ``__cause__`` holds its exception."""


def _package_modules() -> list:
    return [m for name, m in list(sys.modules.items())
            if m is not None and (name == "leakbook" or name.startswith("leakbook."))]


def _watched() -> list:
    """Modules (and the tensor class) whose entries an answer must not replace."""
    import builtins
    return [builtins, math, np, np.linalg, torch, torch.linalg, torch.nn.functional,
            torch.Tensor, *_package_modules()]


def _snapshot(objects) -> list[tuple[object, dict]]:
    return [(o, dict(vars(o))) for o in objects]


def _changed(snapshot) -> list[str]:
    """Entries of the snapshot that now hold another object (additions are fine)."""
    out = []
    for obj, before in snapshot:
        now = vars(obj)
        for key, value in before.items():
            if key in ("_", "__", "___"):
                continue
            if now.get(key, _MISSING) is not value:
                out.append(f"{getattr(obj, '__name__', obj)}.{key}")
                try:
                    setattr(obj, key, value)  # put it back for the rest of the run
                except (AttributeError, TypeError):
                    pass
    return out


_MISSING = object()


@contextmanager
def _forbidding(names: tuple[str, ...]):
    """Make the named functions unavailable (every alias in the package too).

    Yields a list that collects the forbidden functions that ran anyway
    (through a reference taken earlier): a profiler watches their code.
    """
    targets = []
    for dotted in names:
        mod_name, attr = dotted.rsplit(".", 1)
        targets.append((dotted, getattr(importlib.import_module(mod_name), attr)))
    patches = []
    for module in _package_modules():
        for key, value in list(vars(module).items()):
            for dotted, obj in targets:
                if value is obj:
                    patches.append((module, key, value, dotted))
    codes = {obj.__code__: dotted for dotted, obj in targets
             if hasattr(obj, "__code__")}
    hits: list[str] = []
    closing = []

    def blocked(dotted):
        def stand_in(*args, **kwargs):
            hits.append(dotted)
            raise ForbiddenHelper(f"This exercise asks you to write it yourself: "
                                  f"your function called {dotted}.")
        return stand_in

    def profiler(frame, event, arg):
        if closing:
            return
        if event == "call" and frame.f_code in codes:
            hits.append(codes[frame.f_code])
        elif event == "c_call" and arg is sys.setprofile:
            hits.append("sys.setprofile")

    for module, key, _, dotted in patches:
        setattr(module, key, blocked(dotted))
    snapshot = _snapshot(_watched())
    previous = sys.getprofile()
    sys.setprofile(profiler)
    try:
        yield hits
    finally:
        closing.append(True)
        sys.setprofile(previous)
        changed = _changed(snapshot)
        for module, key, value, _ in patches:
            setattr(module, key, value)
        if changed:
            raise Tampering("Your function replaced library code while it ran "
                            f"({', '.join(changed[:3])}); the check refuses it.")


class _Answer:
    """The learner's function, called with the exercise's helpers forbidden."""

    def __init__(self, fn: Callable, forbid: tuple[str, ...]):
        self.fn, self.forbid = fn, forbid

    def __call__(self, *args):
        with _forbidding(self.forbid) as hits:
            try:
                result = self.fn(*args)
            except (NotImplementedError, ForbiddenHelper):
                raise
            except Exception as err:  # noqa: BLE001 - reported, then re-raised
                raise AnswerRaised(f"{type(err).__name__}: {err}") from err
        if hits:
            raise ForbiddenHelper(f"This exercise asks you to write it yourself: your "
                                  f"function used {hits[0]}.")
        return result


def hidden_seeds(label: str, n: int, salt: str | None = None) -> list[int]:
    """The seeds of the hidden cases of an exercise, drawn from the grader's salt."""
    salt = os.environ.get(SALT_VARIABLE, DEFAULT_SALT) if salt is None else salt
    digest = (hashlib.sha256(f"{salt}/{label}/{i}".encode()).digest() for i in range(n))
    return [1000 + int.from_bytes(d[:4], "big") % 1_000_000 for d in digest]


@dataclass(frozen=True)
class AnswerCheck:
    """The check of an exercise whose answer is a function.

    run(answer, seed) builds one case from ``seed``, computes the reference,
    calls ``answer`` (guarded) and returns None if it is right, else a hint.
    """
    label: str
    run: Callable
    forbid: tuple[str, ...] = ()
    public: tuple[int, ...] = (0, 1)
    hidden: int = 4

    def __call__(self, answer, hidden: bool = False) -> bool:
        if not callable(answer):
            return verdict(False, "Pass your function itself (its name, without "
                           f"calling it), not a {type(answer).__name__}.")
        extra = hidden_seeds(self.label, self.hidden) if hidden else []
        seeds = [*self.public, *extra]
        for seed in seeds:
            try:
                hint = self.run(_Answer(answer, self.forbid), seed)
            except NotImplementedError:
                print("Not yet: your function still raises NotImplementedError.")
                raise
            except (ForbiddenHelper, Tampering) as err:
                return verdict(False, str(err))
            except AnswerRaised as err:
                print(f"Not yet. Your function raised {err}")
                raise err.__cause__ from None
            if hint:
                return verdict(False, hint)
        return verdict(True)


def answer_check(label: str, forbid: tuple[str, ...] = (), public=(0, 1), hidden=4):
    """Decorator: register ``run(answer, seed) -> hint | None`` for ``label``."""
    def wrap(run):
        ANSWER_CHECKS[label] = AnswerCheck(label, run, tuple(forbid), tuple(public),
                                           hidden)
        return run
    return wrap


# --- reading answers: NumPy and torch scalars welcome ------------------------


def as_int(value) -> int | None:
    """An integer answer as ``int``, or None if it is not a whole number.

    Accepts int, NumPy and torch integer scalars, and floats with no fraction;
    refuses bool, 2.5, strings and arrays of several numbers.
    """
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype == torch.bool:
            return None
        value = value.item()
    elif isinstance(value, np.ndarray):
        if value.size != 1 or value.dtype == bool:
            return None
        value = value.item()
    elif isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def as_float(value) -> float | None:
    """A real-number answer as ``float``, or None if it is not one number."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.dtype == torch.bool or value.is_complex():
            return None
        value = value.item()
    elif isinstance(value, (np.ndarray, np.generic)):
        if np.size(value) != 1 or np.asarray(value).dtype.kind not in "iuf":
            return None
        value = np.asarray(value).item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def as_tensor(value, dtype: torch.dtype = F64) -> torch.Tensor | None:
    """An array answer (tensor, NumPy array, nested list) as a plain tensor."""
    try:
        if isinstance(value, torch.Tensor):
            t = value.detach().as_subclass(torch.Tensor)
        elif isinstance(value, (list, tuple)) and value and all(
                isinstance(v, torch.Tensor) for v in value):
            t = torch.stack([v.detach().as_subclass(torch.Tensor).to(dtype)
                             for v in value])
        else:
            t = torch.as_tensor(np.asarray(value, dtype=float))
        if t.is_complex():
            return None
        return t.to("cpu", dtype).clone()
    except (TypeError, ValueError, RuntimeError):
        return None


def as_mask(value) -> torch.Tensor | None:
    """A boolean mask answer (bool, or 0/1 integers) as a bool tensor."""
    t = as_tensor(value)
    if t is None or not bool(((t == 0) | (t == 1)).all()):
        return None
    return t.bool()


def close(answer, expected, rtol: float = 1e-5, atol: float = 1e-8,
          hint: str = "") -> bool:
    """Is a tensor (or number) answer close to the expected one, with its shape?
    (For the value checks not yet converted.)"""
    try:
        a = torch.as_tensor(answer, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return verdict(False, "Expected a tensor or a number, got "
                       f"{type(answer).__name__}.")
    e = torch.as_tensor(expected, dtype=torch.float64)
    if a.shape != e.shape:
        return verdict(False, f"Expected shape {tuple(e.shape)}, got {tuple(a.shape)}.")
    return verdict(bool(torch.allclose(a, e, rtol=rtol, atol=atol)), hint)


def same_multiset(answer, expected, hint: str = "") -> bool:
    """Do two label lists hold the same labels, counted with multiplicity?"""
    a = sorted(torch.as_tensor(answer).flatten().tolist())
    e = sorted(torch.as_tensor(expected).flatten().tolist())
    return verdict(a == e, hint)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


# --- chapter 01 -------------------------------------------------------------


@answer_check("ch01-ex-fedavg", forbid=("leakbook.fl.client_update",))
def _ch01_fedavg(answer, seed: int):
    """fedavg_update(model, x, y, lr, steps) vs lb.fl.client_update."""
    from . import data, fl, models
    pick = random.Random(seed)
    x, y = data.load("digits", pick.randint(2, 8), seed=seed, dtype=F64)
    model = models.build("mlp", seed=seed, in_features=64,
                         widths=pick.choice([(16,), (32,), (24, 12)]),
                         activation=pick.choice(["sigmoid", "tanh", "relu"]), dtype=F64)
    lr, steps = pick.choice([0.1, 0.5, 1.0]), pick.randint(1, 4)
    expected = fl.client_update(model, x, y, lr=lr, local_steps=steps)
    before = [p.detach().clone() for p in model.parameters()]
    got = answer(model, x.clone(), y.clone(), lr, steps)
    if not all(torch.equal(p, b) for p, b in zip(model.parameters(), before)):
        return ("Your function changed the model it was given: take the steps on a "
                "copy (copy.deepcopy) and leave the client's model as it was.")
    if not isinstance(got, (list, tuple)) or len(got) != len(expected):
        return "Return a list with one tensor per parameter tensor of the model."
    got = [as_tensor(g) for g in got]
    if any(g is None or g.shape != e.shape for g, e in zip(got, expected)):
        return "Each tensor of the list must have the shape of its parameter."
    if all(torch.allclose(g, e, rtol=1e-9, atol=1e-12) for g, e in zip(got, expected)):
        return None
    if all(torch.allclose(g, -e, rtol=1e-9, atol=1e-12) for g, e in zip(got, expected)):
        return "Wrong sign: the update is the new weights minus the old ones."
    return ("Not the change of the weights after these steps: recompute the gradient "
            "at the current weights before every step, and step against it.")


@answer_check("ch01-ex-count", forbid=("leakbook.models.build",
                                       "leakbook.models.lenet_dlg",
                                       "leakbook.models._cnn",
                                       "leakbook.models._conv_stack"))
def _ch01_count(answer, seed: int):
    """update_size(num_classes, in_channels, image_size) for DLG's LeNet."""
    from .models import build
    pick = random.Random(seed)
    args = (100, 3, 32) if seed == 0 else (pick.choice([2, 10, 100, 1000]),
                                           pick.choice([1, 3]),
                                           pick.choice([12, 16, 28, 32, 64]))
    net = build("lenet_dlg", num_classes=args[0], in_channels=args[1],
                image_size=args[2])
    expected = sum(p.numel() for p in net.parameters())
    got = as_int(answer(*args))
    if got is None:
        return "Return a whole number (an int, or a NumPy or torch integer scalar)."
    if got != expected:
        return ("Not the number of weights and biases of the four layers for these "
                "arguments: the linear layer's input size depends on image_size "
                "through the strides and the padding of the convolutions.")
    return None


@answer_check("ch01-ex-recover", forbid=("leakbook.attacks.analytic.invert_fc",))
def _ch01_recover(answer, seed: int):
    """recover_input(grad_weight, grad_bias) -> the one input of an FC layer."""
    from . import data, fl, models
    pick = random.Random(seed)
    name = pick.choice(["digits", "faces"])
    x, y = data.load(name, 1, seed=seed, dtype=F64)
    net = models.build("mlp", seed=seed, in_features=x[0].numel(),
                       widths=(pick.choice([16, 32, 64]),),
                       activation=("relu", "sigmoid", "tanh")[seed % 3],
                       num_classes=2 if name == "faces" else 10, dtype=F64)
    gw, gb = fl.shared_gradients(net, x, y)[:2]
    truth, n = x.flatten(), x[0].numel()
    got = as_tensor(answer(gw.clone(), gb.clone()))
    if got is None or got.numel() != n:
        return f"Return the input as a tensor of n = {n} numbers (one per column)."
    got = got.flatten()
    if not torch.isfinite(got).all():
        return ("Your answer holds NaN or inf: some rows have a zero bias gradient "
                "(their unit is off for this input); do not divide by those.")
    if _rel_err(got, truth) < 1e-8:
        return None
    cos = float(got @ truth / (got.norm() * truth.norm()).clamp_min(1e-300))
    if abs(cos) > 1 - 1e-9:
        return "Right direction, wrong scale or sign: divide by the matching entry."
    return ("Not the input: each usable row of the weight gradient is the input "
            "times one number that the bias gradient tells you.")


# --- chapter 02 -------------------------------------------------------------


@answer_check("ch02-ex-rows")
def _ch02_rows(answer, seed: int):
    """isolating_rows(layer, x) -> mask of the rows one sample switches on."""
    from . import data
    pick = random.Random(seed)
    x, _ = data.load("digits", pick.randint(2, 8), seed=seed, dtype=F64)
    x = x.flatten(1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = torch.nn.Linear(64, pick.choice([32, 64, 128, 256])).to(F64)
    with torch.no_grad():
        expected = (layer(x) > 0).sum(0) == 1
    got = answer(layer, x.clone())
    mask = as_mask(got)
    if mask is None or mask.shape != expected.shape:
        return ("Return a boolean mask with one entry per row of the layer "
                f"(shape ({layer.out_features},)).")
    if torch.equal(mask, expected):
        return None
    return ("Your mask differs from the rows that isolate a sample: a row isolates "
            "one when exactly one sample of the batch switches it on (u > 0).")


def _ch02_batch_layer(seed: int):
    """A digit batch, a ReLU MLP and its first-layer gradient (for ch02-ex-certify)."""
    from . import data, fl, models
    pick = random.Random(seed)
    x, y = data.load("digits", pick.choice([2, 4, 6, 8]), seed=seed, dtype=F64)
    net = models.build("mlp", seed=seed, in_features=64,
                       widths=(pick.choice([128, 256, 512]),), dtype=F64)
    gw, gb = fl.shared_gradients(net, x, y)[:2]
    with torch.no_grad():
        on = net[1](x.flatten(1)) > 0                     # (B, m)
    alone = on & (on.sum(0) == 1)
    leaked = [k for k in range(len(x)) if int(alone[k].sum()) >= 2]
    return x.flatten(1), gw, gb, leaked


@answer_check("ch02-ex-certify", forbid=("leakbook.attacks.analytic.invert_fc",
                                         "leakbook.attacks.analytic._agreeing_groups"))
def _ch02_certify(answer, seed: int):
    """certified_inputs(grad_weight, grad_bias, tol) -> the inputs two rows agree on."""
    x, gw, gb, leaked = _ch02_batch_layer(seed)
    got = as_tensor(answer(gw.clone(), gb.clone(), 1e-10))
    n = x.shape[1]
    if got is None or (got.numel() > 0 and (got.dim() != 2 or got.shape[1] != n)):
        return f"Return a tensor of shape (k, {n}): one certified input a row."
    got = got.reshape(-1, x.shape[1])
    if not torch.isfinite(got).all():
        return "Your answer holds NaN or inf: skip rows whose bias gradient is zero."
    dist = torch.cdist(got, x, compute_mode="donot_use_mm_for_euclid_dist")
    dist = dist / x.norm(dim=1)
    if len(got) and not bool((dist.min(1).values < 1e-8).all()):
        return ("Some vector you return is not one of the inputs: a row that "
                "several samples switch on gives a mixture; certify only what "
                "two rows agree on.")
    found = dist.argmin(1).tolist() if len(got) else []
    if len(set(found)) != len(found):
        return "The same input comes back twice: merge the rows that agree."
    if sorted(found) != leaked:
        return ("You miss inputs that two or more rows agree on: compare every usable "
                "row with every other, relative to their size.")
    return None


@answer_check("ch02-ex-rank", forbid=("leakbook.attacks.analytic.last_layer_deltas",
                                      "leakbook.attacks.analytic.solve_fc_inputs"))
def _ch02_rank(answer, seed: int):
    """delta_rank(logits, labels) -> numerical rank of softmax(z) - onehot(y)."""
    pick = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    b, c = {0: (12, 10), 1: (4, 10)}.get(seed, (pick.randint(1, 14),
                                              pick.choice([3, 5, 10])))
    logits = 2 * torch.randn(b, c, generator=gen, dtype=F64)
    labels = torch.randint(0, c, (b,), generator=gen)
    if seed == 1 or (seed > 1 and b > 2 and pick.random() < 0.5):
        logits[1], labels[1] = logits[0], labels[0]     # the same sample twice
    delta = torch.softmax(logits, 1) - torch.nn.functional.one_hot(labels, c)
    s = torch.linalg.svdvals(delta)
    expected = int((s > 1e-10 * s[0]).sum())
    got = as_int(answer(logits.clone(), labels.clone()))
    if got is None:
        return "Return the rank as a whole number (int, NumPy or torch scalar)."
    if got != expected:
        return ("Not the rank of these error signals: build the matrix and count its "
                "singular values above 1e-10 times the largest one. A formula in B "
                "and C alone misses batches that hold the same sample twice.")
    return None


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


@register("ch04-ex-distance")
def _ch04_distance(answer, model, x, y) -> bool:
    """DLG's L2 distance between the gradients of (x, y) and (x, (y + 1) % C)."""
    from .attacks.matching import l2_distance
    from .fl import shared_gradients
    c = model(x).shape[-1]
    expected = l2_distance(shared_gradients(model, x, (y + 1) % c),
                           shared_gradients(model, x, y))
    return close(answer, expected, rtol=1e-4,
                 hint="Sum the squared differences over every parameter tensor.")


@register("ch04-ex-scale")
def _ch04_scale(answer) -> bool:
    """The loss factor c of a client that used 0.5 * CE."""
    return close(answer, 0.5, rtol=1e-3,
                 hint="Divide the shared bias gradient of the true class by p_c - 1.")


@register("ch04-ex-iterations")
def _ch04_iterations(answer, loss_history) -> bool:
    """First iteration at which the distance is below 1e-6 of its start."""
    h = torch.as_tensor(loss_history, dtype=torch.float64)
    below = (h < 1e-6 * h[0]).nonzero()
    if len(below) == 0:
        return verdict(False, "This run never got below 1e-6: run more iterations.")
    return verdict(int(answer) == int(below[0]),
                   "Count from 0 and take the first index below the threshold.")


@register("ch05-ex-tv")
def _ch05_tv(answer, x) -> bool:
    """Anisotropic total variation of an image batch x."""
    from .attacks.matching import total_variation
    return close(answer, total_variation(x, {}), rtol=1e-5,
                 hint="Mean absolute difference of horizontal neighbours plus "
                      "that of vertical neighbours.")


@register("ch05-ex-bn-mean")
def _ch05_bn_mean(answer, batch_mean) -> bool:
    """A BN layer's batch mean recovered from its running-mean update."""
    return close(answer, batch_mean, rtol=1e-4, atol=1e-6,
                 hint="running_new = (1 - momentum) running_old + momentum batch_mean.")


@register("ch05-ex-cosine")
def _ch05_cosine(answer) -> bool:
    """Cosine distance between c * g and g for any c > 0."""
    return close(answer, 0.0, atol=1e-6,
                 hint="The cosine does not change when a vector is scaled by c > 0.")



# --- chapters 07-08 ---------------------------------------------------------

# chapter 07 (linear systems, R-GAP, COPA)

@register("ch07-ex-rank")
def _ch07_rank(answer) -> bool:
    """Rank of [K; A], Conv2d(3, 4, 3, stride 2) on 3x11x11: rows minus O^2."""
    from torch import nn
    from .attacks import linear_systems as ls
    layer = nn.Conv2d(3, 4, kernel_size=3, stride=2).double()
    gen = torch.Generator().manual_seed(0)
    delta = torch.randn(4, 5, 5, dtype=torch.float64, generator=gen)
    system = torch.cat([ls.conv_gradient_matrix(layer, (3, 11, 11), delta),
                        ls.conv_matrix(layer, (3, 11, 11))])
    expected = int(torch.linalg.matrix_rank(system))
    try:
        ok = int(answer) == expected
    except (TypeError, ValueError):
        return verdict(False, "Give the rank as an integer.")
    return verdict(ok, "Count the rows of both blocks, then subtract one per pair of "
                       "filters.")


@register("ch07-ex-margin")
def _ch07_margin(answer) -> bool:
    """The margin mu with -mu / (1 + e^mu) = 0.2."""
    from .attacks.recursive import solve_margin
    return close(answer, solve_margin(0.2), rtol=1e-6, atol=1e-8,
                 hint="A positive <grad, w> means mu < 0; solve -mu/(1+e^mu) = 0.2.")


@register("ch07-ex-invisible")
def _ch07_invisible(answer) -> bool:
    """Mask (3, 32, 32) of the input pixels of cnn3_c1 that reach no gradient."""
    from .attacks import linear_systems as ls
    from .models import build
    net = build("cnn3_c1")
    mid = ls.unread_pixels(net[2], (6, 30, 30))[0].flatten()
    taps = ls.patch_indices(net[0], (3, 32, 32))
    seen = torch.zeros(3 * 32 * 32, dtype=torch.bool)
    seen[taps[:, ~mid].flatten()] = True
    expected = ~seen.reshape(3, 32, 32)
    answer = torch.as_tensor(answer)
    if answer.shape != expected.shape:
        return verdict(False, f"Expected a mask of shape {tuple(expected.shape)}.")
    return verdict(bool(torch.equal(answer.bool(), expected)),
                   "A pixel is visible if some first-layer output that reads it is "
                   "read by the second layer.")



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


# --- chapter 09 -------------------------------------------------------------


def _ch09_activation(seed: int):
    """A smooth activation (a torch function of a float64 tensor) drawn from seed."""
    if seed == 0:
        return torch.sigmoid                            # the chapter's question
    if seed == 1:
        return lambda z: 1.5 * torch.tanh(0.7 * z + 0.4)
    pick = random.Random(seed)
    base = pick.choice([torch.tanh, torch.sigmoid, torch.erf,
                        torch.nn.functional.softplus])
    scale, slope = pick.uniform(0.5, 2.0), pick.uniform(0.4, 1.6)
    shift = pick.choice([0.0, pick.uniform(-1.0, 1.0)])
    return lambda z: scale * base(slope * z + shift)


@answer_check("ch09-ex-sigmoid",
              forbid=("leakbook.attacks.tensor.hermite_coefficient",))
def _ch09_sigmoid(answer, seed: int):
    """third_coefficient(activation) -> c_3 = E[activation'''(z)], z ~ N(0, 1)."""
    from .attacks.tensor import hermite_coefficient
    act = _ch09_activation(seed)
    expected = hermite_coefficient(act, 3)
    got = as_float(answer(act))
    if got is None or not math.isfinite(got):
        return "Return one real number (a float, or a NumPy or torch scalar)."
    if abs(got - expected) <= 1e-6 + 1e-5 * abs(expected):
        return None
    if abs(expected) > 1e-3 and abs(got + expected) <= 1e-6 + 1e-5 * abs(expected):
        return ("Wrong sign: look again at the signs of the terms of the third "
                "derivative, or of the third Hermite polynomial.")
    cubed = hermite_coefficient(lambda z: act(z) * z ** 3, 0)
    if abs(got - cubed) <= 1e-4 * max(1.0, abs(cubed)):
        return ("You weighed the activation with z cubed: the identity needs the "
                "Hermite polynomial of order 3, which has a second term.")
    if abs(got - expected) <= 1e-2:
        return ("Close, but not to 1e-6: a Monte-Carlo average is too noisy. "
                "Integrate against the normal density on a fine grid over a wide "
                "interval (or use Gauss-Hermite nodes).")
    return ("Not the mean of the activation's third derivative under a standard "
            "normal input: check the derivatives (torch.autograd with "
            "create_graph=True) and the density you weigh them with.")


def _ch09_gradient(seed: int, width: int):
    """A batch of unit-norm inputs, a random two-layer net and its MSE gradient.

    Seed 0 is the chapter's setting (8 digits, tanh, targets class / 9).
    Returns (net, x (B, d), y (B, 1), grads).
    """
    from . import data, fl
    from .attacks.tensor import random_two_layer
    pick = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    if seed == 0:
        b, act, source = 8, "tanh", "digits"
    elif seed == 1:
        b, act, source = 3, "sigmoid", "random"
    else:
        b = pick.randint(2, 8)
        act = pick.choice(["tanh", "tanh", "sigmoid"])
        source = pick.choice(["digits", "random"])
    if source == "digits":
        imgs, classes = data.load("digits", b, seed=seed, dtype=F64)
        x = imgs.flatten(1)
    else:
        x = torch.randn(b, pick.randint(b, 16), generator=gen, dtype=F64)
        classes = torch.randint(0, 10, (b,), generator=gen)
    x = x / x.norm(dim=1, keepdim=True)
    net = random_two_layer(x.shape[1], width, act, seed=seed + 100)
    with torch.no_grad():
        y = (classes.to(F64)[:, None] / 9 if seed == 0 or pick.random() < 0.5
             else -torch.sign(net(x)))
    return net, x, y, fl.shared_gradients(net, x, y, loss="mse")


@answer_check("ch09-ex-estimator",
              forbid=("leakbook.attacks.tensor.projected_moment_tensor",
                      "leakbook.attacks.tensor.moment_tensor",
                      "leakbook.attacks.tensor.tensor_decomposition",
                      "leakbook.attacks.tensor._features",
                      "leakbook.attacks.tensor._sym3"))
def _ch09_estimator(answer, seed: int):
    """projected_tensor(W, a, grad_W, Q) -> the plain estimate (B, B, B) in Q."""
    from itertools import permutations

    from .attacks.tensor import input_span, projected_moment_tensor
    width = 4000 if seed < 2 else random.Random(seed).choice([2000, 3000, 5000])
    net, x, _, grads = _ch09_gradient(seed, width)
    W, a = net[0].weight.detach(), net[2].weight.detach().reshape(-1)
    Q, _ = input_span(grads[0], len(x))
    expected, _ = projected_moment_tensor(W, a, grads[0], grads[1].reshape(-1), Q)
    b = Q.shape[1]
    got = as_tensor(answer(W.clone(), a.clone(), grads[0].clone(), Q.clone()))
    if got is None or got.shape != expected.shape:
        return f"Return a tensor of shape (B, B, B) = ({b}, {b}, {b}): B columns of Q."
    if not torch.isfinite(got).all():
        return "Your tensor holds NaN or inf."
    scale = float(expected.norm())

    def near(t):
        return float((got - t).norm()) <= 1e-8 * scale

    if near(expected):
        return None
    if float((got - expected).norm()) <= 1e-4 * scale:
        return "Close, but only to single precision: compute in float64."
    if not torch.allclose(got, got.permute(1, 0, 2), rtol=1e-6, atol=1e-8 * scale):
        return ("Your tensor is not symmetric in its three indices, as the moment "
                "tensor is: average over the orders of the indices, as the chapter "
                "does.")
    if near(expected * len(W)):
        return "Off by a factor of the width: average over the neurons, do not sum."
    unscaled, _ = projected_moment_tensor(W, torch.ones_like(a), grads[0],
                                          grads[1].reshape(-1), Q)
    if near(unscaled):
        return ("Each row of grad_W carries the output weight of its neuron: the "
                "identity is about the gradient without it.")
    Z, Y = W @ Q, (grads[0] / a[:, None]) @ Q
    cubed = torch.einsum("jc,ja,jb->cab", Y, Z, Z) / len(W)
    cubed = sum(cubed.permute(*p) for p in permutations(range(3))) / 6
    if near(cubed):
        return ("The second Hermite tensor is not z z^T alone: your estimate "
                "misses a term.")
    return ("Not the plain estimate: project each neuron's weight and its "
            "gradient (without its output weight) onto Q, average the gradient "
            "against the second Hermite tensor of the projected weight over the "
            "neurons, then symmetrise.")


@answer_check("ch09-ex-targets", forbid=("leakbook.attacks.tensor.as_images",))
def _ch09_targets(answer, seed: int):
    """targets(model, directions, weights, c3) -> (B,) the client's targets."""
    from . import data
    from .attacks.tensor import hermite_coefficient, random_two_layer
    pick = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    b = 8 if seed == 0 else pick.randint(2, 8)
    act = "tanh" if seed < 2 else pick.choice(["tanh", "sigmoid"])
    imgs, classes = data.load("digits", b, seed=seed, dtype=F64)
    x = imgs.flatten(1)
    x = x / x.norm(dim=1, keepdim=True)                 # pixels >= 0, unit norm
    net = random_two_layer(64, pick.choice([500, 1000, 2000]), act, seed=seed + 100)
    c3 = hermite_coefficient(net[1], 3)
    with torch.no_grad():
        y = (classes.to(F64) / 9 if seed == 0 or pick.random() < 0.5
             else torch.randn(b, generator=gen, dtype=F64))
        r = 2 / b * (net(x).reshape(-1) - y)            # residuals of the MSE
    signs = torch.where(torch.rand(b, generator=gen) < 0.5, -1.0, 1.0).to(F64)
    signs[0] = -1.0                                     # at least one flipped
    order = torch.randperm(b, generator=gen)
    directions, weights = (signs[:, None] * x)[order], (signs * c3 * r)[order]
    expected = y[order]
    before = [p.detach().clone() for p in net.parameters()]
    got = as_tensor(answer(net, directions.clone(), weights.clone(), c3))
    if not all(torch.equal(p, q) for p, q in zip(net.parameters(), before)):
        return "Your function changed the model: leave the server's network as it is."
    if got is None or got.numel() != b:
        return f"Return one target per direction: a tensor of shape ({b},)."
    got = got.reshape(-1)
    tol = 1e-8 * max(1.0, float(expected.abs().max()))
    if torch.allclose(got, expected, rtol=0, atol=tol):
        return None
    if bool(((got.abs() - expected.abs()).abs() <= tol).all()):
        return ("Some targets have the wrong sign: a direction and its opposite fit "
                "the tensor equally well. Choose each direction's sign without the "
                "truth, as the chapter does to show the digits, and flip its "
                "weight with it.")
    if torch.allclose(got.sort().values, expected.sort().values, rtol=0, atol=tol):
        return "Return the targets in the order of the directions you were given."
    return ("Not the targets: go from each weight to its sample's residual, then "
            "from the residual to the target, with the client's loss (the mean "
            "squared error over the batch) and the network's output at the input.")


@answer_check("ch09-ex-width")
def _ch09_width(answer, seed: int):
    """width_for_error(widths, errors, target) -> m under error = C / sqrt(m)."""
    pick = random.Random(seed)
    gen = np.random.default_rng(seed)
    noise = None
    if seed == 0:           # like the control-variate runs of the chapter's sweep
        widths = np.repeat([10_000, 31_623, 100_000], 10)
        const, target = 2.8, 0.005
    elif seed == 1:         # a short range, far extrapolation: a free slope fails
        widths = np.repeat([1000, 2000, 4000], 2)
        const, target = 6.0, 0.006
        noise = np.array([0.961, 0.936, 0.988, 1.021, 1.058, 1.006])
    else:
        low, n = pick.uniform(2.5, 3.5), pick.randint(3, 6)
        widths = np.repeat(np.round(np.logspace(low, low + pick.uniform(1, 2.5), n)),
                           pick.randint(1, 4)).astype(int)
        const = pick.uniform(1, 30)
        target = const / math.sqrt(10 ** pick.uniform(low, low + 4))
    if noise is None:
        noise = np.exp(0.05 * gen.standard_normal(len(widths)))
    errors = const / np.sqrt(widths) * noise
    shuffle = gen.permutation(len(widths))
    widths, errors = widths[shuffle], errors[shuffle]
    fitted = math.exp(float(np.mean(np.log(errors * np.sqrt(widths)))))
    expected = (fitted / target) ** 2
    got = as_float(answer([int(w) for w in widths], [float(e) for e in errors],
                          target))
    if got is None or not math.isfinite(got) or got <= 0:
        return "Return the width as one positive number (it need not be whole)."
    if abs(got / expected - 1) <= 0.03:
        return None
    if abs(got / math.sqrt(expected) - 1) <= 0.1:
        return ("Check the power of the law: to halve the error, the width must "
                "grow four times.")
    return ("Not the width at which the fitted law reaches the target: keep the "
            "law's exponent fixed, fit its one constant to all the measurements "
            "on a log scale, then solve the law for the width.")


# --- chapters 09-10 ---------------------------------------------------------


@register("ch10-ex-noise-error")
def _ch10_noise_error(answer, grads, x, row: int, sigma: float,
                      draws: int = 400) -> bool:
    """Predicted rms error of the row-``row`` read-out under noise; 10 % of measured."""
    from .defenses import gaussian_noise
    try:
        a = float(answer)
    except (TypeError, ValueError):
        return verdict(False, f"Expected a number, got {type(answer).__name__}.")
    xf = torch.as_tensor(x, dtype=torch.float64).flatten()
    sq = []
    for seed in range(draws):
        h = gaussian_noise(grads[:2], sigma, seed=seed)
        sq.append(float(((h[0][row] / h[1][row] - xf) ** 2).sum()))
    measured = (sum(sq) / len(sq)) ** 0.5
    if abs(a - measured) <= 0.1 * measured:
        return verdict(True)
    if abs(a - measured ** 2) <= 0.1 * measured ** 2:
        return verdict(False, "That looks like the mean squared error: take its root.")
    return verdict(False, f"Measured {measured:.4g}. The error is (N_i - nu_i x) / "
                   "gamma_i to first order: sigma sqrt(n + ||x||^2) / |gamma_i|.")


@register("ch10-ex-bits")
def _ch10_bits(answer, grads, x, target: float = 0.05) -> bool:
    """Smallest bit width at which invert_fc reads x to ``target`` relative error."""
    from .attacks.analytic import invert_fc
    from .defenses import quantize
    if isinstance(answer, bool) or not isinstance(answer, int):
        return verdict(False, f"Expected an int, got {type(answer).__name__}.")
    xf = torch.as_tensor(x, dtype=torch.float64).flatten()

    def err(b):
        q = quantize(grads[:2], b)
        return float((invert_fc(q[0], q[1]).input - xf).norm() / xf.norm())

    expected = next(b for b in range(1, 33) if err(b) < target)
    if answer == expected:
        return verdict(True)
    if answer > expected:
        return verdict(False, f"{answer} bits work, but fewer do too.")
    return verdict(False, f"At {answer} bits the error is {err(answer):.3f}, "
                   f"above {target}.")
