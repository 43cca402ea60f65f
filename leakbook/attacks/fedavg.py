"""Beyond one gradient: FedAvg updates and several rounds of one batch.

Taught in chapter 06. A FedAvg client takes ``local_steps`` SGD steps from the
global weights w_t and sends u = w_{t+1} - w_t (``fl.client_update``). The
attacker simulates those steps on dummy data with functional parameters
(``torch.func.functional_call``), so the simulated update is a differentiable
function of the dummy images, and matches it to u:

    x* = argmin_x  sum_pairs D(U_i(x), u_i) + sum_k alpha_k R_k(x)

with D the relative L2 distance ||U - u||^2 / ||u||^2 or the cosine distance
of chapter 05, R_k chapter 05's priors (``matching.REGULARIZERS``), and one
term per (model, update) pair the server holds for the same batch. A pair
may also hold a plain gradient (FedSGD), which is one step at rate 1 up to
its sign. The attacker never sees the batch: restarts are ranked by the
matching distance alone.
"""
from __future__ import annotations

import copy
import math
import time
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from .. import checks
from ..checks import check_grads
from ..fl import loss_fn
from ..optim import lbfgs
from ..threads import one_thread
from .matching import (REGULARIZERS, _check_format, _check_labels, _check_shape,
                       _shape_and_classes, cosine_distance, l2_distance)
from .result import Reconstruction

DISTANCES = ("l2", "cosine")
OPTIMIZERS = ("lbfgs", "adam")


# --- the client's schedule, simulated ---------------------------------------

def schedule(num_samples: int, local_steps: int, batch_size: int | None = None,
             shuffle_seed: int = 0) -> list[torch.Tensor]:
    """Indices of the samples each local step uses, exactly as ``fl.client_update``.

    A fixed shuffle of range(num_samples) drawn from ``shuffle_seed``;
    step s takes the next ``batch_size`` entries, wrapping around the
    epoch (the whole batch when None). Returns ``local_steps`` index tensors.
    """
    _check_schedule(num_samples, 1.0, local_steps, batch_size)
    batch_size = batch_size or num_samples
    gen = torch.Generator().manual_seed(shuffle_seed)
    order = torch.randperm(num_samples, generator=gen)
    steps = []
    for step in range(local_steps):
        start = (step * batch_size) % num_samples
        idx = order[start:start + batch_size]
        if len(idx) < batch_size:  # wrap around the epoch
            idx = torch.cat([idx, order[:batch_size - len(idx)]])
        steps.append(idx)
    return steps


def _check_schedule(num_samples, lr, local_steps, batch_size) -> None:
    if isinstance(local_steps, bool) or not isinstance(local_steps, (int, np.integer)):
        raise TypeError(f"local_steps must be an int, got {type(local_steps).__name__}")
    if local_steps < 1:
        raise ValueError(f"local_steps must be at least 1, got {local_steps}")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or \
            not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a positive finite number, got {lr!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or
                                   not isinstance(batch_size, (int, np.integer)) or
                                   not 1 <= batch_size <= num_samples):
        raise ValueError(f"batch_size must be None or an int in 1..{num_samples}, "
                         f"got {batch_size!r}")


def _buffers(model: nn.Module) -> dict:
    """Fresh copies of the model's buffers (BatchNorm in train mode writes to them)."""
    return {n: b.clone() for n, b in model.named_buffers()}


def simulate_update(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, lr: float,
                    local_steps: int, batch_size: int | None = None,
                    shuffle_seed: int = 0, loss="ce",
                    create_graph: bool = False) -> list[torch.Tensor]:
    """``fl.client_update`` written with functional parameters, differentiable in x.

    x: (N, C, H, W); y: (N,) integer or (N, K) soft labels. Each step takes
    the gradient of the mean loss on its mini-batch (see :func:`schedule`)
    at the current functional weights and subtracts lr times it, as the
    client does. With ``create_graph`` the result can be differentiated with
    respect to x (the attack does); otherwise it is detached. The model is
    not changed. Returns w_T - w_0 aligned with ``model.parameters()``.
    """
    checks.module(model)
    checks.batch(x, "x")
    checks.seed(shuffle_seed, "shuffle_seed")
    checks.flag(create_graph, "create_graph")
    _check_schedule(x.shape[0], lr, local_steps, batch_size)
    with one_thread():
        return _simulate_update(model, x, y, lr, local_steps, batch_size,
                                shuffle_seed, loss, create_graph)


