"""Gradient matching: search for data whose gradient matches the shared one.

Taught in chapters 04 (``dlg``: L2 distance, L-BFGS, joint labels; iDLG) and
05 (``inverting_gradients``: cosine distance, priors, signed Adam, restarts).

Neither attack ever sees the true data: restarts are ranked by the gradient
distance alone. A ``callback(iteration, images, loss)`` lets a benchmark score
intermediate images against the truth from outside the attack.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .. import checks
from ..checks import check_grads
from ..fl import loss_fn as _loss_fn
from ..threads import one_thread
from ..optim import lbfgs
from .labels import recover
from .result import Reconstruction

# --- shared pieces -----------------------------------------------------------


def _check_shape(model: torch.nn.Module, shape, dtype=None) -> tuple[int, ...]:
    """Check shape = (B, C, H, W) and that the model, in ``dtype`` (default: its
    own), maps it to (B, classes); return it as a tuple of ints."""
    return _shape_and_classes(model, shape, dtype)[0]


def _shape_and_classes(model: torch.nn.Module, shape,
                       dtype=None) -> tuple[tuple[int, ...], int]:
    """As _check_shape, from one probe forward pass: (shape, number of classes)."""
    shape = _check_format(shape)
    dtype = next(model.parameters()).dtype if dtype is None else dtype
    probe = copy.deepcopy(model).to(dtype).eval()
    try:
        with torch.no_grad():
            out = probe(torch.zeros(shape, dtype=dtype))
    except RuntimeError as err:
        raise ValueError(f"the model does not accept inputs of shape {shape}: "
                         f"{str(err).splitlines()[0]}") from None
    if out.dim() != 2 or out.shape[0] != shape[0]:
        raise ValueError(f"the model maps shape {shape} to logits of shape "
                         f"{tuple(out.shape)}, expected ({shape[0]}, classes)")
    return shape, out.shape[1]


def _check_format(shape) -> tuple[int, ...]:
    """shape = (B, C, H, W) of positive ints, without running any model."""
    if not isinstance(shape, (tuple, list, torch.Size)) or len(shape) != 4:
        raise ValueError(f"shape must be (B, C, H, W), got {shape!r}")
    if not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 1
               for s in shape):
        raise ValueError(f"shape must hold positive integers, got {tuple(shape)}")
    return tuple(int(s) for s in shape)


def _check_options(*, restarts, seed, dtype, callback, max_time,
                   max_restarts=0) -> None:
    """The scalar options shared by the matching attacks, before any work."""
    checks.integer(restarts, "restarts", minimum=1)
    checks.integer(max_restarts, "max_restarts", minimum=0)
    checks.seed(seed)
    checks.float_dtype(dtype)
    if callback is not None:
        checks.function(callback, "callback")
    if max_time is not None:
        checks.number(max_time, "max_time", minimum=0)


def _check_lbfgs(max_iter, history, stall) -> None:
    if max_iter is not None:
        checks.integer(max_iter, "max_iter", minimum=0)
    checks.integer(history, "history", minimum=1)
    if stall is not None:
        checks.integer(stall, "stall", minimum=1)


def _check_labels(labels, batch: int, num_classes: int | None = None) -> torch.Tensor:
    """labels as (batch,) int64, each in 0..num_classes - 1 when that is given."""
    if not isinstance(labels, torch.Tensor):
        try:
            labels = torch.as_tensor(labels)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"labels must be a tensor of {batch} integers, got "
                            f"{type(labels).__name__}") from None
    if labels.is_floating_point() or labels.dtype == torch.bool or \
            labels.dim() != 1 or len(labels) != batch:
        raise ValueError(f"labels must be {batch} integers (one per image), got "
                         f"{labels.dtype} of shape {tuple(labels.shape)}")
    if num_classes is not None and ((labels < 0) | (labels >= num_classes)).any():
        raise ValueError(f"labels must lie in 0..{num_classes - 1}, got "
                         f"{labels.tolist()}")
    return labels.long().clone()  # the result never aliases the caller's tensor


def _attack_model(model: torch.nn.Module, dtype) -> torch.nn.Module:
    """A private copy of the model in ``dtype``: the attack may run it in any mode
    and differentiate through its weights without touching the caller's model."""
    net = copy.deepcopy(model).to(dtype)
    for p in net.parameters():
        p.requires_grad_(True)
    return net


