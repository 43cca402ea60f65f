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


# --- chapter 06 ---------------------------------------------------------------
# Each check rebuilds its case from fixed seeds; the answer is the only input.

def ch06_case():
    """The chapter 06 exercise case: a digit batch, a client update, auxiliary digits.

    Returns dict(model (sigmoid MLP 64-32-10, float64), x (12, 1, 8, 8),
    y (12,) with duplicates, lr=0.5, local_steps=5, update (full-batch
    client_update), aux (100, 1, 8, 8) digits the client does not hold).
    """
    from .attacks.labels import draw_labels, sample_batch
    from .data import load
    from .fl import client_update
    from .models import build
    xs, ys = load("digits", 1797, seed=0, dtype=torch.float64)
    labels = draw_labels(12, 10, 0.5, seed=6)
    x, y = sample_batch(xs[900:], ys[900:], labels, seed=6)
    model = build("mlp", seed=6, widths=(32,), activation="sigmoid",
                  dtype=torch.float64)
    update = client_update(model, x, y, lr=0.5, local_steps=5)
    return {"model": model, "x": x, "y": y, "lr": 0.5, "local_steps": 5,
            "update": update, "aux": xs[700:800]}


@register("ch06-ex-unroll")
def _ch06_unroll(answer) -> bool:
    """A function unroll(model, x, y, lr, steps) -> update, differentiable in x."""
    from .fl import client_update
    from .models import build
    from .data import load
    if not callable(answer):
        return verdict(False, "Pass your function itself: unroll(model, x, y, lr, "
                              "steps) returning a list of tensors.")
    model = build("mlp", seed=16, widths=(16,), activation="sigmoid",
                  dtype=torch.float64)
    x, y = load("digits", 4, seed=16, dtype=torch.float64)
    expected = client_update(model, x, y, lr=0.3, local_steps=3)
    x_var = x.clone().requires_grad_(True)
    try:
        got = list(answer(model, x_var, y, 0.3, 3))
    except Exception as err:  # a learner's bug: report it, do not crash the check
        return verdict(False, f"Your function raised {type(err).__name__}: {err}")
    if len(got) != len(expected) or any(
            torch.as_tensor(a).shape != e.shape for a, e in zip(got, expected)):
        return verdict(False, "Return one tensor per parameter tensor, shaped like it.")
    if not all(torch.allclose(torch.as_tensor(a).detach().double(), e, atol=1e-10)
               for a, e in zip(got, expected)):
        return verdict(False, "The update differs from fl.client_update: subtract "
                              "lr * gradient at the current weights, each step.")
    total = sum((a * a).sum() for a in got)
    if not total.requires_grad:
        return verdict(False, "Right values, but the update does not depend on x "
                              "through the graph: use create_graph=True.")
    (gx,) = torch.autograd.grad(total, x_var, allow_unused=True)
    return verdict(gx is not None and bool(gx.abs().sum() > 0),
                   "The update must be differentiable with respect to x.")


@register("ch06-ex-path-mean")
def _ch06_path_mean(answer) -> bool:
    """Softmax mean of the case's dummies averaged over w_t + (s / T) u."""
    from .attacks.labels import path_softmax_mean
    c = ch06_case()
    expected = path_softmax_mean(c["model"], c["update"], c["aux"],
                                 c["local_steps"])["softmax_mean"]
    at_start = path_softmax_mean(c["model"], [torch.zeros_like(u) for u in c["update"]],
                                 c["aux"], 1)["softmax_mean"]
    try:
        a = torch.as_tensor(answer, dtype=torch.float64).detach()
    except (TypeError, ValueError, RuntimeError):
        return verdict(False, f"Expected a tensor of shape (10,), got "
                              f"{type(answer).__name__}.")
    if a.shape != expected.shape:
        return verdict(False, f"Expected shape (10,), got {tuple(a.shape)}.")
    if torch.allclose(a, expected, atol=1e-8):
        return verdict(True)
    if torch.allclose(a, at_start, atol=1e-8):
        return verdict(False, "That is the softmax mean at w_t only: move the "
                              "weights along the update, s / T of the way.")
    return verdict(False, "Average over s = 0 .. T-1 the dummies' mean softmax at "
                          "the weights w_t + (s / T) u.")


@register("ch06-ex-counts")
def _ch06_counts(answer) -> bool:
    """Class counts (C,) from the update and the client's own softmax path."""
    c = ch06_case()
    expected = torch.bincount(c["y"], minlength=10).double()
    try:
        a = torch.as_tensor(answer, dtype=torch.float64).detach()
    except (TypeError, ValueError, RuntimeError):
        return verdict(False, f"Expected a tensor of shape (10,), got "
                              f"{type(answer).__name__}.")
    if a.shape != expected.shape:
        return verdict(False, f"Expected 10 counts, got shape {tuple(a.shape)}.")
    if torch.allclose(a, expected, atol=1e-6):
        return verdict(True)
    if torch.allclose(a.round(), expected, atol=1e-6):
        return verdict(False, "Close: rounded, yours are right, but the identity is "
                              "exact. Average the softmax at every step s = 0..T-1, "
                              "before the step is taken.")
    return verdict(False, "n = N (p_path + u_b / (lr T)), with p_path the batch's "
                          "softmax mean averaged over the client's T steps.")
