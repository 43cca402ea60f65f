"""How much does an architecture leak? A per-layer audit of its linear systems.

Taught in chapter 08. For every Conv2d/Linear layer of a sequential model,
``audit(model, input_shape)`` counts the unknowns (the layer's input entries)
and the constraints an attacker gets on them:

- gradient constraints: dL/dW = K(delta) x, one row per weight entry;
- forward constraints: W x = z - b, one row per output entry (z known from the
  layer above through the inverse activation);
- virtual constraints: if a layer below is narrower, this layer's input lies
  on a set of lower dimension, which counts as extra (implicit) constraints.

It then measures what the count can only bound: the numerical rank of the
stacked system [K; A] at generic (random) weights and a random backpropagated
signal, and combines the rank deficiencies into Chen & Campbell's COPA index.
It also finds the input pixels that no gradient depends on (a blind spot of
strides and padding) and the PSNR cap they imply.
"""
from __future__ import annotations

import copy
import math
import sys
import textwrap
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import scipy.sparse.csgraph  # noqa: F401  (sp.csgraph)
import torch
from torch import nn

from . import checks, threads
from .attacks.hybrid import FILLS, fill_blind
from .attacks.layers import leaves
from .attacks.linear_systems import (MAX_MEMORY_GB, check_dense, conv_gradient_matrix,
                                     conv_matrix, output_shape, patch_indices,
                                     unread_pixels)

#: Elementwise activations the audit accepts (name -> invertible on its range?).
ELEMENTWISE = {nn.ReLU: False, nn.LeakyReLU: True, nn.Sigmoid: True, nn.Tanh: True,
               nn.Softplus: True, nn.SiLU: False, nn.ELU: True, nn.GELU: False,
               nn.Identity: True}


# --- walking the model ------------------------------------------------------------


def _describe(layer: nn.Module) -> str:
    if isinstance(layer, nn.Conv2d):
        (k, _), (s, _), (p, _) = layer.kernel_size, layer.stride, layer.padding
        bias = "" if layer.bias is None else ", bias"
        return f"Conv {layer.in_channels}->{layer.out_channels} k{k} s{s} p{p}{bias}"
    bias = "" if layer.bias is None else ", bias"
    return f"Linear {layer.in_features}->{layer.out_features}{bias}"


def weight_layers(model: nn.Module, input_shape) -> list[dict]:
    """The model's Conv2d/Linear layers with their input/output shapes.

    input_shape: (C, H, W) or (n,) of ONE sample. Returns a list of dicts with
    keys path, layer, in_shape, out_shape, act (the activation that follows, or
    None). Raises ValueError naming any layer that is not Conv2d, Linear,
    Flatten or an elementwise activation. Taught in chapter 08.
    """
    checks.module(model, parameters=False)
    shape = checks.shape(input_shape, "input_shape", dims=(1, 3))
    rows = []
    for path, layer in leaves(model, "the audit"):
        if isinstance(layer, nn.Conv2d):
            if len(shape) != 3:
                raise ValueError(f"input_shape must fit the model, got {shape}: "
                                 f"layer '{path}' (Conv2d) receives shape {shape}, "
                                 "not (C, H, W)")
            try:
                out = output_shape(layer, shape)
            except (TypeError, ValueError) as err:
                raise ValueError(f"input_shape must fit the model, got one that "
                                 f"does not: layer '{path}' (Conv2d): {err}") from None
            if min(out) < 1:
                raise ValueError(f"input_shape must fit the model, got one too small: "
                                 f"layer '{path}' (Conv2d) gets an input {shape}")
            rows.append(dict(path=path, layer=layer, in_shape=shape, out_shape=out,
                             act=None))
            shape = out
        elif isinstance(layer, nn.Linear):
            if len(shape) != 1 or shape[0] != layer.in_features:
                raise ValueError(f"input_shape must fit the model, got one that "
                                 f"does not: layer '{path}' (Linear "
                                 f"{layer.in_features}->{layer.out_features}) receives "
                                 f"shape {shape}; put an nn.Flatten before it or fix "
                                 "input_shape")
            out = (layer.out_features,)
            rows.append(dict(path=path, layer=layer, in_shape=shape, out_shape=out,
                             act=None))
            shape = out
        elif isinstance(layer, nn.Flatten):
            if layer.start_dim != 1 or layer.end_dim != -1:
                raise ValueError(f"model must use nn.Flatten() with the default "
                                 f"start_dim=1, end_dim=-1, got layer '{path}' with "
                                 f"start_dim={layer.start_dim}, end_dim={layer.end_dim}")
            shape = (math.prod(shape),)
        elif type(layer) in ELEMENTWISE:
            if rows and rows[-1]["act"] is None:
                rows[-1]["act"] = layer
        else:
            names = ", ".join(t.__name__ for t in ELEMENTWISE)
            raise ValueError(f"model must hold only Conv2d, Linear, Flatten and "
                             f"elementwise activations ({names}), got layer '{path}' "
                             f"({type(layer).__name__}), which is not supported")
    if not rows:
        checks.fail("model", "a model with a Conv2d or Linear layer to audit", model)
    return rows


