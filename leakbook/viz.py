"""Figures the chapters share: image grids, truth-vs-reconstruction, curves.

``book_style()`` (called in every chapter's setup cell) sets one style for all
figures: font sizes that stay legible when a figure is shrunk to a phone's
column, and vector output that can be zoomed.
"""
from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import torch

#: Width (inches) that a full-column figure should not exceed, and the smallest
#: font size (points) any text of a figure may use.
MAX_WIDTH, MIN_FONT = 7.0, 10.0
STYLE = {"font.size": 11, "axes.titlesize": 11, "axes.labelsize": 11,
         "xtick.labelsize": 10, "ytick.labelsize": 10, "legend.fontsize": 10,
         "figure.titlesize": 12, "figure.dpi": 100, "savefig.dpi": 200,
         "svg.fonttype": "none", "axes.grid": False}


def book_style(vector: bool = True) -> None:
    """Set the book's figure style; in a notebook also draw figures as SVG.

    SVG figures keep their text as text, so readers can zoom into them and the
    browser tests can measure every label's rendered size.
    """
    mpl.rcParams.update(STYLE)
    try:
        from IPython import get_ipython
        from matplotlib_inline.backend_inline import set_matplotlib_formats
    except ImportError:  # pragma: no cover - IPython is a dependency of the book
        return
    if get_ipython() is not None:
        set_matplotlib_formats("svg" if vector else "retina")


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
                ax.set_title(str(titles[i]), fontsize=MIN_FONT)
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
                             fontsize=MIN_FONT)
        axes[r, 0].set_ylabel(name, fontsize=MIN_FONT)
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
        ax.legend()
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
