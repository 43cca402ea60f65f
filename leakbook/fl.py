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

from . import checks
from .threads import one_thread

__all__ = ["LOSSES", "loss_fn", "forward", "shared_gradients", "client_update",
           "fedavg"]


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
    if not isinstance(loss, str):
        checks.fail("loss", f"one of {sorted(LOSSES)} or a callable(logits, y)", loss,
                    TypeError)
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}: loss must be one of {sorted(LOSSES)} "
                         f"or a callable(logits, y)")
    return LOSSES[loss]


def _check_input(model: torch.nn.Module, x) -> None:
    """x is a finite float batch of the model's dtype."""
    checks.batch(x, "x")
    dtype = checks.model_dtype(model)
    if x.dtype != dtype:
        raise TypeError(f"x must have the model's dtype {dtype}, got {x.dtype} "
                        f"(convert with x.to({dtype}))")


def forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's output on x as a client computes it; the model is left as it was.

    The model runs in its own mode; ``model.training`` is never changed. A
    model in train mode (as ``models.build`` returns it) normalises its
    BatchNorm layers with the batch's own statistics, as a client does in
    local training; in eval mode it uses the running statistics. Every buffer
    (BatchNorm's running mean and variance, its batch counter) is read from a
    copy, so the model's buffers keep their values bit for bit: simulating a
    client never writes the victim batch's statistics into the server's model.
    Raises ValueError naming x if the model cannot run on x's shape.
    Taught in chapter 01.
    """
    checks.module(model, parameters=False)
    _check_input(model, x)
    with one_thread():
        buffers = dict(model.named_buffers())
        try:
            if not buffers:
                return model(x)
            copies = {name: b.clone() for name, b in buffers.items()}
            return torch.func.functional_call(model, copies, (x,), strict=False)
        except RuntimeError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else repr(err)
            raise ValueError(f"x must fit the model's input, got {checks.describe(x)}: "
                             f"the forward pass failed with: {first}") from err


def _label_tensor(y, loss, x: torch.Tensor):
    """y as a tensor, its type checked for the loss (ranges need the output)."""
    if not isinstance(loss, str):  # a callable: y as given, one entry per sample
        checks.tensor(y, "y", "any", min_dims=1)
    elif loss == "mse":
        checks.tensor(y, "y", "real", min_dims=1)
    elif isinstance(y, torch.Tensor) and y.is_floating_point():
        checks.tensor(y, "y", "float", dims=2 if loss == "ce" else (1, 2))
    else:
        if loss == "logistic" and isinstance(y, torch.Tensor) and y.dim() == 2 \
                and y.shape[1] == 1:
            y = y.reshape(-1)
        y = checks.labels(y, "y")
    checks.check_batch(x, y)
    return y


def _prepare(model, x, y, loss) -> tuple[torch.Tensor, torch.Tensor, Callable]:
    """The checks that need no forward pass: model, x, the loss and y's type."""
    checks.module(model)
    _check_input(model, x)
    fn = loss_fn(loss)
    y = _label_tensor(y, loss, x)
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    if frozen:
        raise ValueError(f"model must have every parameter trainable (the shared "
                         f"gradient covers all of them), got requires_grad=False "
                         f"for {frozen[:5]}")
    return x, y, fn


def _targets(out: torch.Tensor, y: torch.Tensor, loss) -> torch.Tensor:
    """Check y against the model's output for the named losses; return y to use."""
    b = out.shape[0]
    if loss == "ce":
        if out.dim() != 2 or out.shape[1] < 2:
            raise ValueError(f"loss='ce' needs a model with 2 or more outputs (B, C), "
                             f"got output of shape {tuple(out.shape)} (one logit: use "
                             f"loss='logistic')")
        c = out.shape[1]
        if y.is_floating_point():
            return checks.soft_labels(y, "y", b, c)
        return checks.labels(y, "y", b, c, context=f" (the model has {c} outputs)")
    if loss == "logistic":
        if out.numel() != b:
            raise ValueError(f"loss='logistic' needs a model with one output (a logit) "
                             f"per sample, got output of shape {tuple(out.shape)} "
                             f"(use loss='ce' for {out.numel() // b} outputs)")
        if y.is_floating_point():
            checks.tensor(y, "y", "float")
            y = y.reshape(-1)
            if len(y) != b or ((y != 0) & (y != 1)).any():
                checks.fail("y", f"{b} labels 0 or 1 for loss='logistic'", y)
            return y
        return checks.labels(y, "y", b, 2, context=" (loss='logistic' takes 0 or 1)")
    if loss == "mse":
        checks.tensor(y, "y", "real")
        if y.shape != out.shape:
            raise ValueError(f"y must have the model output's shape {tuple(out.shape)} "
                             f"for loss='mse', got shape {tuple(y.shape)}")
        return y
    return y


def shared_gradients(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                     loss="ce", create_graph: bool = False) -> list[torch.Tensor]:
    """The FedSGD update: gradient of the mean batch loss w.r.t. every parameter.

    x: (B, C, H, W) inputs (or (B, D)) of the model's dtype; y: (B,) integer
        labels (any integer dtype, bool, or a list of ints) or (B, C) soft
        labels, rows summing to 1.
    loss: "ce" (cross-entropy, 2 or more outputs), "logistic" (one logit,
        labels 0/1, R-GAP), "mse" (y of the output's shape), or a
        callable(logits, y) returning a scalar.
    create_graph: keep the graph so the result can be differentiated again
        (gradient-matching attacks need this for their dummy data).
    The model runs as a client runs it (see :func:`forward`): in its own
    train/eval mode, its buffers untouched; nothing of the model changes.
    Returns a list of tensors aligned with ``model.parameters()`` (zeros for
    a parameter the loss does not reach); detached unless ``create_graph``.
    Taught in chapter 01.
    """
    with one_thread():
        x, y, fn = _prepare(model, x, y, loss)
        create_graph = checks.flag(create_graph, "create_graph")
        params = list(model.parameters())
        out = forward(model, x)
        y = _targets(out, y, loss)
        value = fn(out, y)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            checks.fail("loss", "a function returning a scalar tensor", value,
                        TypeError)
        if not torch.isfinite(value.detach()).all():
            raise ValueError(f"x must give a finite loss with y, got loss "
                             f"{float(value.detach())}: values too large for the "
                             f"model?")
        grads = torch.autograd.grad(value.reshape(()), params,
                                    create_graph=create_graph,
                                    allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]
        return grads if create_graph else [g.detach() for g in grads]


def client_update(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                  lr: float = 0.1, local_steps: int = 1, batch_size: int | None = None,
                  loss="ce", seed: int = 0) -> list[torch.Tensor]:
    """The FedAvg update: weights after ``local_steps`` local SGD steps minus before.

    Each step takes the next mini-batch of ``batch_size`` samples (1..B; the
    whole batch when None) from a fixed shuffle of (x, y) drawn from
    ``seed``. lr: a finite step size > 0. The model passed in is not changed
    (the steps run on a copy; its buffers, BatchNorm's running statistics
    included, are not updated either, see :func:`forward`). With one step on
    the whole batch the update is ``-lr * shared_gradients(model, x, y)``.
    Returns a list of tensors aligned with ``model.parameters()``.
    Taught in chapter 01.
    """
    with one_thread():
        x, y, _ = _prepare(model, x, y, loss)
        lr = checks.number(lr, "lr", above=0)
        local_steps = checks.integer(local_steps, "local_steps", minimum=1)
        n = x.shape[0]
        if batch_size is not None:
            batch_size = checks.integer(batch_size, "batch_size", 1, n,
                                        what=f"None or in 1..{n} (x has {n} samples)")
        batch_size = batch_size or n
        seed = checks.seed(seed)
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
        return [(new - old).detach()
                for new, old in zip(local.parameters(), model.parameters())]


def fedavg(updates: list[list[torch.Tensor]], weights=None) -> list[torch.Tensor]:
    """The server's aggregate: the (weighted) mean of the clients' updates.

    updates: a non-empty list of updates, each a list of tensors (one per
        parameter, as ``shared_gradients`` or ``client_update`` return), all
        of the same length, shapes and dtype; a flat list of tensors is
        refused (wrap one update as ``[update]``).
    weights: one finite non-negative number per update with a positive sum
        (e.g. the clients' sample counts); equal weights when None.
    Returns the list of weighted means, computed as u_0 + sum_i w_i (u_i - u_0)
    with normalised weights, so the mean of identical updates is that update
    exactly. Taught in chapter 01.
    """
    lists = checks.tensor_lists(updates, "updates")
    w = (torch.ones(len(lists), dtype=torch.float64) if weights is None
         else checks.weights(weights, "weights", len(lists)))
    w = (w / w.sum()).tolist()
    ref = lists[0]
    out = []
    for j, base in enumerate(ref):
        total = base.clone()
        for wi, u in zip(w[1:], lists[1:]):
            total = total + wi * (u[j] - base)
        out.append(total)
    return out