# --- the blind spot -----------------------------------------------------------------


def blind_spot(model: nn.Module, input_shape) -> torch.Tensor:
    """Boolean mask of the input entries that no gradient depends on.

    An input entry reaches the loss only through output positions that some
    later layer reads; strides and missing padding can leave rows and columns
    that no path connects to the output. Gradients do not change when those
    entries change, so no attack can recover them. Returns a (C, H, W) (or
    (n,)) bool tensor, True = invisible. Taught in chapter 08.
    """
    rows = weight_layers(model, input_shape)
    live = torch.ones(rows[-1]["out_shape"], dtype=torch.bool)
    for row in reversed(rows):
        layer, in_shape = row["layer"], row["in_shape"]
        live = live.reshape(row["out_shape"])
        if isinstance(layer, nn.Linear):
            # a Linear output row reads every input (structurally)
            live = torch.full(in_shape, bool(live.any()))
            continue
        idx = patch_indices(layer, in_shape)                 # (C*k*k, L)
        used = live.any(dim=0).flatten()                     # (L,) positions read
        cols = idx[:, used]
        seen = torch.zeros(math.prod(in_shape), dtype=torch.bool)
        seen[cols[cols >= 0]] = True
        live = seen.reshape(in_shape)
    return ~live.reshape(tuple(int(s) for s in input_shape))


def psnr_cap(x: torch.Tensor, blind: torch.Tensor, fill: str = "mean") -> float:
    """PSNR (peak 1) of the best reconstruction that cannot see the blind pixels.

    x: one image (C, H, W) or (1, C, H, W); blind: bool mask (C, H, W) from
    ``blind_spot``. The reconstruction equals x on every visible pixel (a
    perfect attack) and fills the blind ones from the visible ones
    (``attacks.hybrid.fill_blind``): "mean" = the mean of the visible pixels
    of that channel (no prior), "nearest" = the nearest visible pixel of the
    same channel, "inpaint" = harmonic inpainting (each blind pixel the mean
    of its neighbours). The cap bounds every attack that fills blind pixels
    that way; a better image prior can go past it. Uses the truth: it is a
    metric, not an attack. inf if nothing is blind. Taught in chapter 08.
    """
    checks.tensor(x, "x", "float", dims=(3, 4), nonempty=True)
    if x.dim() == 4 and x.shape[0] != 1:
        checks.fail("x", "one image (C, H, W) or (1, C, H, W)", x)
    x = x.detach().to(torch.float64)
    x = x[0] if x.dim() == 4 else x
    checks.tensor(blind, "blind", "any", dims=3)
    if blind.dtype != torch.bool:
        checks.fail("blind", "a bool mask (from blind_spot)", blind, TypeError)
    if x.shape != blind.shape:
        checks.fail("blind", f"a mask of the image's shape {tuple(x.shape)}", blind)
    checks.choice(fill, "fill", FILLS)
    if not bool(blind.any()):
        return float("inf")
    if bool(blind.all()):
        raise ValueError("blind must leave a visible pixel, got every pixel blind: "
                         "nothing to anchor a reconstruction")
    r = fill_blind(x, blind, fill)
    mse = float(((r - x) ** 2).mean())
    return float("inf") if mse == 0 else 10 * math.log10(1.0 / mse)