def _simulate_update(model, x, y, lr, local_steps, batch_size, shuffle_seed, loss,
                     create_graph) -> list[torch.Tensor]:
    names = [n for n, _ in model.named_parameters()]
    start = {n: p.detach().clone().requires_grad_(True)
             for n, p in model.named_parameters()}
    weights = dict(start)
    criterion = loss_fn(loss)
    for idx in schedule(x.shape[0], local_steps, batch_size, shuffle_seed):
        out = functional_call(model, (weights, _buffers(model)), (x[idx],))
        value = criterion(out, y[idx])
        grads = torch.autograd.grad(value, list(weights.values()),
                                    create_graph=create_graph)
        weights = {n: w - lr * g for (n, w), g in zip(weights.items(), grads)}
    update = [weights[n] - start[n] for n in names]
    return update if create_graph else [u.detach() for u in update]


def _simulate_gradient(model: nn.Module, x, y, loss) -> list[torch.Tensor]:
    """The shared gradient at x, with the graph kept (a FedSGD pair)."""
    params = {n: p.detach().clone().requires_grad_(True)
              for n, p in model.named_parameters()}
    out = functional_call(model, (params, _buffers(model)), (x,))
    value = loss_fn(loss)(out, y)
    return list(torch.autograd.grad(value, list(params.values()), create_graph=True))


def _pair_schedule(extra, defaults: dict, index: int, batch: int) -> dict | None:
    """The schedule of pair ``index``: None for a gradient, else lr/steps/batch/seed."""
    sched = dict(defaults)
    if extra is not None:
        if not isinstance(extra, dict):
            raise TypeError(f"pair {index}: the third entry must be a dict of schedule "
                            f"keywords, got {type(extra).__name__}")
        unknown = set(extra) - set(defaults)
        if unknown:
            raise ValueError(f"pair {index}: unknown schedule keys {sorted(unknown)}; "
                             f"known: {sorted(defaults)}")
        sched.update(extra)
    if sched["lr"] is None:
        return None
    try:
        _check_schedule(batch, sched["lr"], sched["local_steps"], sched["batch_size"])
    except (TypeError, ValueError) as err:
        raise type(err)(f"pair {index}: {err}") from None
    return sched


def _prepare_pairs(pairs, shape, dtype, defaults: dict) -> list[dict]:
    """Validate the pairs; return private copies of models and targets in dtype."""
    out = []
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (list, tuple)) or len(pair) not in (2, 3):
            raise TypeError(f"pair {i} must be (model, tensors) or (model, tensors, "
                            f"schedule), got {type(pair).__name__}")
        model, tensors = pair[0], pair[1]
        if not isinstance(model, nn.Module):
            raise TypeError(f"pair {i}: the model must be a torch.nn.Module, got "
                            f"{type(model).__name__}")
        try:
            tensors = check_grads(model, tensors)
        except (TypeError, ValueError) as err:
            raise type(err)(f"pair {i}: {err}") from None
        sched = _pair_schedule(pair[2] if len(pair) == 3 else None, defaults, i,
                               shape[0])
        target = [t.detach().to(dtype).clone() for t in tensors]
        norm2 = float(sum((t * t).sum() for t in target))
        if norm2 == 0.0:
            raise ValueError(f"pair {i}: the shared tensors are all zero: "
                             "nothing to match")
        _check_shape(model, shape, dtype)
        net = copy.deepcopy(model).to(dtype)
        out.append({"net": net, "target": target, "norm2": norm2, "schedule": sched})
    return out


# --- the objective ------------------------------------------------------------

def _simulate(pair: dict, x: torch.Tensor, labels: torch.Tensor, loss) -> list:
    sched = pair["schedule"]
    if sched is None:
        return _simulate_gradient(pair["net"], x, labels, loss)
    return _simulate_update(pair["net"], x, labels, sched["lr"],
                            sched["local_steps"], sched["batch_size"],
                            sched["shuffle_seed"], loss, True)


def _distance(sim, pair: dict, distance: str) -> torch.Tensor:
    if distance == "cosine":
        return cosine_distance(sim, pair["target"])
    return l2_distance(sim, pair["target"]) / pair["norm2"]


def _matching_distance(pairs: list[dict], x, labels, distance: str,
                       loss) -> torch.Tensor:
    """Sum over pairs of the distance between simulated and shared tensors."""
    return sum(_distance(_simulate(p, x, labels, loss), p, distance) for p in pairs)


def _objective(pairs, labels, distance, loss, weights, ctx):
    def value(x):
        d = _matching_distance(pairs, x, labels, distance, loss)
        prior = sum(w * REGULARIZERS[k](x, ctx) for k, w in weights.items() if w)
        return d, d + prior
    return value


# --- the two optimisers -------------------------------------------------------

