"""Labels leak first: read a batch's labels off the last layer's gradient.

Taught in chapter 03. For cross-entropy averaged over a batch of B samples and
a last layer z = W h + b (W: (C, n), h: (n,) penultimate features),

    dL/db = (1/B) sum_k (p_k - y_k),     dL/dW = (1/B) sum_k (p_k - y_k) h_k^T,

with p_k the softmax of sample k and y_k its one-hot label. Every rule below
reads labels from these two tensors. What the attacker holds besides the
gradient and the model differs (see each function):

==========  ===============================================================
idlg        B = 1: the one negative bias entry (or row sum) is the label
yin         unique labels: the B rows with the most negative entry
llg         Wainakh et al.: negative row sums, then counts by a fixed "impact"
llg+        Wainakh et al.: impact and per-class offset measured on dummy
            batches through the known model (noise or auxiliary data)
llg*        the same measured on a shadow model trained on auxiliary data
            (the attacker needs the architecture, not the weights)
geng        Geng et al.: counts n = B (p_mean - dL/db), p_mean estimated from
            dummy inputs through the known model (no-bias variant too)
geng, refine=True
            this book's earlier refinement: the softmax mean refined together
            with the counts (see :func:`refine_counts`)
calibrated  this book's method for trained networks: the span test certifies
            absent classes; P(n_c >= k) is calibrated on batches simulated
            from labelled auxiliary data; the labels maximise the expected
            multiset accuracy (see :func:`calibrate_counts`)
==========  ===============================================================

``recover(model, grads, batch_size, method=...)`` returns the sorted label
multiset as an int64 tensor. The attacker never sees the batch, and recovery
leaves the model (parameters, buffers, train/eval mode) as it found it.
"""
from __future__ import annotations

import copy
import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.optimize import nnls
from torch import nn

from .. import checks
from ..checks import check_grads
from ..fl import forward, shared_gradients
from ..threads import one_thread
from ..train import train_classifier

METHODS = ("idlg", "yin", "llg", "llg+", "llg*", "geng", "calibrated")


# --- the last layer ----------------------------------------------------------

def last_linear(model: nn.Module) -> nn.Linear:
    """The model's last layer with parameters, which must be an ``nn.Linear``.

    Layers are taken in registration order (the order of ``model.modules()``).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    layers = [m for m in model.modules() if list(m.parameters(recurse=False))]
    if not layers:
        raise ValueError("the model has no parameters")
    if not isinstance(layers[-1], nn.Linear):
        kind = type(layers[-1]).__name__
        raise TypeError(f"the last layer with parameters is {kind}, "
                        "not Linear: label rules need a fully connected last layer")
    return layers[-1]


def last_layer_grads(model: nn.Module, grads):
    """Last-layer weight gradient (C, n) and bias gradient (C,) or None, in float64."""
    grads = check_grads(model, grads)
    layer = last_linear(model)
    index = {id(p): i for i, p in enumerate(model.parameters())}
    gw = grads[index[id(layer.weight)]].detach().double()
    gb = None if layer.bias is None else grads[index[id(layer.bias)]].detach().double()
    return gw, gb


def _check_gw(gw, gb=None) -> None:
    """gw: a finite float (C, n) gradient; gb: None or (C,)."""
    checks.tensor(gw, "gw", "float", dims=2, nonempty=True)
    if gb is not None:
        checks.tensor(gb, "gb", "float", dims=1)
        if gb.shape[0] != gw.shape[0]:
            raise ValueError(f"gb must have one entry per row of gw ({gw.shape[0]}), "
                             f"got shape {tuple(gb.shape)}")


def _sorted(labels) -> torch.Tensor:
    return torch.as_tensor(labels, dtype=torch.long).flatten().sort().values


def _check_int(value, name: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be at least {low}, got {value}")
    return int(value)


# --- the rules ---------------------------------------------------------------

def idlg(gw: torch.Tensor, gb: torch.Tensor | None = None) -> torch.Tensor:
    """iDLG (Zhao et al.): the label of one sample, shape (1,).

    Row c of dL/dW is (p_c - y_c) h^T: only the true class has p_c - 1 < 0.
    With a bias the rule reads the one negative entry of dL/db (any
    activation); without, the most negative row sum of dL/dW, which needs
    h >= 0 (ReLU, sigmoid). gw: (C, n); gb: (C,) or None.
    """
    _check_gw(gw, gb)
    score = gb if gb is not None else gw.sum(1)
    return _sorted([int(score.argmin())])


def yin(gw: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Yin et al.'s rule for unique labels: the B rows with the most negative entry.

    gw: (C, n). Assumes h >= 0 and no duplicates in the batch. Returns (B,).
    """
    _check_gw(gw)
    _check_int(batch_size, "batch_size")
    if batch_size > gw.shape[0]:
        raise ValueError(f"batch_size must be at most {gw.shape[0]} (yin needs unique "
                         f"labels, one per class), got {batch_size}")
    return _sorted(gw.min(1).values.argsort()[:batch_size])


def llg(gw: torch.Tensor, batch_size: int, local_iterations: int = 1) -> torch.Tensor:
    """LLG (Wainakh et al.) as published: sign, then magnitude of the row sums.

    g = row sums of dL/dW (C,). Every class with g_i < 0 is taken once; the
    remaining labels go one at a time to argmin g, and each pick adds the
    "impact" m = (sum of negative g_i) / B * (1 + 1/C) / local_iterations
    back to g_i. gw: (C, n). Returns (B,).
    """
    _check_gw(gw)
    _check_int(batch_size, "batch_size")
    checks.number(local_iterations, "local_iterations", above=0)
    g = gw.sum(1).clone()
    num_classes = len(g)
    impact = g[g < 0].sum() / batch_size * (1 + 1 / num_classes) / local_iterations
    return _two_stages(g, (g < 0).nonzero().flatten().tolist(), batch_size, impact)


def _two_stages(g: torch.Tensor, present: list[int], batch_size: int,
                impact) -> torch.Tensor:
    """LLG's stages on corrected row sums g (C,), changed in place: each class
    of ``present`` once, then argmin g; every pick adds ``impact`` to the
    picked class. Returns the (B,) labels, sorted."""
    labels = []
    for i in present[:batch_size]:
        labels.append(i)
        g[i] -= impact
    while len(labels) < batch_size:
        i = int(g.argmin())
        labels.append(i)
        g[i] -= impact
    return _sorted(labels)


