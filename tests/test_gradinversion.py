"""GradInversion-style group consistency (`leakbook.attacks.group`)."""
from __future__ import annotations

import pytest
import torch

import leakbook as lb
from leakbook.attacks import group as gi_mod
from leakbook.attacks.group import (best_shifts, gradinversion, group_penalty,
                                            registered_mean, shift_images)
from leakbook.attacks.matching import inverting_gradients

PRIORS = {"tv": 1e-3, "bn": 1e-2}


def _case(b=1, size=8):
    net = lb.models.build("resnet_tiny", seed=0, image_size=size, width=4,
                          num_classes=4).eval()
    x, _ = lb.data.load("photos", b, seed=3, size=size)
    y = torch.arange(b)
    return net, x, y, lb.fl.shared_gradients(net, x, y)


@pytest.mark.parametrize("kwargs, match", [
    ({"seeds": 0}, "seeds must"), ({"seeds": 1.5}, "seeds must"),
    ({"iterations": 0}, "iterations must"), ({"group": -1.0}, "group must"),
    ({"group": float("nan")}, "group must"), ({"register": "flow"}, "register must"),
    ({"lr": 0.0}, "lr must"), ({"every": 0}, "every must"),
    ({"max_shift": 9}, "max_shift must"), ({"seed": "a"}, "seed must"),
    ({"regularizers": {"sharp": 1.0}}, "regularizers' names must"),
    ({"regularizers": {"tv": -1.0}}, "regularizers"),
    ({"regularizers": [1]}, "regularizers must"),
    ({"callback": 3}, "callback must"),
])
def test_bad_arguments_are_refused_by_name(kwargs, match):
    net, x, y, g = _case()
    with pytest.raises((TypeError, ValueError), match=match):
        gradinversion(net, g, tuple(x.shape), y, **{"iterations": 2, **kwargs})


def test_bad_shape_labels_and_grads_are_refused():
    net, x, y, g = _case()
    with pytest.raises(ValueError, match="shape"):
        gradinversion(net, g, (1, 3, 8), y)
    with pytest.raises(TypeError, match="labels must"):
        gradinversion(net, g, tuple(x.shape), torch.tensor([0.5]))
    with pytest.raises(ValueError, match=r"labels must be labels in 0\.\.3"):
        gradinversion(net, g, tuple(x.shape), torch.tensor([7]))
    with pytest.raises(ValueError, match="labels must"):
        gradinversion(net, g, tuple(x.shape), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="grads"):
        gradinversion(net, g[:-1], tuple(x.shape), y)
    with pytest.raises(ValueError, match="grads must not be all zeros"):
        gradinversion(net, [torch.zeros_like(t) for t in g], tuple(x.shape), y,
                      iterations=2)
    plain = lb.models.build("lenet_dlg", image_size=8, num_classes=4)
    gp = lb.fl.shared_gradients(plain, x, y)
    with pytest.raises(ValueError, match="regularizers must not hold 'bn'"):
        gradinversion(plain, gp, tuple(x.shape), y, regularizers=PRIORS)


def test_members_shape_and_stats():
    net, x, y, g = _case(b=2)
    rec = gradinversion(net, g, tuple(x.shape), y, seeds=3, iterations=6, every=2,
                        regularizers=PRIORS)
    assert rec.images.shape == x.shape
    assert rec.stats["members"].shape == (3, *x.shape)
    assert rec.stats["shifts"].shape == (3, 2, 2)
    assert len(rec.stats["member_distances"]) == 3 and len(rec.loss_history) == 6
    assert rec.stats["shifts"].abs().max() <= 2
    assert ((rec.images >= 0) & (rec.images <= 1)).all()
    assert torch.equal(rec.labels, y)


def test_the_fused_image_never_reads_the_truth():
    """Two different batches with the same gradient input give the same answer:
    the attack sees only model, grads, shape and labels."""
    net, x, y, g = _case()
    a = gradinversion(net, g, tuple(x.shape), y, seeds=2, iterations=5, every=2)
    x.zero_()  # the truth changes; the attacker's inputs do not
    b = gradinversion(net, g, (1, 3, 8, 8), y, seeds=2, iterations=5, every=2)
    assert torch.equal(a.images, b.images)