# --- one layer's system -------------------------------------------------------------


def _to_scipy(t: torch.Tensor) -> sp.csr_matrix:
    t = t.coalesce()
    i = t.indices().numpy()
    return sp.csr_matrix((t.values().numpy(), (i[0], i[1])), shape=tuple(t.shape))


def layer_gram(layer: nn.Module, in_shape, delta: torch.Tensor,
               max_memory_gb: float = MAX_MEMORY_GB) -> np.ndarray:
    """The smaller Gram matrix of the layer's stacked system S = [K/|K|; A/|A|].

    K (n_w, n_x) is the gradient block (K x = dL/dW), A (n_z, n_x) the forward
    block (A x = z - b); each is scaled to unit Frobenius norm so that neither
    swamps the other. delta: dL/dz of one sample, the layer's output shape.
    Returns S^T S (n_x, n_x) or, if S has fewer rows than columns, S S^T: both
    have the rank of S. Dense float64, refused (MemoryError, with the
    estimate) past ``max_memory_gb``. Taught in chapter 08.
    """
    if not isinstance(layer, (nn.Conv2d, nn.Linear)):
        checks.fail("layer", "an nn.Conv2d or nn.Linear", layer, TypeError)
    if isinstance(layer, nn.Linear):
        n = layer.in_features
        w = layer.weight.detach().to(torch.float64).numpy()
        # K = kron(delta, I_n): K^T K = |delta|^2 I, and |K|_F^2 = n |delta|^2
        check_dense(n, n, "layer_gram", max_memory_gb)
        return np.eye(n) / n + w.T @ w / max((w ** 2).sum(), 1e-300)
    in_shape = checks.shape(in_shape, "in_shape", dims=3)
    out_shape = output_shape(layer, in_shape)
    checks.tensor(delta, "delta", "float")
    if delta.numel() != math.prod(out_shape):
        checks.fail("delta", f"dL/dz of one sample, {math.prod(out_shape)} entries "
                    f"{out_shape}", delta)
    m = _gram_side(layer, in_shape, out_shape)
    check_dense(m, m, "layer_gram", max_memory_gb)
    k = _to_scipy(conv_gradient_matrix(layer, in_shape, delta, sparse=True))
    a = _to_scipy(conv_matrix(layer, in_shape, sparse=True))
    k = k / math.sqrt(max(k.multiply(k).sum(), 1e-300))
    a = a / math.sqrt(max(a.multiply(a).sum(), 1e-300))
    s = sp.vstack([k, a]).tocsr()
    g = s @ s.T if s.shape[0] < s.shape[1] else s.T @ s
    return np.asarray(g.todense())


def numerical_rank(gram: np.ndarray, rtol: float) -> tuple[int, float, float]:
    """Rank of S from the eigenvalues of S^T S: singular values s_i = sqrt(eig_i).

    Counts s_i > rtol * s_max. Returns (rank, smallest kept s/s_max, largest
    dropped s/s_max); a wide gap between the two means the rank is clear-cut.
    Computed on one thread (bit-identical at any thread count).
    """
    if not isinstance(gram, np.ndarray) or gram.ndim != 2 \
            or gram.shape[0] != gram.shape[1] or gram.shape[0] == 0:
        checks.fail("gram", "a non-empty square NumPy array (from layer_gram)", gram,
                    TypeError if not isinstance(gram, np.ndarray) else ValueError)
    if not np.issubdtype(gram.dtype, np.floating) or not np.isfinite(gram).all():
        checks.fail("gram", "a finite floating-point matrix", gram)
    rtol = checks.number(rtol, "rtol", above=0, below=1)
    with threads.one_thread():
        eig = torch.linalg.eigvalsh(torch.from_numpy(gram)).clamp_min(0).numpy()
    s = np.sqrt(eig[::-1]) / max(math.sqrt(eig[-1]), 1e-300)
    keep = s > rtol
    rank = int(keep.sum())
    kept = float(s[rank - 1]) if rank else 0.0
    dropped = float(s[rank]) if rank < len(s) else 0.0
    return rank, kept, dropped