def counts_to_labels(counts: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Round real class counts (C,) to a label multiset of exactly B labels.

    Negative counts become 0; units go greedily to the classes furthest below
    their real count (or come off those furthest above) until the sum is B.
    """
    checks.tensor(counts, "counts", "real", dims=1, nonempty=True)
    _check_int(batch_size, "batch_size")
    target = counts.double().clamp(min=0)
    n = target.round()
    while n.sum() < batch_size:
        n[(target - n).argmax()] += 1
    while n.sum() > batch_size:
        excess = torch.where(n > 0, n - target, torch.full_like(n, -np.inf))
        n[excess.argmax()] -= 1
    return _sorted(torch.repeat_interleave(torch.arange(len(n)), n.long()))


def geng(gw: torch.Tensor, gb: torch.Tensor | None, batch_size: int,
         softmax_mean: torch.Tensor, feature_sum: float | None = None) -> torch.Tensor:
    """Geng et al.'s counts from the last layer's gradient; returns (B,).

    With bias: n = B (p_mean - dL/db), exact when p_mean = (1/B) sum_k p_k.
    Without (gb None): the row sums s = dL/dW 1 equal
    (1/B) sum_k (p_k - y_k) <h_k, 1>; with <h_k, 1> ~ feature_sum for all k,
    n = B (p_mean - s / feature_sum).
    softmax_mean: (C,); feature_sum: the mean of sum_j h_j (no-bias case).
    """
    _check_gw(gw, gb)
    _check_int(batch_size, "batch_size")
    p = torch.as_tensor(softmax_mean, dtype=torch.float64)
    if p.shape != gw.shape[:1]:
        raise ValueError(f"softmax_mean has shape {tuple(p.shape)}, "
                         f"expected ({gw.shape[0]},)")
    if gb is not None:
        return counts_to_labels(batch_size * (p - gb), batch_size)
    if feature_sum is None or not abs(feature_sum) > 1e-12:
        raise ValueError("the no-bias variant needs a non-zero feature_sum "
                         "(the mean of sum_j h_j)")
    return counts_to_labels(batch_size * (p - gw.sum(1) / feature_sum), batch_size)


# --- what the known model tells about dummy inputs ----------------------------

def noise_dummies(input_shape, num: int = 256, seed: int = 0) -> torch.Tensor:
    """Uniform noise images in [0, 1], shape (num, *input_shape)."""
    input_shape = checks.shape(input_shape, "input_shape")
    _check_int(num, "num")
    checks.seed(seed)
    gen = torch.Generator().manual_seed(seed)
    return torch.rand((num, *tuple(input_shape)), generator=gen)


def dummy_stats(model: nn.Module, dummies: torch.Tensor) -> dict:
    """Run dummies (N, ...) through the model; the statistics the counting rules need.

    Returns a dict with ``probs`` (N, C) softmax outputs, ``features`` (N, n)
    inputs of the last layer, ``softmax_mean`` (C,) and ``feature_sum`` (the
    mean of sum_j h_j), all float64.
    """
    if not isinstance(dummies, torch.Tensor) or dummies.dim() < 2 or len(dummies) == 0:
        raise ValueError("dummies must be a non-empty tensor (N, ...) of model inputs")
    layer = last_linear(model)
    seen = []
    hook = layer.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    try:
        with torch.no_grad():  # fl.forward: the model's buffers stay untouched
            logits = forward(model, dummies.to(checks.model_dtype(model)))
    finally:
        hook.remove()
    probs = logits.double().softmax(-1)
    feats = seen[-1].double().flatten(1)
    return {"probs": probs, "features": feats, "softmax_mean": probs.mean(0),
            "feature_sum": float(feats.sum(1).mean())}


def class_moments(stats: dict, use_bias: bool = True):
    """Per-class mean (C, C) and covariance (C, C, C) of one sample's gradient signal.

    The signal of a sample of class c is its bias gradient p - e_c (with
    bias) or its last-layer row sums (p - e_c) sum_j h_j (without). Each
    dummy is labelled with the model's own prediction (pseudo-labels: no
    true labels needed). Column c of the mean and slice c of the
    covariance describe class c; a class with fewer than two dummies falls
    back to all dummies.
    """
    probs = stats["probs"]
    num_classes = probs.shape[1]
    weight = 1.0 if use_bias else stats["features"].sum(1, keepdim=True)
    pseudo = probs.argmax(1)
    eye = torch.eye(num_classes, dtype=torch.float64)
    signal = (probs - eye[pseudo]) * weight
    mean = torch.empty(num_classes, num_classes, dtype=torch.float64)
    cov = torch.empty(num_classes, num_classes, num_classes, dtype=torch.float64)
    for c in range(num_classes):
        mine = pseudo == c
        s = signal[mine] if mine.sum() > 1 else (probs - eye[c]) * weight
        mean[:, c] = s.mean(0)
        d = s - s.mean(0)
        cov[c] = d.T @ d / len(s)
    return mean, cov


def count_lower_bounds(gb: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Counts every class must reach, from the bias gradient alone: (C,) int64.

    The softmax mean is non-negative, so n_i = B (p_mean_i - dL/db_i) >= -B dL/db_i:
    a class with a negative bias gradient is in the batch, at least
    ceil(-B dL/db_i) times. This holds for any network and any training stage.
    """
    checks.tensor(gb, "gb", "float", dims=1, nonempty=True)
    _check_int(batch_size, "batch_size")
    low = torch.ceil(-batch_size * gb - 1e-6).clamp(min=0).long()
    return low if low.sum() <= batch_size else (gb < 0).long()


def refine_counts(signal: torch.Tensor, batch_size: int, mean: torch.Tensor,
                  cov: torch.Tensor, start: torch.Tensor,
                  lower: torch.Tensor | None = None) -> torch.Tensor:
    """This book's refinement for trained networks: the most probable counts.

    The batch signal B * dL/db (or B * row sums of dL/dW) is a sum of one
    term per sample; given counts n it has mean M n (so the softmax mean is
    refined with the counts instead of fixed in advance) and covariance
    sum_c n_c S_c (mean, cov from :func:`class_moments`). Maximise the
    Gaussian log-likelihood plus a uniform multinomial prior over counts
    that sum to B, moving one label at a time from ``start`` (B,) and
    never below ``lower`` (C,) counts (see :func:`count_lower_bounds`).
    Returns (B,).
    """
    num_classes = len(signal)
    r0 = (batch_size * signal).numpy()
    m, s = mean.numpy(), cov.numpy()
    # the signal sums to zero: give that direction unit variance, and a small ridge
    fixed = np.ones((num_classes, num_classes)) + 1e-6 * np.eye(num_classes)

    def score(n):
        r = r0 - m @ n
        var = np.tensordot(n, s, 1) + fixed
        prior = -sum(math.lgamma(k + 1) for k in n)
        fit = -0.5 * r @ np.linalg.solve(var, r) - 0.5 * np.linalg.slogdet(var)[1]
        return fit + prior

    low = np.zeros(num_classes) if lower is None else lower.double().numpy()
    if low.sum() > batch_size:
        raise ValueError(f"lower bounds ask for {int(low.sum())} labels, more than B")
    n = np.maximum(torch.bincount(start, minlength=num_classes).double().numpy(), low)
    while n.sum() > batch_size:  # take surplus labels from the largest excess
        n[np.argmax(n - low)] -= 1
    best, improved = score(n), True
    while improved:
        improved = False
        for i, j in itertools.permutations(range(num_classes), 2):
            if n[i] < low[i] + 1:
                continue
            trial = n.copy()
            trial[i] -= 1
            trial[j] += 1
            value = score(trial)
            if value > best + 1e-9:
                n, best, improved = trial, value, True
    counts = torch.as_tensor(n).long()
    return _sorted(torch.repeat_interleave(torch.arange(num_classes), counts))


# --- the entry point ---------------------------------------------------------

