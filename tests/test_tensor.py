"""Tests for leakbook.attacks.tensor (chapter 09)."""
import math

import pytest
import torch

import leakbook as lb
from leakbook.attacks.tensor import (cp_tensor, direction_cosines, hermite_coefficient,
                                     moment_tensor, random_two_layer, symmetric_cp,
                                     tensor_decomposition)



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
        hermite_coefficient(torch.tanh, 7)


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
    # same directions (order and sign may differ: BLAS round-off depends on
    # memory alignment, and Jennrich's eigenvectors come in no fixed order)
    assert float(direction_cosines(rec.images, rec_t.images).min()) > 1 - 1e-6
    both = tensor_decomposition(net, grads, B, gradient="both")
    out = tensor_decomposition(net, grads, B, gradient="output")
    assert both.stats["tensor_error_estimate"] <= rec.stats["tensor_error_estimate"]
    assert out.stats["tensor_error_estimate"] > 3 * rec.stats["tensor_error_estimate"]
    assert float(direction_cosines(both.images, x).min()) > 0.99
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
