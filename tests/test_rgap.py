"""R-GAP and COPA: exact where the layer systems are full rank, clear errors else."""
import math

import pytest
import torch
from torch import nn

import leakbook as lb
from leakbook import security
from leakbook.attacks import copa, rgap
from leakbook.attacks.hybrid import fill_blind
from leakbook.attacks.layers import Activation, blocks
from leakbook.attacks.recursive import solve_margin

F64 = torch.float64


def _flipped_label(net, x):
    """R-GAP's convention: the label opposite to the prediction (a unique margin)."""
    with torch.no_grad():
        return torch.tensor([0 if net(x).item() > 0 else 1])


@pytest.fixture(scope="module")
def cnn6_case():
    """A bias-free CNN6 on one 8x8 photo, its R-GAP label and logistic gradients."""
    x, _ = lb.data.load("photos", 1, seed=1, size=8, dtype=F64)
    net = lb.models.build("cnn6", seed=0, dtype=F64, image_size=8)
    y = _flipped_label(net, x)
    return x, net, y, lb.fl.shared_gradients(net, x, y, loss="logistic")


def test_rgap_exact_on_bias_free_cnn6_logistic_float64(cnn6_case):
    x, net, y, g = cnn6_case
    rec = rgap(net, g, y, input_shape=(3, 8, 8))
    assert rec.images.dtype == F64 and rec.images.shape == x.shape
    assert (rec.images - x).abs().max() < 1e-7
    layers = rec.stats["layers"]
    assert layers[0]["head"] == "logistic margin" and not layers[0]["two_roots"]
    assert all(s["deficiency"] == 0 and s["condition"] < 1e5 for s in layers[1:])