def recover(model: nn.Module, grads, batch_size: int, method: str = "idlg", *,
            use_bias: bool = True, softmax_mean=None, feature_sum: float | None = None,
            dummies: torch.Tensor | None = None,
            dummy_labels: torch.Tensor | None = None, input_shape=None,
            num_dummies: int = 256, seed: int = 0, refine: bool = False,
            repeats: int = 10, shadow: nn.Module | None = None, shadow_epochs: int = 10,
            impact: float | None = None, offset: torch.Tensor | None = None,
            calibration: CountCalibration | None = None) -> torch.Tensor:
    """Recover the labels of the batch behind a shared gradient; sorted (B,) int64.

    model: the known model (last layer ``nn.Linear``); grads: the shared
    gradient, aligned with ``model.parameters()``; batch_size: B.
    method and what the attacker needs besides the gradient:

    - "idlg" (B = 1), "yin" (unique labels, B <= C), "llg": nothing else.
    - "geng": the model's weights and dummy inputs: ``softmax_mean`` (C,)
      (and ``feature_sum`` without bias) if known, else ``dummies`` (N, ...)
      run through the model, or ``num_dummies`` uniform-noise images of
      ``input_shape`` drawn from ``seed`` (data-free). ``refine=True`` moves
      labels to the most probable counts (:func:`refine_counts`).
    - "llg+": the weights and dummy batches (``dummies``, labelled by
      ``dummy_labels`` if the attacker has auxiliary data, or noise of
      ``input_shape``); ``repeats`` rounds per class (:func:`impact_offset`),
      or a precomputed ``impact`` and ``offset``.
    - "llg*": the architecture only: ``shadow`` (a model of the same
      architecture the attacker trained) or labelled ``dummies`` to train one
      for ``shadow_epochs`` epochs (:func:`shadow_model`); impact and offset
      are then measured on the shadow.
    - "calibrated": the weights and labelled auxiliary data (``dummies``,
      ``dummy_labels``) or a ``calibration`` from :func:`calibrate_counts`.

    use_bias: read the bias gradient where the rule allows (idlg, geng);
    False gives the rules' no-bias variants. Taught in chapter 03.
    """
    checks.choice(method, "method", METHODS)
    _check_int(batch_size, "batch_size")
    checks.flag(use_bias, "use_bias")
    checks.flag(refine, "refine")
    checks.seed(seed)
    _check_int(num_dummies, "num_dummies")
    _check_int(repeats, "repeats")
    if input_shape is not None:
        checks.shape(input_shape, "input_shape")
    if dummies is not None:
        checks.batch(dummies, "dummies")
    with one_thread():
        return _recover(model, grads, batch_size, method, use_bias, softmax_mean,
                        feature_sum, dummies, dummy_labels, input_shape, num_dummies,
                        seed, refine, repeats, shadow, shadow_epochs, impact, offset,
                        calibration)


def _recover(model, grads, batch_size, method, use_bias, softmax_mean, feature_sum,
             dummies, dummy_labels, input_shape, num_dummies, seed, refine, repeats,
             shadow, shadow_epochs, impact, offset, calibration) -> torch.Tensor:
    gw, gb = last_layer_grads(model, grads)
    if not use_bias:
        gb = None
    elif gb is None and method in ("idlg", "geng", "calibrated"):
        raise ValueError("use_bias=True but the last layer has no bias; "
                         "pass use_bias=False" + (" (calibrated needs the bias)"
                                                  if method == "calibrated" else ""))
    if method == "calibrated" and gb is None:
        raise ValueError("method 'calibrated' reads the bias gradient: "
                         "use_bias must be True and the last layer must have a bias")
    # the rules that read the bias need only it: with every ReLU of the last
    # hidden layer dead, dL/dW is zero but dL/db still gives the labels
    read = gb if gb is not None and method in ("idlg", "geng", "calibrated") else gw
    if not (read.abs().sum() > 0):
        raise ValueError("the last layer's gradient is zero: "
                         "it carries no label information")
    num_classes = gw.shape[0]
    if method == "idlg":
        if batch_size != 1:
            raise ValueError(f"idlg reads one label: batch_size must be 1, "
                             f"got {batch_size}")
        return idlg(gw, gb)
    if method == "yin":
        if batch_size > num_classes:
            raise ValueError(f"yin needs unique labels, so batch_size <= {num_classes} "
                             f"classes, got {batch_size}")
        return yin(gw, batch_size)
    if method == "llg":
        return llg(gw, batch_size)
    if method in ("llg+", "llg*"):
        return _llg_measured(model, gw, batch_size, method, dummies, dummy_labels,
                             input_shape, num_dummies, seed, repeats, shadow,
                             shadow_epochs, impact, offset)
    if method == "calibrated":
        if calibration is None:
            if dummies is None or dummy_labels is None:
                raise ValueError("method 'calibrated' needs labelled auxiliary data "
                                 "(dummies and dummy_labels) or a calibration")
            calibration = calibrate_counts(model, dummies, dummy_labels, batch_size,
                                           seed=seed)
        if not isinstance(calibration, CountCalibration):
            raise TypeError(f"calibration must be a CountCalibration, "
                            f"got {type(calibration).__name__}")
        fitted = (calibration.batch_size, calibration.num_classes)
        if fitted != (batch_size, num_classes):
            raise ValueError(f"the calibration is for B = {calibration.batch_size} and "
                             f"{calibration.num_classes} classes, not B = {batch_size} "
                             f"and {num_classes}")
        return allocate(count_survival(calibration, gw, gb), batch_size)
    return _geng(model, gw, gb, batch_size, softmax_mean, feature_sum, dummies,
                 input_shape, num_dummies, seed, refine)


def _llg_measured(model, gw, batch_size, method, dummies, dummy_labels, input_shape,
                  num_dummies, seed, repeats, shadow, shadow_epochs, impact, offset):
    """LLG+ / LLG*: impact and offset given, or measured on the model or a shadow."""
    if (impact is None) != (offset is None):
        raise ValueError("pass both impact and offset, or neither")
    if impact is None:
        if method == "llg*":
            if shadow is None:
                if dummies is None or dummy_labels is None:
                    raise ValueError("llg* needs a shadow model or labelled auxiliary "
                                     "data (dummies and dummy_labels) to train one")
                shadow = shadow_model(model, dummies, dummy_labels,
                                      epochs=shadow_epochs, seed=seed)
            probe = _check_shadow(model, shadow)
        else:
            probe = model
        if dummies is None:
            if input_shape is None:
                raise ValueError(f"{method} needs dummies or input_shape "
                                 "(to draw noise dummies)")
            dummies = noise_dummies(input_shape, num_dummies, seed)
        impact, offset = impact_offset(probe, dummies, batch_size, dummy_labels,
                                       repeats=repeats, seed=seed)
    offset = torch.as_tensor(offset, dtype=torch.float64)
    if offset.shape != gw.shape[:1] or not math.isfinite(impact):
        raise ValueError(f"offset must have shape ({gw.shape[0]},) and impact be "
                         "finite")
    return llg_plus(gw, batch_size, impact, offset)


