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


def _ch03_net(seed: int, num_classes: int, in_features: int, width: int,
              activation: str = "relu"):
    from . import models
    return models.build("mlp", seed=seed, in_features=in_features, widths=(width,),
                        num_classes=num_classes, activation=activation,
                        dtype=torch.float64)


def _ch03_batch(seed: int, labels: torch.Tensor, in_features: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(len(labels), in_features, generator=gen, dtype=F64)


def _as_labels(value, batch_size: int) -> list[int] | None:
    """A label answer (list, tensor or array of B class indices) sorted, or None."""
    t = as_tensor(value)
    if t is None or t.dim() != 1 or len(t) != batch_size:
        return None
    if not bool((t == t.round()).all()):
        return None
    return sorted(int(v) for v in t)


@answer_check("ch03-ex-idlg", forbid=("leakbook.attacks.labels.idlg",
                                      "leakbook.attacks.labels.recover"))
def _ch03_idlg(answer, seed: int):
    """idlg_label(grad_bias) -> the label of the one sample behind the gradient."""
    from . import fl
    pick = random.Random(seed)
    classes = 10 if seed == 0 else pick.randint(3, 20)
    act = "tanh" if seed == 0 else pick.choice(["relu", "tanh", "sigmoid"])
    net = _ch03_net(seed, classes, pick.randint(4, 64), pick.randint(4, 64), act)
    label = torch.tensor([pick.randrange(classes)])
    x = _ch03_batch(seed, label, net[1].in_features)
    grad_bias = fl.shared_gradients(net, x, label)[-1].detach()
    got = as_int(answer(grad_bias.clone()))
    if got is None:
        return "Return one class index, an integer."
    if got == int(label):
        return None
    return ("Not the label. Think about the sign each entry of the bias gradient "
            "can take when the batch holds one sample.")


@answer_check("ch03-ex-counts", forbid=("leakbook.attacks.labels.geng",
                                        "leakbook.attacks.labels.recover",
                                        "leakbook.attacks.labels.refine_counts"))
def _ch03_counts(answer, seed: int):
    """label_counts(grad_bias, softmax_mean, batch_size) -> (C,) class counts."""
    from . import fl
    from .attacks import labels as L
    pick = random.Random(seed)
    classes, size = (10, 32) if seed == 0 else (pick.randint(3, 20),
                                                pick.randint(2, 96))
    net = _ch03_net(seed, classes, pick.randint(4, 64), pick.randint(8, 64))
    y = L.draw_labels(size, classes, pick.uniform(0.2, 0.9), seed=seed)
    x = _ch03_batch(seed, y, net[1].in_features)
    grad_bias = fl.shared_gradients(net, x, y)[-1].detach()
    with torch.no_grad():
        p_bar = net(x).softmax(-1).mean(0)
    got = as_tensor(answer(grad_bias.clone(), p_bar.clone(), size))
    if got is None or got.shape != (classes,):
        return "Return one count per class: a tensor or list of C numbers."
    if not bool((got == got.round()).all()):
        return "Counts are whole numbers: round your estimate."
    if torch.equal(got.long(), torch.bincount(y, minlength=classes)):
        return None
    if int(got.sum()) != size:
        return "Your counts do not add up to the batch size."
    return ("Not the counts. Write the bias gradient of a batch in terms of the "
            "softmax mean and the counts, then solve for the counts.")


@answer_check("ch03-ex-tolerance")
def _ch03_tolerance(answer, seed: int):
    """rounding_tolerance(batch_size) -> the largest safe max |p_hat - p_bar|."""
    size = {0: 64, 1: 10}.get(seed, random.Random(seed).randint(1, 512))
    got = as_float(answer(size))
    if got is None or not math.isfinite(got) or got <= 0:
        return "Return one positive number."
    if abs(got - 1 / (2 * size)) <= 1e-12 + 1e-9 / size:
        return None
    return ("Not the bound. How far may B times the error move an integer count "
            "before rounding picks another integer?")


def _ch03_rows(seed: int):
    """Row sums that follow LLG's model, g_i = n_i m + o_i + noise, as a (C, n)
    weight gradient; with the batch size, impact and offsets. Redrawn until
    LLG+'s second stage spreads its picks over two classes or more, so that a
    second stage that never corrects its pick gives other labels."""
    from .attacks import labels as L
    for attempt in range(100):
        pick = random.Random(1000 * seed + attempt)
        classes, size = ((10, 16) if seed == 0 and attempt == 0 else
                         (pick.randint(4, 20), pick.randint(6, 48)))
        y = L.draw_labels(size, classes, pick.uniform(0.5, 0.95), seed=seed + attempt)
        gen = torch.Generator().manual_seed(1000 * seed + attempt)
        impact = -pick.uniform(0.05, 1.0)
        offset = abs(impact) * 0.3 * torch.rand(classes, generator=gen, dtype=F64)
        noise = abs(impact) * 0.2 * torch.randn(classes, generator=gen, dtype=F64)
        sums = torch.bincount(y, minlength=classes).to(F64) * impact + offset + noise
        gw = torch.rand(classes, pick.randint(2, 12), generator=gen, dtype=F64)
        gw = gw - gw.mean(1, keepdim=True) + (sums / gw.shape[1])[:, None]
        counts = torch.bincount(L.llg_plus(gw, size, impact, offset), minlength=classes)
        if int((counts >= 2).sum()) >= 2:
            return gw, size, impact, offset
    raise RuntimeError("no case with a second stage over two classes")


@answer_check("ch03-ex-llg-plus", forbid=("leakbook.attacks.labels.llg_plus",
                                          "leakbook.attacks.labels.llg",
                                          "leakbook.attacks.labels.recover"))
def _ch03_llg_plus(answer, seed: int):
    """llg_plus_labels(grad_weight, batch_size, impact, offset) -> sorted labels."""
    from .attacks import labels as L
    gw, size, impact, offset = _ch03_rows(seed)
    expected = sorted(L.llg_plus(gw, size, impact, offset).tolist())
    got = _as_labels(answer(gw.clone(), size, impact, offset.clone()), size)
    if got is None:
        return "Return B class indices (a list or tensor of whole numbers)."
    if got == expected:
        return None
    if max(got.count(c) for c in set(got)) > max(expected.count(c) for c in expected):
        return ("One class gets too many labels: after each pick, correct the row "
                "sum of the class you just picked.")
    return ("Not LLG+'s labels. Stage one takes each class with a negative row sum "
            "once; stage two works on the row sums minus the offsets.")


def _ch03_span_case(seed: int):
    pick = random.Random(seed)
    size = 3 if seed == 0 else pick.randint(2, 4)
    classes = 8 if seed == 0 else pick.randint(size + 2, 12)
    gen = torch.Generator().manual_seed(seed + 1)
    probs = torch.rand(size, classes, generator=gen, dtype=F64).mul(3).softmax(-1)
    y = torch.randint(classes, (size,), generator=gen)
    e = probs - torch.nn.functional.one_hot(y, classes).to(F64)
    h = torch.rand(size, pick.randint(size + 1, 10), generator=gen, dtype=F64)
    return e.T @ h / size, e.mean(0), size


@answer_check("ch03-ex-span", forbid=("leakbook.attacks.labels.span_test",
                                      "leakbook.attacks.labels.recover"))
def _ch03_span(answer, seed: int):
    """absent_classes(grad_weight, grad_bias, batch_size) -> classes proved absent."""
    from .attacks import labels as L
    gw, gb, size = _ch03_span_case(seed)
    expected = L.span_test(gw, gb, size).nonzero().flatten().tolist()
    got = as_tensor(answer(gw.clone(), gb.clone(), size))
    if got is None or got.dim() > 1 or not bool((got == got.round()).all()):
        return "Return the absent classes as a list of class indices."
    got = sorted(int(v) for v in got.reshape(-1))
    if got == expected:
        return None
    if set(got) > set(expected):
        return ("You call a class absent that the span cannot rule out: a class "
                "is absent only if the origin lies in the hull of the other rows.")
    return ("You miss classes the span rules out: test every class, with the "
            "rows of an orthonormal basis of the span.")


# --- chapter 04 -------------------------------------------------------------


def _tensor_lists(seed: int, dtype=F64):
    """Two lists of tensors of the same shapes (a gradient and a target),
    drawn from seed: 1 to 5 tensors of 1 to 4 dimensions."""
    pick = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    shapes = [tuple(pick.randint(1, 6) for _ in range(pick.randint(1, 4)))
              for _ in range(pick.randint(1, 5))]
    grads = [torch.randn(s, generator=gen, dtype=dtype) for s in shapes]
    target = [torch.randn(s, generator=gen, dtype=dtype) * pick.uniform(0.1, 3)
              for s in shapes]
    return grads, target


def _ch04_lenet_gradients(seed: int):
    """DLG's LeNet at 16x16 (the chapter's), a test image's gradient with its
    label and with the next label; float64."""
    from . import data, fl, models
    xs, ys = data.evaluation_set("test", size=16)
    k = 1 if seed == 0 else seed % 12
    x, y = xs[k:k + 1].to(F64), ys[k:k + 1] % 10
    model = models.build("lenet_dlg", seed=seed, image_size=16, dtype=F64)
    return (fl.shared_gradients(model, x, (y + 1) % 10),
            fl.shared_gradients(model, x, y))


def _distance_case(seed: int, several: bool = False):
    """(grads, target) for a gradient-distance check: LeNet's gradients at the
    true and a wrong label for seed 0, random tensor lists otherwise (with
    ``several``, at least two tensors, so per-layer and global sums differ);
    grads are leaves that require grad."""
    if seed == 0:
        grads, target = _ch04_lenet_gradients(0)
    else:
        grads, target = _tensor_lists(seed, random.Random(seed).choice(
            [torch.float32, F64]))
        if several and len(grads) == 1:
            gen = torch.Generator().manual_seed(seed)
            grads.append(torch.randn(3, generator=gen, dtype=grads[0].dtype))
            target.append(-5 * grads[-1].clone())
    return [g.detach().clone().requires_grad_(True) for g in grads], target


def _differentiable(got, grads) -> bool:
    """Does the answer carry an autograd graph back to the tensors of grads?"""
    return (isinstance(got, torch.Tensor) and got.requires_grad
            and got.numel() == 1)


@answer_check("ch04-ex-distance", forbid=("leakbook.attacks.matching.l2_distance",
                                          "leakbook.attacks.matching.gradient_distance"))
def _ch04_distance(answer, seed: int):
    """l2_gradient_distance(grads, target) -> scalar, differentiable in grads."""
    grads, target = _distance_case(seed)
    expected = sum(((g.detach().double() - t.double()) ** 2).sum()
                   for g, t in zip(grads, target))
    raw = answer(grads, [t.clone() for t in target])
    got = as_float(raw)
    if got is None or not math.isfinite(got):
        return "Return one number: a torch scalar (a tensor with one entry)."
    rel = abs(got - float(expected)) / max(float(expected), 1e-300)
    if rel > 1e-5:
        if abs(got ** 2 - float(expected)) <= 1e-5 * float(expected):
            return ("DLG's distance is not the length of the difference: it is "
                    "squared.")
        return ("Not DLG's distance: compare the tensors entry by entry, and "
                "add up over the entries of every tensor of the list.")
    if not _differentiable(raw, grads):
        return ("Right value, but DLG descends on this number: return a torch "
                "scalar that autograd can differentiate with respect to the "
                "tensors of grads (no .item(), no NumPy).")
    derivs = torch.autograd.grad(raw, grads, allow_unused=True)
    if any(d is None or not torch.allclose(d.double(), 2 * (g.detach().double()
                                                            - t.double()),
                                           rtol=1e-4, atol=1e-6)
           for d, g, t in zip(derivs, grads, target)):
        return ("Right value, but its derivative with respect to grads is not "
                "right: keep every tensor in the graph (no .detach()).")
    return None


def _ch04_client(seed: int):
    """A client with one sample and a secret loss factor c in [0.1, 5]:
    (model, grads of c * CE, x (1, ...), label int, c)."""
    from . import data, fl, models
    pick = random.Random(seed)
    c = pick.uniform(0.1, 5.0)
    if seed == 0 or pick.random() < 0.4:
        xs, ys = data.evaluation_set("test", size=16)
        k = 1 if seed == 0 else pick.randrange(12)
        x, label = xs[k:k + 1].to(F64), int(ys[k]) % 10
        model = models.build("lenet_dlg", seed=seed, image_size=16, dtype=F64)
    else:
        x, y = data.load("digits", 1, seed=seed, dtype=F64)
        classes = pick.choice([10, 20, 100])
        label = int(y[0]) % classes if pick.random() < 0.5 else pick.randrange(
            classes)
        model = models.build("mlp", seed=seed, in_features=64,
                             widths=(pick.choice([16, 32, 64]),),
                             activation=pick.choice(["sigmoid", "tanh", "relu"]),
                             num_classes=classes, dtype=F64)
    loss = lambda out, t: c * torch.nn.functional.cross_entropy(out, t)  # noqa
    grads = fl.shared_gradients(model, x, torch.tensor([label]), loss=loss)
    return model, grads, x, label, c


@answer_check("ch04-ex-scale")
def _ch04_scale(answer, seed: int):
    """loss_scale(model, grads, x, label) -> the client's loss factor c."""
    model, grads, x, label, c = _ch04_client(seed)
    before = [p.detach().clone() for p in model.parameters()]
    got = as_float(answer(model, [g.clone() for g in grads], x.clone(), label))
    if not all(torch.equal(p.detach(), b) for p, b in zip(model.parameters(),
                                                          before)):
        return "Your function changed the model: leave the server's model as it is."
    if got is None or not math.isfinite(got):
        return "Return the factor as one real number."
    if abs(got - c) <= 1e-6 * c:
        return None
    if abs(got + c) <= 1e-6 * c:
        return ("Wrong sign: the factor is positive; check the sign of the "
                "cross-entropy's derivative for the true class.")
    if abs(got * c - 1) <= 1e-6:
        return ("Upside down: you divided the plain cross-entropy's gradient by "
                "the client's.")
    return ("Not the client's factor: compute what the plain cross-entropy "
            "would give for this image and label with this model, and compare "
            "it with the shared gradient.")


def _ch04_history(seed: int):
    """A loss history (list of floats) and a ratio, drawn from seed.

    Seed 0 decays like an L-BFGS run with a plateau; seed 1 never gets below
    the ratio; others mix plateaus, bumps back above the threshold after the
    first crossing, and histories that never cross."""
    pick = random.Random(seed)
    gen = np.random.default_rng(seed)
    n = 300 if seed == 0 else pick.randint(20, 400)
    rate = pick.uniform(0.02, 0.2)
    steps = -rate * np.abs(1 + 0.5 * gen.standard_normal(n - 1))
    if seed == 0 or pick.random() < 0.5:               # a plateau
        a = pick.randrange(n // 4, n // 2)
        steps[a:a + n // 8] = 0.001 * gen.standard_normal(len(steps[a:a + n // 8]))
    logs = np.concatenate([[0.0], np.cumsum(steps)]) + pick.uniform(-2, 2)
    history = np.exp(logs)
    total = logs[-1] - logs[0]
    if seed == 1 or (seed > 1 and pick.random() < 0.25):
        ratio = float(np.exp(total - pick.uniform(0.5, 3)))   # never below
    else:
        ratio = float(np.exp(pick.uniform(0.3, 0.8) * total))
        first = int(np.argmax(history < ratio * history[0]))
        if seed == 0 or pick.random() < 0.6:          # bounce back above
            end = min(n, first + pick.randint(2, 6))
            history[first + 1:end] = 2 * ratio * history[0]
    return [float(h) for h in history], ratio


@answer_check("ch04-ex-iterations")
def _ch04_iterations(answer, seed: int):
    """first_below(history, ratio) -> first i with history[i] < ratio * history[0]."""
    history, ratio = _ch04_history(seed)
    below = [i for i, h in enumerate(history) if h < ratio * history[0]]
    expected = below[0] if below else None
    raw = answer(list(history), ratio)
    if expected is None:
        if raw is None:
            return None
        return ("This history never falls below the threshold: return None "
                "then, not an index.")
    if raw is None:
        return ("This history does fall below the threshold: return the index "
                "of the first value that does.")
    got = as_int(raw)
    if got is None:
        return "Return the index as a whole number (or None if it never falls below)."
    if got == expected:
        return None
    if got == expected + 1:
        return "Off by one: count from 0, where history[0] is the starting value."
    if got in below:
        return ("That index is below the threshold, but not the first one: the "
                "history can go back up after it first falls below.")
    return ("Not the first iteration below the threshold: compare each value "
            "with the ratio times the starting value, not with the previous one.")


# --- chapter 05 -------------------------------------------------------------


@answer_check("ch05-ex-tv", forbid=("leakbook.attacks.matching.total_variation",))
def _ch05_tv(answer, seed: int):
    """total_variation(img) -> scalar, differentiable, for img (B, C, H, W)."""
    pick = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    shape = (1, 3, 16, 16) if seed == 0 else (
        (2, 1, 5, 9) if seed == 1 else (pick.randint(1, 4), pick.randint(1, 3),
                                        pick.randint(2, 20), pick.randint(2, 20)))
    img = torch.rand(shape, generator=gen, dtype=F64).requires_grad_(True)
    dh = img[..., :, 1:] - img[..., :, :-1]
    dv = img[..., 1:, :] - img[..., :-1, :]
    expected = dh.abs().mean() + dv.abs().mean()
    (g_ref,) = torch.autograd.grad(expected, img)
    expected, dh, dv = expected.detach(), dh.detach(), dv.detach()
    raw = answer(img)
    got = as_float(raw)
    if got is None or not math.isfinite(got):
        return "Return one number: a torch scalar (a tensor with one entry)."
    if abs(got - float(expected)) > 1e-8 * float(expected):
        sums = float(dh.abs().sum() + dv.abs().sum())
        if abs(got - sums) <= 1e-8 * sums:
            return "Average the differences, do not add them up."
        if abs(got - float(dh.abs().mean())) <= 1e-8 or abs(
                got - float(dv.abs().mean())) <= 1e-8:
            return "You have one direction only: neighbours differ across and down."
        return ("Not the total variation of the chapter: check what each of "
                "its two means runs over, on images whose height and width "
                "differ.")
    if not (isinstance(raw, torch.Tensor) and raw.requires_grad):
        return ("Right value, but the attack descends on this prior: return a "
                "torch scalar that autograd can differentiate (no .item(), no "
                "NumPy).")
    (g_got,) = torch.autograd.grad(raw, img, allow_unused=True)
    if g_got is None or not torch.allclose(g_got.double(), g_ref, rtol=1e-6,
                                           atol=1e-10):
        return "Right value, but not its derivative: keep the image in the graph."
    return None


def _ch05_bn_case(seed: int):
    """(running_before, running_after, momentum, batch mean) of a BN layer that
    sees one batch in train mode. Seed 0 is the chapter's: resnet_tiny (seed 1)
    at 16x16, its second BN layer, buffers moved by an earlier batch."""
    from . import models
    from .attacks.matching import batchnorm_layers
    pick = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    if seed == 0:
        net = models.build("resnet_tiny", seed=1, image_size=16)
        layer = batchnorm_layers(net)[1]
        net.train()
        with torch.no_grad():
            net(torch.rand(8, 3, 16, 16, generator=gen))   # an earlier round
        seen = []
        hook = layer.register_forward_hook(
            lambda m, i, o: seen.append(i[0].mean((0, 2, 3))))
        before = layer.running_mean.clone()
        with torch.no_grad():
            net(torch.rand(4, 3, 16, 16, generator=gen))
        hook.remove()
        return before, layer.running_mean.clone(), layer.momentum, seen[0]
    channels = pick.randint(1, 32)
    momentum = pick.uniform(0.01, 0.4)
    two_d = pick.random() < 0.6
    layer = (torch.nn.BatchNorm2d if two_d else torch.nn.BatchNorm1d)(
        channels, momentum=momentum).to(F64)
    layer.running_mean.copy_(torch.randn(channels, generator=gen, dtype=F64))
    shape = ((pick.randint(2, 8), channels, pick.randint(1, 6), pick.randint(1, 6))
             if two_d else (pick.randint(2, 16), channels))
    x = torch.randn(shape, generator=gen, dtype=F64) * pick.uniform(0.5, 3) + (
        torch.randn(channels, generator=gen, dtype=F64).reshape(
            (1, channels) + (1,) * (len(shape) - 2)))
    before = layer.running_mean.clone()
    layer.train()
    with torch.no_grad():
        layer(x)
    dims = [0] + list(range(2, x.dim()))
    return before, layer.running_mean.clone(), momentum, x.mean(dims)


@answer_check("ch05-ex-bn-mean",
              forbid=("leakbook.attacks.matching.batchnorm_statistics",
                      "leakbook.attacks.matching._bn_hooks"))
def _ch05_bn_mean(answer, seed: int):
    """batch_mean(running_before, running_after, momentum) -> (C,) batch mean."""
    before, after, momentum, expected = _ch05_bn_case(seed)
    got = as_tensor(answer(before.clone(), after.clone(), momentum))
    expected = expected.to(F64)
    if got is None or got.shape != expected.shape:
        return f"Return one mean per channel: a tensor of shape ({len(expected)},)."
    tol = (1e-9 if before.dtype == F64 else 1e-4) * max(1.0, float(
        expected.abs().max()))
    if torch.allclose(got, expected, rtol=0, atol=tol):
        return None
    b, a = before.double(), after.double()
    if torch.allclose(got, (a - momentum * b) / (1 - momentum), atol=tol):
        return ("The roles are swapped: in PyTorch the momentum is the weight "
                "of the new batch's statistic, not of the old running value.")
    if torch.allclose(got, a / momentum, atol=tol):
        return ("The buffer held a value before this batch: it does not start "
                "at zero here.")
    return ("Not the batch mean: write the buffer's update as PyTorch does it "
            "and solve it for the batch's statistic.")


@answer_check("ch05-ex-cosine", forbid=("leakbook.attacks.matching.cosine_distance",
                                        "leakbook.attacks.matching.gradient_distance"))
def _ch05_cosine(answer, seed: int):
    """cosine_distance(grads, target) -> scalar over all tensors concatenated."""
    grads, target = _distance_case(seed, several=True)
    flat_g = torch.cat([g.detach().double().reshape(-1) for g in grads])
    flat_t = torch.cat([t.double().reshape(-1) for t in target])

    def cos(a, b):
        return float(a @ b / (a.norm() * b.norm()))

    expected = 1 - cos(flat_g, flat_t)
    raw = answer(grads, [t.clone() for t in target])
    got = as_float(raw)
    if got is None or not math.isfinite(got):
        return "Return one number: a torch scalar (a tensor with one entry)."
    if abs(got - expected) > 1e-6 * max(1.0, abs(expected)):
        if abs(got - (1 - expected)) <= 1e-6:
            return ("That is the cosine similarity: the attack minimises a "
                    "distance, zero when the directions agree.")
        per = [1 - cos(g.detach().double().reshape(-1), t.double().reshape(-1))
               for g, t in zip(grads, target)]
        if abs(got - sum(per) / len(per)) <= 1e-6 or abs(got - sum(per)) <= 1e-6:
            return ("You compare layer by layer: the distance takes one cosine "
                    "over all tensors of the list at once.")
        return ("Not the cosine distance over all tensors at once: check the "
                "inner product and the two lengths.")
    if not (isinstance(raw, torch.Tensor) and raw.requires_grad):
        return ("Right value, but the attack descends on this distance: return a "
                "torch scalar that autograd can differentiate with respect to "
                "grads (no .item(), no NumPy).")
    flat = torch.cat([g.double().reshape(-1) for g in grads])
    ref = 1 - flat @ flat_t / (flat.norm() * flat_t.norm())
    d_ref = torch.autograd.grad(ref, grads)
    d_got = torch.autograd.grad(raw, grads, allow_unused=True)
    scale = max(float(d.abs().max()) for d in d_ref)
    if any(a is None or not torch.allclose(a.double(), b.double(), rtol=1e-3,
                                           atol=1e-5 * scale)
           for a, b in zip(d_got, d_ref)):
        return ("Right value, but its derivative with respect to grads is not "
                "right: keep every tensor in the graph (no .detach()).")
    return None



@answer_check("ch05-ex-group",
              forbid=("leakbook.attacks.group.group_penalty",
                      "leakbook.attacks.group.registered_mean"))
def _ch05_group(answer, seed: int):
    """group_term(members) -> scalar: sum over members of the mean squared
    difference to the members' (plain) mean; members (S, B, C, H, W)."""
    pick = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    shape = (4, 1, 3, 16, 16) if seed == 0 else (
        pick.randint(2, 5), pick.randint(1, 3), pick.randint(1, 3), pick.randint(2, 9),
        pick.randint(2, 9))
    members = torch.rand(shape, generator=gen, dtype=F64).requires_grad_(True)
    diff = members - members.mean(0, keepdim=True)
    expected = (diff ** 2).mean((1, 2, 3, 4)).sum()
    (g_ref,) = torch.autograd.grad(expected, members)
    expected, diff = float(expected.detach()), diff.detach()
    raw = answer(members)
    got = as_float(raw)
    if got is None or not math.isfinite(got):
        return "Return one number: a torch scalar (a tensor with one entry)."
    tol = 1e-9 * max(1.0, expected)
    if abs(got - expected) > tol:
        total = float((diff ** 2).sum())
        if abs(got - expected / shape[0]) <= tol:
            return ("Add the members' terms up: every member is pulled towards "
                    "the mean, and the term is their sum.")
        if abs(got - total) <= 1e-9 * total:
            return "Average each member's squared differences over its pixels."
        if abs(got - float(diff.abs().mean((1, 2, 3, 4)).sum())) <= tol:
            return "The differences are squared, not taken in absolute value."
        return ("Not the group term: check the mean (over members, one image "
                "per slot) and what each member's term averages over.")
    if not (isinstance(raw, torch.Tensor) and raw.requires_grad):
        return ("Right value, but the attack descends on this term: return a "
                "torch scalar that autograd can differentiate (no .item()).")
    (g_got,) = torch.autograd.grad(raw, members, allow_unused=True)
    if g_got is None or not torch.allclose(g_got.double(), g_ref, atol=1e-9):
        return ("Right value, but its derivative with respect to the members is "
                "not right: keep every member in the graph.")
    return None


# --- chapters 07-08 ---------------------------------------------------------

# chapter 07 (linear systems, R-GAP, COPA)


def _conv_layer(seed: int, in_ch: int, out_ch: int, kernel: int, stride: int):
    """A float64 bias-free Conv2d with weights drawn from seed."""
    from torch import nn
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return nn.Conv2d(in_ch, out_ch, kernel, stride, bias=False).double()


def _system_rank(seed: int, in_ch, out_ch, kernel, stride, size) -> int:
    """Numerical rank of [K(delta); A] of a random conv layer, random delta."""
    from .attacks import linear_systems as ls
    layer = _conv_layer(seed, in_ch, out_ch, kernel, stride)
    shape = (in_ch, size, size)
    gen = torch.Generator().manual_seed(seed + 1)
    delta = torch.randn(ls.output_shape(layer, shape), dtype=F64, generator=gen)
    system = torch.cat([ls.conv_gradient_matrix(layer, shape, delta),
                        ls.conv_matrix(layer, shape)])
    return int(torch.linalg.matrix_rank(system))


def _plain_rows(in_ch, out_ch, kernel, stride, size) -> tuple[int, int, int, int]:
    """(n_x, n_w, n_z, L) of a conv layer without padding."""
    side = (size - kernel) // stride + 1
    return (in_ch * size * size, out_ch * in_ch * kernel * kernel,
            out_ch * side * side, side * side)


def _ch07_count(in_ch, out_ch, kernel, stride, size) -> int:
    """Chapter 07's count: rows of both blocks minus the O min(O, L) dependencies."""
    n_x, n_w, n_z, n_pos = _plain_rows(in_ch, out_ch, kernel, stride, size)
    return min(n_x, n_w + n_z - out_ch * min(out_ch, n_pos))


def _ch07_layer_case(seed: int) -> tuple[int, int, int, int, int]:
    """(in_ch, out_ch, kernel, stride, size) whose rank chapter 07's count predicts."""
    from torch import nn

    from . import security
    if seed == 0:
        return 3, 4, 3, 2, 11                         # the chapter's layer
    pick = random.Random(seed)
    while True:
        case = (pick.randint(1, 3), pick.randint(2, 5), pick.randint(2, 4),
                pick.randint(1, 2), pick.randint(6, 12))
        in_ch, out_ch, kernel, stride, size = case
        n_x, n_w, n_z, _ = _plain_rows(*case)
        if (size - kernel) % stride or n_w + n_z <= out_ch ** 2:
            continue
        # seed 1: the cap by the unknowns binds; the others: it does not
        if (seed == 1) != (n_w + n_z - out_ch ** 2 > n_x):
            continue
        conv = nn.Conv2d(in_ch, out_ch, kernel, stride, bias=False)
        if security.rank_bound(conv, (in_ch, size, size)) == _ch07_count(*case):
            return case


@answer_check("ch07-ex-rank", forbid=("leakbook.attacks.linear_systems.conv_matrix",
                                      "leakbook.attacks.linear_systems."
                                      "conv_gradient_matrix",
                                      "leakbook.security.rank_bound",
                                      "leakbook.security.audit"))
def _ch07_rank(answer, seed: int):
    """conv_system_rank(in_channels, out_channels, kernel, stride, size) -> int."""
    case = _ch07_layer_case(seed)
    expected = _system_rank(seed, *case)
    got = as_int(answer(*case))
    if got is None:
        return "Return the rank as one whole number."
    if got == expected:
        return None
    n_x, n_w, n_z, _ = _plain_rows(*case)
    if got == min(n_x, n_w + n_z):
        return ("You count rows, but some rows of the two blocks depend on each "
                "other: which inner products does every pair of filters share?")
    if got > n_x:
        return "A rank cannot exceed the number of unknowns."
    return ("Not the rank of that layer's system. Count the rows of each block "
            "for these sizes again, then the dependencies.")


@answer_check("ch07-ex-margin", forbid=("leakbook.attacks.recursive.solve_margin",
                                        "scipy.optimize.brentq",
                                        "scipy.optimize.bisect",
                                        "scipy.optimize.newton",
                                        "scipy.optimize.root_scalar"))
def _ch07_margin(answer, seed: int):
    """margin(value) -> mu, the margin behind a positive <grad w, w> = value."""
    from .attacks.recursive import solve_margin
    pick = random.Random(seed)
    value = {0: 0.2, 1: 7.5}.get(seed, 10 ** pick.uniform(-3, 1.3))
    expected = solve_margin(value)
    got = as_float(answer(value))
    if got is None or not math.isfinite(got):
        return "Return the margin as one finite real number."
    if abs(got - expected) <= 1e-6 * abs(expected) + 1e-9:
        return None
    if got >= 0:
        return ("Look at the sign: which sign of the margin makes the left-hand "
                "side of the head's equation positive?")
    return ("Not the margin of that value, to six digits: check your equation "
            "and iterate your solver to convergence.")


def _conv_stack(seed: int, convs: tuple[int, int], padding: bool):
    """(model, input_shape): a random stack of Conv2d + Tanh, Flatten, Linear."""
    from torch import nn
    pick = random.Random(seed)
    while True:
        size = pick.randint(6, 12)
        shape = (pick.randint(1, 3), size, size)
        layers, c, h, ok = [], shape[0], size, True
        for _ in range(pick.randint(*convs)):
            o, k, s = pick.randint(1, 3), pick.randint(2, 3), pick.randint(1, 2)
            p = pick.randint(0, 1) if padding else 0
            h_out = (h + 2 * p - k) // s + 1
            if h_out < 1:
                ok = False
                break
            layers += [nn.Conv2d(c, o, k, s, p), nn.Tanh()]
            c, h = o, h_out
        if ok:
            layers += [nn.Flatten(), nn.Linear(c * h * h, pick.randint(1, 4))]
            with torch.random.fork_rng():
                torch.manual_seed(seed)
                return nn.Sequential(*layers), shape


def _shallow_guess(model, shape) -> torch.Tensor:
    """What a learner who looks at the first layer only would return."""
    from .attacks import linear_systems as ls
    return ls.unread_pixels(model[0], shape)


def _invisible_case(seed: int, convs, padding):
    """A random conv stack whose blind spot a first-layer-only mask misses."""
    from . import security
    for attempt in range(200):
        model, shape = _conv_stack(seed * 211 + attempt, convs, padding)
        mask = security.blind_spot(model, shape)
        if mask.any() and not torch.equal(mask, _shallow_guess(model, shape)):
            return model, shape, mask
    raise RuntimeError("no conv stack with a deep blind spot")     # pragma: no cover


def _mask_verdict(answer, seed: int, chapter_case, convs, padding):
    """Check a blind-pixel mask: seed 0 on the chapter's (model, shape), other
    seeds on a random conv stack whose blind spot a first-layer mask misses."""
    import copy

    from . import security
    if seed == 0:
        model, shape = chapter_case()
        expected = security.blind_spot(model, shape)
    else:
        model, shape, expected = _invisible_case(seed, convs, padding)
    got = as_mask(answer(copy.deepcopy(model), shape))
    if got is None or got.shape != expected.shape:
        return ("Return a boolean mask with the shape of one input, (C, H, W): "
                "True where no gradient depends on the pixel.")
    if torch.equal(got, expected):
        return None
    return ("Not the mask of that model. Follow which positions each layer's "
            "output reads, from the top of the network down to the input.")


@answer_check("ch07-ex-invisible", forbid=("leakbook.security.blind_spot",
                                           "leakbook.attacks.linear_systems."
                                           "unread_pixels"))
def _ch07_invisible(answer, seed: int):
    """invisible_pixels(model, input_shape) -> bool mask (C, H, W)."""
    from .models import build
    return _mask_verdict(answer, seed, lambda: (build("cnn3_c1"), (3, 32, 32)),
                         (2, 2), padding=False)


# chapter 08 (how secure is an architecture?)

_COUNTING = ("leakbook.security.rank_bound", "leakbook.security.audit",
             "leakbook.attacks.linear_systems.conv_matrix",
             "leakbook.attacks.linear_systems.conv_gradient_matrix")


def _ch08_layer_case(seed: int) -> tuple[int, int, int, int, int]:
    """(in_ch, out_ch, kernel, stride, size) whose rank the structural count gives;
    seed 1 and most others are layers where chapter 07's count is wrong."""
    from torch import nn

    from . import security
    if seed == 0:
        return 3, 2, 3, 1, 7                          # the chapter's layer
    pick = random.Random(seed)
    while True:
        case = (pick.randint(1, 3), pick.randint(2, 9), pick.randint(2, 4),
                pick.randint(2, 3), pick.randint(6, 11))
        in_ch, out_ch, kernel, stride, size = case
        if (size - kernel) // stride < 1:
            continue
        conv = nn.Conv2d(in_ch, out_ch, kernel, stride, bias=False)
        bound = security.rank_bound(conv, (in_ch, size, size))
        if bound == _ch07_count(*case) and (seed == 1 or pick.random() < 0.7):
            continue
        if bound == _system_rank(seed, *case):
            return case


@answer_check("ch08-ex-rank", forbid=_COUNTING)
def _ch08_rank(answer, seed: int):
    """rank_with_dependencies(in_channels, out_channels, kernel, stride, size)."""
    case = _ch08_layer_case(seed)
    expected = _system_rank(seed, *case)
    got = as_int(answer(*case))
    if got is None:
        return "Return the rank as one whole number."
    if got == expected:
        return None
    if got == _ch07_count(*case):
        return ("That is chapter 7's count, which holds for this layer's rows only "
                "if every tap reads the whole input: look at what a stride does "
                "to the pixels one tap reads, and at the pixels no tap reads.")
    return ("Not the rank of that layer's system. Count, for each group of taps "
            "and the pixels they read, how many independent rows it can give.")


def _ch08_safer_case(seed: int) -> tuple[int, int, int, int]:
    """(in_ch, size, kernel, stride) of a conv whose every input pixel is read."""
    if seed == 0:
        return 6, 14, 4, 2                            # cnn3_c1's second conv at 16
    if seed == 1:
        return 1, 7, 4, 3                             # strided: polyphase groups
    pick = random.Random(seed)
    while True:
        case = (pick.randint(1, 6), pick.randint(6, 16), pick.randint(2, 5),
                pick.randint(1, 3))
        in_ch, size, kernel, stride = case
        if size > kernel and (size - kernel) % stride == 0:
            return case


def _widest_deficient(in_ch, size, kernel, stride) -> int:
    """The widest O whose layer still has rank < n_x (structural rank)."""
    from torch import nn

    from . import security
    shape = (in_ch, size, size)
    n_x = in_ch * size * size
    widest = 0
    full_from = None                     # first width of full rank after a deficit
    for o in range(1, n_x + 2):
        conv = nn.Conv2d(in_ch, o, kernel, stride, bias=False)
        if security.rank_bound(conv, shape) < n_x:
            widest, full_from = o, None
        elif full_from is None:
            full_from = o
        elif o >= 2 * full_from + 8:
            break
    return widest


@answer_check("ch08-ex-safer", forbid=_COUNTING)
def _ch08_safer(answer, seed: int):
    """widest_deficient(in_channels, size, kernel, stride) -> int."""
    case = _ch08_safer_case(seed)
    expected = _widest_deficient(*case)
    got = as_int(answer(*case))
    if got is None:
        return "Return the number of output channels, one whole number."
    if got == expected:
        return None
    in_ch, size, kernel, stride = case
    side = (size - kernel) // stride + 1
    plain = next(o for o in range(1, 10 ** 5)
                 if o * in_ch * kernel ** 2 + o * side ** 2 >= in_ch * size ** 2) - 1
    if got == plain:
        return ("That is where the rows, counted plainly, reach the unknowns. "
                "Rows are not all independent: count the rank of each width, "
                "with every dependency of this chapter.")
    return ("Not the widest deficient layer for that setting. Compare your rank "
            "with the number of unknowns for each width, and check beyond the "
            "first width that reaches it.")


@answer_check("ch08-ex-blind", forbid=("leakbook.security.blind_spot",
                                       "leakbook.attacks.linear_systems."
                                       "unread_pixels"))
def _ch08_blind(answer, seed: int):
    """blind_pixels(model, input_shape) -> bool mask (C, H, W)."""
    from torch import nn

    def chapter_case():                               # the chapter's model
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.Tanh(),
                                  nn.Conv2d(2, 2, 2, stride=2), nn.Tanh(),
                                  nn.Flatten(), nn.Linear(8, 1))
        return model, (1, 11, 11)
    return _mask_verdict(answer, seed, chapter_case, (2, 4), padding=True)


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


# --- chapter 10 -------------------------------------------------------------


def _ch10_client(seed: int):
    """One client's digit x (1, 1, 8, 8), a float64 MLP and its update (list).

    Seed 0 is the chapter's setting: the first target digit and the MLP of
    seed 0 (64-100-10, ReLU). Other seeds draw a digit, scale its pixels,
    and draw the MLP's width and activation.
    """
    from . import data, defenses, fl, models
    if seed == 0:
        x, y = defenses.target_digits(defenses.digits_task(8), "test")
        x, y = x[:1].to(F64), y[:1]
        net = models.build("mlp", seed=0, dtype=F64)
    else:
        pick = random.Random(seed)
        x, y = data.load("digits", 1, seed=seed, dtype=F64)
        x = x * pick.uniform(0.5, 3.0)
        net = models.build("mlp", seed=seed, dtype=F64,
                           widths=(pick.choice([50, 100, 200]),),
                           activation=pick.choice(["relu", "tanh", "sigmoid"]))
    return x, net, fl.shared_gradients(net, x, y % 10)


@answer_check("ch10-ex-noise-error",
              forbid=("leakbook.defenses.relative_noise",
                      "leakbook.defenses.gaussian_noise",
                      "leakbook.defenses.clip_and_noise"))
def _ch10_noise_error(answer, seed: int):
    """predicted_rms_error(update, x, ratio) -> the best row's predicted rms error."""
    x, _, update = _ch10_client(seed)
    ratio = 0.1 if seed == 0 else random.Random(seed + 1).uniform(0.01, 0.2)
    d = sum(t.numel() for t in update)
    norm = float(torch.sqrt(sum((t ** 2).sum() for t in update)))
    sigma = ratio * norm / math.sqrt(d)
    gamma = update[1].abs()
    spread = math.sqrt(x.numel() + float((x ** 2).sum()))
    expected = sigma * spread / float(gamma.max())
    got = as_float(answer([t.clone() for t in update], x.clone(), ratio))
    if got is None or not math.isfinite(got) or got <= 0:
        return "Return one positive number (a float, or a NumPy or torch scalar)."

    def near(value):
        return abs(got / value - 1) <= 0.03

    if near(expected):
        return None
    if near(expected ** 2):
        return "That looks like a mean squared error: the task asks for its root."
    if near(expected * float(gamma.max()) / float(gamma.norm())):
        return ("That is the error of the combination of all rows; the task asks "
                "for the single row the server reads first.")
    first = math.sqrt(sum(t.numel() for t in update[:2]))
    if near(expected * math.sqrt(d) / first) or near(
            expected * math.sqrt(d) / first * float(
                torch.sqrt((update[0] ** 2).sum() + (update[1] ** 2).sum())) / norm):
        return ("The noise's size comes from the whole update, every layer of it, "
                "not from the first layer alone.")
    if near(expected * math.sqrt(x.numel()) / spread):
        return ("The bias entry of the row is noisy too, and its noise is "
                "multiplied by the input: look at the first-order error again.")
    if near(ratio * spread / float(gamma.max())):
        return ("The ratio is not the noise's standard deviation: it is measured "
                "against the size of the update.")
    return ("Not the predicted error: find the noise's standard deviation per "
            "entry from the ratio and the update, then the first-order error of "
            "the row the server reads.")


@answer_check("ch10-ex-bits", forbid=("leakbook.defenses.quantize",))
def _ch10_bits(answer, seed: int):
    """smallest_bits(grad_weight, grad_bias, x, target) -> int (right/wrong only)."""
    from .attacks.analytic import invert_fc
    from .defenses import quantize
    x, _, update = _ch10_client(seed)
    # seed 1: a case where 2**b steps, or rounding down, change the answer
    target = {0: 0.05, 1: 0.03}.get(seed) or random.Random(seed + 2).choice(
        [0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2])
    flat = x.flatten()

    def error(bits):
        q = quantize(update[:2], bits)
        return float((invert_fc(q[0], q[1]).input - flat).norm() / flat.norm())

    expected = next(b for b in range(1, 33) if error(b) < target)
    got = as_int(answer(update[0].clone(), update[1].clone(), x.clone(), target))
    if got is None:
        return "Return a whole number of bits (an int, or a NumPy or torch integer)."
    if got == expected:
        return None
    return ("Not the smallest number of bits that reads this input below the "
            "target error. Quantise the two tensors as the client does, read the "
            "input as the server does, and compare with the input you were given.")


def _ch10_noisy_case(seed: int):
    """A digit, and the first layer's gradient after relative noise on the update."""
    from .defenses import relative_noise
    x, _, update = _ch10_client(seed)
    ratio = 0.1 if seed == 0 else random.Random(seed + 3).uniform(0.03, 0.3)
    noisy = relative_noise(update, ratio, seed=seed)
    return x.flatten(), noisy[0], noisy[1]


@answer_check("ch10-ex-denoise",
              forbid=("leakbook.attacks.analytic.invert_fc",
                      "leakbook.attacks.analytic.solve_fc_inputs",
                      "leakbook.attacks.analytic.solve_last_layer_inputs"))
def _ch10_denoise(answer, seed: int):
    """noisy_readout(grad_weight, grad_bias) -> (n,) input read off a noisy layer."""
    x, gw, gb = _ch10_noisy_case(seed)
    best = (gb[:, None] * gw).sum(0) / (gb ** 2).sum()   # least squares, all rows
    bound = 1.1 * float((best - x).norm())               # metric: reads the truth
    got = as_tensor(answer(gw.clone(), gb.clone()))
    if got is None or got.numel() != x.numel():
        return f"Return one tensor of shape ({x.numel()},): the input, flattened."
    got = got.reshape(-1)
    if not torch.isfinite(got).all():
        return "Your estimate holds NaN or inf: some bias entries may be tiny."
    err = float((got - x).norm())
    if err <= bound:
        return None
    i = int(gb.abs().argmax())
    if torch.allclose(got, gw[i] / gb[i], rtol=1e-6, atol=1e-9):
        return ("You read one row, and the noise of that row stays in your "
                "estimate. Every row with a nonzero error signal carries the same "
                "input: combine them.")
    return ("Your estimate is further from the input than the best combination "
            "of all rows. Rows whose bias entry is small are mostly noise: weigh "
            "each row by how much of the input it carries (least squares).")


# --- chapter 06 ---------------------------------------------------------------


def _ch06_softmax_path(model, x, y, lr: float, steps: int) -> torch.Tensor:
    """The batch's mean softmax before each of its own full-batch steps, (T, C)."""
    import copy
    from .fl import shared_gradients
    local, probs = copy.deepcopy(model), []
    for _ in range(steps):
        with torch.no_grad():
            probs.append(local(x).double().softmax(-1).mean(0))
        grads = shared_gradients(local, x, y)
        with torch.no_grad():
            for p, g in zip(local.parameters(), grads):
                p -= lr * g
    return torch.stack(probs)


def ch06_case(seed: int = 0):
    """A chapter 06 exercise case: digits with duplicates, a client update, its path.

    Seed 0 is the chapter's case (sigmoid MLP 64-32-10, N = 12, lr 0.5,
    5 steps); other seeds vary the activation, width, N, lr and steps.
    Returns dict(model (float64), x (N, 1, 8, 8), y (N,), lr, local_steps,
    update (full-batch ``client_update``), softmax_path (T, C) the batch's
    mean softmax before each step, aux (100, 1, 8, 8) digits the client
    does not hold).
    """
    from .attacks.labels import draw_labels, sample_batch
    from .data import load
    from .fl import client_update
    from .models import build
    pick = random.Random(seed)
    n, width, act, lr, steps = (12, 32, "sigmoid", 0.5, 5) if seed == 0 else (
        pick.choice([8, 12, 16, 24]), pick.choice([16, 32, 64]),
        pick.choice(["sigmoid", "tanh", "relu"]), pick.choice([0.1, 0.3, 0.5, 1.0]),
        pick.choice([2, 3, 5, 8]))
    xs, ys = load("digits", 1797, seed=0, dtype=F64)
    x, y = sample_batch(xs[900:], ys[900:], draw_labels(n, 10, 0.5, seed=6 + seed),
                        seed=6 + seed)
    model = build("mlp", seed=6 + seed, widths=(width,), activation=act, dtype=F64)
    update = client_update(model, x, y, lr=lr, local_steps=steps)
    return {"model": model, "x": x, "y": y, "lr": lr, "local_steps": steps,
            "update": update, "softmax_path": _ch06_softmax_path(model, x, y, lr, steps),
            "aux": xs[700:800]}


@answer_check("ch06-ex-unroll", forbid=("leakbook.fl.client_update",
                                        "leakbook.attacks.fedavg.simulate_update",
                                        "leakbook.attacks.fedavg._simulate"))
def _ch06_unroll(answer, seed: int):
    """unroll(model, x, y, lr, steps) -> update (list of tensors), differentiable in x."""
    from .attacks.fedavg import simulate_update
    from .data import load
    from .fl import client_update
    from .models import build
    pick = random.Random(seed)
    n, width, act, lr, steps = (4, 16, "sigmoid", 0.3, 3) if seed == 0 else (
        pick.randint(2, 6), pick.choice([8, 16, 32]), pick.choice(["sigmoid", "tanh"]),
        pick.choice([0.1, 0.3, 0.7]), pick.randint(1, 4))
    model = build("mlp", seed=16 + seed, widths=(width,), activation=act, dtype=F64)
    x, y = load("digits", n, seed=16 + seed, dtype=F64)
    expected = client_update(model, x, y, lr=lr, local_steps=steps)
    before = [p.detach().clone() for p in model.parameters()]
    x_var = x.clone().requires_grad_(True)
    got = answer(model, x_var, y.clone(), lr, steps)
    if not isinstance(got, (list, tuple)) or len(got) != len(expected) or any(
            not isinstance(a, torch.Tensor) or a.shape != e.shape
            for a, e in zip(got, expected)):
        return ("Return a list of tensors, one per parameter tensor of the model, "
                "each shaped like it.")
    if any(not torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before)):
        return "Your function changed the model's weights: leave the model as it is."
    if not all(torch.allclose(a.detach().to(F64), e, rtol=1e-8, atol=1e-12)
               for a, e in zip(got, expected)):
        return ("The update differs from the client's: every step subtracts lr times "
                "the gradient of the mean loss on the batch, taken at the weights "
                "of that step, and the update is the last weights minus the first.")
    total = sum((a * a).sum() for a in got)
    if not total.requires_grad:
        return ("Right values, but the update does not depend on x through the "
                "autograd graph: it cannot be differentiated.")
    (gx,) = torch.autograd.grad(total, x_var, allow_unused=True)
    x_ref = x.clone().requires_grad_(True)
    ref = simulate_update(model, x_ref, y, lr=lr, local_steps=steps, create_graph=True)
    (g_ref,) = torch.autograd.grad(sum((a * a).sum() for a in ref), x_ref)
    if gx is None or not torch.allclose(gx.to(F64), g_ref, rtol=1e-6, atol=1e-12):
        return ("Right values, but the derivative with respect to x is not: each "
                "step's weights depend on x through the earlier steps' gradients, "
                "so keep those gradients in the graph.")
    return None


@answer_check("ch06-ex-path-mean", forbid=("leakbook.attacks.labels.path_softmax_mean",
                                           "leakbook.attacks.labels.recover_fedavg"))
def _ch06_path_mean(answer, seed: int):
    """interpolated_mean(model, update, dummies, local_steps) -> (C,)."""
    from .attacks.labels import path_softmax_mean
    c = ch06_case(seed)
    model, upd, aux, steps = c["model"], c["update"], c["aux"], c["local_steps"]
    expected = path_softmax_mean(model, upd, aux, steps)["softmax_mean"]
    before = [p.detach().clone() for p in model.parameters()]
    got = as_tensor(answer(model, [u.clone() for u in upd], aux.clone(), steps))
    if got is None or got.shape != expected.shape:
        return f"Return one number per class, a tensor of shape ({len(expected)},)."
    if any(not torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before)):
        return ("Your function changed the model's weights: move a copy of the model "
                "along the update, not the model itself.")
    if torch.allclose(got, expected, rtol=1e-6, atol=1e-9):
        return None
    zero = [torch.zeros_like(u) for u in upd]
    if torch.allclose(got, path_softmax_mean(model, zero, aux, 1)["softmax_mean"],
                      atol=1e-9):
        return ("That is the softmax mean at w_t only: the client's later steps "
                "start from weights that have moved along the update.")
    shifted = [(steps + 1) / steps * u for u in upd]
    ahead = path_softmax_mean(model, shifted, aux, steps + 1)["softmax_mean"]
    ahead = (ahead * (steps + 1) - path_softmax_mean(model, zero, aux, 1)[
        "softmax_mean"]) / steps
    if torch.allclose(got, ahead, atol=1e-9):
        return ("Off by one step: the client takes each gradient before its move, "
                "so the first point is w_t itself and the last stops one step "
                "short of w_t + u.")
    return ("Not the interpolated mean: average, over the T points of the straight "
            "line the chapter describes, the dummies' mean softmax at each point.")


