"""Tests for leakbook.attacks.tensor (chapter 09)."""
import hashlib
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import leakbook as lb
from leakbook.attacks.tensor import (_feature_plan, _features, cp_tensor,
                                     direction_cosines, feature_count,
                                     hermite_coefficient, input_span, moment_tensor,
                                     projected_moment_tensor, random_two_layer,
                                     symmetric_cp, tensor_decomposition)

ROOT = Path(__file__).resolve().parents[1]


def _batch(d, B, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, d, generator=g, dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True), torch.randn(B, 1, generator=g,
                                                         dtype=torch.float64)


def test_hermite_coefficients():
    # c_p = E[sigma^(p)(z)]: compare with the derivative computed by autograd
    z = torch.linspace(-12, 12, 2 ** 16 + 1, dtype=torch.float64, requires_grad=True)
    d1 = torch.autograd.grad(torch.tanh(z).sum(), z, create_graph=True)[0]
    d2 = torch.autograd.grad(d1.sum(), z, create_graph=True)[0]
    d3 = torch.autograd.grad(d2.sum(), z)[0]
    dens = torch.exp(-z.detach() ** 2 / 2) / math.sqrt(2 * math.pi)
    e3 = float(torch.trapezoid(d3 * dens, z.detach()))
    assert hermite_coefficient(torch.tanh, 3) == pytest.approx(e3, abs=1e-7)
    assert hermite_coefficient(torch.tanh, 3) == pytest.approx(-0.3636, abs=1e-4)
    assert abs(hermite_coefficient(torch.relu, 3)) < 1e-7          # vanishes
    c2 = hermite_coefficient(torch.relu, 2)
    assert c2 == pytest.approx(1 / math.sqrt(2 * math.pi))
    assert abs(hermite_coefficient(torch.tanh, 2)) < 1e-12         # odd activation
    with pytest.raises(ValueError, match="p must be"):
        hermite_coefficient(torch.tanh, 9)


def test_hermite_identity_monte_carlo():
    # E_w[sigma(w^T x) He_3(w)] = c_3 x^(x)3: the output-layer estimator with one
    # input and residual 1 is exactly this Monte-Carlo average
    d, m = 5, 400_000
    g = torch.Generator().manual_seed(0)
    W = torch.randn(m, d, generator=g, dtype=torch.float64)
    x = torch.randn(d, generator=g, dtype=torch.float64)
    x = x / x.norm()
    a = torch.ones(m, dtype=torch.float64)
    T, err = moment_tensor(W, a, torch.zeros_like(W), torch.tanh(W @ x),
                           gradient="output")
    truth = hermite_coefficient(torch.tanh, 3) * cp_tensor(torch.ones(1), x[None])
    assert float((T - truth).norm()) < 4 * err
    assert float((T - truth).norm() / truth.norm()) < 0.1
    # first layer: (1 / a_j) dL/dw_j = sigma'(w^T x) x, contracted with He_2
    gW = (1 - torch.tanh(W @ x) ** 2)[:, None] * x[None]
    T1, err1 = moment_tensor(W, a, gW, torch.zeros(m, dtype=torch.float64))
    assert float((T1 - truth).norm()) < 4 * err1
    assert err1 < err                               # first layer is less noisy


def test_recovery_from_shared_gradient():
    d, B, m = 12, 4, 200_000
    net = random_two_layer(d, m, "tanh", seed=3)
    x, y = _batch(d, B, seed=4)
    grads = lb.fl.shared_gradients(net, x, y, loss="mse")
    rec = tensor_decomposition(net, grads, B)
    cos = direction_cosines(rec.images, x)
    assert rec.images.shape == (B, d)
    assert float(cos.min()) > 0.99
    assert rec.stats["residual"] < 0.1 and rec.stats["tensor_error_estimate"] < 0.1
    # weights are c_3 r_i with r_i = dL/df(x_i) = 2 (f(x_i) - y_i) / B
    with torch.no_grad():
        r = 2 * (net(x) - y).reshape(-1) / B
    lam = rec.stats["weights"].abs().sort().values
    assert torch.allclose(lam, (rec.stats["c3"] * r).abs().sort().values, rtol=0.1)