def _run(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """model(x) in the model's own mode, its buffers read from copies (BatchNorm
    in train mode writes the batch's statistics into copies, never into the
    model). Unlike ``fl.forward`` it does not check x: a diverging attack may
    feed NaN images and must see a NaN distance, not an error."""
    buffers = dict(model.named_buffers())
    if not buffers:
        return model(x)
    copies = {name: b.clone() for name, b in buffers.items()}
    return torch.func.functional_call(model, copies, (x,), strict=False)


def _check_pair(grads, target) -> None:
    """Two gradient lists of equal length and matching shapes."""
    grads = checks._tensor_list(grads, "grads")
    target = checks._tensor_list(target, "target")
    if len(grads) != len(target):
        raise ValueError(f"target must hold one tensor per entry of grads "
                         f"({len(grads)}), got {len(target)}")
    for i, (g, t) in enumerate(zip(grads, target)):
        checks.tensor(g, f"grads[{i}]", "float", finite=False)
        checks.tensor(t, f"target[{i}]", "float", finite=False)
        if g.shape != t.shape:
            raise ValueError(f"target[{i}] must have the shape of grads[{i}], "
                             f"{tuple(g.shape)}, got {tuple(t.shape)}")


def l2_distance(grads: list[torch.Tensor], target: list[torch.Tensor]) -> torch.Tensor:
    """DLG's distance: sum over layers of ||g - g*||^2 (lists aligned in shape)."""
    _check_pair(grads, target)
    return sum(((g - t) ** 2).sum() for g, t in zip(grads, target))


def cosine_distance(grads: list[torch.Tensor],
                    target: list[torch.Tensor]) -> torch.Tensor:
    """Inverting gradients' distance: 1 - cos(g, g*) over all layers concatenated."""
    _check_pair(grads, target)
    dot = sum((g * t).sum() for g, t in zip(grads, target))
    norm_g = sum((g * g).sum() for g in grads)
    norm_t = sum((t * t).sum() for t in target)
    return 1 - dot / (norm_g.sqrt() * norm_t.sqrt() + 1e-30)


DISTANCES = {"l2": l2_distance, "cosine": cosine_distance}


def gradient_distance(model, x, y, target, distance="l2", loss="ce") -> torch.Tensor:
    """Distance between the gradient at dummy data (x, y) and the shared ``target``.

    x: (B, C, H, W); y: (B,) integer or (B, K) soft labels; differentiable in x.
    The model runs in its own mode with its buffers read from copies, so
    BatchNorm statistics are never changed. A backward pass through the
    result should run in ``threads.one_thread()`` too, for bit-identical
    results at any thread count.
    """
    checks.module(model)
    checks.choice(distance, "distance", tuple(DISTANCES))
    checks.tensor(x, "x", "float", min_dims=2, finite=False)
    params = list(model.parameters())
    with one_thread():
        value = _loss_fn(loss)(_run(model, x), y)
        grads = torch.autograd.grad(value, params, create_graph=True)
        return DISTANCES[distance](grads, target)


# --- DLG ----------------------------------------------------------------------


def _dlg_objective(net, target, shape, labels, num_classes, loss):
    """fun(z) -> (distance, grad) with z = [flat images, flat label logits]."""
    n_img = math.prod(shape)
    dtype = next(net.parameters()).dtype

    def fun(z: torch.Tensor):  # z may be float64 (the L-BFGS state) for any dtype
        z = z.detach().requires_grad_(True)
        x = z[:n_img].view(shape).to(dtype)
        y = labels if labels is not None else \
            F.softmax(z[n_img:].view(shape[0], num_classes).to(dtype), dim=-1)
        d = gradient_distance(net, x, y, target, "l2", loss)
        (gz,) = torch.autograd.grad(d, z)
        return float(d.detach()), gz.detach()
    return fun


#: DLG's defaults, chosen on the dev split (benchmarks/matching_tuning.py):
#: a grey start, a history of 200 pairs, stop at a relative distance of 1e-10.
DLG_DEFAULTS = {"init": "gray", "history": 200, "rel_tol": 1e-10, "stall": 100,
                "max_time": 300.0}


def _dlg_start(n_img: int, n_lab: int, init: str, gen: torch.Generator):
    """The flat start [images, label logits]: images by ``init``, logits N(0, 1)."""
    if init == "randn":  # DLG's code: N(0, 1) pixels
        img = torch.randn(n_img, generator=gen, dtype=torch.float64)
    elif init == "rand":
        img = torch.rand(n_img, generator=gen, dtype=torch.float64)
    elif init == "gray":  # mid-grey with a little noise, so restarts differ
        img = 0.5 + 0.01 * torch.randn(n_img, generator=gen, dtype=torch.float64)
    else:
        raise ValueError(f"unknown init {init!r}; choose 'gray', 'rand' or 'randn'")
    return torch.cat([img, torch.randn(n_lab, generator=gen, dtype=torch.float64)])


def dlg(model: torch.nn.Module, grads, shape, labels=None, *, loss="ce",
        max_iter: int | None = None, history: int = DLG_DEFAULTS["history"],
        rel_tol: float = DLG_DEFAULTS["rel_tol"],
        stall: int | None = DLG_DEFAULTS["stall"], init: str = DLG_DEFAULTS["init"],
        restarts: int = 1, max_restarts: int = 4, seed: int = 0,
        dtype: torch.dtype = torch.float64,
        max_time: float | None = DLG_DEFAULTS["max_time"],
        callback: Callable | None = None) -> Reconstruction:
    """Deep leakage from gradients: L2 gradient matching by L-BFGS.

    model: the shared model, used in the mode it is in (train/eval).
    grads: the shared gradient, aligned with ``model.parameters()``.
    shape: (B, C, H, W) of the data to reconstruct.
    labels: (B,) integer labels if known (iDLG: recovered first); when None
        they are optimised jointly as soft labels softmax(v), as published.
    Stopping: when the distance falls below ``rel_tol * ||g*||^2``
    ("converged"), when it has not fallen by 0.1 % in ``stall`` iterations
    ("stalled"), after ``max_time`` seconds for all runs together ("time"), or
    at ``max_iter`` iterations if given. init: the images' start, "gray"
    (0.5 + 0.01 N(0, 1)), "rand" (U(0, 1)) or "randn" (N(0, 1), DLG's code);
    label logits start N(0, 1). history: L-BFGS pairs kept.
    A run that diverges (NaN, blow-up) or fails its line search is restarted
    from a fresh seed, up to ``max_restarts`` extra times. ``restarts``
    independent runs are made and the one with the least gradient distance
    is returned (never chosen by the truth).
    callback(iteration, images (B, C, H, W), distance) is called each iteration.
    Returns a Reconstruction: images (B, C, H, W) in float32 (not clamped),
    labels (B,), loss_history of the chosen run; stats with the status, the
    final distance of every run, the evaluations and the soft labels.
    Taught in chapter 04.
    """
    grads = check_grads(model, grads)
    shape = _check_format(shape)
    if labels is not None:  # count and kind before any forward pass
        labels = _check_labels(labels, shape[0])
    _check_options(restarts=restarts, max_restarts=max_restarts, seed=seed,
                   dtype=dtype, callback=callback, max_time=max_time)
    rel_tol = checks.number(rel_tol, "rel_tol", minimum=0)
    checks.choice(init, "init", ("gray", "rand", "randn"))
    _check_lbfgs(max_iter, history, stall)
    with one_thread():
        return _dlg(model, grads, shape, labels, loss, max_iter, history, rel_tol,
                    stall, init, restarts, max_restarts, seed, dtype, max_time,
                    callback)


def _dlg(model, grads, shape, labels, loss, max_iter, history, rel_tol, stall, init,
         restarts, max_restarts, seed, dtype, max_time, callback) -> Reconstruction:
    shape, num_classes = _shape_and_classes(model, shape)
    net = _attack_model(model, dtype)
    if labels is not None:
        labels = _check_labels(labels, shape[0], num_classes)
    target = [g.detach().to(dtype).clone() for g in grads]
    scale = float(sum((t.double() ** 2).sum() for t in target))
    if scale == 0.0:
        raise ValueError("the shared gradient is all zeros: nothing to match")
    fun = _dlg_objective(net, target, shape, labels, num_classes, loss)
    n_img = math.prod(shape)
    n_lab = 0 if labels is not None else shape[0] * num_classes
    _dlg_start(1, 0, init, torch.Generator())  # reject a bad init before any work

    def cb(it, z, f):
        if callback is not None:
            callback(it, z[:n_img].view(shape), f)

    t0, runs, failures, trial = time.perf_counter(), [], 0, 0
    while len(runs) < restarts:
        gen = torch.Generator().manual_seed(seed + trial)
        trial += 1
        z0 = _dlg_start(n_img, n_lab, init, gen)
        left = None if max_time is None else max(
            0.0, (max_time - (time.perf_counter() - t0)) / (restarts - len(runs)))
        run = lbfgs(fun, z0, max_iter, history, rel_tol * scale, stall, left,
                    callback=cb)
        bad = run["status"] in ("diverged", "line search failed") or \
            not math.isfinite(run["f"])
        if bad and failures < max_restarts:
            failures += 1
            continue
        runs.append(run)
    finals = [r["f"] if math.isfinite(r["f"]) else math.inf for r in runs]
    best = int(np.argmin(finals))
    run = runs[best]
    if not math.isfinite(run["f"]):
        raise RuntimeError("DLG diverged in every run; try smaller weights or restarts")
    z = run["z"]
    images = z[:n_img].view(shape).float()
    if labels is None:
        soft = F.softmax(z[n_img:].view(shape[0], num_classes), dim=-1).float()
        out_labels = soft.argmax(1)
    else:
        soft, out_labels = None, labels
    return Reconstruction(
        images=images, labels=out_labels, loss_history=run["history"],
        wall_time=time.perf_counter() - t0,
        stats={"status": run["status"], "final_distance": run["f"],
               "relative_distance": run["f"] / scale,
               "run_distances": [r["f"] for r in runs], "chosen_run": best,
               "run_status": [r["status"] for r in runs],
               "diverged_runs": failures, "iterations": run["iterations"],
               "evaluations": sum(r["evaluations"] for r in runs),
               "soft_labels": soft, "labels_given": labels is not None})


def idlg(model: torch.nn.Module, grads, shape, **kwargs) -> Reconstruction:
    """iDLG: recover the label from the gradient's signs first, then run DLG on x alone.

    Labels come from chapter 03's ``labels.recover`` (method "idlg" for one
    sample; "yin", which assumes distinct labels, for a batch). Same
    arguments as ``dlg`` (without labels). Taught in chapter 04.
    """
    grads = check_grads(model, grads)
    shape = _check_format(shape)
    if "labels" in kwargs:
        raise TypeError("labels must not be given to idlg, got labels=...: iDLG "
                        "recovers them (use dlg with labels to pass them)")
    with one_thread():
        shape = _check_shape(model, shape)
        labels = recover(model, grads, shape[0],
                         method="idlg" if shape[0] == 1 else "yin")
        rec = dlg(model, grads, shape, labels=labels, **kwargs)
    rec.stats["labels_given"] = False
    rec.stats["labels_recovered"] = True
    return rec


# --- inverting gradients -----------------------------------------------------


def _check_prior(x, ctx) -> None:
    """A prior's arguments: images (B, C, H, W) (NaN allowed: a diverging run
    must reach its own NaN check) and the attack's context dict."""
    checks.tensor(x, "x", "float", dims=4, finite=False)
    if not isinstance(ctx, dict):
        checks.fail("ctx", "a dict (the attack's context)", ctx, TypeError)


def total_variation(x: torch.Tensor, ctx: dict) -> torch.Tensor:
    """Anisotropic TV: mean |horizontal differences| + mean |vertical differences|."""
    _check_prior(x, ctx)
    return ((x[..., :, 1:] - x[..., :, :-1]).abs().mean()
            + (x[..., 1:, :] - x[..., :-1, :]).abs().mean())


def bn_statistics_prior(x: torch.Tensor, ctx: dict) -> torch.Tensor:
    """GradInversion's BN prior: sum over BN layers of ||mu - mu*|| + ||var - var*||.

    mu, var: the dummy batch's per-channel statistics at each BatchNorm input
    (recorded by hooks in the last forward pass); mu*, var*: ``ctx["bn_targets"]``
    (by default the model's running statistics).
    """
    _check_prior(x, ctx)
    seen, targets = ctx["bn_seen"], ctx["bn_targets"]
    if not seen:
        raise ValueError("the 'bn' prior needs a model with BatchNorm layers")
    return sum(torch.linalg.vector_norm(m - tm) + torch.linalg.vector_norm(v - tv)
               for (m, v), (tm, tv) in zip(seen, targets))


def l2_prior(x: torch.Tensor, ctx: dict) -> torch.Tensor:
    """Mean squared pixel value (a weak pull towards dark images)."""
    _check_prior(x, ctx)
    return (x ** 2).mean()


#: name -> prior(x, ctx); inverting_gradients(regularizers={name: weight}).
REGULARIZERS: dict[str, Callable] = {"tv": total_variation, "bn": bn_statistics_prior,
                                     "l2": l2_prior}


def batchnorm_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's BatchNorm layers, in forward order of definition."""
    checks.module(model, parameters=False)
    bn = torch.nn.modules.batchnorm._BatchNorm
    return [m for m in model.modules() if isinstance(m, bn)]


def batchnorm_statistics(model: torch.nn.Module, x: torch.Tensor) -> list[tuple]:
    """Per-channel (mean, biased var) of the input of every BN layer on batch x.

    x: (B, ...) in the model's dtype. The model runs in its own mode; its
    buffers are read from copies (nothing changes). Returns [(mean, var)].
    """
    checks.module(model)
    checks.batch(x, "x")
    seen: list = []
    hooks = _bn_hooks(model, seen)
    try:
        with torch.no_grad(), one_thread():
            _run(model, x)
    finally:
        for h in hooks:
            h.remove()
    return [(m.detach(), v.detach()) for m, v in seen]


def _bn_hooks(model, seen: list):
    def hook(module, inputs, output):
        a = inputs[0]
        dims = [0] + list(range(2, a.dim()))
        seen.append((a.mean(dims), a.var(dims, unbiased=False)))
    return [m.register_forward_hook(hook) for m in batchnorm_layers(model)]


def _prior_context(model, grads, weights: dict, bn_targets, dtype):
    """What one cosine-matching attack with priors needs: (net, target, ctx, hooks).

    net: the attack's copy of the model; target: the shared gradient as
    detached copies in ``dtype`` (all zeros refused); ctx: the priors' context,
    with the BN targets (default: the copy's running statistics) when the "bn"
    prior has a weight; hooks: the BN hooks to remove when the attack ends.
    """
    net = _attack_model(model, dtype)
    target = [g.detach().to(dtype).clone() for g in grads]
    if all(float(t.abs().sum()) == 0 for t in target):
        raise ValueError("grads must not be all zeros (nothing to match), got zeros")
    ctx: dict = {"model": net, "bn_seen": []}
    hooks = _bn_hooks(net, ctx["bn_seen"]) if weights.get("bn") else []
    if weights.get("bn"):
        if not hooks:
            raise ValueError("the 'bn' prior needs a model with BatchNorm layers")
        pairs = bn_targets if bn_targets is not None else [
            (m.running_mean, m.running_var) for m in batchnorm_layers(net)]
        ctx["bn_targets"] = [(m.detach().to(dtype).clone(), v.detach().to(dtype).clone())
                             for m, v in pairs]
    return net, target, ctx, hooks


def _restart_images(shape, gen, init: str, dtype) -> torch.Tensor:
    if init == "rand":
        return torch.rand(shape, generator=gen, dtype=dtype)
    if init == "randn":
        return (0.5 + 0.25 * torch.randn(shape, generator=gen, dtype=dtype)).clamp(0, 1)
    if init == "gray":
        return torch.full(shape, 0.5, dtype=dtype)
    raise ValueError(f"unknown init {init!r}; choose 'rand', 'randn' or 'gray'")


class _Plateau:
    """Step decay on plateaus: divide the step by 10 when the objective has not
    fallen by 0.1 % in ``patience`` steps; after ``drops`` decays, the next
    plateau ends the run. Inverting gradients' published schedule divides at
    3/8, 5/8 and 7/8 of a fixed budget; this one needs no budget."""

    def __init__(self, opt, patience: int, drops: int = 3):
        self.opt, self.patience, self.drops = opt, patience, drops
        self.best, self.since, self.done_drops = math.inf, 0, 0

    def step(self, value: float) -> bool:
        """Record the objective; False when the run should stop."""
        if value < self.best * (1 - 1e-3):
            self.best, self.since = value, 0
            return True
        self.since += 1
        if self.since < self.patience:
            return True
        if self.done_drops == self.drops:
            return False
        for group in self.opt.param_groups:
            group["lr"] *= 0.1
        self.done_drops, self.since = self.done_drops + 1, 0
        return True


def _ig_run(net, target, labels, loss, weights, ctx, x0, opts, callback):
    """One restart of signed Adam; opts: iterations, lr, signed, boxed, decay,
    tol, patience, max_time. Returns (images, final distance, history, status)."""
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=opts["lr"])
    fixed = opts["iterations"] is not None
    if fixed:
        marks = [int(opts["iterations"] * f) for f in (3 / 8, 5 / 8, 7 / 8)]
        sched = torch.optim.lr_scheduler.MultiStepLR(
            opt, marks if opts["decay"] else [], gamma=0.1)
    else:
        plateau = _Plateau(opt, opts["patience"], 3 if opts["decay"] else 0)
    start, hist, it, status = time.perf_counter(), [], 0, "iterations"
    while not fixed or it < opts["iterations"]:
        opt.zero_grad()
        ctx["bn_seen"].clear()
        dist = gradient_distance(net, x, labels, target, "cosine", loss)
        obj = dist + sum(w * REGULARIZERS[k](x, ctx) for k, w in weights.items() if w)
        if not torch.isfinite(obj):
            raise RuntimeError(f"inverting gradients: objective became {float(obj)} at "
                               f"iteration {it}")
        hist.append(float(dist.detach()))
        if hist[-1] <= opts["tol"]:
            status = "converged"
            break
        obj.backward()
        if opts["signed"]:
            x.grad.sign_()
        opt.step()
        if opts["boxed"]:
            with torch.no_grad():
                x.clamp_(0, 1)
        if callback is not None:
            callback(it, x.detach(), hist[-1])
        it += 1
        if fixed:
            sched.step()
        elif not plateau.step(float(obj.detach())):
            status = "stalled"
            break
        if opts["max_time"] is not None and \
                time.perf_counter() - start > opts["max_time"]:
            status = "time"
            break
    ctx["bn_seen"].clear()
    final = float(gradient_distance(net, x.detach(), labels, target, "cosine",
                                    loss).detach())
    ctx["bn_seen"].clear()
    return x.detach(), final, hist, status


