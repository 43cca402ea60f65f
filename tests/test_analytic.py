"""Chapter 02's FC inversion: exact ratios, isolated samples, linear systems."""
import pytest
import torch
from torch import nn

import leakbook as lb
from leakbook.attacks import (invert_fc, last_layer_deltas, solve_fc_inputs,
                              solve_last_layer_inputs)

F64 = torch.float64


def rel_err(a, b):
    return float((a.flatten() - b.flatten()).norm() / b.flatten().norm())


def first_layer_grads(net, x, y):
    g = lb.fl.shared_gradients(net, x, y)
    return g[0], g[1]


@pytest.mark.parametrize("dataset,widths,size", [
    ("digits", (10,), None), ("digits", (100, 50), None), ("faces", (64, 32, 16), None),
    ("photos", (128,), 16), ("photos", (300, 100), 32)])
def test_single_sample_is_recovered_exactly(dataset, widths, size):
    x, y = lb.data.load(dataset, 1, seed=3, size=size, dtype=F64)
    net = lb.models.build("mlp", in_features=x[0].numel(), widths=widths,
                          num_classes=10, dtype=F64)
    gw, gb = first_layer_grads(net, x, y)
    out = invert_fc(gw, gb)
    assert out.single and len(out.samples) == 1
    assert out.input.shape == (x[0].numel(),)
    assert rel_err(out.input, x) < 1e-10
    assert rel_err(out.samples[0], x) < 1e-10
    assert max(rel_err(r, x) for r in out.ratios) < 1e-10
    rec = out.to_reconstruction(x.shape[1:])
    assert rec.images.shape == x.shape


@pytest.mark.parametrize("activation", ["sigmoid", "tanh", "leaky_relu"])
def test_single_sample_any_activation_and_a_plain_layer(activation):
    torch.manual_seed(0)
    x = torch.randn(1, 37, dtype=F64)
    net = nn.Sequential(nn.Linear(37, 20), lb.models.make_activation(activation),
                        nn.Linear(20, 3)).double()
    loss = net(x).pow(2).sum()
    gw, gb = torch.autograd.grad(loss, [net[0].weight, net[0].bias])
    assert rel_err(invert_fc(gw, gb).input, x) < 1e-10


def test_relu_rows_that_one_sample_reaches_give_it_back():
    x, y = lb.data.load("digits", 8, seed=1, dtype=F64)
    net = lb.models.build("mlp", in_features=64, widths=(256,), dtype=F64)
    gw, gb = first_layer_grads(net, x, y)
    active = net[1](x.flatten(1)) > 0                      # (B, m) forward pattern
    alone = torch.nonzero(active.sum(0) == 1).flatten()    # rows one sample reaches
    dead = torch.nonzero(active.sum(0) == 0).flatten()
    out = invert_fc(gw, gb)
    assert set(dead.tolist()) <= set(out.skipped.tolist())
    ratio_of = {int(r): out.ratios[k] for k, r in enumerate(out.rows)}
    for row in alone.tolist():                             # each is exactly its sample
        k = int(active[:, row].float().argmax())
        assert rel_err(ratio_of[row], x[k]) < 1e-10
    # rows certified by agreement are isolating rows, and their samples are exact
    assert len(out.samples) >= 4
    assert set(out.isolating_rows) <= set(alone.tolist())
    for sample, rows in zip(out.samples, out.sample_rows):
        k = int(active[:, rows[0]].float().argmax())
        assert rel_err(sample, x[k]) < 1e-10
    assert not out.single


def test_rows_reached_by_several_samples_are_mixtures():
    x, y = lb.data.load("digits", 4, seed=2, dtype=F64)
    net = lb.models.build("mlp", in_features=64, widths=(64,), activation="identity",
                          dtype=F64)
    gw, gb = first_layer_grads(net, x, y)
    out = invert_fc(gw, gb)
    assert len(out.samples) == 0 and not out.single
    # every ratio lies in the affine span of the batch with weights summing to 1
    xb = x.flatten(1)
    coef = torch.linalg.lstsq(xb.T, out.ratios.T).solution          # (B, R)
    assert torch.allclose(xb.T @ coef, out.ratios.T, atol=1e-10)
    assert torch.allclose(coef.sum(0), torch.ones(coef.shape[1], dtype=F64), atol=1e-8)


def test_tiny_bias_gradients_are_skipped_not_divided_by():
    gw = torch.tensor([[2.0, 4.0], [1e-20, 3.0], [0.0, 0.0], [-1.0, -2.0]], dtype=F64)
    gb = torch.tensor([2.0, 1e-20, 0.0, -1.0], dtype=F64)
    out = invert_fc(gw, gb)
    assert out.skipped.tolist() == [1, 2] and out.rows.tolist() == [0, 3]
    assert torch.isfinite(out.ratios).all()
    assert torch.allclose(out.input, torch.tensor([1.0, 2.0], dtype=F64))
    assert invert_fc(gw, gb, rtol=0.0).rows.tolist() == [0, 1, 3]