def test_weights_tuple_and_both_gradients():
    d, B, m = 8, 3, 100_000
    net = random_two_layer(d, m, "tanh", seed=5)
    x, y = _batch(d, B, seed=6)
    grads = lb.fl.shared_gradients(net, x, y, loss="mse")
    W, a = net[0].weight.detach(), net[2].weight.detach()
    rec = tensor_decomposition(net, grads, B)
    rec_t = tensor_decomposition((W, a, torch.tanh), grads, B)
    assert torch.equal(rec.images, rec_t.images)        # same numbers, same result
    both = tensor_decomposition(net, grads, B, gradient="both")
    out = tensor_decomposition(net, grads, B, gradient="output")
    assert both.stats["tensor_error_estimate"] <= rec.stats["tensor_error_estimate"]
    assert out.stats["tensor_error_estimate"] > rec.stats["tensor_error_estimate"]
    assert float(direction_cosines(both.images, x).min()) > 0.99
    # without control variates the output layer is far noisier (one more w_j)
    plain = {g: tensor_decomposition(net, grads, B, gradient=g, control_variates=None)
             for g in ("first", "output")}
    assert (plain["output"].stats["tensor_error_estimate"]
            > 3 * plain["first"].stats["tensor_error_estimate"])
    with pytest.raises(ValueError, match="exactly 0"):
        tensor_decomposition((W, a * 0, torch.tanh), grads, B)


def test_symmetric_cp_exact():
    g = torch.Generator().manual_seed(1)
    U = torch.randn(5, 8, generator=g, dtype=torch.float64)
    U = U / U.norm(dim=1, keepdim=True)
    lam = torch.tensor([2.0, -1.0, 0.5, 1.5, -0.7], dtype=torch.float64)
    cp = symmetric_cp(cp_tensor(lam, U), 5)
    assert cp["residual"] < 1e-8
    assert float(direction_cosines(cp["directions"], U).min()) > 1 - 1e-8


def test_errors():
    net = random_two_layer(4, 100, "tanh", seed=0)
    x, y = _batch(4, 2, seed=0)
    grads = lb.fl.shared_gradients(net, x, y, loss="mse")
    with pytest.raises(ValueError, match="exceeds the input dimension"):
        tensor_decomposition(net, grads, 5)
    relu = random_two_layer(4, 100, "relu", seed=0)
    with pytest.raises(ValueError, match="Hermite coefficient"):
        tensor_decomposition(relu, lb.fl.shared_gradients(relu, x, y, loss="mse"), 2)
    with pytest.raises(TypeError, match="Sequential"):
        tensor_decomposition(lb.models.build("mlp", seed=0, in_features=4), grads, 2)
    with pytest.raises(ValueError, match="another model"):
        tensor_decomposition(net, [grads[0][:50], grads[1]], 2)
    with pytest.raises(ValueError, match="gradient must be"):
        tensor_decomposition(net, grads, 2, gradient="second")
    with pytest.raises(ValueError, match="NaN"):
        tensor_decomposition(net, [grads[0] * float("nan"), grads[1]], 2)
    with pytest.raises(ValueError, match="unknown activation"):
        random_two_layer(4, 10, "swish")
    with pytest.raises(ValueError, match="rank must"):
        symmetric_cp(torch.ones(3, 3, 3), 4)
    with pytest.raises(ValueError, match="zero"):
        symmetric_cp(torch.zeros(3, 3, 3), 2)


def _digits(B, seed):
    x, c = lb.data.load("digits", B, seed=seed, dtype=torch.float64)
    x = x.flatten(1)
    return x / x.norm(dim=1, keepdim=True), c


def test_hermite_coefficients_of_higher_order():
    # sigma(z) = z^5: c_p = E[sigma^(p)(z)] = 15, 0, 60, 0, 120 for p = 1..5
    coef = [hermite_coefficient(lambda z: z ** 5, p) for p in range(1, 7)]
    assert coef == pytest.approx([15, 0, 60, 0, 120, 0], abs=1e-6)
    with pytest.raises(ValueError, match="p must be"):
        hermite_coefficient(torch.tanh, 2.0)


