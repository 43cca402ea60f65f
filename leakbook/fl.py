"""One federated round: what a client computes and what the server receives.

Taught in chapter 01. In FedSGD a client shares the gradient of its loss on
one batch (``shared_gradients``); in FedAvg it takes several local SGD steps
and shares the change of its weights (``client_update``).
"""
from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F

from .checks import check_batch


def _soft_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return -(y * F.log_softmax(logits, dim=-1)).sum(-1).mean()


def _logistic(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Binary logistic loss log(1 + exp(-s f)) with s = +1 for label 1 and -1 for 0."""
    s = 2.0 * y.to(logits.dtype).reshape(-1) - 1.0
    return F.softplus(-s * logits.reshape(-1)).mean()


def _ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if y.is_floating_point():  # soft labels (B, C), as DLG optimises them
        return _soft_ce(logits, y)
    return F.cross_entropy(logits, y)


#: name -> loss(logits, y), each a mean over the batch
LOSSES: dict[str, Callable] = {
    "ce": _ce,
    "logistic": _logistic,
    "mse": lambda out, y: F.mse_loss(out, y.to(out.dtype)),
}


def loss_fn(loss) -> Callable:
    """A loss function from a name in ``LOSSES`` or a callable(logits, y)."""
    if callable(loss):
        return loss
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; choose one of {sorted(LOSSES)} or pass a callable")
    return LOSSES[loss]


def _check_labels(model_out: torch.Tensor, y: torch.Tensor, loss) -> None:
    if loss == "ce" and not y.is_floating_point():
        c = model_out.shape[-1]
        if y.dim() != 1:
            raise ValueError(f"integer labels must have shape (B,), got {tuple(y.shape)}")
        if ((y < 0) | (y >= c)).any():
            raise ValueError(f"labels must lie in 0..{c - 1} for a model with {c} outputs, "
                             f"got {y.tolist()}")


def shared_gradients(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                     loss="ce", create_graph: bool = False) -> list[torch.Tensor]:
    """The FedSGD update: gradient of the mean batch loss w.r.t. every parameter.

    x: (B, C, H, W) inputs; y: (B,) integer labels or (B, C) soft labels.
    loss: "ce" (cross-entropy), "logistic" (one logit, labels 0/1, R-GAP),
        "mse", or a callable(logits, y).
    create_graph: keep the graph so the result can be differentiated again
        (gradient-matching attacks need this for their dummy data).
    Returns a list of tensors aligned with ``model.parameters()``; detached
    unless ``create_graph``.
    """
    check_batch(x, y)
    params = [p for p in model.parameters()]
    out = model(x)
    _check_labels(out, y, loss)
    value = loss_fn(loss)(out, y)
    grads = torch.autograd.grad(value, params, create_graph=create_graph)
    return list(grads) if create_graph else [g.detach() for g in grads]


def client_update(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float = 0.1,
                  local_steps: int = 1, batch_size: int | None = None, loss="ce",
                  seed: int = 0) -> list[torch.Tensor]:
    """The FedAvg update: weights after ``local_steps`` of local SGD minus weights before.

    Each step takes the next mini-batch of ``batch_size`` samples from a fixed
    shuffle of (x, y) drawn from ``seed`` (the whole batch when None). The
    model passed in is not changed. With one step on the whole batch the
    update is ``-lr * shared_gradients(model, x, y)``.
    Returns a list of tensors aligned with ``model.parameters()``.
    """
    check_batch(x, y)
    if local_steps < 1:
        raise ValueError(f"local_steps must be at least 1, got {local_steps}")
    n = x.shape[0]
    batch_size = batch_size or n
    if not 1 <= batch_size <= n:
        raise ValueError(f"batch_size must lie in 1..{n}, got {batch_size}")
    local = copy.deepcopy(model)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    for step in range(local_steps):
        start = (step * batch_size) % n
        idx = order[start:start + batch_size]
        if len(idx) < batch_size:  # wrap around the epoch
            idx = torch.cat([idx, order[:batch_size - len(idx)]])
        grads = shared_gradients(local, x[idx], y[idx], loss=loss)
        with torch.no_grad():
            for p, g in zip(local.parameters(), grads):
                p -= lr * g
    return [(new - old).detach() for new, old in zip(local.parameters(), model.parameters())]


def fedavg(updates: list[list[torch.Tensor]], weights=None) -> list[torch.Tensor]:
    """The server's aggregate: the (weighted) mean of the clients' updates."""
    if not updates:
        raise ValueError("no client updates to average")
    w = torch.ones(len(updates)) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    if len(w) != len(updates):
        raise ValueError(f"{len(updates)} updates but {len(w)} weights")
    w = w / w.sum()
    return [sum(float(wi) * u[j] for wi, u in zip(w, updates)) for j in range(len(updates[0]))]