def _geng(model, gw, gb, batch_size, softmax_mean, feature_sum, dummies, input_shape,
          num_dummies, seed, refine):
    known = softmax_mean is not None and (gb is not None or feature_sum is not None)
    if known and not refine:
        return geng(gw, gb, batch_size, softmax_mean, feature_sum)
    if dummies is None:
        if input_shape is None:
            raise ValueError("geng needs softmax_mean, dummies or input_shape "
                             "(to draw noise dummies)")
        dummies = noise_dummies(input_shape, num_dummies, seed)
    stats = dummy_stats(model, dummies)
    p = stats["softmax_mean"] if softmax_mean is None else softmax_mean
    s = stats["feature_sum"] if feature_sum is None else feature_sum
    start = geng(gw, gb, batch_size, p, s)
    if not refine:
        return start
    mean, cov = class_moments(stats, use_bias=gb is not None)
    signal = gb if gb is not None else gw.sum(1)
    lower = None if gb is None else count_lower_bounds(gb, batch_size)
    return refine_counts(signal, batch_size, mean, cov, start, lower)


# --- LLG+ and LLG*: impact and offset measured on dummy batches ---------------

def _check_dummies(model: nn.Module, dummies, dummy_labels=None, name="dummies"):
    """Validate the attacker's inputs (N, ...) and optional labels (N,) int64."""
    if not isinstance(dummies, torch.Tensor) or dummies.dim() < 2 or len(dummies) == 0:
        raise ValueError(f"{name} must be a non-empty tensor (N, ...) of model inputs, "
                         f"got {type(dummies).__name__}"
                         + (f" of shape {tuple(dummies.shape)}"
                            if isinstance(dummies, torch.Tensor) else ""))
    if not torch.isfinite(dummies).all():
        raise ValueError(f"{name} must be finite, got NaN or infinite values")
    if dummy_labels is None:
        return None
    num_classes = last_linear(model).out_features
    if not isinstance(dummy_labels, torch.Tensor) or dummy_labels.dtype != torch.long:
        kind = (dummy_labels.dtype if isinstance(dummy_labels, torch.Tensor)
                else type(dummy_labels).__name__)
        raise TypeError(f"dummy_labels must be an int64 tensor (N,), got {kind}")
    if dummy_labels.shape != dummies.shape[:1]:
        raise ValueError(f"dummy_labels must hold one label per dummy, shape "
                         f"({len(dummies)},), got {tuple(dummy_labels.shape)}")
    if ((dummy_labels < 0) | (dummy_labels >= num_classes)).any():
        raise ValueError(f"dummy_labels must lie in 0..{num_classes - 1}, got "
                         f"{int(dummy_labels.min())}..{int(dummy_labels.max())}")
    return dummy_labels


def _class_batch(dummies, dummy_labels, label: int, batch_size: int, gen):
    """B dummies for a batch labelled ``label``: drawn from that class if labelled."""
    pool = (torch.arange(len(dummies)) if dummy_labels is None
            else (dummy_labels == label).nonzero().flatten())
    if len(pool) == 0:
        raise ValueError(f"dummy_labels has no sample of class {label}: LLG+ needs "
                         "auxiliary data of every class (or unlabelled dummies)")
    idx = pool[torch.randint(len(pool), (batch_size,), generator=gen)]
    return dummies[idx], torch.full((batch_size,), label, dtype=torch.long)


def impact_offset(model: nn.Module, dummies: torch.Tensor, batch_size: int,
                  dummy_labels: torch.Tensor | None = None, repeats: int = 10,
                  seed: int = 0, local_iterations: int = 1):
    """LLG+'s impact (float) and per-class offset (C,), from dummy batches.

    Wainakh et al.'s LLG+: for every class i and each of ``repeats`` rounds,
    run a batch of B dummies all labelled i through the model and take the row
    sums g^(i) of the last layer's weight gradient. The impact of one sample is
    mean_i g^(i)_i / B * (1 + 1/C) / local_iterations (negative); the offset of
    class j is the mean of g^(i)_j over the batches of the other classes i != j
    (what class j shows when absent). With ``dummy_labels`` the class-i batch
    is drawn from the dummies of class i (auxiliary data, as in the authors'
    code); without, from all dummies (noise inputs: data-free).
    dummies: (N, ...) inputs of the model. Taught in chapter 03.
    """
    _check_int(batch_size, "batch_size")
    _check_int(repeats, "repeats")
    if not local_iterations > 0:
        raise ValueError(f"local_iterations must be positive, got {local_iterations!r}")
    _check_dummies(model, dummies, dummy_labels)
    num_classes = last_linear(model).out_features
    gen = torch.Generator().manual_seed(seed)
    dtype = next(model.parameters()).dtype
    impact, offset = 0.0, torch.zeros(num_classes, dtype=torch.float64)
    with one_thread():  # shared_gradients leaves the model's buffers alone
        for _ in range(repeats):
            for i in range(num_classes):
                xb, yb = _class_batch(dummies, dummy_labels, i, batch_size, gen)
                grads = shared_gradients(model, xb.to(dtype), yb)
                g = last_layer_grads(model, grads)[0].sum(1)
                impact += float(g[i]) / (num_classes * batch_size)
                offset += g
                offset[i] -= g[i]
    impact = impact / repeats * (1 + 1 / num_classes) / local_iterations
    return impact, offset / (repeats * (num_classes - 1))


def llg_plus(gw: torch.Tensor, batch_size: int, impact: float,
             offset: torch.Tensor) -> torch.Tensor:
    """LLG+'s prediction from the row sums of dL/dW (C, n); returns (B,).

    Stage 1: every class with a negative row sum g_i (most negative first) is
    taken once. The offsets are subtracted from g, and each pick adds the
    (negative) impact back to the picked class. Stage 2: the remaining labels
    go one at a time to argmin g, and the *picked* class gets the impact (a
    public port updates a stale index here, so that class is never corrected
    and every remaining label goes to it). Taught in chapter 03.
    """
    _check_gw(gw)
    _check_int(batch_size, "batch_size")
    checks.number(impact, "impact")
    g = gw.sum(1)
    present = sorted((g < 0).nonzero().flatten().tolist(), key=lambda i: float(g[i]))
    return _two_stages(g - torch.as_tensor(offset, dtype=g.dtype), present,
                       batch_size, impact)


def shadow_model(model: nn.Module, dummies: torch.Tensor, dummy_labels: torch.Tensor,
                 epochs: int = 10, lr: float = 1e-2, seed: int = 0) -> nn.Module:
    """LLG*'s shadow: the model's architecture with fresh weights, trained on aux data.

    A deep copy of ``model`` whose layers are re-initialised with PyTorch's
    defaults (``reset_parameters``, seeded) and trained for ``epochs`` epochs
    of Adam on (dummies, dummy_labels); ``epochs=0`` gives an untrained shadow.
    The model itself is not touched. Taught in chapter 03.
    """
    _check_dummies(model, dummies, dummy_labels)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative int, got {epochs!r}")
    shadow = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in shadow.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
    if epochs:
        train_classifier(shadow, dummies, dummy_labels, epochs=epochs, lr=lr, seed=seed)
    return shadow


def _check_shadow(model: nn.Module, shadow) -> nn.Module:
    if not isinstance(shadow, nn.Module):
        raise TypeError(f"shadow must be a torch.nn.Module, "
                        f"got {type(shadow).__name__}")
    shapes = [tuple(p.shape) for p in model.parameters()]
    if [tuple(p.shape) for p in shadow.parameters()] != shapes:
        raise ValueError("shadow must have the model's architecture: its parameter "
                         "shapes differ from the model's")
    return shadow


# --- calibrated counts: this book's method for trained networks ----------------

#: batch sizes at which the count model is fitted; other k are interpolated in log k
COUNT_GRID = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)


