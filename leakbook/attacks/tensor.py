"""Provable reconstruction from one gradient of a random two-layer network.

Taught in chapter 09 (after Wang, Lee & Lei, AISTATS 2023). For
f(x) = sum_j a_j sigma(w_j^T x) with w_j ~ N(0, I_d), Stein's lemma gives
E_w[sigma(w^T x) He_p(w)] = c_p x^{(x)p} for unit-norm x, with the Hermite
coefficient c_p = E_z[sigma^(p)(z)], z ~ N(0, 1). A batch gradient therefore
holds a Monte-Carlo estimate, over the m neurons, of the moment tensor

    T = c_3 sum_i r_i x_i (x) x_i (x) x_i,   r_i = dL/df(x_i),

from the first layer, (1/m) sum_j (dL/dw_j / a_j) (x) He_2(w_j), or from the
output layer, (1/m) sum_j dL/da_j He_3(w_j). (An input of another norm keeps
its direction in T; only its weight changes, to r_i E[sigma'''(|x_i| z)]
|x_i|^3.) A symmetric rank-B CP decomposition of the estimate (Jennrich's
simultaneous diagonalisation, refined by alternating least squares and
Levenberg-Marquardt) returns the inputs up to sign.

Two steps make this work at the size of an image (d = 64):

- projection: each per-neuron first-layer gradient
  G_j = dL/dw_j / a_j = sum_i r_i sigma'(w_j^T x_i) x_i lies in span{x_i}, so
  the top-B eigenvectors Q (d, B) of sum_j G_j G_j^T span the batch exactly.
  As w_j^T x_i = (Q^T w_j)^T (Q^T x_i) and Q^T w_j ~ N(0, I_B), the whole
  estimate can be made in B dimensions (a B x B x B tensor), then lifted by Q.
- control variates: G_j = F(Q^T w_j) is a function of a Gaussian vector whose
  Hermite expansion has the order-2 coefficients E[grad^2 F] = T. A least-
  squares fit of F on all low-order Hermite features of Q^T w_j, read at
  order 2, drops the noise that the other orders explain and that the plain
  average keeps.

Width plays the role of sample size: the error falls as 1/sqrt(m).
"""
from __future__ import annotations

import functools
import itertools
import math
import time
from collections import Counter
from typing import Callable

import numpy as np
import torch

from .result import Reconstruction

__all__ = ["random_two_layer", "hermite_coefficient", "moment_tensor", "input_span",
           "projected_moment_tensor", "symmetric_cp", "cp_tensor",
           "tensor_decomposition", "as_images", "direction_cosines"]

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


#: highest Hermite order this module evaluates
MAX_ORDER = 8


def _hermite_polys(z: torch.Tensor, n: int) -> list[torch.Tensor]:
    """[He_0(z), ..., He_n(z)], probabilists' Hermite polynomials, by recursion
    He_{k+1}(z) = z He_k(z) - k He_{k-1}(z)."""
    out = [torch.ones_like(z), z]
    for k in range(1, n):
        out.append(z * out[k] - k * out[k - 1])
    return out[:n + 1]


def hermite_coefficient(sigma: Callable, p: int) -> float:
    """c_p = E[sigma(z) He_p(z)] = E[sigma^(p)(z)] for z ~ N(0, 1), p in 0..8.

    Computed by the trapezoid rule on [-12, 12] with 2^17 points, which is
    accurate to ~1e-9 even for kinked activations such as ReLU.
    """
    if isinstance(p, bool) or not isinstance(p, int) or not 0 <= p <= MAX_ORDER:
        raise ValueError(f"p must be an integer in 0..{MAX_ORDER}, got {p!r}")
    z = torch.linspace(-12.0, 12.0, 2 ** 17 + 1, dtype=torch.float64)
    with torch.no_grad():
        s = torch.as_tensor(sigma(z), dtype=torch.float64)
    if s.shape != z.shape or not torch.isfinite(s).all():
        raise ValueError("the activation must map a 1-D tensor to finite values "
                         "of the same shape")
    dens = torch.exp(-z ** 2 / 2) / math.sqrt(2 * math.pi)
    return float(torch.trapezoid(s * _hermite_polys(z, max(p, 1))[p] * dens, z))


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


