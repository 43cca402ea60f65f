"""GradInversion-style group consistency (our variant): several seeds, one consensus.

Yin et al. (CVPR 2021) run several reconstructions of the same batch from
different random starts and pull each one towards the group's (registered)
mean, which is recomputed during the run; the mean is the answer. This module
adds that term to chapter 05's inverting gradients (cosine distance, TV and
BatchNorm priors, signed Adam with the step divided by 10 at 3/8, 5/8 and 7/8
of the budget). Our variant differs from the paper in four ways: cosine
instead of scaled L2 gradient matching; registration by integer shifts within
+-2 px (or none) instead of RANSAC-flow; no Langevin noise and no cosine
learning-rate schedule; the squared distance to the mean, averaged over pixels.

Neither the members, the mean nor the shifts ever read the true data. On the
book's small BN networks at 16x16 the group term adds nothing over averaging
independent seeds (benchmarks/gradinversion.py, chapter 05).
Taught in chapter 05.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

from .. import checks, threads
from .matching import (IG_DEFAULTS, REGULARIZERS, _prior_context, _restart_images,
                       _shape_and_classes, batchnorm_layers, gradient_distance)
from .result import Reconstruction

#: defaults: the group weight (from 0, 0.01, 0.1, 1, 10) and the
#: steps per seed (120, 240) were chosen on the dev split with 4 seeds
#: (benchmarks/gradinversion.py); the mean is refreshed every 25 steps.
GI_DEFAULTS = {"seeds": 4, "iterations": 120, "group": 10.0, "every": 25,
               "max_shift": 2, "lr": IG_DEFAULTS["lr"]}
REGISTRATIONS = ("shift", "none")


def shift_images(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Translate each image by an integer (dy, dx), repeating the edge pixels.

    x: (B, C, H, W); shifts: (B, 2) integers. Returns (B, C, H, W): out[b] at
    pixel (i, j) is x[b] at (i - dy, j - dx), clamped to the image.
    """
    _, _, h, w = x.shape
    rows = torch.arange(h).view(1, h) - shifts[:, :1]
    cols = torch.arange(w).view(1, w) - shifts[:, 1:]
    rows, cols = rows.clamp(0, h - 1), cols.clamp(0, w - 1)
    idx = torch.arange(x.shape[0])
    return x[idx[:, None, None], :, rows[:, :, None], cols[:, None, :]].permute(
        0, 3, 1, 2)


def best_shifts(x: torch.Tensor, reference: torch.Tensor,
                max_shift: int = 2) -> torch.Tensor:
    """Integer shifts (B, 2) that bring each image of x closest to ``reference``.

    The least mean squared difference over the central crop (a border of
    ``max_shift`` pixels left out, so every candidate is compared on pixels it
    really moved); equivalently the highest cross-correlation corrected for
    energy. Ties go to the smallest shift. x, reference: (B, C, H, W).
    """
    m = max_shift
    best = torch.zeros(x.shape[0], 2, dtype=torch.long)
    if m == 0:
        return best
    h, w = x.shape[2], x.shape[3]
    crop = (slice(None), slice(None), slice(m, h - m), slice(m, w - m))
    cands = sorted(((dy, dx) for dy in range(-m, m + 1) for dx in range(-m, m + 1)),
                   key=lambda s: (abs(s[0]) + abs(s[1]), s))
    err = torch.full((x.shape[0],), float("inf"), dtype=torch.float64)
    for dy, dx in cands:
        s = torch.tensor([[dy, dx]]).expand(x.shape[0], 2)
        e = ((shift_images(x, s) - reference)[crop].double() ** 2).mean((1, 2, 3))
        better = e < err - 1e-12
        err = torch.where(better, e, err)
        best[better] = torch.tensor([dy, dx])
    return best


def registered_mean(members: torch.Tensor, register: str = "shift",
                    max_shift: int = 2, rounds: int = 2):
    """The group's mean after registering every member to it.

    members: (S, B, C, H, W). Member 0 is the first reference; then, ``rounds``
    times, each member's shifts to the current mean are chosen (best_shifts)
    and the mean of the shifted members becomes the new mean. Returns
    (mean (B, C, H, W), shifts (S, B, 2)); with register="none", the plain
    mean and zero shifts.
    """
    s_count = members.shape[0]
    shifts = torch.zeros(s_count, members.shape[1], 2, dtype=torch.long)
    if register == "none" or s_count == 1:
        return members.mean(0), shifts
    mean = members[0]
    for _ in range(rounds):
        shifts = torch.stack([best_shifts(m, mean, max_shift) for m in members])
        moved = [shift_images(m, s) for m, s in zip(members, shifts)]
        mean = torch.stack(moved).mean(0)
    return mean, shifts