def test_one_seed_is_inverting_gradients_single_restart_bit_for_bit():
    """seeds=1: the group term is off (a group of one has no consensus), the
    fused image is the only member, and both attacks take the same steps."""
    net, x, y, g = _case(b=2)
    gi = gradinversion(net, g, tuple(x.shape), y, seeds=1, iterations=16,
                       regularizers=PRIORS, seed=5)
    ig = inverting_gradients(net, g, tuple(x.shape), y, iterations=16,
                             regularizers=PRIORS, seed=5, max_time=None)
    assert torch.equal(gi.images, ig.images)
    assert torch.equal(gi.stats["members"][0], ig.images)
    assert gi.stats["penalty_history"] == []
    assert gi.stats["member_distances"][0] == pytest.approx(ig.stats["final_distance"])


def test_group_zero_members_equal_independent_restarts():
    """group=0: member s is inverting gradients' restart s (same start, steps)."""
    net, x, y, g = _case()
    gi = gradinversion(net, g, tuple(x.shape), y, seeds=3, iterations=10, group=0.0)
    ig = inverting_gradients(net, g, tuple(x.shape), y, iterations=10, restarts=3,
                             max_time=None)
    for s in range(3):
        assert torch.allclose(gi.stats["members"][s], ig.stats["run_images"][s],
                              atol=1e-6)


def test_registration_recovers_a_known_integer_shift():
    gen = torch.Generator().manual_seed(0)
    base = torch.nn.functional.avg_pool2d(torch.rand(2, 3, 20, 20, generator=gen), 3,
                                          1, 1)
    truth = torch.tensor([[1, -2], [-2, 0]])
    moved = shift_images(base, -truth)  # moving back by truth recovers base
    assert torch.equal(best_shifts(moved, base, 2), truth)
    members = torch.stack([base, moved])
    mean, shifts = registered_mean(members, "shift", 2)
    assert torch.equal(shifts[1] - shifts[0], truth)
    _, none = registered_mean(members, "none")
    assert none.abs().sum() == 0


def test_group_penalty_is_zero_for_identical_members_and_its_gradient_pulls_to_mean():
    x = torch.rand(3, 1, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    same = x[:1].expand(2, -1, -1, -1, -1)
    mean, shifts = registered_mean(same, "shift", 1)
    assert group_penalty(same, mean, shifts) == 0
    x.requires_grad_(True)
    mean = x.detach().mean(0)
    zero = torch.zeros(3, 1, 2, dtype=torch.long)
    (grad,) = torch.autograd.grad(group_penalty(x, mean, zero), x)
    assert torch.allclose(grad, 2 * (x.detach() - mean) / 16)


def test_deterministic_and_leaves_the_model_alone():
    net, x, y, g = _case(b=2)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    g_copy = [t.clone() for t in g]
    a = gradinversion(net, g, tuple(x.shape), y, seeds=2, iterations=6, every=2,
                      regularizers=PRIORS)
    b = gradinversion(net, g, tuple(x.shape), y, seeds=2, iterations=6, every=2,
                      regularizers=PRIORS)
    assert torch.equal(a.images, b.images)
    assert torch.equal(a.stats["members"], b.stats["members"])
    assert not net.training
    assert all(torch.equal(state[k], v) for k, v in net.state_dict().items())
    assert all(torch.equal(s, t) for s, t in zip(g, g_copy))
    c = gradinversion(net, g, tuple(x.shape), y, seeds=2, iterations=6, every=2,
                      regularizers=PRIORS, seed=1)
    assert not torch.equal(a.images, c.images)


def test_defaults_are_documented():
    assert gi_mod.GI_DEFAULTS["max_shift"] == 2
    assert set(gi_mod.REGISTRATIONS) == {"shift", "none"}
