"""Defences as transforms of a shared update (a list of gradients or weight deltas).

Each function takes the update a client is about to send, aligned with
``model.parameters()``, and returns a new list; the input is never changed.
The server (and any attack it runs) only sees the returned list.

The second half measures a defence's price on one small federated task
(``digits_task``, ``federated_training``, ``sent_update``): the model that the
attacks target is the model whose accuracy is reported.
Taught in chapter 10.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from . import checks
from .checks import check_batch, float_tensor
from .threads import one_thread

__all__ = ["clip", "gaussian_noise", "relative_noise", "clip_and_noise", "prune",
           "quantize", "global_norm", "DEFENSES", "make_defence", "FederatedTask",
           "digits_task", "target_digits", "sent_update", "federated_training"]


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
        checks.fail("update", "a non-empty list of tensors", update)
    return [float_tensor(t, f"update[{i}]") for i, t in enumerate(update)]


def _number(value, name: str, low: float = 0.0, strict: bool = False) -> float:
    """A finite float >= low (> low if strict), or a clear error."""
    if strict:
        return checks.number(value, name, above=low)
    return checks.number(value, name, minimum=low)


def global_norm(update) -> float:
    """The L2 norm of the whole update, all tensors flattened into one vector."""
    update = _check_update(update)
    with one_thread():  # sums split by thread would differ in the last bits
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
    gen = torch.Generator().manual_seed(checks.seed(seed))
    return [t + sigma * torch.randn(t.shape, generator=gen, dtype=t.dtype)
            for t in update]


def relative_noise(update, ratio: float, seed: int = 0) -> list[torch.Tensor]:
    """Add Gaussian noise whose expected norm is ``ratio`` times the update's norm.

    Every entry gets i.i.d. N(0, sigma^2) with sigma = ratio * ||u|| / sqrt(d),
    d the number of entries, so E||noise||^2 = ratio^2 ||u||^2: ``ratio`` is the
    noise-to-signal ratio in norm. The scale depends on the data (on ||u||),
    so this is not a differential-privacy mechanism. Taught in chapter 10.
    """
    update = _check_update(update)
    ratio = _number(ratio, "ratio")
    checks.seed(seed)
    d = sum(t.numel() for t in update)
    return gaussian_noise(update, ratio * global_norm(update) / math.sqrt(d), seed=seed)


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
    checks.seed(seed)
    _check_update(update)
    max_norm = _number(max_norm, "max_norm", strict=True)
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
    fraction = checks.number(fraction, "fraction", minimum=0, below=1)
    checks.flag(per_tensor, "per_tensor")

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
    bits = checks.integer(bits, "bits", minimum=1)
    checks.flag(stochastic, "stochastic")
    gen = torch.Generator().manual_seed(checks.seed(seed))
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
    "relative_noise": (relative_noise, "ratio"),
    "clip_and_noise": (clip_and_noise, "noise_multiplier"),
    "prune": (prune, "fraction"),
    "quantize": (quantize, "bits"),
}


def make_defence(name: str, strength=None,
                 max_norm: float | None = None) -> Callable[[list, int], list]:
    """A client-side defence as a function ``defend(update, seed) -> update``.

    name: "none" (the update unchanged) or a key of ``DEFENSES``; strength:
    the value of its parameter (``DEFENSES[name][1]``); max_norm: the clipping
    bound C, needed by "clip_and_noise" only. ``seed`` is the client's noise
    draw (used by the noisy defences). Taught in chapter 10.
    """
    if name == "none":
        return lambda update, seed=0: [t.clone() for t in _check_update(update)]
    if name not in DEFENSES:
        raise ValueError(f"unknown defence {name!r}; choose 'none' or one of "
                         f"{sorted(DEFENSES)}")
    fn = DEFENSES[name][0]
    if name == "clip_and_noise":
        if max_norm is None:
            raise ValueError("clip_and_noise needs max_norm (the clipping bound C)")
        _number(max_norm, "max_norm", strict=True)
        return lambda update, seed=0: fn(update, max_norm, strength, seed=seed)
    if name in ("noise", "relative_noise", "quantize"):
        return lambda update, seed=0: fn(update, strength, seed=seed)
    return lambda update, seed=0: fn(update, strength)


# --- the price of a defence: one small federated task ----------------------


@dataclass
class FederatedTask:
    """Clients' data and a held-out test set for a federated classification task.

    x_train (N, C, H, W), y_train (N,): the union of the clients' data;
    clients: one index tensor into x_train per client; x_test, y_test: held out.
    """

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    clients: list[torch.Tensor]


def digits_task(size: int = 16, num_clients: int = 100, num_test: int = 597,
                seed: int = 0) -> FederatedTask:
    """The scikit-learn digits as a federated task: IID clients, a held-out test set.

    All 1797 digits are shuffled with ``seed``; the last ``num_test`` are the
    test set and the rest is dealt round-robin to ``num_clients`` clients
    (1200 training digits: 12 per client by default). size: side of the
    images (8 is native; larger sizes are bilinear upsamplings), one channel.
    The same seed gives the same split at every size. Taught in chapter 10.
    """
    from .data import load
    if not isinstance(num_clients, int) or num_clients < 1:
        raise ValueError(f"num_clients must be a positive int, got {num_clients!r}")
    x, y = load("digits", n=1797, seed=seed, size=None if size == 8 else size)
    if not 0 < num_test < len(x) - num_clients:
        raise ValueError(f"num_test must leave at least one digit per client, "
                         f"got {num_test}")
    n_train = len(x) - num_test
    clients = [torch.arange(k, n_train, num_clients) for k in range(num_clients)]
    return FederatedTask(x[:n_train], y[:n_train], x[n_train:], y[n_train:], clients)


#: split -> which training digit of each class ``target_digits`` takes
TARGET_SPLITS = {"dev": 0, "test": 1}


def target_digits(task: FederatedTask,
                  split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """The digits a leakage measurement attacks: one training digit of each class.

    The rule: in the order of ``task.x_train`` (already a seeded shuffle), the
    first digit of each class for "dev", the second for "test", so the two
    splits are disjoint and every attacked digit belongs to some client.
    Returns x (10, C, H, W) and y (10,) = 0..9. Taught in chapter 10.
    """
    if split not in TARGET_SPLITS:
        raise ValueError(f"unknown split {split!r}; "
                         f"choose one of {tuple(TARGET_SPLITS)}")
    k = TARGET_SPLITS[split]
    idx = [int((task.y_train == c).nonzero()[k]) for c in range(10)]
    return task.x_train[idx].clone(), task.y_train[idx].clone()


def sent_update(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                lr: float = 0.3, local_steps: int = 1) -> list[torch.Tensor]:
    """What a client sends before any defence: its mean gradient along its local path.

    x (B, C, H, W), y (B,). One step (FedSGD): the gradient of the mean
    cross-entropy at the model's weights. k > 1 local steps (FedAvg), each on
    the whole batch with step lr: u = (theta_0 - theta_k) / (lr k), so the
    server's step theta - lr k u is FedAvg's. The model is not changed.
    Taught in chapter 10.
    """
    from .fl import client_update, shared_gradients
    check_batch(x, y)
    if local_steps == 1:
        return shared_gradients(model, x, y)
    delta = client_update(model, x, y, lr=lr, local_steps=local_steps)
    return [-t / (lr * local_steps) for t in delta]


def _client_updates(model, params, x, y, lr, local_steps):
    """Every client's ``sent_update`` at once: x (K, B, ...), y (K, B) -> [(K, ...)]."""
    from torch.func import functional_call, grad, vmap
    names = [n for n, _ in model.named_parameters()]

    def loss(p, xb, yb):
        return F.cross_entropy(functional_call(model, dict(zip(names, p)), (xb,)), yb)

    if local_steps == 1:
        return list(vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y))
    local = [p.expand(len(x), *p.shape).clone() for p in params]
    step = vmap(grad(loss), in_dims=(0, 0, 0))
    for _ in range(local_steps):
        local = [p - lr * g for p, g in zip(local, step(local, x, y))]
    return [(p0 - p) / (lr * local_steps) for p0, p in zip(params, local)]


