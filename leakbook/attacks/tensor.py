"""Provable reconstruction from one gradient of a random two-layer network.

Taught in chapter 09 (after Wang, Lee & Lei, AISTATS 2023). For
f(x) = sum_j a_j sigma(w_j^T x) with w_j ~ N(0, I_d) and unit-norm inputs,
Stein's lemma gives E_w[sigma(w^T x) He_p(w)] = c_p x^{(x)p} with the Hermite
coefficient c_p = E_z[sigma^(p)(z)], z ~ N(0, 1). A batch gradient therefore
holds a Monte-Carlo estimate, over the m neurons, of the moment tensor

    T = c_3 sum_i r_i x_i (x) x_i (x) x_i,   r_i = dL/df(x_i),

from the first layer, (1/m) sum_j (dL/dw_j / a_j) (x) He_2(w_j), or from the
output layer, (1/m) sum_j dL/da_j He_3(w_j). A symmetric rank-B CP
decomposition of the estimate (Jennrich's simultaneous diagonalisation in the
span of the inputs, refined by alternating least squares) returns the inputs
up to sign. Width plays the role of sample size: the error falls as 1/sqrt(m).
"""
from __future__ import annotations

import functools
import math
import time
from typing import Callable

import numpy as np
import torch

from .result import Reconstruction

__all__ = ["random_two_layer", "hermite_coefficient", "moment_tensor",
           "symmetric_cp", "cp_tensor", "tensor_decomposition", "direction_cosines"]

GRADIENTS = ("first", "output", "both")


def random_two_layer(d: int, width: int, activation: str = "tanh", seed: int = 0,
                     dtype: torch.dtype = torch.float64) -> torch.nn.Sequential:
    """f(x) = a^T sigma(W x): Linear(d, width) -> activation -> Linear(width, 1).

    No biases. W (width, d) has i.i.d. N(0, 1) entries (the theory needs exactly
    this), a (1, width) has N(0, 1/width) entries so that f(x) = O(1).
    activation: "tanh", "sigmoid", "relu", "gelu" or "softplus".
    """
    acts = {"tanh": torch.nn.Tanh, "sigmoid": torch.nn.Sigmoid, "relu": torch.nn.ReLU,
            "gelu": torch.nn.GELU, "softplus": torch.nn.Softplus}
    if activation not in acts:
        raise ValueError(f"unknown activation {activation!r}; choose one of "
                         f"{sorted(acts)}")
    if d < 1 or width < 1:
        raise ValueError(f"d and width must be positive, got d={d}, width={width}")
    gen = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(d, width, bias=False), acts[activation](),
                              torch.nn.Linear(width, 1, bias=False)).to(dtype)
    with torch.no_grad():
        net[0].weight.copy_(torch.randn(width, d, generator=gen, dtype=dtype))
        net[2].weight.copy_(torch.randn(1, width, generator=gen, dtype=dtype)
                            / math.sqrt(width))
    return net


def hermite_coefficient(sigma: Callable, p: int) -> float:
    """c_p = E[sigma(z) He_p(z)] = E[sigma^(p)(z)] for z ~ N(0, 1), p in 0..4.

    Computed by the trapezoid rule on [-12, 12] with 2^17 points, which is
    accurate to ~1e-9 even for kinked activations such as ReLU.
    """
    he = {0: lambda z: torch.ones_like(z), 1: lambda z: z, 2: lambda z: z ** 2 - 1,
          3: lambda z: z ** 3 - 3 * z, 4: lambda z: z ** 4 - 6 * z ** 2 + 3}
    if p not in he:
        raise ValueError(f"p must be in 0..4, got {p}")
    z = torch.linspace(-12.0, 12.0, 2 ** 17 + 1, dtype=torch.float64)
    with torch.no_grad():
        s = torch.as_tensor(sigma(z), dtype=torch.float64)
    if s.shape != z.shape or not torch.isfinite(s).all():
        raise ValueError("the activation must map a 1-D tensor to finite values "
                         "of the same shape")
    dens = torch.exp(-z ** 2 / 2) / math.sqrt(2 * math.pi)
    return float(torch.trapezoid(s * he[p](z) * dens, z))