def span_test(gw: torch.Tensor, gb: torch.Tensor | None, batch_size: int,
              tol: float = 1e-10, kappa: float = 1e-5) -> torch.Tensor:
    """Classes certified absent from the batch, (C,) bool; data-free.

    G = B [dL/dW, dL/db] = sum_k e_k [h_k; 1]^T (C, n + 1), with e_k = p_k - y_k,
    so the columns of G span {e_1, ..., e_B}: a B-dimensional subspace when
    B <= C - 2. Each e_k is > 0 everywhere except at its own label. So class c
    can be in the batch only if the span holds a vector > 0 at every j != c;
    with Q (C, B) an orthonormal basis of the span, Gordan's theorem says no
    such vector exists exactly when the origin lies in the convex hull of the
    rows q_j, j != c (tested by non-negative least squares, distance < tol).
    Returns all False when B > C - 2, or when the B-th singular value of G is
    below ``kappa`` times the largest (a sample lost in float32 rounding would
    make the span wrong). Taught in chapter 03.
    """
    _check_gw(gw, gb)
    _check_int(batch_size, "batch_size")
    checks.number(tol, "tol", minimum=0)
    checks.number(kappa, "kappa", minimum=0)
    num_classes = gw.shape[0]
    excluded = torch.zeros(num_classes, dtype=torch.bool)
    if batch_size > num_classes - 2:
        return excluded
    G = gw.double() if gb is None else torch.cat([gw.double(), gb.double()[:, None]], 1)
    u, s, _ = torch.linalg.svd(G, full_matrices=False)
    if not s[batch_size - 1] >= kappa * s[0]:
        return excluded
    q = u[:, :batch_size].numpy()
    system = np.vstack([q.T, 1e3 * np.ones(num_classes)])  # last row: weights sum to 1
    target = np.r_[np.zeros(batch_size), 1e3]
    for c in range(num_classes):
        others = np.r_[0:c, c + 1:num_classes]
        weights, _ = nnls(system[:, others], target)
        excluded[c] = bool(np.linalg.norm(q[others].T @ weights) < tol)
    return excluded


def _slog(x: torch.Tensor) -> torch.Tensor:
    return torch.sign(x) * torch.log10(1 + x.abs() / 1e-4)


def _rank(x: torch.Tensor) -> torch.Tensor:
    return x.argsort(-1, descending=True).argsort(-1).double() / (x.shape[-1] - 1)


def _evidence(gw: torch.Tensor, gb: torch.Tensor, batch_size: int, params: dict,
              excluded: torch.Tensor) -> torch.Tensor:
    """Per-class evidence (S, C, F) from S batches: gw (S, C, n), gb (S, C) times B.

    Statistics of class c: the bias gradient; its own error after demixing the
    last layer by a linear class indicator of the features (A = G U, column
    c ~ sum of the errors of class-c samples); the most negative and most
    positive entries of row c of dL/dW (Yin's statistic); the negative mass of
    row c of A; the cosine of row c with class c's mean feature, and the most
    negative cosine with any class; Geng's zero-shot count; the span test.
    Each statistic enters as a signed log, divided by the batch's largest,
    and as its rank in the batch.
    """
    G = torch.cat([gw, gb[..., None]], -1)
    A = G @ params["indicator"]
    cos = (G / G.norm(dim=-1, keepdim=True).clamp_min(1e-300)) @ params["prototypes"].T
    stats = [-gb, -A.diagonal(dim1=-2, dim2=-1), -gw.amin(-1), gw.amax(-1),
             (-A).clamp(min=0).sum(-1), -cos.diagonal(dim1=-2, dim2=-1), -cos.amin(-1)]
    cols = []
    for x in stats:
        scale = x.abs().amax(-1, keepdim=True).clamp_min(1e-300)
        cols += [_slog(x), x / scale, _rank(x)]
    geng_counts = batch_size * params["softmax_mean"] - gb
    cols += [geng_counts / batch_size, torch.log1p(geng_counts.clamp(min=0)),
             geng_counts]
    out = excluded.double()
    valid = excluded.any(-1, keepdim=True).double().expand_as(out)
    kept = (1 - out).sum(-1, keepdim=True).expand_as(out)
    cols += [out, valid, valid * (kept <= batch_size), valid * (batch_size - kept)
             / batch_size, valid * kept / out.shape[-1]]
    return torch.stack(cols, -1)


def _fit_logistic(X: torch.Tensor, t: torch.Tensor, ridge: float,
                  iters: int = 25) -> torch.Tensor:
    """Ridge logistic regression (Newton's method); weights (F + 1,), intercept last."""
    X1 = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], 1)
    w = torch.zeros(X1.shape[1], dtype=X.dtype)
    penalty = ridge * torch.eye(len(w), dtype=X.dtype)
    penalty[-1, -1] = 1e-6
    for _ in range(iters):
        p = torch.sigmoid(X1 @ w)
        grad = X1.T @ (p - t) + penalty @ w
        hess = (X1 * (p * (1 - p))[:, None]).T @ X1 + penalty
        step = torch.linalg.solve(hess, grad)
        w = w - step
        if step.abs().max() < 1e-8:
            break
    return w


def _last_layer_terms(model: nn.Module, dummies: torch.Tensor, labels: torch.Tensor):
    """Per-sample features h~ = [h; 1] (N, n + 1) and errors p - y (N, C), float64."""
    stats = dummy_stats(model, dummies)
    feats = stats["features"]
    ones = torch.ones(len(feats), 1, dtype=torch.float64)
    onehot = torch.nn.functional.one_hot(labels, stats["probs"].shape[1]).double()
    return torch.cat([feats, ones], 1), stats["probs"], stats["probs"] - onehot


def _fold_params(feats, probs, labels, num_classes):
    """The linear class indicator U, unit class-mean features and the softmax mean."""
    onehot = torch.nn.functional.one_hot(labels, num_classes).double()
    gram = feats.T @ feats + 1e-3 * torch.eye(feats.shape[1], dtype=torch.float64)
    means = torch.stack([feats[labels == c].mean(0) for c in range(num_classes)])
    return {"indicator": torch.linalg.solve(gram, feats.T @ onehot),
            "prototypes": means / means.norm(dim=1, keepdim=True).clamp_min(1e-300),
            "softmax_mean": probs.mean(0)}


def _simulate(feats, errors, labels, batch_size, simulations, alpha, rng):
    """Batches drawn from aux data: label shares pi ~ Dirichlet(a), a log-uniform.

    Returns B times the last-layer gradients gw (S, C, n + 1 - 1), gb (S, C),
    rounded to float32 like a real shared gradient, and the counts (S, C).
    """
    num_classes = errors.shape[1]
    a = np.exp(rng.uniform(np.log(alpha[0]), np.log(alpha[1]), simulations))
    shares = rng.gamma(np.repeat(a[:, None], num_classes, 1))
    shares /= shares.sum(1, keepdims=True)
    drawn = (rng.random((simulations, batch_size, 1))
             > np.cumsum(shares, 1)[:, None, :]).sum(-1).clip(max=num_classes - 1)
    pools = [np.nonzero(labels.numpy() == c)[0] for c in range(num_classes)]
    sizes = np.array([len(p) for p in pools])
    table = np.zeros((num_classes, sizes.max()), dtype=np.int64)
    for c, p in enumerate(pools):
        table[c, :len(p)] = p
    idx = table[drawn, (rng.random(drawn.shape) * sizes[drawn]).astype(np.int64)]
    mult = np.zeros((simulations, len(labels)))
    np.add.at(mult, (np.arange(simulations)[:, None], idx), 1.0)
    mult = torch.as_tensor(mult)
    weighted = mult[:, :, None] * errors[None]                         # (S, N, C)
    g = weighted.transpose(1, 2) @ feats                               # (S, C, n + 1)
    g = (g / batch_size).float().double() * batch_size
    counts = torch.as_tensor(np.stack([np.bincount(d, minlength=num_classes)
                                       for d in drawn]))
    return g[..., :-1], g[..., -1], counts