def group_penalty(members: torch.Tensor, mean: torch.Tensor,
                  shifts: torch.Tensor) -> torch.Tensor:
    """sum_g mean_pixels (x_g - E_g)^2, with E_g the mean moved back into member
    g's frame (shifted by -shifts[g]). members (S, B, C, H, W); mean detached."""
    back = torch.stack([shift_images(mean, -s) for s in shifts])
    return ((members - back) ** 2).mean((1, 2, 3, 4)).sum()


def _validate(model, grads, shape, labels, seeds, iterations, group, regularizers,
              register, seed, lr, every, max_shift, bn_targets, callback):
    grads = checks.check_grads(model, grads)
    checks.shape(shape, "shape", dims=4)
    seeds = checks.integer(seeds, "seeds", minimum=1)
    iterations = GI_DEFAULTS["iterations"] if iterations is None else \
        checks.integer(iterations, "iterations", minimum=1)
    group = checks.number(group, "group", minimum=0)
    lr = checks.number(lr, "lr", above=0)
    every = checks.integer(every, "every", minimum=1)
    max_shift = checks.integer(max_shift, "max_shift", minimum=0, maximum=4)
    checks.choice(register, "register", REGISTRATIONS)
    seed = checks.seed(seed)
    if regularizers is None:
        weights = {"tv": IG_DEFAULTS["tv"]}
    elif not isinstance(regularizers, dict):
        checks.fail("regularizers", "a dict {name: weight}", regularizers, TypeError)
    else:
        weights = {}
        for k, w in regularizers.items():
            checks.choice(k, "regularizers' names", tuple(REGULARIZERS))
            weights[k] = checks.number(w, f"regularizers[{k!r}]", minimum=0)
    if weights.get("bn") and not batchnorm_layers(model):
        raise ValueError("regularizers must not hold 'bn' for a model without "
                         "BatchNorm layers, got {'bn': ...}")
    if callback is not None:
        checks.function(callback, "callback")
    if bn_targets is not None and not isinstance(bn_targets, (list, tuple)):
        checks.fail("bn_targets", "a list of (mean, var) pairs", bn_targets, TypeError)
    shape, num_classes = _shape_and_classes(model, shape)
    labels = checks.labels(labels, "labels", shape[0], num_classes)
    return grads, shape, labels, seeds, iterations, group, weights, seed, lr, every, \
        max_shift


def gradinversion(model: torch.nn.Module, grads, shape, labels, *,
                  seeds: int = GI_DEFAULTS["seeds"], iterations: int | None = None,
                  group: float = GI_DEFAULTS["group"], regularizers: dict | None = None,
                  register: str = "shift", seed: int = 0, lr: float = GI_DEFAULTS["lr"],
                  every: int = GI_DEFAULTS["every"],
                  max_shift: int = GI_DEFAULTS["max_shift"],
                  bn_targets: list | None = None, loss="ce",
                  callback: Callable | None = None) -> Reconstruction:
    """GradInversion-style group consistency (our variant) on inverting gradients.

    model: the shared model, in the mode it is in (a copy is run; BN buffers
        are never changed). grads: the shared gradient; shape: (B, C, H, W);
        labels: (B,) integers (for instance from chapter 03's label rules).
    seeds: S members; member s starts from U(0, 1) pixels drawn from seed + s,
        exactly as inverting_gradients' restart s, so S restarts and S seeds
        cost the same: S x ``iterations`` gradient evaluations.
    Each step, member g minimises
        cosine distance(g) + priors(x_g) + group * mean((x_g - E_g)^2),
    with E_g the registered mean moved into member g's frame. The mean and its
    shifts are recomputed every ``every`` steps (the term is off before the
    first refresh, when the members are still noise). register: "shift"
    (each member moved by the integer (dy, dx), |dy|, |dx| <= max_shift, that
    brings it closest to the mean; member 0 is the first reference) or "none"
    (plain mean). The paper registers with RANSAC-flow; we do not.
    Schedule: signed Adam, step lr, divided by 10 at 3/8, 5/8, 7/8 of
    ``iterations``; pixels clamped to [0, 1]. regularizers: {name in
    REGULARIZERS: weight}, default TV 1e-3; bn_targets as in
    inverting_gradients (default: the model's running statistics).
    With seeds=1 the group term is off and the run is inverting_gradients'
    single restart with ``iterations`` set (same start, same steps).
    Returns a Reconstruction whose images are the final registered mean
    (B, C, H, W); stats: "members" (S, B, C, H, W), "member_distances",
    "fused_distance" (cosine distances; the truth is never read), "shifts"
    (S, B, 2), "register", "group", "history" (mean member distance per step)
    and "penalty_history". callback(iteration, fused images, distance).
    Taught in chapter 05.
    """
    (grads, shape, labels, seeds, iterations, group, weights, seed, lr, every,
     max_shift) = _validate(model, grads, shape, labels, seeds, iterations, group,
                            regularizers, register, seed, lr, every, max_shift,
                            bn_targets, callback)
    with threads.one_thread():
        return _run(model, grads, shape, labels, seeds, iterations, group, weights,
                    register, seed, lr, every, max_shift, bn_targets, loss, callback)