#: Inverting gradients' defaults, chosen on the dev split
#: (benchmarks/matching_tuning.py).
IG_DEFAULTS = {"lr": 0.1, "tv": 1e-3, "patience": 50, "tol": 1e-6, "restarts": 1,
               "max_time": 300.0}


def inverting_gradients(model: torch.nn.Module, grads, shape, labels, *, loss="ce",
                        iterations: int | None = None, lr: float = IG_DEFAULTS["lr"],
                        regularizers: dict | None = None,
                        restarts: int = IG_DEFAULTS["restarts"],
                        seed: int = 0, signed: bool = True, boxed: bool = True,
                        decay: bool = True, init: str = "rand",
                        patience: int = IG_DEFAULTS["patience"],
                        tol: float = IG_DEFAULTS["tol"],
                        max_time: float | None = IG_DEFAULTS["max_time"],
                        bn_targets: list | None = None,
                        dtype: torch.dtype = torch.float32,
                        callback: Callable | None = None) -> Reconstruction:
    """Inverting gradients: cosine gradient matching with priors, by signed Adam.

    model: the shared model, used in the mode it is in (train/eval).
    grads: the shared gradient; shape: (B, C, H, W); labels: (B,) integers.
    regularizers: {name in REGULARIZERS: weight}, default {"tv": IG_DEFAULTS["tv"]}.
    bn_targets: [(mean, var)] per BN layer for the "bn" prior (default: the
        model's running statistics, which is what a server holds).
    Each restart starts from init ("rand" uniform, "randn", "gray") drawn from
    seed + r and takes Adam steps of size lr on sign(grad), clamping to [0, 1].
    Stopping and schedule: by default (iterations=None) the step is divided
    by 10 when the objective has not fallen by 0.1 % in ``patience`` steps,
    and the run ends at the plateau after the third division ("stalled"),
    when the cosine distance falls below ``tol`` ("converged"), or when its
    share of ``max_time`` seconds is spent ("time"). With ``iterations`` set,
    the published schedule: that many steps, the step divided by 10 at 3/8,
    5/8 and 7/8 of them (decay=False keeps it constant).
    The restart with the least cosine distance (priors excluded) is returned;
    the truth is never read. callback(iteration, images, distance).
    Returns a Reconstruction with images (B, C, H, W) in [0, 1], the given
    labels, the chosen run's distance history, and stats with every restart's
    final distance, status and images. Taught in chapter 05.
    """
    grads = check_grads(model, grads)
    shape = _check_format(shape)
    labels = _check_labels(labels, shape[0])  # issue 14: before any forward pass
    if regularizers is not None and not isinstance(regularizers, dict):
        checks.fail("regularizers", "a dict {name: weight}", regularizers, TypeError)
    weights = {"tv": IG_DEFAULTS["tv"]} if regularizers is None else dict(regularizers)
    unknown = set(weights) - set(REGULARIZERS)
    if unknown:
        raise ValueError(f"unknown regularizers {sorted(unknown)}; "
                         f"known: {sorted(REGULARIZERS)}")
    for name, w in weights.items():
        checks.number(w, f"regularizers[{name!r}]", minimum=0)
    _check_options(restarts=restarts, seed=seed, dtype=dtype, callback=callback,
                   max_time=max_time)
    if iterations is not None:
        checks.integer(iterations, "iterations", minimum=1)
    checks.integer(patience, "patience", minimum=1)
    lr = checks.number(lr, "lr", above=0)
    tol = checks.number(tol, "tol", minimum=0)
    for name, value in (("signed", signed), ("boxed", boxed), ("decay", decay)):
        checks.flag(value, name)
    checks.choice(init, "init", ("rand", "randn", "gray"))
    with one_thread():
        return _inverting_gradients(model, grads, shape, labels, loss, iterations, lr,
                                    weights, restarts, seed, signed, boxed, decay,
                                    init, patience, tol, max_time, bn_targets, dtype,
                                    callback)