def _run_lbfgs(value, x0, iterations, history, tol, max_time, callback):
    shape = x0.shape

    def fun(z):  # z: the float64 state of L-BFGS, whatever the attack's dtype
        z = z.detach().clone().requires_grad_(True)
        _, total = value(z.view(shape).to(x0.dtype))
        (gz,) = torch.autograd.grad(total, z)
        return float(total.detach()), gz.detach()

    def cb(it, z, f):
        if callback is not None:
            callback(it, z.view(shape).to(x0.dtype), f)

    run = lbfgs(fun, x0.flatten().double(), iterations, history, tol, max_time=max_time,
                callback=cb)
    return run["z"].view(shape), run["history"], run["status"]


def _run_adam(value, x0, iterations, step_size, max_time, callback):
    x = x0.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=step_size)
    marks = [int(iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, marks, gamma=0.1)
    hist, start, status = [], time.perf_counter(), "max_iter"
    for it in range(iterations):
        opt.zero_grad()
        d, total = value(x)
        if not torch.isfinite(total):
            status = "diverged"
            break
        total.backward()
        x.grad.sign_()
        opt.step()
        sched.step()
        with torch.no_grad():
            x.clamp_(0, 1)
        hist.append(float(total.detach()))
        if callback is not None:
            callback(it, x.detach(), hist[-1])
        if max_time is not None and time.perf_counter() - start > max_time:
            status = "time"
            break
    return x.detach(), hist, status


# --- the attacks --------------------------------------------------------------

def invert_pairs(pairs, shape, labels, *, lr: float | None = None, local_steps: int = 1,
                 batch_size: int | None = None, shuffle_seed: int = 0, loss="ce",
                 distance: str = "cosine", regularizers: dict | None = None,
                 optimizer: str = "lbfgs", iterations: int | None = None,
                 history: int = 100, tol: float = 1e-16, step_size: float = 0.1,
                 restarts: int = 1, seed: int = 0, dtype: torch.dtype = torch.float64,
                 max_time: float | None = None,
                 callback: Callable | None = None) -> Reconstruction:
    """Images of one batch from several (model, gradient or update) pairs at once.

    pairs: list of (model, tensors) or (model, tensors, schedule): the
        weights the server sent in a round and what came back, aligned with
        ``model.parameters()``, all from the same batch.
    lr, local_steps, batch_size, shuffle_seed: the client's schedule, as in
        ``fl.client_update`` (shuffle_seed is its ``seed``); lr=None means
        the tensors are gradients (FedSGD). A pair's own schedule dict (same
        keys) overrides them for that pair.
    shape: (B, C, H, W) of the batch; labels: (B,) integers (known or
        recovered first, e.g. by :func:`labels.recover_fedavg`).
    distance: "l2" (relative: ||U - u||^2 / ||u||^2 per pair) or "cosine".
    regularizers: {name in matching.REGULARIZERS: weight}, default none;
        priors that only read the images (such as "tv", "l2") are supported.
    optimizer: "lbfgs" (``leakbook.optim.lbfgs`` on the unboxed images,
        ``iterations`` default 500) or "adam" (signed Adam with step decay
        and a [0, 1] box as in inverting gradients, default 1000).
    restarts: runs from uniform noise drawn from seed + r; the run with the
        least matching distance (priors excluded) is returned.
    callback(iteration, images, objective) after each iteration.
    Returns a Reconstruction: images (B, C, H, W) float32, the labels, the
    chosen run's objective history and stats (final distance of each run,
    status, number of pairs). The models and tensors given are not changed.
    Taught in chapter 06.
    """
    if distance not in DISTANCES:
        raise ValueError(f"unknown distance {distance!r}; choose one of {DISTANCES}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {OPTIMIZERS}")
    if iterations is None:
        iterations = 500 if optimizer == "lbfgs" else 1000
    for name, value in (("restarts", restarts), ("iterations", iterations),
                        ("history", history)):
        checks.integer(value, name, minimum=1, what="a positive int")
    checks.seed(seed)
    checks.float_dtype(dtype)
    checks.number(tol, "tol", minimum=0)
    checks.number(step_size, "step_size", above=0)
    if max_time is not None:
        checks.number(max_time, "max_time", minimum=0)
    if callback is not None:
        checks.function(callback, "callback")
    if regularizers is not None and not isinstance(regularizers, dict):
        checks.fail("regularizers", "a dict {name: weight}", regularizers, TypeError)
    weights = {} if regularizers is None else dict(regularizers)
    unknown = set(weights) - set(REGULARIZERS)
    if unknown:
        raise ValueError(f"unknown regularizers {sorted(unknown)}; "
                         f"known: {sorted(REGULARIZERS)}")
    if weights.get("bn"):
        raise ValueError("the 'bn' prior needs BatchNorm statistics of the simulated "
                         "client, which invert_pairs does not model; use 'tv' or 'l2'")
    if not isinstance(pairs, (list, tuple)) or len(pairs) == 0:
        raise ValueError("pairs must be a non-empty list of "
                         "(model, gradient or update)")
    first = pairs[0][0] if isinstance(pairs[0], (list, tuple)) and pairs[0] else None
    if not isinstance(first, nn.Module):
        raise TypeError("pair 0 must start with a torch.nn.Module")
    labels = _check_labels(labels, _check_format(shape)[0])  # before any forward pass
    with one_thread():
        return _invert_pairs(pairs, first, shape, labels, lr, local_steps, batch_size,
                             shuffle_seed, loss, distance, weights, optimizer,
                             iterations, history, tol, step_size, restarts, seed,
                             dtype, max_time, callback)


def _invert_pairs(pairs, first, shape, labels, lr, local_steps, batch_size,
                  shuffle_seed, loss, distance, weights, optimizer, iterations,
                  history, tol, step_size, restarts, seed, dtype, max_time,
                  callback) -> Reconstruction:
    shape, num_classes = _shape_and_classes(first, shape, dtype)
    defaults = {"lr": lr, "local_steps": local_steps, "batch_size": batch_size,
                "shuffle_seed": shuffle_seed}
    prepared = _prepare_pairs(pairs, shape, dtype, defaults)
    labels = _check_labels(labels, shape[0], num_classes)
    value = _objective(prepared, labels, distance, loss, weights,
                       {"model": prepared[0]["net"]})
    t0, runs = time.perf_counter(), []
    for r in range(restarts):
        gen = torch.Generator().manual_seed(seed + r)
        x0 = torch.rand(shape, generator=gen, dtype=dtype)
        left = None if max_time is None else \
            max(0.0, max_time - (time.perf_counter() - t0))
        if optimizer == "lbfgs":
            x, hist, status = _run_lbfgs(value, x0, iterations, history, tol, left,
                                         callback)
        else:
            x, hist, status = _run_adam(value, x0, iterations, step_size, left,
                                        callback)
        x = x.to(dtype)
        with torch.enable_grad():
            final = float(_matching_distance(prepared, x.detach(), labels, distance,
                                            loss).detach())
        runs.append((x, final if math.isfinite(final) else math.inf, hist, status))
    finals = [r[1] for r in runs]
    best = int(np.argmin(finals))
    x, final, hist, status = runs[best]
    return Reconstruction(
        images=x.float(), labels=labels, loss_history=hist,
        wall_time=time.perf_counter() - t0,
        stats={"final_distance": final, "run_distances": finals, "chosen_run": best,
               "status": status, "pairs": len(prepared), "distance": distance,
               "optimizer": optimizer, "regularizers": weights,
               "run_images": [r[0].float() for r in runs]})


def invert_fedavg(model: nn.Module, update, shape, labels, *, lr: float,
                  local_steps: int, batch_size: int | None = None,
                  shuffle_seed: int = 0, **kwargs) -> Reconstruction:
    """Images from one FedAvg update: unroll the client's local steps and match.

    model: holds w_t; update: w_{t+1} - w_t from ``fl.client_update``,
    aligned with ``model.parameters()``; lr, local_steps, batch_size and
    shuffle_seed (``client_update``'s seed) describe the client's schedule.
    shape: (B, C, H, W); labels: (B,). Other keywords as :func:`invert_pairs`
    (distance "l2" or "cosine", regularizers, optimizer, restarts ...).
    Taught in chapter 06.
    """
    if lr is None:
        raise ValueError("invert_fedavg needs the client's learning rate lr")
    return invert_pairs([(model, update)], shape, labels, lr=lr,
                        local_steps=local_steps, batch_size=batch_size,
                        shuffle_seed=shuffle_seed, **kwargs)


def as_gradient(update, lr: float, local_steps: int) -> list[torch.Tensor]:
    """The naive reading of an update as one gradient: update / (-lr * local_steps).

    Exact for one full-batch step; with more steps it is the mean of the
    gradients taken along the client's path. Taught in chapter 06.
    """
    _check_schedule(1, lr, local_steps, None)
    update = checks._tensor_list(update, "update")
    for i, u in enumerate(update):
        checks.tensor(u, f"update[{i}]", "float")
    return [u.detach() / (-lr * local_steps) for u in update]