@dataclass
class CountCalibration:
    """A fitted count model for one model and batch size (see :func:`calibrate_counts`).

    folds: per fold, the statistics' parameters and, for each k of ``grid``,
    the logistic weights of P(n_c >= k) (or a constant when k never or
    always occurred in the simulation).
    """
    batch_size: int
    num_classes: int
    grid: tuple
    folds: list = field(repr=False)


def calibrate_counts(model: nn.Module, dummies: torch.Tensor,
                     dummy_labels: torch.Tensor, batch_size: int, *,
                     simulations: int = 400, alpha: tuple = (0.3, 30.0),
                     ridge: float = 0.1, seed: int = 0) -> CountCalibration:
    """Fit P(n_c >= k | evidence) on batches simulated from labelled auxiliary data.

    The attacker holds labelled data of the client's distribution (not the
    client's batch). It splits it into two halves by class; the statistics'
    parameters (class indicator, mean features, softmax mean) come from one
    half, and ``simulations`` batches of size B are drawn from the other, with
    label shares pi ~ Dirichlet(a 1), a log-uniform on ``alpha`` (the
    attacker's prior: from skewed to nearly uniform label mixes). Their
    last-layer gradients are exact sums of per-sample terms, so simulating
    costs a few matrix products. For each k of the grid a ridge logistic
    regression maps the evidence of class c (:func:`_evidence`) to
    P(n_c >= k); the halves then swap roles. dummies (N, ...) with
    dummy_labels (N,), at least two samples of every class. Taught in chapter 03.
    """
    _check_int(batch_size, "batch_size")
    _check_int(simulations, "simulations")
    if simulations < 10:
        raise ValueError(f"simulations must be at least 10, got {simulations}")
    if (not isinstance(alpha, (tuple, list)) or len(alpha) != 2
            or not 0 < alpha[0] <= alpha[1] < math.inf):
        raise ValueError(f"alpha must be a pair 0 < low <= high, got {alpha!r}")
    if not ridge > 0:
        raise ValueError(f"ridge must be positive, got {ridge!r}")
    if dummy_labels is None:
        raise ValueError("calibrated counts need labelled auxiliary data: "
                         "pass dummy_labels")
    _check_dummies(model, dummies, dummy_labels)
    num_classes = last_linear(model).out_features
    per_class = torch.bincount(dummy_labels, minlength=num_classes)
    if per_class.min() < 2:
        raise ValueError(f"dummy_labels must hold at least two samples of every class, "
                         f"got counts {per_class.tolist()}")
    feats, probs, errors = _last_layer_terms(model, dummies, dummy_labels)
    rng = np.random.default_rng(seed)
    halves = [[], []]
    for c in range(num_classes):
        members = rng.permutation(np.nonzero(dummy_labels.numpy() == c)[0])
        halves[0] += members[0::2].tolist()
        halves[1] += members[1::2].tolist()
    grid = tuple(k for k in COUNT_GRID if k <= batch_size)
    folds = []
    for own, other in (halves, halves[::-1]):
        own, other = torch.tensor(own), torch.tensor(other)
        params = _fold_params(feats[own], probs[own], dummy_labels[own], num_classes)
        gw, gb, counts = _simulate(feats[other], errors[other], dummy_labels[other],
                                   batch_size, simulations, alpha, rng)
        excluded = torch.stack([span_test(w, b, batch_size) for w, b in zip(gw, gb)])
        X = _evidence(gw, gb, batch_size, params, excluded).flatten(0, 1)
        counts = counts.flatten()
        weights = {}
        for k in grid:
            target = (counts >= k).double()
            weights[k] = (float(target[0]) if target.min() == target.max()
                          else _fit_logistic(X, target, ridge))
        folds.append((params, weights))
    return CountCalibration(batch_size, num_classes, grid, folds)


def count_survival(calibration: CountCalibration, gw: torch.Tensor,
                   gb: torch.Tensor) -> torch.Tensor:
    """P(n_c >= k) for k = 1..B, shape (C, B), from one shared last-layer gradient.

    gw (C, n), gb (C,): the shared (mean) gradients. The two halves' models
    are averaged, interpolated in log k between grid points and made
    non-increasing in k; then the certainties are imposed: classes the span
    test excludes get 0, and k <= ceil(-B dL/db_c) gets 1. Taught in chapter 03.
    """
    if not isinstance(calibration, CountCalibration):
        checks.fail("calibration", "a CountCalibration (from calibrate_counts)",
                    calibration, TypeError)
    c = calibration.num_classes
    checks.tensor(gw, "gw", "float", dims=2)
    checks.tensor(gb, "gb", "float", dims=1)
    if gw.shape[0] != c:
        checks.fail("gw", f"the last layer's weight gradient of the calibrated "
                    f"model ({c} rows)", gw)
    if gb.shape != (c,):
        checks.fail("gb", f"the last layer's bias gradient of the calibrated "
                    f"model (shape ({c},))", gb)
    batch = calibration.batch_size
    gw, gb = batch * gw.double(), batch * gb.double()
    excluded = span_test(gw, gb, batch)
    logk = torch.log(torch.arange(1, batch + 1, dtype=torch.float64)).numpy()
    grid_logk = np.log(calibration.grid)
    surv = torch.zeros(calibration.num_classes, batch, dtype=torch.float64)
    for params, weights in calibration.folds:
        X = _evidence(gw[None], gb[None], batch, params, excluded[None])[0]
        X1 = torch.cat([X, torch.ones(len(X), 1, dtype=X.dtype)], 1)
        logits = torch.stack([torch.full((len(X),), 30.0 if w else -30.0)
                              if isinstance(w, float) else X1 @ w
                              for w in (weights[k] for k in calibration.grid)], 1)
        for c in range(calibration.num_classes):
            curve = np.interp(logk, grid_logk, logits[c].numpy())
            surv[c] += torch.sigmoid(torch.as_tensor(curve))
    surv = (surv / len(calibration.folds)).cummin(1).values
    surv[excluded] = 0.0
    low = count_lower_bounds(gb / batch, batch)
    for c in range(calibration.num_classes):
        surv[c, :int(low[c])] = 1.0
    return surv