def _run(model, grads, shape, labels, seeds, iterations, group, weights, register,
         seed, lr, every, max_shift, bn_targets, loss, callback):
    t0 = time.perf_counter()
    dtype = torch.float32
    net, target, ctx, hooks = _prior_context(model, grads, weights, bn_targets, dtype)
    x = torch.stack([_restart_images(shape, torch.Generator().manual_seed(seed + s),
                                     "rand", dtype) for s in range(seeds)])
    x.requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    marks = [int(iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, marks, gamma=0.1)
    use_group = group > 0 and seeds > 1
    mean = shifts = None
    hist, pen_hist = [], []
    try:
        for it in range(iterations):
            if use_group and it > 0 and it % every == 0:
                mean, shifts = registered_mean(x.detach(), register, max_shift)
            opt.zero_grad()
            obj, dists = 0.0, []
            for s in range(seeds):
                ctx["bn_seen"].clear()
                d = gradient_distance(net, x[s], labels, target, "cosine", loss)
                obj = obj + d + sum(w * REGULARIZERS[k](x[s], ctx)
                                    for k, w in weights.items() if w)
                dists.append(float(d.detach()))
            if mean is not None:
                pen = group_penalty(x, mean, shifts)
                obj = obj + group * pen
                pen_hist.append(float(pen.detach()))
            if not torch.isfinite(obj):
                raise RuntimeError(f"gradinversion: objective became {float(obj)} at "
                                   f"iteration {it}")
            hist.append(sum(dists) / seeds)
            obj.backward()
            x.grad.sign_()
            opt.step()
            with torch.no_grad():
                x.clamp_(0, 1)
            sched.step()
            if callback is not None:
                fused, _ = registered_mean(x.detach(), register, max_shift)
                callback(it, fused, hist[-1])
        members = x.detach()
        fused, shifts = registered_mean(members, register, max_shift)

        def distance(images):
            ctx["bn_seen"].clear()
            return float(gradient_distance(net, images, labels, target, "cosine",
                                           loss).detach())
        member_d = [distance(m) for m in members]
        fused_d = distance(fused)
    finally:
        for h in hooks:
            h.remove()
        ctx["bn_seen"].clear()
    return Reconstruction(
        images=fused.clone(), labels=labels.clone(), loss_history=hist,
        wall_time=time.perf_counter() - t0,
        stats={"members": members.clone(), "member_distances": member_d,
               "fused_distance": fused_d, "shifts": shifts, "register": register,
               "group": group, "seeds": seeds, "iterations": iterations,
               "history": hist, "penalty_history": pen_hist,
               "regularizers": weights,
               "member_spread": member_spread(members, shifts, fused)})


def member_spread(members: torch.Tensor, shifts: torch.Tensor,
                  mean: torch.Tensor) -> float:
    """Root mean squared difference of the registered members from their mean."""
    moved = torch.stack([shift_images(m, s) for m, s in zip(members, shifts)])
    return float((moved - mean).pow(2).mean().sqrt())
