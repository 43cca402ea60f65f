"""Tests of gradient matching (chapters 04-05): DLG, iDLG, inverting gradients."""
import inspect
import math

import numpy as np
import pytest
import torch

import leakbook as lb
from leakbook import optim
from leakbook.attacks import REGULARIZERS, dlg, idlg, inverting_gradients, matching


@pytest.fixture(scope="module")
def case():
    x, y = lb.data.load("photos", 1, seed=0, size=16)
    model = lb.models.build("lenet_dlg", seed=0, image_size=16)
    return model, x, y, lb.fl.shared_gradients(model, x, y)


def test_idlg_reaches_40db(case):
    model, x, y, g = case
    rec = idlg(model, g, tuple(x.shape), max_iter=400, seed=0)
    assert rec.labels.tolist() == y.tolist()
    assert lb.metrics.psnr(rec.images.clamp(0, 1), x) > 40
    assert rec.loss_history[-1] < 1e-3 * rec.loss_history[0]


def test_dlg_joint_labels_returns_soft_labels(case):
    model, x, y, g = case
    rec = dlg(model, g, tuple(x.shape), max_iter=30, seed=0)
    assert rec.stats["soft_labels"].shape == (1, 10)
    assert rec.labels.shape == (1,) and not rec.stats["labels_given"]
    assert rec.images.shape == x.shape and len(rec.loss_history) == 31


def test_inverting_gradients_reaches_17db(case):
    model, x, y, g = case
    rec = inverting_gradients(model, g, tuple(x.shape), y, iterations=250,
                              regularizers={"tv": 1e-2}, seed=0)
    assert 0 <= rec.images.min() and rec.images.max() <= 1  # the box
    assert lb.metrics.psnr(rec.images, x) > 17


def test_restarts_ranked_by_gradient_distance_only(case):
    model, x, y, g = case
    for fn in (dlg, inverting_gradients, idlg):  # no argument could carry the truth
        names = set(inspect.signature(fn).parameters)
        assert not names & {"x", "x_true", "truth", "images", "target_images"}
    rec = inverting_gradients(model, g, tuple(x.shape), y, iterations=20, restarts=3)
    d = rec.stats["run_distances"]
    assert rec.stats["chosen_run"] == int(np.argmin(d)) and len(set(d)) == 3
    net = matching._attack_model(model, torch.float32)
    again = [float(matching.gradient_distance(net, xi, y, g, "cosine").detach())
             for xi in rec.stats["run_images"]]
    assert np.allclose(again, d, rtol=1e-4)
    rec = dlg(model, g, tuple(x.shape), labels=y, max_iter=15, restarts=3)
    assert rec.stats["chosen_run"] == int(np.argmin(rec.stats["run_distances"]))


def test_bad_inputs(case):
    model, x, y, g = case
    other = lb.models.build("cnn2_c1", image_size=16)
    with pytest.raises(ValueError, match="another model"):
        dlg(model, lb.fl.shared_gradients(other, x, y), tuple(x.shape))
    with pytest.raises(ValueError, match="does not accept"):
        dlg(model, g, (1, 3, 20, 20))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        inverting_gradients(model, g, (3, 16, 16), y)
    with pytest.raises(ValueError, match="labels"):
        inverting_gradients(model, g, tuple(x.shape), torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="unknown regularizers"):
        inverting_gradients(model, g, tuple(x.shape), y, regularizers={"tvv": 1})
    with pytest.raises(ValueError, match="BatchNorm"):
        inverting_gradients(model, g, tuple(x.shape), y, regularizers={"bn": 1})
    with pytest.raises(ValueError, match="zeros"):
        dlg(model, [torch.zeros_like(t) for t in g], tuple(x.shape))
    with pytest.raises(ValueError, match="NaN"):
        dlg(model, [t * math.nan for t in g], tuple(x.shape))


def test_compact_history_equals_two_loop_recursion():
    rng = np.random.default_rng(0)
    n, m = 30, 5
    a = rng.standard_normal((n, n))
    a = a @ a.T + n * np.eye(n)
    mem, pairs = optim._History(n, m), []
    for _ in range(8):
        s = rng.standard_normal(n)
        mem.push(s, a @ s)
        pairs = (pairs + [(s, a @ s)])[-m:]
    g = rng.standard_normal(n)
    q, alphas = g.copy(), []
    for s, y in reversed(pairs):
        alphas.append((s @ q) / (s @ y))
        q -= alphas[-1] * y
    q *= (pairs[-1][0] @ pairs[-1][1]) / (pairs[-1][1] @ pairs[-1][1])
    for (s, y), al in zip(pairs, reversed(alphas)):
        q += (al - (y @ q) / (s @ y)) * s
    assert np.allclose(mem.direction(g), -q)


def test_lbfgs_converges_and_flags_divergence():
    w = torch.tensor([1.0, 100.0], dtype=torch.float64)

    def quad(z):
        return float((w * z * z).sum()), 2 * w * z

    run = optim.lbfgs(quad, torch.ones(2, dtype=torch.float64), tol=1e-20)
    assert run["status"] == "converged" and run["f"] <= 1e-20

    def nan(z):
        return math.nan, torch.zeros_like(z)

    run = optim.lbfgs(nan, torch.ones(2, dtype=torch.float64))
    assert run["status"] == "diverged"


def test_bn_prior_and_statistics():
    model = lb.models.build("resnet_tiny", seed=0, image_size=16)
    x, y = lb.data.load("photos", 2, seed=0, size=16)
    stats = lb.attacks.matching.batchnorm_statistics(model, x)
    assert len(stats) == 5 and stats[0][0].shape == (16,)
    ctx = {"bn_seen": lb.attacks.matching.batchnorm_statistics(model, x),
           "bn_targets": stats}
    assert float(REGULARIZERS["bn"](x, ctx)) == 0.0
    g = lb.fl.shared_gradients(model, x, y)
    rec = inverting_gradients(model, g, tuple(x.shape), y, iterations=5,
                              regularizers={"tv": 1e-3, "bn": 1e-2}, bn_targets=stats)
    assert rec.images.shape == x.shape and torch.isfinite(rec.images).all()


def test_dlg_runs_a_float32_model_with_a_float64_search(case):
    model, x, y, g = case
    rec = dlg(model, g, tuple(x.shape), labels=y, max_iter=20, dtype=torch.float32)
    assert rec.images.dtype == torch.float32 and len(rec.loss_history) == 21
    assert rec.loss_history[-1] < rec.loss_history[0]