@_single_threaded
def input_span(grad_W: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Orthonormal basis of the batch's span, read off the first-layer gradient.

    grad_W: (m, d) dL/dW. Each row a_j sum_i r_i sigma'(w_j^T x_i) x_i is a
    combination of the inputs, so the top-``rank`` eigenvectors of
    grad_W^T grad_W (d, d) span {x_i} exactly when the B = rank inputs are
    linearly independent: no Monte-Carlo noise, only round-off.
    Returns Q (d, rank) with orthonormal columns, and all d eigenvalues,
    largest first, divided by the largest: a (rank + 1)-th value far above
    round-off (~1e-15) says the batch has more than ``rank`` independent inputs.
    Taught in chapter 09.
    """
    if grad_W.dim() != 2:
        raise ValueError(f"grad_W must be (m, d), got {tuple(grad_W.shape)}")
    if isinstance(rank, bool) or not isinstance(rank, int) \
            or not 1 <= rank <= grad_W.shape[1]:
        raise ValueError(f"rank must be an integer in 1..d = {grad_W.shape[1]}, "
                         f"got {rank!r}")
    G = grad_W.detach().double()
    vals, vecs = torch.linalg.eigh(G.T @ G)
    vals, vecs = vals.flip(0), vecs.flip(1)
    top = float(vals[0])
    if not top > 0:
        raise ValueError("the first-layer gradient is zero: nothing to project on")
    return vecs[:, :rank].contiguous(), vals.clamp_min(0) / top


def _feature_plan(B: int, degrees) -> dict:
    """The multivariate Hermite features He_alpha(z) = prod_k He_{alpha_k}(z_k)
    of total degree |alpha| in ``degrees``, as column indices into a table of
    univariate values (column k (D + 1) + p holds He_p(z_k); column 0 is 1).

    Returns cols (K, D) long, root_fact (K,) sqrt(alpha!) (so that
    He_alpha / sqrt(alpha!) has unit variance under N(0, I_B)), and the
    coordinates of each feature (a tuple of length |alpha|, sorted).
    """
    D = max(max(degrees), 1)
    cols, root_fact, coords = [], [], []
    for deg in sorted(set(degrees)):
        for combo in itertools.combinations_with_replacement(range(B), deg):
            counts = Counter(combo)
            idx = [k * (D + 1) + p for k, p in sorted(counts.items())]
            cols.append(idx + [0] * (D - len(idx)))
            root_fact.append(math.sqrt(math.prod(math.factorial(p)
                                                 for p in counts.values())))
            coords.append(combo)
    return {"cols": torch.tensor(cols, dtype=torch.long), "D": D,
            "root_fact": torch.tensor(root_fact, dtype=torch.float64),
            "coords": coords}


def _features(Z: torch.Tensor, plan: dict) -> torch.Tensor:
    """Normalised Hermite features (n, K) of the rows of Z (n, B)."""
    table = torch.stack(_hermite_polys(Z, plan["D"]), dim=2).reshape(len(Z), -1)
    return table[:, plan["cols"]].prod(-1) / plan["root_fact"]


def feature_count(B: int, degrees) -> int:
    """Number of Hermite features of total degree in ``degrees`` in B variables."""
    return sum(math.comb(B + k - 1, k) for k in set(degrees))


def _spd_solve(A: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    """Solve A X = rhs for symmetric positive (semi-)definite A by Cholesky.

    Bit-reproducible from call to call (``torch.linalg.lstsq`` was not: its
    result moved by ~1e-15 between identical calls). A singular A gets the
    smallest diagonal jitter, relative to its largest diagonal entry, that
    makes the factorisation succeed.
    """
    eye = torch.eye(len(A), dtype=A.dtype)
    scale = float(A.diagonal().abs().max()) or 1.0
    for jitter in (0.0, 1e-14, 1e-12, 1e-10, 1e-8, 1e-6):
        L, info = torch.linalg.cholesky_ex(A + jitter * scale * eye)
        if int(info) == 0:
            return torch.cholesky_solve(rhs, L)
    raise ValueError("the normal equations are not positive definite even with "
                     "jitter: the directions are degenerate or not finite")


@_single_threaded
def projected_moment_tensor(W: torch.Tensor, a: torch.Tensor, grad_W: torch.Tensor,
                            grad_a: torch.Tensor, basis: torch.Tensor,
                            gradient: str = "first", degrees=None,
                            chunk: int = 8192) -> tuple[torch.Tensor, float]:
    """Estimate c_3 sum_i r_i v_i^(x)3, v_i = Q^T x_i, in the batch's span.

    W: (m, d), a: (m,), grad_W: (m, d), grad_a: (m,), basis Q: (d, B) from
    ``input_span``. With z_j = Q^T w_j ~ N(0, I_B), the estimate is made from
    gradient="first": y_j = Q^T dL/dw_j / a_j (B values per neuron), read at
        Hermite order 2: E[y He_ab(z)] = c_3 sum_i r_i v_i[.] v_i[a] v_i[b];
    gradient="output": y_j = dL/da_j (one value), read at order 3.
    degrees: None for the plain Monte-Carlo mean (1/m) sum_j y_j He_alpha(z_j)
        over the read order's features; or the Hermite degrees of a least-
        squares fit of y on He_alpha(z), |alpha| in ``degrees`` (which must
        contain the read order): control variates. The fit's coefficients at
        the read order are the estimate; the other orders only absorb noise.
    Returns T (B, B, B), symmetrised, and its estimated Frobenius error (from
    the per-coefficient variances: sample variance of the mean, or the least-
    squares covariance s^2 (Phi^T Phi)^-1), computed without the truth.
    Memory O(chunk K) for K features; time O(m K^2). Taught in chapter 09.
    """
    if gradient not in ("first", "output"):
        raise ValueError(f"gradient must be 'first' or 'output', got {gradient!r}")
    read = 2 if gradient == "first" else 3
    m, B = len(W), basis.shape[1]
    fit = degrees is not None
    degrees = sorted(set(degrees)) if fit else [read]
    if read not in degrees:
        raise ValueError(f"degrees must contain the read order {read} for "
                         f"gradient={gradient!r}, got {degrees}")
    plan = _feature_plan(B, degrees)
    K = len(plan["coords"])
    if fit and m <= 2 * K:
        raise ValueError(f"{K} Hermite features need more than {2 * K} neurons, got "
                         f"m = {m}: use fewer degrees or degrees=None")
    if gradient == "first":
        if (a == 0).any():
            raise ValueError("an output weight a_j is exactly 0: dL/dw_j / a_j is "
                             "undefined; drop those neurons or use gradient='output'")
    n_out = B if gradient == "first" else 1
    pick = [k for k, c in enumerate(plan["coords"]) if len(c) == read]

    def blocks():
        """(features (n, K), responses (n, n_out)) over blocks of neurons."""
        for s in range(0, m, chunk):
            e = min(s + chunk, m)
            Y = (grad_W[s:e] / a[s:e, None]) @ basis if gradient == "first" \
                else grad_a[s:e, None]
            yield _features(W[s:e] @ basis, plan), Y

    A = torch.zeros(K, K, dtype=torch.float64)
    Pty = torch.zeros(K, n_out, dtype=torch.float64)
    var = torch.zeros(len(pick), n_out, dtype=torch.float64)
    for Phi, Y in blocks():
        Pty += Phi.T @ Y
        if fit:
            A += Phi.T @ Phi
        else:
            var += (Phi[:, pick] ** 2).T @ (Y ** 2)
    if fit:
        coef = _spd_solve(A, Pty)                                  # (K, n_out)
        # heteroscedasticity-robust (sandwich) variance of the read coefficients:
        # Var(coef_k) = sum_j (Phi A^-1)_jk^2 e_j^2, e = residuals of the fit
        infl = _spd_solve(A, torch.eye(K, dtype=torch.float64)[:, pick])
        for Phi, Y in blocks():
            var += ((Phi @ infl) ** 2).T @ ((Y - Phi @ coef) ** 2)
        coef = coef[pick]
    else:
        coef = Pty[pick] / m
        var = (var / m - coef ** 2).clamp_min(0) / m
    rf = plan["root_fact"][pick, None]
    entries, variances = coef * rf, var * rf ** 2
    T = torch.zeros((B,) * 3, dtype=torch.float64)
    V = torch.zeros((B,) * 3, dtype=torch.float64)
    for k, combo in enumerate(plan["coords"][i] for i in pick):
        if gradient == "first":
            for perm in {combo, combo[::-1]}:
                T[(slice(None), *perm)] = entries[k]
                V[(slice(None), *perm)] = variances[k]
        else:
            for perm in set(itertools.permutations(combo)):
                T[perm] = entries[k, 0]
                V[perm] = variances[k, 0]
    if gradient == "first":
        T = _sym3(T)
        # T_s[abc] = (T[a,bc] + T[b,ac] + T[c,ab]) / 3; two of the three are the
        # same estimate when two indices coincide
        i = torch.arange(B)
        eq_ab = (i[:, None, None] == i[None, :, None]).double()
        eq_ac = (i[:, None, None] == i[None, None, :]).double()
        eq_bc = (i[None, :, None] == i[None, None, :]).double()
        V1, V2, V3 = V, V.permute(1, 0, 2), V.permute(1, 2, 0)
        V = (V1 + V2 + V3 + 2 * eq_ab * V1 + 2 * eq_ac * V1 + 2 * eq_bc * V2) / 9
    return T, math.sqrt(float(V.sum()))


def cp_tensor(weights: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """sum_k weights[k] u_k (x) u_k (x) u_k for U (B, d): a (d, d, d) tensor."""
    return torch.einsum("k,ka,kb,kc->abc", weights, U, U, U)


def _fit_weights(T: torch.Tensor, U: torch.Tensor) -> torch.Tensor:
    """Least-squares weights of fixed unit directions U (B, d) for the tensor T."""
    G = (U @ U.T) ** 3
    rhs = torch.einsum("abc,ka,kb,kc->k", T, U, U, U)
    return _spd_solve(G, rhs[:, None])[:, 0]


def _als(T: torch.Tensor, U: torch.Tensor, iters: int):
    """Symmetric ALS: U <- T_(1) (U * U) / ((U U^T)^2 (x) lambda), rows normalised."""
    d = T.shape[0]
    T1 = T.reshape(d, d * d)
    lam = _fit_weights(T, U)
    for _ in range(iters):
        kr = (U[:, :, None] * U[:, None, :]).reshape(len(U), d * d)   # (B, d^2)
        gram = (U @ U.T) ** 2
        V = _spd_solve(gram, kr @ T1.T)                                # (B, d)
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
        step = _spd_solve(H + mu * torch.diag(H.diagonal() + 1e-12), -g[:, None])[:, 0]
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
        vecs = torch.linalg.eig(M1 @ torch.linalg.pinv(M2)).eigenvectors
        V = vecs.real.contiguous()
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


def _cv_degrees(sigma, gradient: str, control_variates, B: int, m: int,
                c_rms: float):
    """Hermite degrees of the control-variate fit, or None for the plain mean.

    Degree k enters only if the activation lets it be nonzero: the order-k
    part of the first-layer y_j is sum_i r_i c_{k+1} (...), of the output-layer
    y_j sum_i r_i c_k (...). "auto": the highest top degree in read..read + 2
    whose feature count is at most min(m / 20, 1000) (time is O(m K^2)).
    """
    if control_variates is None:
        return None
    read, shift = (2, 1) if gradient == "first" else (3, 0)

    def degrees(top):
        return [k for k in range(top + 1) if k == read or abs(hermite_coefficient(
            sigma, k + shift)) > 1e-6 * max(c_rms, 1e-12)]

    if control_variates == "auto":
        for top in (read + 2, read + 1, read):
            if feature_count(B, degrees(top)) <= min(m / 20, 1000):
                return degrees(top)
        return None
    if isinstance(control_variates, bool) or not isinstance(control_variates, int) \
            or not read <= control_variates <= MAX_ORDER - shift:
        raise ValueError(f"control_variates must be None, 'auto' or an integer in "
                         f"{read}..{MAX_ORDER - shift} (the highest Hermite degree "
                         f"of the fit) for gradient={gradient!r}, got "
                         f"{control_variates!r}")
    return degrees(control_variates)


@_single_threaded
def tensor_decomposition(model_or_weights, grads, batch_size: int,
                         gradient: str = "first", trials: int = 8,
                         als_iters: int = 20, lm_iters: int = 100, chunk: int = 8192,
                         seed: int = 0, project: bool = True,
                         control_variates="auto") -> Reconstruction:
    """Recover a batch's input directions from one gradient of a random 2-layer net.

    model_or_weights: ``random_two_layer``-style Sequential, or a tuple
        (W (m, d), a (m,), activation callable). The estimate assumes the
        rows of W were drawn i.i.d. N(0, I_d) and that the activation is the
        one given; the attacker (who chose the weights) knows both.
    grads: [dL/dW (m, d), dL/da (1, m)], e.g. ``lb.fl.shared_gradients(net, x,
        y, loss="mse")``. Any loss works: it only sets the residuals r_i.
    batch_size: B, the CP rank; Jennrich's algorithm needs B <= d. (The
        spectrum in stats["span_eigenvalues"] shows B: B values well above 0.)
    gradient: which gradient estimates T = c_3 sum_i r_i x_i^(x)3: "first"
        (dL/dw_j / a_j against He_2(w_j)), "output" (dL/da_j against He_3(w_j))
        or "both" (the two estimates averaged with inverse-variance weights).
    project: estimate T in the span of the batch, read off dL/dW exactly
        (``input_span``; used by every ``gradient``), and decompose a B x B x B
        tensor instead of a d x d x d one; False is the plain d-dimensional
        estimate (``moment_tensor``), feasible for d up to about 20.
    control_variates: with ``project``, the highest Hermite degree of the
        least-squares fit whose read-order coefficients are the estimate
        (``projected_moment_tensor``); None for the plain Monte-Carlo mean;
        "auto" (default) picks the highest of read..read + 2 with at most
        min(m / 20, 1000) features (B = 8 and m >= 7,340: degrees 0, 2, 4 for
        tanh, 367 features). Without ``project`` only None or "auto" (both
        mean the plain estimate) are accepted.
    trials, als_iters, lm_iters, seed: for ``symmetric_cp``; chunk: neurons
        per block.
    Returns a Reconstruction with images (B, d): unit vectors, each equal to
    an input's direction up to sign (for an odd activation the sign is not
    identifiable), in no particular order. stats: weights lambda_i (= c_3 r_i
    for unit-norm inputs), residual (relative CP fit error),
    tensor_error_estimate (estimated relative error of the decomposed tensor,
    computed without the truth), c3, gradient, width, trial residuals, tensor
    (the tensor decomposed: (B, B, B) in the basis, or (d, d, d)), basis
    (Q (d, B), or None), span_eigenvalues, cv_degrees, features.
    Calls with the same arguments are bit-identical, whatever the caller's
    thread count (the call runs on one thread, with Cholesky solves and
    seeded trials).
    Raises ValueError for B > d, an activation with c_3 = 0 (ReLU), or a zero
    output weight with gradient="first"; TypeError for other architectures.
    """
    t0 = time.perf_counter()
    W, a, sigma, gW, ga = _split(model_or_weights, grads)
    m, d = W.shape
    if gradient not in GRADIENTS:
        raise ValueError(f"gradient must be one of {GRADIENTS}, got {gradient!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) \
            or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if batch_size > d:
        raise ValueError(f"batch_size {batch_size} exceeds the input dimension d = {d}:"
                         " B > d inputs cannot be linearly independent, and Jennrich's"
                         " algorithm needs B <= d")
    if not isinstance(project, bool):
        raise TypeError(f"project must be True or False, got {project!r}")
    if not project and control_variates not in (None, "auto"):
        raise ValueError("control_variates need project=True (the Hermite features "
                         "live in the B-dimensional span); pass control_variates=None")
    c3, c_rms = hermite_coefficient(sigma, 3), math.sqrt(hermite_coefficient(
        lambda z: sigma(z) ** 2, 0))
    if abs(c3) < 1e-6 * max(c_rms, 1e-12):
        raise ValueError(f"the activation's third Hermite coefficient E[sigma'''(z)] "
                         f"is {c3:.1e}, i.e. zero: the order-3 moment tensor vanishes "
                         "(ReLU is such a case) and this attack sees nothing")
    routes = ("first", "output") if gradient == "both" else (gradient,)
    basis, spectrum, cv = None, None, {}
    if project:
        basis, spectrum = input_span(gW, batch_size)
        estimates = []
        for g in routes:
            cv[g] = _cv_degrees(sigma, g, control_variates, batch_size, m, c_rms)
            estimates.append(projected_moment_tensor(W, a, gW, ga, basis, g, cv[g],
                                                     chunk=chunk))
    else:
        estimates = [moment_tensor(W, a, gW, ga, g, chunk=chunk) for g in routes]
    if len(estimates) == 2:
        (T1, e1), (T2, e2) = estimates
        w1, w2 = 1 / max(e1, 1e-300) ** 2, 1 / max(e2, 1e-300) ** 2
        T, err = (w1 * T1 + w2 * T2) / (w1 + w2), 1 / math.sqrt(w1 + w2)
    else:
        T, err = estimates[0]
    cp = symmetric_cp(T, batch_size, trials=trials, als_iters=als_iters,
                      lm_iters=lm_iters, seed=seed)
    U = cp["directions"] if basis is None else cp["directions"] @ basis.T
    stats = {"weights": cp["weights"], "residual": cp["residual"],
             "trial_residuals": cp["trial_residuals"],
             "tensor_error_estimate": err / float(T.norm()), "c3": c3,
             "gradient": gradient, "width": m, "tensor": T, "basis": basis,
             "span_eigenvalues": spectrum, "cv_degrees": cv,
             "features": {g: feature_count(batch_size, v) for g, v in cv.items()
                          if v is not None}}
    return Reconstruction(images=U, labels=None, loss_history=[],
                          wall_time=time.perf_counter() - t0, stats=stats)


def as_images(U: torch.Tensor, shape=(1, 8, 8)) -> torch.Tensor:
    """Recovered directions U (B, d) shown as images, without reading the truth.

    The tensor fixes each input only up to sign and scale. For images whose
    pixels are >= 0 (digits), the sign with a positive pixel sum is the right
    one, and scaling the brightest pixel to 1 is a display convention (exact
    for an image whose brightest pixel is 1, as for most digits).
    Returns (B, *shape) in [0, 1]. Taught in chapter 09.
    """
    U = U.double()
    if U.dim() != 2 or U.shape[1] != math.prod(shape):
        raise ValueError(f"U must be (B, {math.prod(shape)}) for images of shape "
                         f"{tuple(shape)}, got {tuple(U.shape)}")
    U = U * torch.where(U.sum(1, keepdim=True) < 0, -1.0, 1.0)
    peak = U.max(1, keepdim=True).values.clamp_min(1e-300)
    return (U / peak).clamp(0, 1).reshape(len(U), *shape)


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
