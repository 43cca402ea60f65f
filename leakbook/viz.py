"""Figures the chapters share: image grids, truth-vs-reconstruction, curves."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch


def to_numpy_image(img: torch.Tensor) -> np.ndarray:
    """(C, H, W) tensor -> (H, W) or (H, W, 3) array clamped to [0, 1]."""
    img = torch.as_tensor(img).detach().float().cpu().clamp(0, 1)
    if img.dim() != 3:
        raise ValueError(f"expected an image (C, H, W), got shape {tuple(img.shape)}")
    return img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()


def show_images(x: torch.Tensor, titles=None, ncols: int | None = None, scale: float = 1.4,
                suptitle: str | None = None):
    """A grid of images x (B, C, H, W); returns the figure."""
    b = len(x)
    ncols = ncols or min(b, 8)
    nrows = -(-b // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(scale * ncols, scale * nrows + 0.3),
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < b:
            ax.imshow(to_numpy_image(x[i]), cmap="gray", vmin=0, vmax=1)
            if titles is not None:
                ax.set_title(str(titles[i]), fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def compare(x_true: torch.Tensor, *recons: torch.Tensor, names=None, scale: float = 1.4):
    """Rows: the truth, then each reconstruction (B, C, H, W); PSNR in the titles."""
    from .metrics import psnr
    rows = [x_true, *recons]
    names = names or ["truth"] + [f"attack {i + 1}" for i in range(len(recons))]
    b = len(x_true)
    fig, axes = plt.subplots(len(rows), b, figsize=(scale * b + 1, scale * len(rows)),
                             squeeze=False)
    for r, (batch, name) in enumerate(zip(rows, names)):
        for i in range(b):
            ax = axes[r, i]
            ax.imshow(to_numpy_image(batch[i]), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if r > 0:
                ax.set_title(f"{psnr(batch[i:i + 1].clamp(0, 1), x_true[i:i + 1]):.1f} dB",
                             fontsize=8)
        axes[r, 0].set_ylabel(name, fontsize=9)
    fig.tight_layout()
    return fig


def plot_curves(curves: dict, xlabel: str, ylabel: str, logy: bool = False, ax=None,
                title: str | None = None):
    """Line plot of {label: (xs, ys)}; returns the axes."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5.5, 3.5))
    for label, (xs, ys) in curves.items():
        ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend(fontsize=8)
    return ax


def animation_html(anim, fps: int = 2) -> str:
    """An animation as self-contained HTML with a frame slider (works with no kernel).

    matplotlib's ``to_jshtml`` links a Font Awesome stylesheet from a CDN; the
    link is dropped so the page loads nothing from other hosts (the book's
    theme ships its own icons).
    """
    import re
    html = anim.to_jshtml(fps=fps, default_mode="once")
    return re.sub(r"<link[^>]*font-awesome[^>]*>", "", html)
