"""Figures the chapters share: image grids, truth-vs-reconstruction, curves.

``book_style()`` (called in every chapter's setup cell) sets one style for all
figures: font sizes that stay legible when a figure is shrunk to a phone's
column, and vector output that can be zoomed. The rule (``check_figure``): at
most ``MAX_WIDTH`` inches wide, no text below ``MIN_FONT`` points, at most
``MAX_PANELS_PER_ROW`` plot panels a row (``panel_grid``; image strips may hold
more small thumbnails). Taught in chapter 01 and used everywhere.
"""
from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import torch

from . import checks

#: Width (inches) that no figure may exceed, the smallest font size (points) any
#: text of a figure may use, and the most panels a row of a multi-panel figure
#: may hold. A 5-inch SVG is 480 CSS pixels wide; a phone's column is about 350,
#: so 10 pt text (13.3 px) still renders above 9 px there.
MAX_WIDTH, MIN_FONT, MAX_PANELS_PER_ROW = 5.0, 10.0, 3
STYLE = {"font.size": 11, "axes.titlesize": 11, "axes.labelsize": 11,
         "xtick.labelsize": 10, "ytick.labelsize": 10, "legend.fontsize": 10,
         "figure.titlesize": 12, "figure.figsize": (5.0, 3.2),
         "figure.dpi": 100, "savefig.dpi": 200,
         # text stays text (zoomable, searchable, measurable); stable ids
         "svg.fonttype": "none", "svg.hashsalt": "leakbook",
         # animations (``animation_html``) embed SVG frames too
         "animation.frame_format": "svg",
         "axes.grid": False, "legend.frameon": False}


def book_style(vector: bool = True) -> None:
    """Set the book's figure style; in a notebook also draw figures as SVG.

    SVG figures keep their text as text, so readers can zoom into them and the
    browser tests can measure every label's rendered size. The rule every
    figure follows: at most ``MAX_WIDTH`` inches wide, no text below
    ``MIN_FONT`` points (``check_figure`` tests both).
    """
    vector = checks.flag(vector, "vector")
    mpl.rcParams.update(STYLE)
    try:
        from IPython import get_ipython
        from matplotlib_inline.backend_inline import set_matplotlib_formats
    except ImportError:  # pragma: no cover - IPython is a dependency of the book
        return
    if get_ipython() is not None:
        set_matplotlib_formats("svg" if vector else "retina")


def check_figure(fig) -> None:
    """Raise ValueError if fig is wider than MAX_WIDTH or has text below MIN_FONT.

    Invisible and empty texts are ignored. Used by the tests and handy in a
    chapter: ``lb.viz.check_figure(fig)`` before ``plt.show()``.
    """
    if not isinstance(fig, mpl.figure.Figure):
        checks.fail("fig", "a matplotlib Figure", fig, TypeError)
    width = fig.get_figwidth()
    problems = []
    if width > MAX_WIDTH + 1e-9:
        problems.append(f"width {width:.2f} in > {MAX_WIDTH} in")
    small = sorted({f"{t.get_text()[:20]!r} at {t.get_fontsize():.1f} pt"
                    for t in fig.findobj(mpl.text.Text)
                    if t.get_visible() and t.get_text().strip()
                    and t.get_fontsize() < MIN_FONT - 1e-9})
    if small:
        problems.append(f"text below {MIN_FONT} pt: {', '.join(small[:5])}")
    if problems:
        raise ValueError("figure breaks the book's style: " + "; ".join(problems))


