"""How good is a reconstruction? Metrics that compare it with the truth.

Taught in chapter 01 and used everywhere. These functions read the true data:
they score an attack, they are never part of one.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from . import checks
from .threads import one_thread


def _images(t, name: str, dims=(2, 4)) -> torch.Tensor:
    """A finite float batch (B, C, H, W) (or (B, D) where allowed), as float64."""
    if isinstance(t, np.ndarray) and t.dtype.kind == "f":
        t = torch.from_numpy(t)
    if isinstance(t, torch.Tensor) and t.dim() in (1, 3):
        fail = "a batch (B, C, H, W)" + (" or (B, D)" if 2 in dims else "")
        checks.fail(name, f"{fail}; add the batch dimension with {name}[None]", t)
    checks.batch(t, name, dims=dims)
    return t.detach().double().cpu()


def _pair(x_hat, x, dims=(2, 4)) -> tuple[torch.Tensor, torch.Tensor]:
    """The reconstruction and the truth, checked and of one shape, as float64."""
    x_hat = _images(x_hat, "x_hat", dims)
    x = _images(x, "x", dims)
    if x_hat.shape != x.shape:
        raise ValueError(f"x_hat must have the shape of the truth x, {tuple(x.shape)}, "
                         f"got shape {tuple(x_hat.shape)}")
    return x_hat, x


def mse(x_hat, x) -> torch.Tensor:
    """Per-image mean squared error, (B,) for (B, C, H, W) (or (B, D)) inputs.

    x_hat, x: finite float tensors (or float NumPy arrays) of one shape.
    """
    with one_thread():
        x_hat, x = _pair(x_hat, x)
        return ((x_hat - x) ** 2).flatten(1).mean(1)


def _psnr_values(m: torch.Tensor, peak: float) -> list[float]:
    return [math.inf if v == 0 else 10 * math.log10(peak ** 2 / v)
            for v in m.tolist()]


def psnr(x_hat, x, peak: float = 1.0) -> float:
    """Mean over the batch of per-image PSNR in dB, 10 log10(peak^2 / MSE).

    A per-image PSNR is inf where the images are equal.
    x_hat, x: (B, C, H, W) (or (B, D)); peak: the largest pixel value (> 0).
    Images are compared as given; clamp to [0, 1] first if the attack does not.
    """
    with one_thread():
        peak = checks.number(peak, "peak", above=0)
        return float(np.mean(_psnr_values(mse(x_hat, x), peak)))


#: SSIM's largest window side (scikit-image's default); images need 3 x 3 at least
SSIM_WINDOW, SSIM_MIN_SIDE = 7, 3


def ssim(x_hat, x) -> float:
    """Mean SSIM over the batch (scikit-image, data range 1, uniform window).

    x_hat, x: (B, C, H, W) with H, W >= 3; the window is 7 x 7, or the largest
    odd side that fits smaller images. A single image needs its batch
    dimension (x[None]): (C, H, W) is refused, never read as C grey images.
    """
    with one_thread():
        from skimage.metrics import structural_similarity
        x_hat, x = _pair(x_hat, x, dims=(4,))
        side = min(x.shape[-2:])
        if side < SSIM_MIN_SIDE:
            checks.fail("x", f"images of at least {SSIM_MIN_SIDE} x {SSIM_MIN_SIDE} "
                             f"pixels for SSIM, of shape (B, C, H, W)", tuple(x.shape))
        win = min(SSIM_WINDOW, side if side % 2 else side - 1)
        scores = [structural_similarity(a, b, data_range=1.0, channel_axis=0,
                                        win_size=win)
                  for a, b in zip(x_hat.numpy(), x.numpy())]
        return float(np.mean(scores))


def label_accuracy(labels_hat, labels) -> float:
    """Multiset accuracy: the share of labels recovered, counted with multiplicity.

    1 - |bincount(hat) - bincount(true)|_1 / (2B); order does not matter.
    labels_hat, labels: (B,) non-negative integer labels (tensors, arrays or
    lists of ints; floats are refused, never truncated).
    """
    a = checks.labels(labels_hat, "labels_hat")
    b = checks.labels(labels, "labels")
    if len(b) == 0:
        checks.fail("labels", "a non-empty list of labels", labels)
    if len(a) != len(b):
        checks.fail("labels_hat", f"{len(b)} labels, one per label of the batch of "
                                  f"{len(b)}", labels_hat)
    n = int(max(a.max(), b.max())) + 1
    diff = (torch.bincount(a, minlength=n) - torch.bincount(b, minlength=n)).abs().sum()
    return 1.0 - diff.item() / (2 * len(b))


def match(x_hat, x) -> torch.Tensor:
    """Order of the reconstructions that best matches the truth (Hungarian on MSE).

    x_hat, x: (B, C, H, W) (or (B, D)).
    Returns perm (B,) such that x_hat[perm][i] is compared with x[i].
    """
    with one_thread():
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
    if isinstance(x, np.ndarray) and x.dtype.kind == "f":
        x = torch.from_numpy(x)
    checks.batch(x, "x", dims=4)
    x = x.detach()
    return x.mean(dim=(-2, -1), keepdim=True).expand_as(x).clone()


def summarize(values) -> dict:
    """Median and range of a list of numbers: dict(median, low, high, n).

    values: real numbers (infinities allowed, e.g. the PSNR of an exact
    reconstruction; NaN refused).
    """
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        checks.fail("values", "a list of numbers", values, TypeError)
    items = values.flatten().tolist() if isinstance(values, torch.Tensor) else values
    v = np.asarray([checks.number(a, f"values[{i}]", finite=False)
                    for i, a in enumerate(items)], dtype=float)
    if v.size == 0:
        checks.fail("values", "at least one number", values)
    return {"median": float(np.median(v)), "low": float(v.min()),
            "high": float(v.max()), "n": int(v.size)}


def report(x_hat, x, labels_hat=None, labels=None, reorder: bool = True) -> dict:
    """MSE, PSNR, SSIM (and label accuracy) after matching the batch to the truth.

    x_hat, x: (B, C, H, W) finite float tensors (H, W >= 3 for SSIM).
    Reconstructions are clamped to [0, 1] before scoring. labels_hat, labels:
    both or neither, (B,) integer labels.
    Returns a dict with keys mse, psnr, ssim, label_acc (None without labels),
    order (the matching permutation), and the flat baseline beside them:
    psnr_baseline and ssim_baseline (the scores of ``flat_baseline(x)``, each
    image's own mean colour) and gain_db = psnr - psnr_baseline (0 when both
    are infinite: flat true images that the reconstruction matches exactly).
    """
    with one_thread():
        x_hat, x = _pair(x_hat, x, dims=(4,))
        if min(x.shape[-2:]) < SSIM_MIN_SIDE:
            checks.fail("x", f"images of at least {SSIM_MIN_SIDE} x {SSIM_MIN_SIDE} "
                             f"pixels for SSIM, of shape (B, C, H, W)", tuple(x.shape))
        reorder = checks.flag(reorder, "reorder")
        if (labels_hat is None) != (labels is None):
            given, missing = (("labels_hat", "labels") if labels is None
                              else ("labels", "labels_hat"))
            raise ValueError(f"{missing} must be given with {given} (label accuracy "
                             f"compares the two), got None")
        if labels_hat is not None:
            checks.labels(labels_hat, "labels_hat")
            checks.labels(labels, "labels", batch_size=len(x))
        x_hat = x_hat.clamp(0, 1)
        perm = match(x_hat, x) if reorder else torch.arange(len(x))
        x_hat = x_hat[perm]
        flat = flat_baseline(x)
        value, base = psnr(x_hat, x), psnr(flat, x)
        out = {"mse": float(mse(x_hat, x).mean()), "psnr": value,
               "ssim": ssim(x_hat, x), "label_acc": None, "order": perm,
               "psnr_baseline": base, "ssim_baseline": ssim(flat, x),
               "gain_db": 0.0 if value == base else value - base}
        if labels_hat is not None and labels is not None:
            out["label_acc"] = label_accuracy(labels_hat, labels)
        return out