def rank_bound(layer: nn.Module, in_shape) -> int:
    """Structural prediction of the rank of a layer's system [K; A], generic weights.

    Counting rows (n_w + n_z) over-estimates the rank, for three reasons:

    - a tap of a strided conv reads only one polyphase sub-grid of its input
      channel: group taps and pixels into connected components (tap reads
      pixel); a component with T taps and P pixels gives at most min(O T, P)
      independent gradient rows (sum: r_K);
    - the O forward rows of one output position read only its r_l real
      (non-padding) inputs: at most min(O, r_l) of them are independent
      (sum, capped by the read inputs: r_A);
    - identity B, for every pair of filters (o, o'): <dL/dw_o, w_o'> =
      sum_l delta_ol z_o'l, so up to O min(O, L) directions lie in both the
      gradient and the forward row spaces (L = output positions); the overlap
      is at most min(r_K, r_A).

    Returns min(read, r_K + r_A - min(O min(O, L), r_K, r_A)) for a Conv2d
    and n_x for a Linear layer (K = delta (x) I has full column rank). A
    prediction from counting, checked against the numerical rank in
    tests/test_security.py and chapter 08. Taught in chapter 08.
    """
    if not isinstance(layer, (nn.Conv2d, nn.Linear)):
        checks.fail("layer", "an nn.Conv2d or nn.Linear", layer, TypeError)
    in_shape = checks.shape(in_shape, "in_shape", dims=1 if isinstance(layer, nn.Linear)
                            else 3)
    n_x = math.prod(in_shape)
    if isinstance(layer, nn.Linear):
        if n_x != layer.in_features:
            checks.fail("in_shape", f"({layer.in_features},), the layer's input",
                        in_shape)
        return n_x
    idx = patch_indices(layer, in_shape)                     # (M, L)
    m, n_pos = idx.shape
    taps, pos = torch.nonzero(idx >= 0, as_tuple=True)
    graph = sp.coo_matrix((np.ones(len(taps)), (taps.numpy(),
                                                 m + idx[taps, pos].numpy())),
                          shape=(m + n_x, m + n_x))
    _, label = sp.csgraph.connected_components(graph, directed=False)
    n_taps = np.bincount(label[:m], minlength=label.max() + 1)
    n_pix = np.bincount(label[m:], minlength=label.max() + 1)
    o = layer.out_channels
    read = n_x - int(unread_pixels(layer, in_shape).sum())
    r_k = int(np.minimum(o * n_taps, n_pix).sum())
    r_a = min(read, int(torch.clamp((idx >= 0).sum(dim=0), max=o).sum()))
    overlap = min(o * min(o, n_pos), r_k, r_a)
    return min(read, r_k + r_a - overlap)


# --- the audit ------------------------------------------------------------------------


@dataclass
class LayerAudit:
    """One row of the audit: a Conv2d or Linear layer and its linear system."""

    index: int                 # position among the weight layers, from the input
    path: str                  # module path inside the model
    kind: str                  # short description
    in_shape: tuple
    out_shape: tuple
    unknowns: int              # n_x: input entries of one sample
    gradient_constraints: int  # n_w: weight entries
    forward_constraints: int   # n_z: output entries
    virtual_constraints: int   # n_v: codimension of the set of possible inputs
    filters: int               # output channels (units): one identity-B dependency each
    count_index: int           # n_x - n_w - n_z - n_v  (> 0: at least that many free)
    rank_bound: int            # structural bound on the rank (see rank_bound)
    rank: int                  # numerical rank of [K; A]
    deficiency: int            # n_x - rank: unresolved directions
    unread: int                # input entries this layer never reads
    copa_weight: float         # (L - 1 - i) / (L - 1)
    gap: tuple                 # (smallest kept, largest dropped) singular value / max
    invertible_activation: bool
    seconds: float