def _single_threaded(fn):
    """Run ``fn`` on one torch thread: its products are small, and on a shared CPU
    thread synchronisation costs more than it saves (measured 5-10x slower)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(n)
    return run


def _sym3(t: torch.Tensor) -> torch.Tensor:
    """Average of a (d, d, d) tensor over the 6 permutations of its indices."""
    perms = [(0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)]
    return sum(t.permute(*p) for p in perms) / 6


def _split(model_or_weights, grads):
    """(W (m, d), a (m,), sigma, gW (m, d), ga (m,)) from a model or a tuple."""
    if isinstance(model_or_weights, torch.nn.Module):
        mods = list(model_or_weights.children())
        ok = (isinstance(model_or_weights, torch.nn.Sequential) and len(mods) == 3
              and isinstance(mods[0], torch.nn.Linear)
              and isinstance(mods[2], torch.nn.Linear)
              and mods[0].bias is None and mods[2].bias is None
              and mods[2].out_features == 1)
        if not ok:
            raise TypeError("tensor_decomposition needs Sequential(Linear(d, m, "
                            "bias=False), activation, Linear(m, 1, bias=False)); "
                            "build one with random_two_layer")
        W, a, sigma = mods[0].weight, mods[2].weight.reshape(-1), mods[1]
    elif isinstance(model_or_weights, (tuple, list)) and len(model_or_weights) == 3:
        W, a, sigma = model_or_weights
        if not (isinstance(W, torch.Tensor) and isinstance(a, torch.Tensor)):
            raise TypeError("weights must be a tuple (W (m, d), a (m,), activation)")
        a = a.reshape(-1)
    else:
        raise TypeError("model_or_weights must be a two-layer Sequential or a tuple "
                        f"(W, a, activation), got {type(model_or_weights).__name__}")
    if not callable(sigma):
        raise TypeError("the activation must be callable")
    grads = list(grads)
    if len(grads) != 2:
        raise ValueError(f"expected 2 gradient tensors (first layer, output layer), "
                         f"got {len(grads)}")
    gW, ga = grads[0], grads[1].reshape(-1)
    if W.dim() != 2 or gW.shape != W.shape or ga.shape != a.shape or len(a) != len(W):
        raise ValueError(f"shapes do not line up: W {tuple(W.shape)}, a "
                         f"{tuple(a.shape)}, grads {tuple(grads[0].shape)} and "
                         f"{tuple(grads[1].shape)}: gradients of another model?")
    for name, t in (("W", W), ("a", a), ("grad W", gW), ("grad a", ga)):
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    return (W.detach().double(), a.detach().double(), sigma, gW.detach().double(),
            ga.detach().double())


@_single_threaded
def moment_tensor(W: torch.Tensor, a: torch.Tensor, grad_W: torch.Tensor,
                  grad_a: torch.Tensor, gradient: str = "first", groups: int = 16,
                  chunk: int = 8192) -> tuple[torch.Tensor, float]:
    """Estimate c_3 sum_i r_i x_i^(x)3 from one gradient; also its standard error.

    W: (m, d) first-layer weights, a: (m,) output weights, grad_W: (m, d) and
    grad_a: (m,) their gradients. gradient: "first" uses
    (dL/dw_j / a_j) (x) He_2(w_j), "output" uses dL/da_j He_3(w_j).
    The neurons are split into ``groups`` contiguous blocks; the spread of the
    block means gives the standard error of the estimate (batch means), so the
    attacker can tell how noisy it is without the truth. Work is chunked over
    neurons: memory is O(chunk d^2), time O(m d^3).
    Returns T (d, d, d), symmetrised, and the estimated Frobenius error.
    """
    if gradient not in ("first", "output"):
        raise ValueError(f"gradient must be 'first' or 'output', got {gradient!r}")
    m, d = W.shape
    groups = max(2, min(groups, m))
    if gradient == "first":
        if (a == 0).any():
            raise ValueError("an output weight a_j is exactly 0: dL/dw_j / a_j is "
                             "undefined; drop those neurons or use gradient='output'")
        G = grad_W / a[:, None]
    eye = torch.eye(d, dtype=torch.float64)
    bounds = np.linspace(0, m, groups + 1).astype(int)
    parts = []
    for g in range(groups):
        acc = torch.zeros(d, d * d, dtype=torch.float64)
        lin = torch.zeros(d, dtype=torch.float64)
        for s in range(bounds[g], bounds[g + 1], chunk):
            e = min(s + chunk, bounds[g + 1])
            w = W[s:e]
            ww = (w[:, :, None] * w[:, None, :]).reshape(e - s, d * d)
            if gradient == "first":
                acc += G[s:e].T @ ww                   # sum G_j (x) w_j w_j^T
                lin += G[s:e].sum(0)                   # sum G_j, for G_j (x) I
            else:
                acc += (grad_a[s:e, None] * w).T @ ww  # sum g_j w_j^(x)3
                lin += grad_a[s:e] @ w                 # sum g_j w_j, for sym(w (x) I)
        n = bounds[g + 1] - bounds[g]
        t = acc.reshape(d, d, d)
        if gradient == "first":
            t = t - lin[:, None, None] * eye[None]
        else:
            t = t - 3 * _sym3(lin[:, None, None] * eye[None])
        parts.append(_sym3(t) / n)
    parts = torch.stack(parts)
    sizes = torch.as_tensor(np.diff(bounds), dtype=torch.float64)
    T = (parts * sizes[:, None, None, None]).sum(0) / m
    spread = ((parts - T) ** 2).sum((1, 2, 3))
    # per-neuron variance s^2 ~ sum_g n_g ||T_g - T||^2 / (G - 1); Var(T) = s^2 / m
    err = math.sqrt(float((sizes * spread).sum()) / ((groups - 1) * m))
    return T, err


def cp_tensor(weights: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """sum_k weights[k] u_k (x) u_k (x) u_k for U (B, d): a (d, d, d) tensor."""
    return torch.einsum("k,ka,kb,kc->abc", weights, U, U, U)


def _fit_weights(T: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """Least-squares weights of fixed unit directions U (B, d) for the tensor T."""
    G = (U @ U.T) ** 3
    rhs = torch.einsum("abc,ka,kb,kc->k", T, U, U, U)
    return torch.linalg.lstsq(G, rhs[:, None]).solution[:, 0]


def _als(T: torch.Tensor, U: torch.Tensor, iters: int):
    """Symmetric ALS: U <- T_(1) (U * U) / ((U U^T)^2 (x) lambda), rows normalised."""
    d = T.shape[0]
    T1 = T.reshape(d, d * d)
    lam = _fit_weights(T, U)
    for _ in range(iters):
        kr = (U[:, :, None] * U[:, None, :]).reshape(len(U), d * d)   # (B, d^2)
        gram = (U @ U.T) ** 2
        V = torch.linalg.lstsq(gram, kr @ T1.T).solution               # (B, d)
        norms = V.norm(dim=1, keepdim=True)
        if (norms < 1e-300).any():
            break
        U = V / norms
        lam = _fit_weights(T, U)
    return U, lam


def _cube_sum(V: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ka,kb,kc->abc", V, V, V)


def _cube_jacobian(V: torch.Tensor) -> torch.Tensor:
    """d vec(sum_k v_k^(x)3) / d vec(V): (d^3, B d)."""
    B, d = V.shape
    vv = (V[:, :, None] * V[:, None, :]).permute(1, 2, 0)       # (d, d, B)
    J = torch.zeros(d, d, d, B, d, dtype=V.dtype)
    ar = torch.arange(d)
    J[ar, :, :, :, ar] += vv
    J[:, ar, :, :, ar] += vv
    J[:, :, ar, :, ar] += vv
    return J.reshape(d ** 3, B * d)


def _refine_lm(T: torch.Tensor, U: torch.Tensor, lam: torch.Tensor, iters: int):
    """Levenberg-Marquardt on ||T - sum_k v_k^(x)3||^2 with v_k = cbrt(lambda_k) u_k.

    Writing lambda u^(x)3 = (cbrt(lambda) u)^(x)3 removes the scale and sign
    constraints; the Jacobian of v^(x)3 is analytic. Returns (U, lambda).
    """
    V = (torch.sign(lam) * lam.abs() ** (1 / 3))[:, None] * U
    r = _cube_sum(V) - T
    cost, mu = float((r ** 2).sum()), 1e-3
    for _ in range(iters):
        J = _cube_jacobian(V)
        H, g = J.T @ J, J.T @ r.reshape(-1)
        step = torch.linalg.solve(H + mu * torch.diag(H.diagonal() + 1e-12), -g)
        V_new = V + step.reshape(V.shape)
        r_new = _cube_sum(V_new) - T
        cost_new = float((r_new ** 2).sum())
        if math.isfinite(cost_new) and cost_new < cost:
            done = cost - cost_new < 1e-12 * cost
            V, r, cost, mu = V_new, r_new, cost_new, max(mu / 3, 1e-12)
            if done:
                break
        else:
            mu *= 4
            if mu > 1e8:
                break
    norms = V.norm(dim=1)
    if not torch.isfinite(V).all() or (norms < 1e-300).any():
        return U, lam
    return V / norms[:, None], norms ** 3


@_single_threaded
def symmetric_cp(T: torch.Tensor, rank: int, trials: int = 8, als_iters: int = 20,
                 lm_iters: int = 100, seed: int = 0) -> dict:
    """Rank-``rank`` symmetric CP decomposition T ~ sum_k lambda_k u_k^(x)3.

    T: (d, d, d) symmetric, rank <= d. Jennrich's algorithm in the span of the
    components: U = top singular vectors of the unfolding T_(1) (d, d^2); two
    random contractions M1, M2 of the reduced core; the eigenvectors of
    M1 M2^-1 are the components. Each of ``trials`` random pairs is refined by
    ``als_iters`` steps of symmetric ALS, then by Levenberg-Marquardt (at most
    ``lm_iters`` iterations; 0 skips it), and the one with the smallest
    residual ||T - fit|| / ||T|| is kept (the loop stops early once two trials
    agree on the smallest residual): the choice never looks at the truth.
    Returns dict(directions (rank, d) unit rows, weights (rank,), residual,
    residuals of all trials).
    """
    if T.dim() != 3 or len(set(T.shape)) != 1:
        raise ValueError(f"T must be a cubic (d, d, d) tensor, got {tuple(T.shape)}")
    d = T.shape[0]
    if not 1 <= rank <= d:
        raise ValueError(f"rank must lie in 1..d = {d} for Jennrich's algorithm, "
                         f"got {rank}")
    norm = float(T.norm())
    if norm == 0 or not math.isfinite(norm):
        raise ValueError("the tensor is zero or not finite: nothing to decompose")
    T = T.double()
    Us = torch.linalg.svd(T.reshape(d, d * d), full_matrices=False).U[:, :rank]
    core = torch.einsum("abc,ai,bj,ck->ijk", T, Us, Us, Us)
    gen = torch.Generator().manual_seed(seed)
    best, residuals = None, []
    for _ in range(trials):
        th = torch.randn(2, rank, generator=gen, dtype=torch.float64)
        M1, M2 = core @ th[0], core @ th[1]
        vals, vecs = np.linalg.eig(M1.numpy() @ np.linalg.pinv(M2.numpy()))
        V = torch.as_tensor(np.real(vecs), dtype=torch.float64)
        U = (Us @ V).T
        U = U / U.norm(dim=1, keepdim=True).clamp_min(1e-300)
        U, lam = _als(T, U, als_iters)
        if lm_iters > 0:
            U, lam = _refine_lm(T, U, lam, lm_iters)
        res = float((T - cp_tensor(lam, U)).norm()) / norm
        residuals.append(res)
        if math.isfinite(res) and (best is None or res < best[0]):
            best = (res, U, lam)
        # two trials that reach the same smallest residual: a third will not beat it
        if best is not None and sum(abs(v - best[0]) <= 1e-6 * best[0]
                                    for v in residuals) >= 2:
            break
    if best is None:
        raise ValueError("every Jennrich trial failed (non-finite residual)")
    return {"directions": best[1], "weights": best[2], "residual": best[0],
            "trial_residuals": residuals}


def tensor_decomposition(model_or_weights, grads, batch_size: int,
                         gradient: str = "first", trials: int = 8,
                         als_iters: int = 20, lm_iters: int = 100, chunk: int = 8192,
                         seed: int = 0) -> Reconstruction:
    """Recover a batch's unit-norm inputs from one gradient of a random 2-layer net.

    model_or_weights: ``random_two_layer``-style Sequential, or a tuple
        (W (m, d), a (m,), activation callable).
    grads: [dL/dW (m, d), dL/da (1, m)], e.g. ``lb.fl.shared_gradients(net, x,
        y, loss="mse")``. Any loss works: it only sets the residuals r_i.
    batch_size: B, the CP rank; Jennrich's algorithm needs B <= d.
    gradient: "first" (dL/dW with He_2), "output" (dL/da with He_3) or "both"
        (the two estimates averaged with inverse-variance weights).
    Returns a Reconstruction with images (B, d): unit vectors, each equal to
    an input up to sign (for an odd activation the sign is not identifiable),
    in no particular order. stats: weights lambda_i ~ c_3 r_i, residual
    (relative CP fit error), tensor_error_estimate (estimated relative error of
    the moment tensor, from batch means), c3, gradient, width, trial residuals,
    tensor (the (d, d, d) estimate itself).
    Raises ValueError for B > d, an activation with c_3 = 0 (ReLU), or a zero
    output weight with gradient="first"; TypeError for other architectures.
    """
    t0 = time.perf_counter()
    W, a, sigma, gW, ga = _split(model_or_weights, grads)
    m, d = W.shape
    if gradient not in GRADIENTS:
        raise ValueError(f"gradient must be one of {GRADIENTS}, got {gradient!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if batch_size > d:
        raise ValueError(f"batch_size {batch_size} exceeds the input dimension d = {d}:"
                         " B > d inputs cannot be linearly independent, and Jennrich's"
                         " algorithm needs B <= d")
    c3, c_rms = hermite_coefficient(sigma, 3), math.sqrt(hermite_coefficient(
        lambda z: sigma(z) ** 2, 0))
    if abs(c3) < 1e-6 * max(c_rms, 1e-12):
        raise ValueError(f"the activation's third Hermite coefficient E[sigma'''(z)] "
                         f"is {c3:.1e}, i.e. zero: the order-3 moment tensor vanishes "
                         "(ReLU is such a case) and this attack sees nothing")
    if gradient == "both":
        (T1, e1), (T2, e2) = (moment_tensor(W, a, gW, ga, g, chunk=chunk)
                              for g in ("first", "output"))
        w1, w2 = 1 / max(e1, 1e-300) ** 2, 1 / max(e2, 1e-300) ** 2
        T = (w1 * T1 + w2 * T2) / (w1 + w2)
        err = 1 / math.sqrt(w1 + w2)
    else:
        T, err = moment_tensor(W, a, gW, ga, gradient, chunk=chunk)
    cp = symmetric_cp(T, batch_size, trials=trials, als_iters=als_iters,
                      lm_iters=lm_iters, seed=seed)
    stats = {"weights": cp["weights"], "residual": cp["residual"],
             "trial_residuals": cp["trial_residuals"],
             "tensor_error_estimate": err / float(T.norm()), "c3": c3,
             "gradient": gradient, "width": m, "tensor": T}
    return Reconstruction(images=cp["directions"], labels=None, loss_history=[],
                          wall_time=time.perf_counter() - t0, stats=stats)


def direction_cosines(U_hat: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    """|cos| between each true input X[i] (B, d) and its best-matched U_hat row.

    Sign-invariant and order-invariant (Hungarian on |cos|); a metric, so it
    reads the truth. Returns (B,) in the order of X.
    """
    from scipy.optimize import linear_sum_assignment
    U_hat, X = U_hat.double(), X.double().flatten(1)
    if U_hat.shape != X.shape:
        raise ValueError(f"shapes differ: {tuple(U_hat.shape)} vs {tuple(X.shape)}")
    C = (X / X.norm(dim=1, keepdim=True)) @ (U_hat / U_hat.norm(dim=1, keepdim=True)).T
    rows, cols = linear_sum_assignment(-C.abs().numpy())
    return C.abs()[rows, cols]