def allocate(survival: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The label multiset (B,) with the largest expected multiset accuracy.

    survival (C, B): P(n_c >= k). The expected accuracy of counts m is
    (1/B) sum_c sum_{k <= m_c} P(n_c >= k) (linearity of expectation), a sum
    of per-class gains that shrink with k, so giving each of the B labels in
    turn to the class with the largest next gain is optimal. Taught in chapter 03.
    """
    checks.tensor(survival, "survival", "float", dims=2, nonempty=True)
    _check_int(batch_size, "batch_size")
    num_classes = survival.shape[0]
    counts = torch.zeros(num_classes, dtype=torch.long)
    rows = torch.arange(num_classes)
    for _ in range(batch_size):
        gain = survival[rows, counts.clamp(max=batch_size - 1)].clone()
        gain[counts >= batch_size] = -1.0
        counts[int(gain.argmax())] += 1
    return _sorted(torch.repeat_interleave(rows, counts))


# --- batches for experiments -------------------------------------------------

def draw_labels(batch_size: int, num_classes: int = 10, duplicate_share: float = 0.0,
                seed: int = 0) -> torch.Tensor:
    """Labels (B,) for experiments: a share of the batch in one class, the rest random.

    ``duplicate_share`` = 0 gives i.i.d. uniform labels; 0.5 puts half the
    batch in one random class. ``duplicate_share=None`` asks for unique
    labels (needs B <= num_classes).
    """
    _check_int(batch_size, "batch_size")
    _check_int(num_classes, "num_classes")
    if duplicate_share is not None:
        checks.number(duplicate_share, "duplicate_share", minimum=0, maximum=1)
    gen = torch.Generator().manual_seed(checks.seed(seed))
    if duplicate_share is None:
        if batch_size > num_classes:
            raise ValueError(f"{batch_size} unique labels need at least that many "
                             f"classes, got {num_classes}")
        return torch.randperm(num_classes, generator=gen)[:batch_size]
    if not 0.0 <= duplicate_share <= 1.0:
        raise ValueError(f"duplicate_share must lie in [0, 1], got {duplicate_share}")
    dup = round(duplicate_share * batch_size)
    main = torch.randint(num_classes, (1,), generator=gen)
    rest = torch.randint(num_classes, (batch_size - dup,), generator=gen)
    return torch.cat([main.repeat(dup), rest])


def sample_batch(x: torch.Tensor, y: torch.Tensor, labels, seed: int = 0):
    """Distinct samples of a pool x (N, ...), y (N,) with the wanted labels (B,)."""
    checks.check_batch(x, y)
    if isinstance(labels, (list, tuple)) and labels and all(
            isinstance(v, torch.Tensor) and v.dim() == 0 for v in labels):
        labels = torch.stack(list(labels))  # a list of scalar tensors
    labels = checks.labels(labels, "labels")
    gen = torch.Generator().manual_seed(checks.seed(seed))
    idx = torch.empty(len(labels), dtype=torch.long)
    for lab in labels.unique().tolist():
        slots = (labels == lab).nonzero().flatten()
        cands = (y == lab).nonzero().flatten()
        if len(cands) < len(slots):
            raise ValueError(f"the pool has {len(cands)} samples of label {lab}, "
                             f"asked for {len(slots)}")
        idx[slots] = cands[torch.randperm(len(cands), generator=gen)[:len(slots)]]
    return x[idx], y[idx]


# --- FedAvg updates (chapter 06) ---------------------------------------------
#
# A FedAvg client sends u = w_T - w_0 after T local SGD steps at rate lr. For
# the last layer's bias, summed over the steps (full batch, N samples):
#
#     -u_b / (lr T) = (1/T) sum_s p_mean(w_s) - n / N,
#
# so Geng's counts n = N (p_path - g_path) hold with g_path = -u_b / (lr T) and
# p_path the softmax mean of the batch averaged along the client's path w_s.
# The path is unknown between w_0 and w_T: "interpolate" evaluates dummies at
# w_0 + (s / T) u; "simulate" trains a surrogate client (dummies carrying the
# candidate labels, the client's schedule) and keeps the counts whose
# surrogate update explains the observed last layer best.

PATHS = ("simulate", "interpolate")


def _last_layer_signal(model: nn.Module, tensors, use_bias: bool) -> torch.Tensor:
    """The last layer's bias entries (C,), or the row sums of its weight without."""
    gw, gb = last_layer_grads(model, tensors)
    return gb if use_bias else gw.sum(1)


def path_softmax_mean(model: nn.Module, update, dummies: torch.Tensor,
                      local_steps: int) -> dict:
    """Dummy statistics averaged over the models w_0 + (s / T) u, s = 0 .. T-1.

    The client took its s-th gradient at w_s; with equal steps w_s lies at
    s / T of the way from w_0 to w_T. update: aligned with
    ``model.parameters()``; dummies: (M, ...). Returns dict(softmax_mean
    (C,), feature_sum) as :func:`dummy_stats`, averaged along the line.
    Taught in chapter 06.
    """
    import copy
    update = check_grads(model, update)
    net = copy.deepcopy(model)
    probs, feats = [], []
    with torch.no_grad():
        for s in range(local_steps):
            for p, p0, u in zip(net.parameters(), model.parameters(), update):
                p.copy_(p0 + (s / local_steps) * u.to(p.dtype))
            stats = dummy_stats(net, dummies)
            probs.append(stats["softmax_mean"])
            feats.append(stats["feature_sum"])
    return {"softmax_mean": torch.stack(probs).mean(0),
            "feature_sum": float(np.mean(feats))}


def _check_counts(counts, name: str = "counts") -> torch.Tensor:
    """Class counts (C,): a 1-D tensor of non-negative whole numbers."""
    checks.tensor(counts, name, "real", dims=1, nonempty=True)
    if (counts < 0).any() or (counts != counts.round()).any():
        checks.fail(name, "non-negative whole class counts", counts.tolist())
    return counts


def surrogate_inputs(counts: torch.Tensor, dummies: torch.Tensor,
                     dummy_labels: torch.Tensor | None, seed: int = 0):
    """A surrogate batch with the given class counts (C,): inputs (N, ...), labels (N,).

    With ``dummy_labels`` (labelled auxiliary data) the j-th sample of class
    c is the j-th dummy of class c in a shuffle drawn from ``seed`` (the
    same dummies for every candidate), cycling if a class has too few and
    falling back to all dummies for a class with none. Without, the first N
    dummies of the shuffle carry the labels in sorted order. Taught in
    chapter 06.
    """
    _check_counts(counts)
    checks.batch(dummies, "dummies")
    if dummy_labels is not None:
        checks.labels(dummy_labels, "dummy_labels", batch_size=len(dummies))
    seed = checks.seed(seed)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dummies), generator=gen)
    labels = torch.repeat_interleave(torch.arange(len(counts)), counts.long())
    if dummy_labels is None:
        idx = order[torch.arange(len(labels)) % len(order)]
        return dummies[idx], labels
    shuffled = dummy_labels[order]
    idx = []
    for c, k in enumerate(counts.long().tolist()):
        pool = order[shuffled == c]
        pool = pool if len(pool) else order
        idx += [pool[j % len(pool)] for j in range(k)]
    idx = torch.stack(idx) if idx else torch.zeros(0, dtype=torch.long)
    return dummies[idx], labels


def _surrogate_signal(model, counts, dummies, dummy_labels, schedule, use_bias, loss,
                      seed):
    from ..fl import client_update
    xs, ys = surrogate_inputs(counts, dummies, dummy_labels, seed)
    upd = client_update(model, xs.to(next(model.parameters()).dtype), ys, loss=loss,
                        **schedule)
    return _last_layer_signal(model, upd, use_bias)