def federated_training(model: torch.nn.Module, task: FederatedTask, defend=None,
                       rounds: int = 600, clients_per_round: int = 10,
                       batch_size: int = 1, local_steps: int = 1, lr: float = 0.3,
                       seed: int = 0) -> torch.nn.Module:
    """Train ``model`` in place by federated rounds on defended client updates.

    Each round: ``clients_per_round`` clients drawn without replacement, each
    takes ``batch_size`` of its own digits and computes its ``sent_update``
    (``local_steps`` steps of step ``lr``); ``defend(update, seed)`` (e.g. from
    ``make_defence``; None: no defence) is applied to every client's update with
    its own seed; the server takes theta <- theta - lr * local_steps * mean.
    Every draw comes from ``seed``. Returns the model. Raises RuntimeError if a
    client's update stops being finite (the model keeps the last finite
    weights). Taught in chapter 10.
    """
    for name, v in (("rounds", rounds), ("clients_per_round", clients_per_round),
                    ("batch_size", batch_size), ("local_steps", local_steps)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if clients_per_round > len(task.clients):
        raise ValueError(f"clients_per_round {clients_per_round} exceeds the "
                         f"{len(task.clients)} clients")
    if batch_size > min(len(c) for c in task.clients):
        raise ValueError(f"batch_size {batch_size} exceeds a client's data")
    gen = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    for r in range(rounds):
        chosen = torch.randperm(len(task.clients), generator=gen)[:clients_per_round]
        idx = torch.stack([task.clients[c][torch.randperm(len(task.clients[c]),
                                                          generator=gen)[:batch_size]]
                           for c in chosen.tolist()])
        params = [p.detach() for p in model.parameters()]
        ups = _client_updates(model, params, task.x_train[idx].to(dtype),
                              task.y_train[idx], lr, local_steps)
        total = [torch.zeros_like(p) for p in params]
        for k in range(clients_per_round):
            u = [t[k] for t in ups]
            if defend is not None and all(torch.isfinite(t).all() for t in u):
                u = defend(u, seed=seed * 10**6 + r * clients_per_round + k)
            total = [a + b for a, b in zip(total, u)]
        if not all(torch.isfinite(t).all() for t in total):
            raise RuntimeError(f"training diverged at round {r}: a client's update "
                               f"is not finite (the weights are those of round {r})")
        with torch.no_grad():
            for p, t in zip(model.parameters(), total):
                p -= lr * local_steps * t / clients_per_round
    return model