def panel_grid(n: int, ncols: int | None = None, panel: float = 1.6,
               height: float | None = None, **kwargs):
    """A figure with n panels, at most MAX_PANELS_PER_ROW a row, MAX_WIDTH wide.

    panel: width (inches) of one panel before the width cap; height: of one
    panel (default: panel, after the cap). Returns (fig, axes) with axes a
    flat array of n axes; unused cells of the last row are removed.
    """
    n = checks.integer(n, "n", minimum=1)
    if ncols is not None:
        ncols = checks.integer(ncols, "ncols", minimum=1)
    panel = checks.number(panel, "panel", above=0)
    if height is not None:
        height = checks.number(height, "height", above=0)
    ncols = min(n, ncols or MAX_PANELS_PER_ROW)
    nrows = -(-n // ncols)
    width = min(MAX_WIDTH, panel * ncols)
    side = width / ncols
    fig, axes = plt.subplots(nrows, ncols, squeeze=False,
                             figsize=(width, (height or side) * nrows), **kwargs)
    flat = axes.ravel()
    for ax in flat[n:]:
        ax.remove()
    return fig, flat[:n]


def mark_baseline(ax, value: float, label: str = "flat baseline",
                  color: str = "0.45") -> None:
    """A dashed horizontal line at value (the flat mean-colour PSNR, say)."""
    value = checks.number(value, "value")
    ax.axhline(value, color=color, ls="--", lw=1, label=label)


def _image_batch(x, name: str) -> None:
    """A batch of images (B, C, H, W) with 1 or 3 channels, finite."""
    checks.batch(x, name, dims=4)
    if x.shape[1] not in (1, 3):
        checks.fail(name, "images (B, C, H, W) with 1 or 3 channels", x)


def to_numpy_image(img: torch.Tensor) -> np.ndarray:
    """(C, H, W) tensor -> (H, W) or (H, W, 3) array clamped to [0, 1]."""
    if isinstance(img, np.ndarray) and img.dtype.kind == "f":
        img = torch.from_numpy(img)
    if isinstance(img, torch.Tensor) and img.dim() != 3:
        checks.fail("img", "an image (C, H, W) (expected an image, one of a batch: "
                           "x[i])", img)
    checks.tensor(img, "img", "float", dims=3, nonempty=True)
    if img.shape[0] not in (1, 3):
        checks.fail("img", "an image (C, H, W) with 1 or 3 channels", img)
    img = img.detach().float().cpu().clamp(0, 1)
    return img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()


def show_images(x: torch.Tensor, titles=None, ncols: int | None = None,
                scale: float = 1.4, suptitle: str | None = None):
    """A grid of images x (B, C, H, W), at most MAX_WIDTH wide; returns the figure.

    ncols defaults to min(B, 6); titles (one per image) are drawn at MIN_FONT,
    so keep them short (about 10 characters at 6 columns).
    """
    _image_batch(x, "x")
    b = len(x)
    if titles is not None and (isinstance(titles, str) or len(titles) != b):
        checks.fail("titles", f"{b} titles, one per image", titles)
    ncols = min(b, 6) if ncols is None else checks.integer(ncols, "ncols", minimum=1)
    scale = checks.number(scale, "scale", above=0)
    nrows = -(-b // ncols)
    side = min(scale, MAX_WIDTH / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(side * ncols, side * nrows + 0.3),
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


def compare(x_true: torch.Tensor, *recons: torch.Tensor, names=None, scale: float = 1.4,
            ncols: int | None = None):
    """The truth, then each reconstruction (B, C, H, W), column by column.

    Each reconstruction's title is its PSNR; the truth's title is the PSNR of
    the flat baseline (the image's own mean colour), so every number stands
    beside its yardstick. At most ncols (default min(B, 5)) images a row;
    larger batches continue in further blocks of rows. Returns the figure.
    """
    from .metrics import flat_baseline, psnr
    _image_batch(x_true, "x_true")
    for i, r in enumerate(recons):
        _image_batch(r, f"recons[{i}]")
        if r.shape != x_true.shape:
            checks.fail(f"recons[{i}]", f"a batch of x_true's shape "
                                        f"{tuple(x_true.shape)}", r)
    rows = [x_true, *recons]
    if names is not None and (isinstance(names, str) or len(names) != len(rows)):
        checks.fail("names", f"{len(rows)} names (the truth, then one per "
                             f"reconstruction)", names)
    names = names or ["truth"] + [f"attack {i + 1}" for i in range(len(recons))]
    scale = checks.number(scale, "scale", above=0)
    b = len(x_true)
    ncols = min(b, 5) if ncols is None else checks.integer(ncols, "ncols", minimum=1)
    blocks = -(-b // ncols)
    label_w = 0.6
    side = min(scale, (MAX_WIDTH - label_w) / ncols)
    nrows = blocks * len(rows)
    fig, axes = plt.subplots(nrows, ncols, squeeze=False,
                             figsize=(side * ncols + label_w, (side + 0.3) * nrows))
    flat = flat_baseline(x_true)
    for i in range(blocks * ncols):
        block, col = divmod(i, ncols)
        for r, (batch, name) in enumerate(zip(rows, names)):
            ax = axes[block * len(rows) + r, col]
            ax.set_xticks([]), ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(name, fontsize=MIN_FONT)
            if i >= b:
                ax.axis("off")
                continue
            ax.imshow(to_numpy_image(batch[i]), cmap="gray", vmin=0, vmax=1)
            ref = flat[i:i + 1] if r == 0 else batch[i:i + 1].clamp(0, 1)
            value = psnr(ref, x_true[i:i + 1])
            ax.set_title(f"flat {value:.1f}" if r == 0 else f"{value:.1f} dB",
                         fontsize=MIN_FONT)
    fig.tight_layout(h_pad=0.6, w_pad=0.3)
    return fig


def plot_curves(curves: dict, xlabel: str, ylabel: str, logy: bool = False, ax=None,
                title: str | None = None):
    """Line plot of {label: (xs, ys)}; returns the axes.

    curves: a non-empty dict of label -> (xs, ys), xs and ys of one length.
    """
    if not isinstance(curves, dict) or not curves:
        checks.fail("curves", "a non-empty dict {label: (xs, ys)}", curves, TypeError
                    if not isinstance(curves, dict) else ValueError)
    for label, pair in curves.items():
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            checks.fail(f"curves[{label!r}]", "a pair (xs, ys)", pair, TypeError)
        if len(pair[0]) != len(pair[1]):
            raise ValueError(f"curves[{label!r}] must have xs and ys of one length, "
                             f"got {len(pair[0])} xs and {len(pair[1])} ys")
    logy = checks.flag(logy, "logy")
    if ax is None:
        _, ax = plt.subplots(figsize=(MAX_WIDTH, 3.4))
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
    theme ships its own icons). Under ``book_style()`` the frames are SVG.
    """
    import re
    from matplotlib.animation import Animation
    if not isinstance(anim, Animation):
        checks.fail("anim", "a matplotlib Animation", anim, TypeError)
    fps = checks.integer(fps, "fps", minimum=1)
    html = anim.to_jshtml(fps=fps, default_mode="once")
    return re.sub(r"<link[^>]*font-awesome[^>]*>", "", html)