def simulate_counts(model: nn.Module, observed: torch.Tensor, start: torch.Tensor,
                    dummies: torch.Tensor, dummy_labels=None, *, lr: float,
                    local_steps: int, batch_size: int | None = None,
                    shuffle_seed: int = 0, use_bias: bool = True, loss="ce",
                    seed: int = 0, max_sweeps: int = 20) -> tuple[torch.Tensor, dict]:
    """Counts whose surrogate client explains the observed last-layer update best.

    observed: the update's last-layer bias (C,) (row sums of the weight
    without bias); start: (N,) labels to start from. Each candidate count
    vector n trains a surrogate client (:func:`surrogate_inputs`, the
    client's schedule) from the model's weights; the residual is
    ||signal(n) - observed||^2. Labels move one at a time while the
    residual falls. Returns the sorted labels (N,) and dict(residual,
    evaluations, sweeps). Taught in chapter 06.
    """
    checks.module(model)
    num_classes = last_linear(model).out_features
    checks.tensor(observed, "observed", "float", dims=1)
    if observed.shape != (num_classes,):
        checks.fail("observed", f"the last layer's update of {num_classes} classes "
                    f"(shape ({num_classes},))", observed)
    start = checks.labels(start, "start", num_classes=num_classes)
    if len(start) == 0:
        checks.fail("start", "at least one label", start)
    _check_dummies(model, dummies, dummy_labels)
    checks.number(lr, "lr", above=0)
    checks.integer(local_steps, "local_steps", minimum=1)
    if batch_size is not None:
        checks.integer(batch_size, "batch_size", minimum=1)
    checks.seed(shuffle_seed, "shuffle_seed")
    checks.seed(seed)
    checks.flag(use_bias, "use_bias")
    checks.integer(max_sweeps, "max_sweeps", minimum=1)
    sched = {"lr": lr, "local_steps": local_steps, "batch_size": batch_size,
             "seed": shuffle_seed}

    def residual(n):
        sig = _surrogate_signal(model, n, dummies, dummy_labels, sched, use_bias, loss,
                                seed)
        return float(((sig - observed) ** 2).sum())

    n = torch.bincount(start, minlength=num_classes).double()
    best, evals, sweeps, improved = residual(n), 1, 0, True
    while improved and sweeps < max_sweeps:
        improved, sweeps = False, sweeps + 1
        for i, j in itertools.permutations(range(num_classes), 2):
            if n[i] < 1:
                continue
            trial = n.clone()
            trial[i] -= 1
            trial[j] += 1
            value = residual(trial)
            evals += 1
            if value < best * (1 - 1e-12):
                n, best, improved = trial, value, True
    labels = _sorted(torch.repeat_interleave(torch.arange(num_classes), n.long()))
    return labels, {"residual": best, "evaluations": evals, "sweeps": sweeps}


def recover_fedavg(model: nn.Module, update, num_samples: int, *, lr: float,
                   local_steps: int, batch_size: int | None = None,
                   shuffle_seed: int = 0, path: str = "simulate",
                   softmax_mean=None, dummies: torch.Tensor | None = None,
                   dummy_labels=None, input_shape=None, num_dummies: int = 256,
                   seed: int = 0, use_bias: bool = True, loss="ce") -> torch.Tensor:
    """The labels of the batch behind a FedAvg update; sorted (N,) int64.

    model: holds w_t (last layer ``nn.Linear``); update: w_{t+1} - w_t from
    ``fl.client_update``, aligned with ``model.parameters()``; num_samples:
    N; lr, local_steps, batch_size, shuffle_seed: the client's schedule
    (shuffle_seed is ``client_update``'s seed).
    softmax_mean: (C,) the batch's softmax mean averaged over the local
        steps, if known; then the counts follow in closed form (exact for
        full-batch steps, and whenever every sample is used equally often).
    Otherwise it is estimated from dummies (M, ...) (or ``num_dummies``
    noise images of ``input_shape`` drawn from ``seed``):
    path="interpolate": dummies through the models w_t + (s / T) update,
        s = 0 .. T-1 (:func:`path_softmax_mean`);
    path="simulate" (default): start there, then search the counts whose
        surrogate client reproduces the last layer's update
        (:func:`simulate_counts`); ``dummy_labels`` (M,) marks the dummies
        as labelled auxiliary data, so a class's slots get its own images.
    use_bias=False reads the row sums of the last weight instead of the bias.
    Taught in chapter 06.
    """
    from .fedavg import _check_schedule
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}; choose one of {PATHS}")
    checks.seed(seed)
    checks.flag(use_bias, "use_bias")
    _check_int(num_dummies, "num_dummies")
    if input_shape is not None:
        checks.shape(input_shape, "input_shape")
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)):
        raise TypeError(f"num_samples must be an int, got {type(num_samples).__name__}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    _check_schedule(num_samples, lr, local_steps, batch_size)
    update = check_grads(model, update, "update")
    with one_thread():
        return _recover_fedavg(model, update, num_samples, lr, local_steps,
                               batch_size, shuffle_seed, path, softmax_mean, dummies,
                               dummy_labels, input_shape, num_dummies, seed, use_bias,
                               loss)


def _recover_fedavg(model, update, num_samples, lr, local_steps, batch_size,
                    shuffle_seed, path, softmax_mean, dummies, dummy_labels,
                    input_shape, num_dummies, seed, use_bias, loss) -> torch.Tensor:
    gw, gb = last_layer_grads(model, update)
    if use_bias and gb is None:
        raise ValueError("use_bias=True but the last layer has no bias; "
                         "pass use_bias=False")
    if not (gw.abs().sum() > 0):
        raise ValueError("the last layer's update is zero: it carries no label "
                         "information")
    scale = -1.0 / (lr * local_steps)
    mean_gw, mean_gb = gw * scale, (gb * scale if use_bias else None)
    if softmax_mean is not None and use_bias:
        return geng(mean_gw, mean_gb, num_samples, softmax_mean)
    if dummies is None:
        if input_shape is None:
            raise ValueError("recover_fedavg needs softmax_mean, dummies or "
                             "input_shape (to draw noise dummies)")
        dummies = noise_dummies(input_shape, num_dummies, seed)
    if not isinstance(dummies, torch.Tensor) or dummies.dim() < 2 or len(dummies) == 0:
        raise ValueError("dummies must be a non-empty tensor (M, ...) of model inputs")
    if dummy_labels is not None:
        dummy_labels = torch.as_tensor(dummy_labels).long().flatten()
        if len(dummy_labels) != len(dummies):
            raise ValueError(f"{len(dummies)} dummies but {len(dummy_labels)} "
                             "dummy_labels")
    stats = path_softmax_mean(model, update, dummies, local_steps)
    p = stats["softmax_mean"] if softmax_mean is None else softmax_mean
    start = geng(mean_gw, mean_gb, num_samples, p, stats["feature_sum"])
    if path == "interpolate" or softmax_mean is not None:
        return start
    observed = _last_layer_signal(model, update, use_bias)
    labels, _ = simulate_counts(model, observed, start, dummies, dummy_labels, lr=lr,
                                local_steps=local_steps, batch_size=batch_size,
                                shuffle_seed=shuffle_seed, use_bias=use_bias,
                                loss=loss, seed=seed)
    return labels