@dataclass
class Audit:
    """The audit of a model: per-layer rows and the network's scores."""

    layers: list
    input_shape: tuple
    blind: torch.Tensor        # bool mask of input entries no gradient depends on
    seed: int
    rtol: float
    weights: str
    notes: list = field(default_factory=list)

    @property
    def ra_index(self) -> int:
        """R-GAP's rank-analysis index: the largest per-layer count index."""
        return max(r.count_index for r in self.layers)

    @property
    def copa_index(self) -> int:
        """Chen & Campbell's COPA index: -sum_i round(deficiency_i * weight_i), <= 0."""
        return -sum(round(r.deficiency * r.copa_weight) for r in self.layers)

    @property
    def blind_pixels(self) -> int:
        return int(self.blind.sum())

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.layers)

    def scores(self) -> dict:
        """The network-level numbers as a plain dict."""
        return dict(ra_index=self.ra_index, copa_index=self.copa_index,
                    deficiency_first=self.layers[0].deficiency,
                    deficiency_total=sum(r.deficiency for r in self.layers),
                    blind_pixels=self.blind_pixels, seconds=round(self.seconds, 3))

    def to_rows(self) -> list[dict]:
        """One dict per layer (JSON-friendly)."""
        keys = ["index", "path", "kind", "unknowns", "gradient_constraints",
                "forward_constraints", "virtual_constraints", "filters", "count_index",
                "rank_bound", "rank", "deficiency", "unread", "copa_weight"]
        return [{k: getattr(r, k) for k in keys} | {"in_shape": list(r.in_shape),
                                                    "gap": list(r.gap)}
                for r in self.layers]

    _COLUMNS = [("#", "index"), ("n_x", "unknowns"), ("grad", "gradient_constraints"),
                ("fwd", "forward_constraints"), ("virt", "virtual_constraints"),
                ("count", "count_index"), ("bound", "rank_bound"), ("rank", "rank"),
                ("defic", "deficiency"), ("unread", "unread"),
                ("COPA w", "copa_weight")]

    def _cells(self) -> tuple[list[str], list[list[str]]]:
        head = [h for h, _ in self._COLUMNS]
        body = [[f"{getattr(r, k):.2f}" if k == "copa_weight" else str(getattr(r, k))
                 for _, k in self._COLUMNS] for r in self.layers]
        return head, body

    def _text_table(self) -> list[str]:
        """Numbers right-aligned, one space apart; the layers are named below."""
        head, body = self._cells()
        widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
        lines = [" ".join(c.rjust(w) for c, w in zip(cells, widths))
                 for cells in [head, *body]]
        lines += ["", "layers:"]
        lines += [f"{r.index:>3}  {r.kind}, input {'x'.join(map(str, r.in_shape))}"
                  for r in self.layers]
        return lines

    def _markdown_table(self) -> list[str]:
        head, body = self._cells()
        head.insert(1, "layer")
        for r, b in zip(self.layers, body):
            b.insert(1, f"{r.kind}, input {'x'.join(map(str, r.in_shape))}")
        return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
                *["| " + " | ".join(b) + " |" for b in body]]

    def _footer(self) -> list[str]:
        s = self.scores()
        lines = [f"RA index (max count) = {s['ra_index']}; "
                 f"COPA index = {s['copa_index']}; "
                 f"deficiency of the first layer = {s['deficiency_first']}; "
                 f"blind input entries = {s['blind_pixels']}",
                 f"ranks: {self.weights} weights and random delta (seed {self.seed}), "
                 f"singular values above {self.rtol:g} x the largest; "
                 f"{s['seconds']:.2f} s (Linear layers: rank n_x exactly, "
                 "as K = delta x I)"]
        return lines + list(self.notes)

    def __str__(self) -> str:
        """The audit as text at most 80 characters wide."""
        footer = [line for f in self._footer()
                  for line in textwrap.wrap(f, 80, subsequent_indent="  ")]
        return "\n".join(self._text_table() + [""] + footer)

    def to_markdown(self) -> str:
        footer = ["- " + f for f in self._footer()]
        return "\n".join(self._markdown_table() + [""] + footer)


def _virtual(unknowns: list[int]) -> list[int]:
    """n_v of each layer: its input width minus the narrowest width below it."""
    out, narrowest = [], None
    for n in unknowns:
        narrowest = n if narrowest is None else min(narrowest, n)
        out.append(n - narrowest)
    return out


