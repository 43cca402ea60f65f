"""Labels leak first: read a batch's labels off the last layer's gradient.

Taught in chapter 03. For cross-entropy averaged over a batch of B samples and
a last layer z = W h + b (W: (C, n), h: (n,) penultimate features),

    dL/db = (1/B) sum_k (p_k - y_k),     dL/dW = (1/B) sum_k (p_k - y_k) h_k^T,

with p_k the softmax of sample k and y_k its one-hot label. Every rule below
reads labels from the signs and sizes of these two tensors:

=========  =================================================================
idlg       B = 1: the one negative bias entry (or row sum) is the label
yin        unique labels: the B rows with the most negative entry
llg        Wainakh et al.: negative row sums, then counts by a fixed "impact"
geng       Geng et al.: counts n = B (p_mean - dL/db), p_mean estimated from
           dummy inputs through the known model (no-bias variant too)
geng, refine=True
           this book's refinement for trained networks: the softmax mean is
           refined together with the counts, using per-class statistics of
           pseudo-labelled dummies (see :func:`refine_counts`)
=========  =================================================================

``recover(model, grads, batch_size, method=...)`` returns the sorted label
multiset as an int64 tensor. The attacker never sees the batch: everything is
computed from the shared gradient, the model and (optionally) dummy inputs.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch
from torch import nn

from ..checks import check_grads

METHODS = ("idlg", "yin", "llg", "geng")


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


def _sorted(labels) -> torch.Tensor:
    return torch.as_tensor(labels, dtype=torch.long).flatten().sort().values


# --- the rules ---------------------------------------------------------------

def idlg(gw: torch.Tensor, gb: torch.Tensor | None = None) -> torch.Tensor:
    """iDLG (Zhao et al.): the label of one sample, shape (1,).

    Row c of dL/dW is (p_c - y_c) h^T: only the true class has p_c - 1 < 0.
    With a bias the rule reads the one negative entry of dL/db (any
    activation); without, the most negative row sum of dL/dW, which needs
    h >= 0 (ReLU, sigmoid). gw: (C, n); gb: (C,) or None.
    """
    score = gb if gb is not None else gw.sum(1)
    return _sorted([int(score.argmin())])


def yin(gw: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Yin et al.'s rule for unique labels: the B rows with the most negative entry.

    gw: (C, n). Assumes h >= 0 and no duplicates in the batch. Returns (B,).
    """
    return _sorted(gw.min(1).values.argsort()[:batch_size])


def llg(gw: torch.Tensor, batch_size: int, local_iterations: int = 1) -> torch.Tensor:
    """LLG (Wainakh et al.) as published: sign, then magnitude of the row sums.

    g = row sums of dL/dW (C,). Every class with g_i < 0 is taken once; the
    remaining labels go one at a time to argmin g, and each pick adds the
    "impact" m = (sum of negative g_i) / B * (1 + 1/C) / local_iterations
    back to g_i. gw: (C, n). Returns (B,).
    """
    g = gw.sum(1).clone()
    num_classes = len(g)
    impact = g[g < 0].sum() / batch_size * (1 + 1 / num_classes) / local_iterations
    labels = []
    for i in (g < 0).nonzero().flatten().tolist()[:batch_size]:
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
        with torch.no_grad():
            logits = model(dummies.to(next(model.parameters()).dtype))
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
            dummies: torch.Tensor | None = None, input_shape=None,
            num_dummies: int = 256, seed: int = 0,
            refine: bool = False) -> torch.Tensor:
    """Recover the labels of the batch behind a shared gradient; sorted (B,) int64.

    model: the known model (last layer ``nn.Linear``); grads: the shared
    gradient, aligned with ``model.parameters()``; batch_size: B.
    method: "idlg" (B = 1), "yin" (unique labels, B <= C), "llg", "geng".
    use_bias: read the bias gradient where the rule allows (idlg, geng);
        False gives the rules' no-bias variants.
    For "geng": ``softmax_mean`` (C,) (and ``feature_sum`` without bias) if
    known; else they are estimated from ``dummies`` (N, ...) run through the
    model, or from ``num_dummies`` uniform-noise images of ``input_shape``
    (C, H, W) drawn from ``seed``. ``refine=True`` then moves labels to the
    most probable counts under per-class dummy statistics (:func:`refine_counts`).
    Taught in chapter 03.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be an int, got {type(batch_size).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    gw, gb = last_layer_grads(model, grads)
    if not use_bias:
        gb = None
    elif gb is None and method in ("idlg", "geng"):
        raise ValueError("use_bias=True but the last layer has no bias; "
                         "pass use_bias=False")
    if not (gw.abs().sum() > 0):
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
    return _geng(model, gw, gb, batch_size, softmax_mean, feature_sum, dummies,
                 input_shape, num_dummies, seed, refine)


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


# --- batches for experiments -------------------------------------------------

def draw_labels(batch_size: int, num_classes: int = 10, duplicate_share: float = 0.0,
                seed: int = 0) -> torch.Tensor:
    """Labels (B,) for experiments: a share of the batch in one class, the rest random.

    ``duplicate_share`` = 0 gives i.i.d. uniform labels; 0.5 puts half the
    batch in one random class. ``duplicate_share=None`` asks for unique
    labels (needs B <= num_classes).
    """
    gen = torch.Generator().manual_seed(seed)
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
    labels = torch.as_tensor(labels, dtype=torch.long).flatten()
    gen = torch.Generator().manual_seed(seed)
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
    num_classes = len(observed)
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
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)):
        raise TypeError(f"num_samples must be an int, got {type(num_samples).__name__}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    _check_schedule(num_samples, lr, local_steps, batch_size)
    update = check_grads(model, update)
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