def test_rgap_exact_on_bias_free_mlp_logistic_float64():
    net = lb.models.build("mlp", seed=2, dtype=F64, in_features=16, widths=(40, 24),
                          num_classes=1, activation="leaky_relu", bias=False)
    x = torch.rand(1, 1, 4, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    y = _flipped_label(net, x)
    g = lb.fl.shared_gradients(net, x, y, loss="logistic")
    rec = rgap(net, g, y, input_shape=(1, 4, 4))
    assert (rec.images - x).abs().max() < 1e-9


@pytest.mark.parametrize("activation", ["tanh", "sigmoid", "leaky_relu"])
def test_rgap_exact_with_biases_and_cross_entropy(activation):
    x, _ = lb.data.load("photos", 1, seed=3, size=8, dtype=F64)
    net = lb.models.build("cnn6", seed=1, dtype=F64, image_size=8, num_classes=10,
                          bias=True, activation=activation)
    y = torch.tensor([4])
    g = lb.fl.shared_gradients(net, x, y)
    rec = rgap(net, g, input_shape=(3, 8, 8), diagnostics=False)
    assert (rec.images - x).abs().max() < 1e-5
    assert rec.labels.tolist() == [4]          # the bias gradient's sign gives it


def test_margin_solver_roots():
    for mu in (-3.0, -0.2, 0.5, 3.0):
        value = -mu / (1 + math.exp(mu))
        branch = "small" if mu < 1.2784 else "large"
        assert solve_margin(value, branch) == pytest.approx(mu, abs=1e-10)
    with pytest.raises(ValueError, match="minimum"):
        solve_margin(-0.5)


def test_spectrum_and_scale_fix():
    x, _ = lb.data.load("photos", 1, seed=0, size=8)
    net = lb.models.build("cnn6", seed=0, image_size=8)
    y = _flipped_label(net, x)
    g = lb.fl.shared_gradients(net, x, y, loss="logistic")        # float32, as shared
    fixed = rgap(net, g, y, input_shape=(3, 8, 8), spectrum=True)
    raw = rgap(net, g, y, input_shape=(3, 8, 8), scale=False, diagnostics=False)
    assert lb.metrics.psnr(fixed.images, x) > 100
    assert lb.metrics.psnr(fixed.images, x) > lb.metrics.psnr(raw.images, x) + 20
    sv = fixed.stats["layers"][-1]["singular_values"]
    assert sv.shape == (3 * 8 * 8,) and (sv[:-1] >= sv[1:]).all()


def test_copa_beats_the_linear_solve_on_a_rank_deficient_network():
    x, y = lb.data.load("photos", 1, seed=0, size=12, dtype=F64)
    x = x - 0.5
    net = lb.models.build("cnn3_c1", seed=0, dtype=F64, image_size=12)
    g = lb.fl.shared_gradients(net, x, y)
    linear = copa(net, g, y, input_shape=(3, 12, 12), steps=0)
    rec = copa(net, g, y, input_shape=(3, 12, 12))
    assert rec.stats["deficient_layer"] is not None
    assert rec.stats["linear_images"] is None and rec.stats["fit"]["iterations"] > 0
    assert rec.loss_history[-1] < 1e-10 * rec.loss_history[0]
    assert lb.metrics.psnr(linear.images, x) < 30
    assert lb.metrics.psnr(rec.images, x) > 60     # float64: the fit is exact


@pytest.fixture(scope="module")
def cnn4_case():
    """Chen & Campbell's cnn4_c2 (bias-free convs) on one centred 12x12 photo."""
    x, y = lb.data.load("photos", 1, seed=3, size=12, dtype=F64)
    x = x - 0.5
    net = lb.models.build("cnn4_c2", seed=0, dtype=F64, image_size=12)
    return x, y, net, lb.fl.shared_gradients(net, x, y)


def test_copa_recovers_every_visible_pixel_and_fills_the_blind_ones(cnn4_case):
    x, y, net, g = cnn4_case
    blind = security.blind_spot(net, (3, 12, 12))
    params = [p.detach().clone() for p in net.parameters()]
    grads = [t.clone() for t in g]
    rec = copa(net, g, y, input_shape=(3, 12, 12), tol=1e-24)
    assert rec.stats["fit"]["objective"] < 1e-20
    assert all(torch.equal(a, b) for a, b in zip(params, net.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(grads, g))     # nothing mutated
    assert torch.equal(rec.stats["inferred"][0], blind) and rec.stats["fill"] == "mean"
    seen = ~blind
    assert (rec.images[0][seen] - x[0][seen]).abs().max() < 1e-8
    # the default fill: per channel, the mean of the *recovered* visible pixels
    for c in range(3):
        assert torch.allclose(rec.images[0, c][blind[c]],
                              rec.images[0, c][seen[c]].mean().expand(
                                  int(blind[c].sum())))
    cap = security.psnr_cap(x, blind, "mean")
    assert abs(lb.metrics.psnr(rec.images, x) - cap) < 0.01
    inpainted = copa(net, g, y, input_shape=(3, 12, 12), fill="inpaint", tol=1e-24)
    assert inpainted.stats["fill"] == "inpaint"
    cap_inpaint = security.psnr_cap(x, blind, "inpaint")
    assert abs(lb.metrics.psnr(inpainted.images, x) - cap_inpaint) < 0.01
    # the blind pixels of the truth never matter: other values, same answer
    x2 = torch.where(blind, torch.rand_like(x), x)
    again = copa(net, lb.fl.shared_gradients(net, x2, y), y, input_shape=(3, 12, 12),
                 tol=1e-24)
    assert torch.allclose(again.images, rec.images, atol=1e-8)


def test_fill_blind_by_hand():
    img = torch.tensor([[[1.0, 2.0, 0.0], [3.0, 4.0, 0.0]]])       # (1, 2, 3)
    hole = torch.tensor([[[False, False, True], [False, False, True]]])
    assert fill_blind(img, hole, "mean")[0, :, 2].tolist() == [2.5, 2.5]
    assert fill_blind(img, hole, "nearest")[0, :, 2].tolist() == [2.0, 4.0]
    # harmonic: a = (2 + b) / 2 and b = (4 + a) / 2 -> a = 8/3, b = 10/3
    out = fill_blind(img, hole, "inpaint")[0, :, 2]
    assert torch.allclose(out, torch.tensor([8 / 3, 10 / 3]))
    assert fill_blind(img, hole, 0.5)[0, :, 2].tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match="how must"):
        fill_blind(img, hole, "median")
    with pytest.raises(ValueError, match="entirely blind"):
        fill_blind(img, torch.ones_like(hole), "mean")


def test_copa_on_a_full_rank_network_is_exact(cnn6_case):
    x, net, y, g = cnn6_case
    rec = copa(net, g, y, input_shape=(3, 8, 8))
    assert rec.stats["deficient_layer"] is None and (rec.images - x).abs().max() < 1e-7


def test_clear_errors():
    x, _ = lb.data.load("photos", 1, seed=0, size=8)
    relu = lb.models.build("cnn6", image_size=8, activation="relu")
    g = lb.fl.shared_gradients(relu, x, torch.tensor([1]), loss="logistic")
    with pytest.raises(ValueError, match="not invertible"):
        rgap(relu, g, [1], input_shape=(3, 8, 8))
    net = lb.models.build("cnn6", image_size=8)
    with pytest.raises(ValueError, match="gradient tensors"):
        rgap(net, g[:-1], [1], input_shape=(3, 8, 8))
    with pytest.raises(ValueError, match="shape"):
        bad = [gi.T if gi.dim() == 2 else gi for gi in g]
        rgap(net, bad, [1], input_shape=(3, 8, 8))
    with pytest.raises(TypeError, match="input_shape must"):
        rgap(net, g, [1], input_shape=None)
    with pytest.raises(ValueError, match="receives shape"):
        rgap(net, g, [1], input_shape=(3, 16, 16))
    with pytest.raises(ValueError, match="label"):
        rgap(net, g, None, input_shape=(3, 8, 8))
    pooled = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), nn.Flatten(),
                           nn.Linear(18, 1))
    with pytest.raises(TypeError, match="MaxPool2d"):
        blocks(pooled, (1, 8, 8))
    no_bias = lb.models.build("cnn6", image_size=8, num_classes=10)
    g10 = lb.fl.shared_gradients(no_bias, x, torch.tensor([3]))
    with pytest.raises(ValueError, match="needs a bias"):
        rgap(no_bias, g10, [3], input_shape=(3, 8, 8))
    with pytest.raises(ValueError, match="not invertible"):
        Activation(nn.ReLU())