@answer_check("ch06-ex-counts", forbid=("leakbook.attacks.labels.geng",
                                        "leakbook.attacks.labels.recover",
                                        "leakbook.attacks.labels.recover_fedavg"))
def _ch06_counts(answer, seed: int):
    """counts_from_path(bias_update, softmax_path, lr, num_samples) -> (C,) counts."""
    c = ch06_case(seed)
    path, u_b = c["softmax_path"], c["update"][-1]
    expected = torch.bincount(c["y"], minlength=path.shape[1]).to(F64)
    got = as_tensor(answer(u_b.clone(), path.clone(), c["lr"], len(c["y"])))
    if got is None or got.shape != expected.shape:
        return f"Return one count per class, a tensor of shape ({len(expected)},)."
    if torch.allclose(got.round(), expected) and not torch.allclose(
            got, expected, atol=1e-6):
        return ("Rounded, yours are right; but the identity is exact, so the counts "
                "should be whole numbers to rounding error. Use every step's row.")
    if torch.allclose(got, expected, atol=1e-6):
        # an estimated path (the attacker's): the counts are no longer whole
        gen = torch.Generator().manual_seed(seed)
        noisy = (path.log() + 0.3 * torch.randn(path.shape, generator=gen,
                                                dtype=F64)).softmax(-1)
        n, steps = len(c["y"]), len(path)
        want = n * (noisy.mean(0) + u_b / (c["lr"] * steps))
        est = as_tensor(answer(u_b.clone(), noisy.clone(), c["lr"], n))
        if est is not None and est.shape == want.shape and torch.allclose(
                est, want, atol=1e-9):
            return None
        return ("Right on the client's own path, but not on an estimated path: the "
                "counts must follow from the path you are given, unrounded.")
    return ("Not the batch's counts: the bias update sums the T steps' error "
            "signals, so it must be compared with the softmax of every step, and "
            "both scaled by the number of samples.")