def _system_layer(layer: nn.Module, weights: str, gen: torch.Generator) -> nn.Module:
    """A float64 bias-free copy of the layer; weights as ``weights`` says."""
    twin = copy.deepcopy(layer).to(torch.float64)
    twin.bias = None
    if weights == "random":
        with torch.no_grad():
            twin.weight.copy_(torch.randn(twin.weight.shape, generator=gen,
                                          dtype=torch.float64))
    return twin


#: seconds per m^3 of a symmetric eigenvalue solve of an m x m Gram matrix, one
#: thread (measured on the book's 2-core machine, rounded up)
SECONDS_PER_CUBE = 3e-10


def _gram_side(layer: nn.Module, in_shape, out_shape) -> int:
    """Side of the Gram matrix ``layer_gram`` forms: min(rows, unknowns)."""
    n_x = math.prod(in_shape)
    if isinstance(layer, nn.Linear):
        return 0                                # closed form, no Gram
    rows = layer.weight.numel() + math.prod(out_shape)
    return min(rows, n_x)


def estimate_cost(model: nn.Module, input_shape) -> dict:
    """What ``audit`` will need, before it starts: memory (bytes) and seconds.

    Per layer: the Gram matrix of the stacked system (side m = min(rows,
    unknowns), dense float64, about three copies during the eigenvalue
    solve: 24 m^2 bytes, ~SECONDS_PER_CUBE m^3 s at one thread) and the tap
    index tables (C k^2 x positions int64, a few copies). Returns dict with
    ``layers`` (one dict each: path, gram_side, bytes, seconds), the peak
    ``bytes`` and the total ``seconds``. Estimates, good to a factor ~2.
    Taught in chapter 08.
    """
    rows = weight_layers(model, input_shape)
    out = []
    for row in rows:
        layer, in_shape, out_shape = row["layer"], row["in_shape"], row["out_shape"]
        m = _gram_side(layer, in_shape, out_shape)
        index_bytes = 0
        if isinstance(layer, nn.Conv2d):
            taps = in_shape[0] * layer.kernel_size[0] * layer.kernel_size[1]
            index_bytes = 8 * 4 * taps * out_shape[1] * out_shape[2]
        gram_bytes = 24 * m * m               # 0 for a Linear layer (closed form)
        seconds = SECONDS_PER_CUBE * m ** 3 + 2e-7 * index_bytes
        out.append(dict(path=row["path"], gram_side=m, bytes=gram_bytes + index_bytes,
                        seconds=seconds))
    return dict(layers=out, bytes=max(r["bytes"] for r in out),
                seconds=sum(r["seconds"] for r in out))


def _human(n_bytes: float, seconds: float) -> str:
    size = (f"{n_bytes / 2**30:.1f} GB" if n_bytes >= 2**30
            else f"{n_bytes / 2**20:.0f} MB")
    span = f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"
    return f"about {size} and {span}"


