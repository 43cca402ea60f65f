"""Tests of gradient matching (chapters 04-05): DLG, iDLG, inverting gradients."""
import inspect
import math

import numpy as np
import pytest
import torch

import leakbook as lb
from leakbook.attacks import REGULARIZERS, dlg, idlg, inverting_gradients, matching


@pytest.fixture(scope="module")
def case():
    x, y = lb.data.evaluation_set("dev", size=16)
    x, y = x[:1], y[:1]
    model = lb.models.build("lenet_dlg", seed=0, image_size=16)
    return model, x, y, lb.fl.shared_gradients(model, x, y)


def test_idlg_with_defaults_converges_past_40db(case):
    model, x, y, g = case
    rec = idlg(model, g, tuple(x.shape))
    assert rec.labels.tolist() == y.tolist()
    assert rec.stats["status"] == "converged"
    assert rec.stats["relative_distance"] <= matching.DLG_DEFAULTS["rel_tol"]
    assert lb.metrics.psnr(rec.images.clamp(0, 1), x) > 40


def test_dlg_stops_at_its_budget_or_cap(case):
    model, x, y, g = case
    rec = dlg(model, g, tuple(x.shape), labels=y, max_time=1e-6)  # any run outlasts it
    assert rec.stats["status"] == "time"
    assert rec.stats["relative_distance"] > matching.DLG_DEFAULTS["rel_tol"]
    rec = dlg(model, g, tuple(x.shape), labels=y, max_iter=12, max_time=None)
    assert rec.stats["status"] == "max_iter" and len(rec.loss_history) == 13
    with pytest.raises(ValueError, match="init"):
        dlg(model, g, tuple(x.shape), init="zeros")


def test_seeded_calls_are_reproducible(case):
    model, x, y, g = case
    a, b = (dlg(model, g, tuple(x.shape), max_iter=25, max_time=None, seed=3)
            for _ in range(2))
    assert torch.equal(a.images, b.images) and a.loss_history == b.loss_history
    assert torch.equal(a.stats["soft_labels"], b.stats["soft_labels"])
    c = dlg(model, g, tuple(x.shape), max_iter=25, max_time=None, seed=4)
    assert not torch.equal(a.images, c.images)
    a, b = (inverting_gradients(model, g, tuple(x.shape), y, iterations=15, seed=3)
            for _ in range(2))
    assert torch.equal(a.images, b.images) and a.loss_history == b.loss_history


def _snapshot(model, grads):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    return state, flags, model.training, [t.clone() for t in grads]


def _unchanged(model, grads, snap):
    state, flags, training, saved = snap
    now = model.state_dict()
    assert set(now) == set(state)
    assert all(torch.equal(now[k], state[k]) for k in state)  # weights and buffers
    assert [p.requires_grad for p in model.parameters()] == flags
    assert model.training == training
    assert all(torch.equal(a, b) for a, b in zip(grads, saved))


def test_attacks_leave_the_model_and_the_gradients_alone(case):
    model, x, y, g = case
    snap = _snapshot(model, g)
    dlg(model, g, tuple(x.shape), max_iter=5, max_time=None)
    idlg(model, g, tuple(x.shape), max_iter=5, max_time=None)
    inverting_gradients(model, g, tuple(x.shape), y, iterations=5)
    _unchanged(model, g, snap)
    net = lb.models.build("resnet_tiny", seed=0, image_size=16)  # BN, train mode
    xb, yb = lb.data.load("photos", 2, seed=0, size=16)
    gb = lb.fl.shared_gradients(net, xb, yb)
    snap = _snapshot(net, gb)
    inverting_gradients(net, gb, tuple(xb.shape), yb, iterations=3,
                        regularizers={"tv": 1e-2, "bn": 1e-2})
    dlg(net, gb, tuple(xb.shape), labels=yb, max_iter=3, max_time=None)
    _unchanged(net, gb, snap)


def test_inverting_gradients_stops_on_a_plateau_or_its_budget(case):
    model, x, y, g = case
    rec = inverting_gradients(model, g, tuple(x.shape), y, patience=3)
    assert rec.stats["status"] == "stalled"
    assert len(rec.loss_history) == rec.stats["iterations"] < 2000
    rec = inverting_gradients(model, g, tuple(x.shape), y, max_time=0.3)
    assert rec.stats["status"] == "time"
    rec = inverting_gradients(model, g, tuple(x.shape), y, iterations=12)
    assert rec.stats["status"] == "iterations" and len(rec.loss_history) == 12
    with pytest.raises(ValueError, match="patience"):
        inverting_gradients(model, g, tuple(x.shape), y, patience=0)


def test_dlg_joint_labels_returns_soft_labels(case):
    model, x, y, g = case
    rec = dlg(model, g, tuple(x.shape), max_iter=30, seed=0, max_time=None)
    assert rec.stats["soft_labels"].shape == (1, 10)
    assert rec.labels.shape == (1,) and not rec.stats["labels_given"]
    assert rec.images.shape == x.shape and len(rec.loss_history) == 31


def test_inverting_gradients_beats_the_flat_baseline(case):
    model, x, y, g = case
    rec = inverting_gradients(model, g, tuple(x.shape), y, iterations=250,
                              regularizers={"tv": 1e-2}, seed=0)
    assert 0 <= rec.images.min() and rec.images.max() <= 1  # the box
    rep = lb.metrics.report(rec.images, x)
    assert rep["gain_db"] > 3


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
    rec = dlg(model, g, tuple(x.shape), labels=y, max_iter=15, restarts=3,
              max_time=None)
    d = rec.stats["run_distances"]
    assert rec.stats["chosen_run"] == int(np.argmin(d)) and len(set(d)) == 3
    net = matching._attack_model(model, torch.float64)
    again = matching.gradient_distance(net, rec.images.double(), y,
                                       [t.double() for t in g], "l2")
    assert math.isclose(float(again.detach()), min(d), rel_tol=1e-3)


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
    rec = dlg(model, g, tuple(x.shape), labels=y, max_iter=20, max_time=None,
              dtype=torch.float32)
    assert rec.images.dtype == torch.float32 and len(rec.loss_history) == 21
    assert rec.loss_history[-1] < rec.loss_history[0]