def test_hermite_features_are_orthonormal():
    # E[phi phi^T] = I under N(0, I_B): the basis of the control-variate fit
    B, degrees = 3, [0, 1, 2, 3, 4]
    plan = _feature_plan(B, degrees)
    assert len(plan["coords"]) == feature_count(B, degrees) == 35
    z = torch.randn(400_000, B, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    phi = _features(z, plan)
    gram = phi.T @ phi / len(z)
    assert float((gram - torch.eye(35, dtype=torch.float64)).abs().max()) < 0.05


def test_input_span_is_exact():
    d, B, m = 30, 5, 2000
    net = random_two_layer(d, m, "tanh", seed=0)
    x, y = _batch(d, B, seed=1)
    grads = lb.fl.shared_gradients(net, x, y, loss="mse")
    Q, spectrum = input_span(grads[0], B)
    assert Q.shape == (d, B)
    assert torch.allclose(Q.T @ Q, torch.eye(B, dtype=torch.float64), atol=1e-12)
    # every input lies in the span (no Monte-Carlo error): residual at round-off
    assert float((x - (x @ Q) @ Q.T).norm(dim=1).max()) < 1e-10
    assert spectrum[B - 1] > 1e-6 and spectrum[B] < 1e-12     # B can be read off
    with pytest.raises(ValueError, match="rank must"):
        input_span(grads[0], d + 1)
    with pytest.raises(ValueError, match="zero"):
        input_span(torch.zeros(m, d, dtype=torch.float64), B)


def test_projected_plain_estimate_is_the_full_estimate_projected():
    # Q^T He_2(w) Q = He_2(Q^T w): without control variates, projecting first
    # changes nothing but the cost
    d, B, m = 9, 3, 20_000
    net = random_two_layer(d, m, "tanh", seed=2)
    x, y = _batch(d, B, seed=3)
    gW, ga = lb.fl.shared_gradients(net, x, y, loss="mse")
    W, a = net[0].weight.detach(), net[2].weight.detach().reshape(-1)
    Q, _ = input_span(gW, B)
    for route in ("first", "output"):
        full, _ = moment_tensor(W, a, gW, ga.reshape(-1), route)
        proj, err = projected_moment_tensor(W, a, gW, ga.reshape(-1), Q, route)
        assert torch.allclose(torch.einsum("abc,ai,bj,ck->ijk", full, Q, Q, Q), proj,
                              atol=1e-12)
        assert err > 0
    with pytest.raises(ValueError, match="read order"):
        projected_moment_tensor(W, a, gW, ga.reshape(-1), Q, "first", degrees=[0, 1])
    with pytest.raises(ValueError, match="neurons"):
        projected_moment_tensor(W[:40], a[:40], gW[:40], ga.reshape(-1)[:40], Q,
                                "first", degrees=[0, 2, 4])


def _digits_wrong_targets(B, data_seed, net_seed, width=10_000):
    """B digits (d = 64), a tanh net of ``width`` and targets -sign f(x) it gets
    wrong; returns x, net, y and the MSE gradient."""
    x, _ = _digits(B, seed=data_seed)
    net = random_two_layer(64, width, "tanh", seed=net_seed)
    with torch.no_grad():
        y = -torch.sign(net(x))
    return x, net, y, lb.fl.shared_gradients(net, x, y, loss="mse")


def test_control_variates_cut_the_error_and_estimate_it():
    # digits, d = 64, B = 8: the fit removes most of the Monte-Carlo noise, and
    # its own error estimate (no truth) is within a factor 2 of the true error
    B = 8
    x, net, y, (gW, ga) = _digits_wrong_targets(B, data_seed=0, net_seed=100)
    with torch.no_grad():
        r = 2 * (net(x) - y).reshape(-1) / B
    W, a = net[0].weight.detach(), net[2].weight.detach().reshape(-1)
    Q, _ = input_span(gW, B)
    truth = cp_tensor(hermite_coefficient(torch.tanh, 3) * r, x @ Q)
    errors = {}
    for name, degrees in (("plain", None), ("cv", [0, 2, 4])):
        T, est = projected_moment_tensor(W, a, gW, ga.reshape(-1), Q, "first", degrees)
        true_err = float((T - truth).norm())
        assert 0.5 < est / true_err < 2
        errors[name] = true_err
    assert errors["cv"] < errors["plain"] / 2


def test_digits_at_image_size():
    # issue 10's target setting: 8x8 digits (d = 64), B = 8, width 10^4
    B = 8
    x, net, y, grads = _digits_wrong_targets(B, data_seed=1, net_seed=101)
    before = [g.clone() for g in grads], [p.detach().clone() for p in net.parameters()]
    rec = tensor_decomposition(net, grads, B)
    assert rec.images.shape == (B, 64)
    assert float(direction_cosines(rec.images, x).min()) > 0.99
    assert rec.stats["tensor"].shape == (B, B, B) and rec.stats["basis"].shape == (64, B)
    assert rec.stats["cv_degrees"] == {"first": [0, 2, 4]}
    assert rec.stats["features"] == {"first": 367}
    # nothing it was given has changed
    assert all(torch.equal(g, h) for g, h in zip(grads, before[0]))
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before[1]))
    plain = tensor_decomposition(net, grads, B, control_variates=None)
    assert plain.stats["cv_degrees"] == {"first": None} and plain.stats["features"] == {}