def audit(model: nn.Module, input_shape, seed: int = 0, rtol: float = 1e-6,
          weights: str = "random", max_memory_gb: float = 2.0,
          warn_seconds: float = 60.0, progress: bool | None = None) -> Audit:
    """Audit every Conv2d/Linear layer of a sequential model; see the module doc.

    input_shape: (C, H, W) or (n,) of one sample. weights: "random" draws
    N(0, 1) weights from ``seed`` (the architecture's generic case) or "model"
    uses the model's own. The backpropagated signal delta is N(0, 1) from
    ``seed`` (generic: no dead units). rtol: relative singular-value tolerance
    of the rank (the Gram matrix is formed in float64, which squares the
    singular values: ratios below ~1e-7 are rounding noise, so keep rtol
    well above that; the row's ``gap`` shows how clear-cut the cut is).
    Resources are estimated first (``estimate_cost``): past ``max_memory_gb``
    the audit refuses with a MemoryError that gives the estimate; past
    ``warn_seconds`` it warns. ``progress`` (default: when the estimate
    exceeds 10 s) prints one line per layer to stderr.
    Returns an :class:`Audit`.
    Taught in chapter 08.
    """
    shape = checks.shape(input_shape, "input_shape", dims=(1, 3))
    seed = checks.seed(seed)
    rtol = checks.number(rtol, "rtol", above=0, below=1)
    checks.choice(weights, "weights", ("random", "model"))
    max_memory_gb = checks.number(max_memory_gb, "max_memory_gb", above=0, finite=False)
    warn_seconds = checks.number(warn_seconds, "warn_seconds", minimum=0, finite=False)
    if progress is not None:
        progress = checks.flag(progress, "progress")
    rows = weight_layers(model, shape)
    cost = estimate_cost(model, shape)
    if cost["bytes"] > max_memory_gb * 2**30:
        big = max(cost["layers"], key=lambda r: r["bytes"])
        raise MemoryError(f"auditing this model on input {shape} needs "
                          f"{_human(cost['bytes'], cost['seconds'])} (layer "
                          f"'{big['path']}': a {big['gram_side']}x{big['gram_side']} "
                          f"Gram matrix), over max_memory_gb={max_memory_gb:g}; "
                          "audit a smaller input or raise the limit")
    if cost["seconds"] > warn_seconds:
        warnings.warn(f"the audit on input {shape} will take "
                      f"{_human(cost['bytes'], cost['seconds'])} at one thread",
                      stacklevel=2)
    show = cost["seconds"] > 10 if progress is None else progress
    with threads.one_thread():
        out, notes = _audit_layers(rows, weights, seed, rtol, cost, show)
    blind = blind_spot(model, shape)
    return Audit(out, shape, blind, seed, rtol, weights, notes)


def _audit_layers(rows, weights, seed, rtol, cost, show):
    """The audit's rows (LayerAudit) and notes, layer by layer."""
    gen = torch.Generator().manual_seed(seed)
    unknowns = [math.prod(r["in_shape"]) for r in rows]
    virtual = _virtual(unknowns)
    n_layers = len(rows)
    out, notes = [], []
    for i, row in enumerate(rows):
        start = time.perf_counter()
        layer, in_shape, out_shape = row["layer"], row["in_shape"], row["out_shape"]
        if show:
            print(f"audit: layer {i + 1}/{n_layers} ({_describe(layer)}), "
                  f"{_human(cost['layers'][i]['bytes'], cost['layers'][i]['seconds'])}",
                  file=sys.stderr, flush=True)
        twin = _system_layer(layer, weights, gen)
        delta = torch.randn(out_shape, generator=gen, dtype=torch.float64)
        if isinstance(layer, nn.Linear):
            # K = delta (x) I_n has full column rank; its smallest singular value
            # after scaling is 1/sqrt(n), a lower bound on the stack's.
            rank, kept, dropped = unknowns[i], 1 / math.sqrt(unknowns[i]), 0.0
        else:
            gram = layer_gram(twin, in_shape, delta, max_memory_gb=math.inf)
            rank, kept, dropped = numerical_rank(gram, rtol)
            del gram
        if isinstance(layer, nn.Conv2d):
            unread = int(unread_pixels(twin, in_shape).sum())
            filters = layer.out_channels
        else:
            unread, filters = 0, layer.out_features
        n_w, n_z = layer.weight.numel(), math.prod(out_shape)
        act = row["act"]
        invertible = act is None or ELEMENTWISE[type(act)]
        if not invertible:
            notes.append(f"layer {i} is followed by {type(act).__name__}, which is not "
                         "invertible: its forward constraints are only partly "
                         "available")
        out.append(LayerAudit(
            index=i, path=row["path"], kind=_describe(layer), in_shape=in_shape,
            out_shape=out_shape, unknowns=unknowns[i], gradient_constraints=n_w,
            forward_constraints=n_z, virtual_constraints=virtual[i], filters=filters,
            count_index=unknowns[i] - n_w - n_z - virtual[i],
            rank_bound=rank_bound(twin, in_shape), rank=rank,
            deficiency=unknowns[i] - rank, unread=unread,
            copa_weight=(n_layers - 1 - i) / (n_layers - 1) if n_layers > 1 else 1.0,
            gap=(kept, dropped), invertible_activation=invertible,
            seconds=time.perf_counter() - start))
    return out, notes
