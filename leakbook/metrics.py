"""How good is a reconstruction? Metrics that compare it with the truth.

Taught in chapter 01 and used everywhere. These functions read the true data:
they score an attack, they are never part of one.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


def _pair(x_hat: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x_hat = torch.as_tensor(x_hat).detach().double().cpu()
    x = torch.as_tensor(x).detach().double().cpu()
    if x_hat.shape != x.shape:
        raise ValueError(f"reconstruction has shape {tuple(x_hat.shape)} but the truth "
                         f"has shape {tuple(x.shape)}")
    if not torch.isfinite(x_hat).all():
        raise ValueError("reconstruction contains NaN or infinite values")
    return x_hat, x


def mse(x_hat, x) -> torch.Tensor:
    """Per-image mean squared error, (B,) for (B, C, H, W) inputs."""
    x_hat, x = _pair(x_hat, x)
    return ((x_hat - x) ** 2).flatten(1).mean(1)


def psnr(x_hat, x, peak: float = 1.0) -> float:
    """Mean over the batch of per-image PSNR in dB, 10 log10(peak^2 / MSE); inf if exact.

    Images are compared as given; clamp to [0, 1] first if the attack does not.
    """
    values = [math.inf if m == 0 else 10 * math.log10(peak ** 2 / m) for m in mse(x_hat, x).tolist()]
    return float(np.mean(values))


def ssim(x_hat, x) -> float:
    """Mean SSIM over the batch (scikit-image, data range 1, Gaussian window)."""
    from skimage.metrics import structural_similarity
    x_hat, x = _pair(x_hat, x)
    scores = []
    for a, b in zip(x_hat.numpy(), x.numpy()):
        side = min(a.shape[-2:])
        win = min(7, side if side % 2 else side - 1)
        scores.append(structural_similarity(a, b, data_range=1.0, channel_axis=0,
                                            win_size=win))
    return float(np.mean(scores))


def label_accuracy(labels_hat, labels) -> float:
    """Multiset accuracy: the share of labels recovered, counted with multiplicity.

    1 - |bincount(hat) - bincount(true)|_1 / (2B); order does not matter.
    """
    a = torch.as_tensor(labels_hat).long().flatten()
    b = torch.as_tensor(labels).long().flatten()
    if len(a) != len(b):
        raise ValueError(f"{len(a)} recovered labels for a batch of {len(b)}")
    if len(b) == 0:
        raise ValueError("empty label lists")
    n = int(max(a.max(), b.max())) + 1
    diff = (torch.bincount(a, minlength=n) - torch.bincount(b, minlength=n)).abs().sum()
    return 1.0 - diff.item() / (2 * len(b))


def match(x_hat, x) -> torch.Tensor:
    """Order of the reconstructions that best matches the truth (Hungarian on MSE).

    Returns perm (B,) such that x_hat[perm][i] is compared with x[i].
    """
    x_hat, x = _pair(x_hat, x)
    cost = torch.cdist(x.flatten(1), x_hat.flatten(1)) ** 2
    _, cols = linear_sum_assignment(cost.numpy())
    return torch.as_tensor(cols, dtype=torch.long)


def flat_baseline(x) -> torch.Tensor:
    """The trivial reconstruction: each image replaced by its own mean colour.

    x: (B, C, H, W) -> (B, C, H, W), every pixel of image b and channel c equal
    to the mean of x[b, c]. It reads the truth: it is the yardstick an attack
    must beat, not something an attacker could compute.
    """
    x = torch.as_tensor(x).detach()
    return x.mean(dim=(-2, -1), keepdim=True).expand_as(x).clone()


def summarize(values) -> dict:
    """Median and range of a list of numbers: dict(median, low, high, n)."""
    v = np.asarray([float(a) for a in values], dtype=float)
    if v.size == 0:
        raise ValueError("summarize needs at least one value")
    return {"median": float(np.median(v)), "low": float(v.min()),
            "high": float(v.max()), "n": int(v.size)}


def report(x_hat, x, labels_hat=None, labels=None, reorder: bool = True) -> dict:
    """MSE, PSNR, SSIM (and label accuracy) after matching the batch to the truth.

    x_hat, x: (B, C, H, W). Reconstructions are clamped to [0, 1] before scoring.
    Returns a dict with keys mse, psnr, ssim, label_acc (None without labels),
    order (the matching permutation), and the flat baseline beside them:
    psnr_baseline and ssim_baseline (the scores of ``flat_baseline(x)``, each
    image's own mean colour) and gain_db = psnr - psnr_baseline.
    """
    x_hat, x = _pair(x_hat, x)
    x_hat = x_hat.clamp(0, 1)
    perm = match(x_hat, x) if reorder else torch.arange(len(x))
    x_hat = x_hat[perm]
    flat = flat_baseline(x)
    value, base = psnr(x_hat, x), psnr(flat, x)
    out = {"mse": float(mse(x_hat, x).mean()), "psnr": value,
           "ssim": ssim(x_hat, x), "label_acc": None, "order": perm,
           "psnr_baseline": base, "ssim_baseline": ssim(flat, x),
           "gain_db": value - base}
    if labels_hat is not None and labels is not None:
        out["label_acc"] = label_accuracy(labels_hat, labels)
    return out