def test_bad_input_gives_clear_errors():
    gw, gb = torch.ones(5, 3), torch.ones(5)
    with pytest.raises(ValueError, match="all zero"):
        invert_fc(gw, torch.zeros(5))
    with pytest.raises(ValueError, match="rows but grad_bias has"):
        invert_fc(gw, torch.ones(4))
    with pytest.raises(ValueError, match="out_features, in_features"):
        invert_fc(torch.ones(5), gb)
    with pytest.raises(ValueError, match=r"\(out_features,\)"):
        invert_fc(gw, torch.ones(5, 1))
    with pytest.raises(ValueError, match="NaN"):
        invert_fc(gw, torch.tensor([1.0, float("nan"), 1, 1, 1]))
    with pytest.raises(TypeError, match="torch.Tensor"):
        invert_fc(gw.numpy(), gb)
    with pytest.raises(TypeError, match="floating-point"):
        invert_fc(gw.long(), gb)
    with pytest.raises(ValueError, match="deltas must be"):
        solve_fc_inputs(gw, torch.ones(2, 4))
    with pytest.raises(ValueError, match="all zero"):
        solve_fc_inputs(gw, torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"labels in 0\.\.2"):
        last_layer_deltas(torch.zeros(2, 3), torch.tensor([0, 3]))


def linear_classifier_case(batch, classes=10, seed=0, labels=None):
    x, y = lb.data.load("digits", batch, seed=seed, labels=labels, dtype=F64)
    head = nn.Linear(64, classes).double()
    with torch.no_grad():
        gen = torch.Generator().manual_seed(seed)
        head.weight.copy_(torch.randn(classes, 64, generator=gen, dtype=F64) * 0.1)
    net = nn.Sequential(nn.Flatten(), head)
    g = lb.fl.shared_gradients(net, x, y)
    return x, y, net, g


def test_last_layer_deltas_match_autograd():
    x, y, net, g = linear_classifier_case(6)
    logits = net(x).detach()
    d = last_layer_deltas(logits, y)
    assert torch.allclose(d.T @ x.flatten(1), g[0], atol=1e-14)
    assert torch.allclose(d.sum(0), g[1], atol=1e-14)
    soft = torch.nn.functional.one_hot(y, 10).double()
    assert torch.allclose(last_layer_deltas(logits, soft, reduction="sum"), 6 * d)


def test_least_squares_is_exact_when_determined():
    x, y, net, g = linear_classifier_case(7)
    sol = solve_fc_inputs(g[0], last_layer_deltas(net(x).detach(), y))
    assert sol.determined and sol.rank == 7 and sol.residual < 1e-12
    assert rel_err(sol.inputs, x) < 1e-10
    assert sol.condition < float("inf")


def test_least_squares_mixes_inputs_when_underdetermined():
    x, y, net, g = linear_classifier_case(12)   # softmax deltas: rank <= C - 1 = 9
    d = last_layer_deltas(net(x).detach(), y)
    sol = solve_fc_inputs(g[0], d)
    assert sol.rank == 9 and not sol.determined and sol.residual < 1e-12
    # minimum-norm solution = projection of the true inputs onto the row space of d^T
    proj = torch.linalg.pinv(d.T) @ d.T
    assert torch.allclose(sol.inputs, proj @ x.flatten(1), atol=1e-10)
    assert rel_err(sol.inputs, x) > 0.05
    assert sol.condition == float("inf")


def test_every_sample_with_several_isolating_rows_is_certified_once():
    # many rows per sample: the agreement test must not lose precision (cdist's
    # fast mode does) nor split one sample into several groups
    x, y = lb.data.load("digits", 2, seed=0, dtype=F64)
    net = lb.models.build("mlp", in_features=64, widths=(512,), dtype=F64)
    gw, gb = first_layer_grads(net, x, y)
    out = invert_fc(gw, gb)
    assert len(out.samples) == 2 and min(len(r) for r in out.sample_rows) > 20
    errs = torch.cdist(out.samples, x.flatten(1),
                       compute_mode="donot_use_mm_for_euclid_dist")
    assert errs.min(1).values.max() < 1e-10 * x.flatten(1).norm(dim=1).min()


@pytest.mark.parametrize("batch", [1, 5, 9])
def test_last_layer_inputs_from_labels_and_weights_alone(batch):
    labels = torch.randperm(10, generator=torch.Generator().manual_seed(batch))[:batch]
    x, y, net, g = linear_classifier_case(batch, seed=batch, labels=labels)
    head = net[1]
    sol = solve_last_layer_inputs(g[0], head.weight, head.bias, y)
    assert sol.determined and sol.history[-1] < 1e-13
    assert rel_err(sol.inputs, x) < 1e-10


def test_last_layer_solver_reports_the_duplicate_label_trap():
    # same labels give identical labels-only deltas: the start is rank-deficient
    x, y, net, g = linear_classifier_case(4, labels=[3, 3, 5, 7])
    sol = solve_last_layer_inputs(g[0], net[1].weight, net[1].bias, y)
    assert not sol.determined and sol.rank == 3


def test_last_layer_solver_rejects_mismatched_weights():
    with pytest.raises(ValueError, match="weight has shape"):
        solve_last_layer_inputs(torch.ones(3, 4), torch.ones(3, 5), None,
                                torch.tensor([0]))


def test_chapter_02_exercise_checks_accept_right_and_reject_wrong_answers(capsys):
    check = lb.exercises.check
    img = torch.rand(1, 5, 5, dtype=F64)
    assert check("ch02-ex-recover", img.clone(), img)
    assert not check("ch02-ex-recover", 2 * img, img)
    assert not check("ch02-ex-recover", torch.full((25,), float("nan")), img)
    u = torch.randn(5, 40, generator=torch.Generator().manual_seed(0))
    assert check("ch02-ex-rows", (u > 0).sum(0) == 1, u)
    assert not check("ch02-ex-rows", u[0] > 0, u)
    assert check("ch02-ex-rank", [1, 5, 9, 9], [1, 5, 9, 12])
    assert not check("ch02-ex-rank", [1, 5, 9, 12], [1, 5, 9, 12])
    assert "scale" in capsys.readouterr().out
