"""Train a small classifier in seconds, so chapters can attack trained models.

Taught in chapter 03 (labels leak differently from trained networks).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import checks
from .checks import check_batch
from .fl import forward
from .threads import one_thread


def train_classifier(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                     epochs: int = 10, lr: float = 1e-2, seed: int = 0,
                     batch_size: int = 64) -> list[float]:
    """Train ``model`` in place with Adam on cross-entropy; returns the loss per epoch.

    x: (N, C, H, W) inputs; y: (N,) int64 labels. Mini-batches come from a
    shuffle drawn from ``seed`` each epoch, so the result is reproducible.
    The model is left in train mode. Adam is written out (betas 0.9, 0.999)
    because building a ``torch.optim`` optimiser costs seconds on first use.
    Taught in chapter 03.
    """
    checks.module(model)
    check_batch(x, y)
    epochs = checks.integer(epochs, "epochs", minimum=1)
    batch_size = checks.integer(batch_size, "batch_size", minimum=1)
    lr = checks.number(lr, "lr", above=0)
    seed = checks.seed(seed)
    with one_thread():
        return _train(model, x, y, epochs, lr, seed, batch_size)


def _train(model, x, y, epochs, lr, seed, batch_size) -> list[float]:
    """The Adam loop of train_classifier, arguments already checked."""
    gen = torch.Generator().manual_seed(seed)
    params = list(model.parameters())
    m1 = [torch.zeros_like(p) for p in params]
    m2 = [torch.zeros_like(p) for p in params]
    step = 0
    dtype = next(model.parameters()).dtype
    x = x.to(dtype)
    history = []
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        total = 0.0
        for start in range(0, len(x), batch_size):
            idx = order[start:start + batch_size]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            grads = torch.autograd.grad(loss, params)
            step += 1
            with torch.no_grad():
                for p, g, a, b in zip(params, grads, m1, m2):
                    a.mul_(0.9).add_(g, alpha=0.1)
                    b.mul_(0.999).addcmul_(g, g, value=0.001)
                    a_hat, b_hat = a / (1 - 0.9 ** step), b / (1 - 0.999 ** step)
                    p -= lr * a_hat / (b_hat.sqrt() + 1e-8)
            total += float(loss.detach()) * len(idx)
        history.append(total / len(x))
    return history


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Share of x (N, ...) the model classifies as y (N,).

    The model runs in its own mode through ``fl.forward``, so its mode and
    BatchNorm buffers are left as they were.
    """
    checks.module(model)
    check_batch(x, y)
    with torch.no_grad():
        pred = forward(model, x.to(next(model.parameters()).dtype)).argmax(-1)
    return float((pred == y).double().mean())