def _inverting_gradients(model, grads, shape, labels, loss, iterations, lr, weights,
                         restarts, seed, signed, boxed, decay, init, patience, tol,
                         max_time, bn_targets, dtype, callback) -> Reconstruction:
    shape, num_classes = _shape_and_classes(model, shape)
    labels = _check_labels(labels, shape[0], num_classes)
    net, target, ctx, hooks = _prior_context(model, grads, weights, bn_targets, dtype)
    opts = {"iterations": iterations, "lr": lr, "signed": signed, "boxed": boxed,
            "decay": decay, "tol": tol, "patience": patience}
    t0, runs = time.perf_counter(), []
    try:
        for r in range(restarts):
            gen = torch.Generator().manual_seed(seed + r)
            x0 = _restart_images(shape, gen, init, dtype)
            opts["max_time"] = None if max_time is None else max(
                0.0, (max_time - (time.perf_counter() - t0)) / (restarts - r))
            runs.append(_ig_run(net, target, labels, loss, weights, ctx, x0, opts,
                                callback))
    finally:
        for h in hooks:
            h.remove()
    finals = [r[1] for r in runs]
    best = int(np.argmin(finals))
    x, _, hist, status = runs[best]
    return Reconstruction(
        images=x.float(), labels=labels, loss_history=hist,
        wall_time=time.perf_counter() - t0,
        stats={"status": status, "final_distance": finals[best],
               "run_distances": finals, "run_status": [r[3] for r in runs],
               "iterations": len(hist), "chosen_run": best,
               "run_images": [r[0].float() for r in runs],
               "regularizers": weights})