def test_keyword_errors():
    net = random_two_layer(6, 3000, "tanh", seed=0)
    x, y = _batch(6, 2, seed=0)
    grads = lb.fl.shared_gradients(net, x, y, loss="mse")
    with pytest.raises(ValueError, match="control_variates must be"):
        tensor_decomposition(net, grads, 2, control_variates=1)
    with pytest.raises(ValueError, match="control_variates must be"):
        tensor_decomposition(net, grads, 2, control_variates="yes")
    with pytest.raises(ValueError, match="project=True"):
        tensor_decomposition(net, grads, 2, project=False, control_variates=4)
    with pytest.raises(TypeError, match="project must be"):
        tensor_decomposition(net, grads, 2, project="no")
    with pytest.raises(ValueError, match="batch_size must be"):
        tensor_decomposition(net, grads, True)


def _fingerprint(rec) -> str:
    h = hashlib.sha256()
    for t in (rec.images, rec.stats["weights"], rec.stats["tensor"]):
        h.update(t.contiguous().numpy().tobytes())
    h.update(repr((rec.stats["residual"], rec.stats["tensor_error_estimate"],
                   rec.stats["c3"])).encode())
    return h.hexdigest()


_RUN = """
import sys, torch
sys.path.insert(0, {root!r})
sys.path.insert(0, {tests!r})
from test_tensor import _reproducibility_case, _fingerprint
junk = torch.randn({junk}, dtype=torch.float64)   # a different allocation history
torch.set_num_threads({threads})
print(" ".join(_fingerprint(r) for r in _reproducibility_case()))
"""


def _reproducibility_case():
    x, _ = _digits(8, seed=2)
    net = random_two_layer(64, 5000, "tanh", seed=102)
    grads = lb.fl.shared_gradients(net, x, torch.ones(8, 1, dtype=torch.float64),
                                   loss="mse")
    small = random_two_layer(8, 20_000, "tanh", seed=3)
    xs, ys = _batch(8, 3, seed=4)
    gs = lb.fl.shared_gradients(small, xs, ys, loss="mse")
    return [tensor_decomposition(net, grads, 8),
            tensor_decomposition(net, grads, 8, gradient="both"),
            tensor_decomposition(small, gs, 3, project=False, control_variates=None)]


def test_seeded_calls_are_bit_identical_in_one_process_and_across_processes():
    # issue 14: torch.linalg.lstsq in the ALS step moved results by ~1e-15
    first = [_fingerprint(r) for r in _reproducibility_case()]
    again = [_fingerprint(r) for r in _reproducibility_case()]
    assert first == again
    for junk, threads in ((3, 1), (1001, 2)):
        code = _RUN.format(root=str(ROOT), tests=str(ROOT / "tests"), junk=junk,
                           threads=threads)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                             text=True, check=True, cwd=ROOT).stdout.split()
        assert out == first, f"a fresh process ({threads} threads) differs"


def test_entry_points_have_their_own_code_objects_and_restore_threads():
    """Issue 14: a shared decorator gave five functions one code object, so the
    ch09 exercise checker took any of them for the forbidden one."""
    from leakbook.attacks import tensor as T
    names = ["moment_tensor", "input_span", "projected_moment_tensor",
             "symmetric_cp", "tensor_decomposition"]
    codes = {getattr(T, n).__code__ for n in names}
    assert len(codes) == len(names)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        T.input_span(torch.randn(20, 4, dtype=torch.float64), 2)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