def test_reached_inputs_marks_what_no_gradient_sees():
    from leakbook.attacks.hybrid import reached_inputs
    parts = blocks(lb.models.build("cnn4_c2"), (3, 32, 32))
    hidden = ~reached_inputs(parts, 1)
    assert int(hidden.sum()) == 3 * 63
    assert hidden[:, -1, :].all() and hidden[:, :, -1].all()
    assert not (~reached_inputs(blocks(lb.models.build("cnn6"), (3, 32, 32)), 5)).any()


def test_rgap_exact_on_fcn3_with_its_output_activation():
    # R-GAP's FCN3 passes its logit through LeakyReLU too; the margin equation
    # is unchanged (LeakyReLU(z) = LeakyReLU'(z) z) and the recursion exact.
    net = lb.models.build("fcn3", seed=0, dtype=F64, in_features=64)
    assert isinstance(net[-1], nn.LeakyReLU)
    x, _ = lb.data.load("digits", 1, seed=0, dtype=F64)
    for flip in (False, True):
        y = _flipped_label(net, x)
        y = 1 - y if flip else y
        g = lb.fl.shared_gradients(net, x, y, loss="logistic")
        rec = rgap(net, g, y, input_shape=(1, 8, 8), branch="small")
        if not rec.stats["layers"][0]["two_roots"]:
            assert (rec.images - x).abs().max() < 1e-8


def test_meaningless_input_is_refused(cnn6_case):
    x, net, y, g = cnn6_case
    zeros = [torch.zeros_like(t) for t in g]
    for attack in (rgap, copa):
        with pytest.raises(ValueError, match="every gradient is zero"):
            attack(net, zeros, y, input_shape=(3, 8, 8))
        with pytest.raises(ValueError, match="branch"):
            attack(net, g, y, input_shape=(3, 8, 8), branch="medium")
        with pytest.raises(ValueError, match="input_shape"):
            attack(net, g, y, input_shape=(3, -8, 8))
    with pytest.raises(ValueError, match="fill"):
        copa(net, g, y, input_shape=(3, 8, 8), fill="median")
    with pytest.raises(ValueError, match="steps"):
        copa(net, g, y, input_shape=(3, 8, 8), steps=-1)


def test_a_batch_gradient_is_refused(cnn6_case):
    x, net, y, _ = cnn6_case
    x2, _ = lb.data.load("photos", 2, seed=4, size=8, dtype=F64)
    g2 = lb.fl.shared_gradients(net, x2, torch.tensor([0, 1]), loss="logistic")
    with pytest.raises(ValueError, match="one sample"):
        rgap(net, g2, [0], input_shape=(3, 8, 8))
    ce = lb.models.build("cnn3_c1", seed=0, dtype=F64, image_size=12)
    xb, yb = lb.data.load("photos", 2, seed=5, size=12, dtype=F64)
    gb = lb.fl.shared_gradients(ce, xb, yb)
    for attack in (rgap, copa):
        with pytest.raises(ValueError, match="one sample"):
            attack(ce, gb, input_shape=(3, 12, 12))
