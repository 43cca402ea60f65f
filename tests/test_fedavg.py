"""Tests of chapter 06: FedAvg updates and several pairs of one batch."""
import copy

import pytest
import torch

import leakbook as lb
from leakbook import fl
from leakbook.attacks import fedavg, invert_fedavg, invert_pairs
from leakbook.attacks import labels as L

F64 = torch.float64


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(model, state):
    now = model.state_dict()
    return set(now) == set(state) and all(torch.equal(now[k], state[k]) for k in state)


# --- the simulated client ----------------------------------------------------

@pytest.mark.parametrize("n, steps, batch, seed", [
    (1, 1, None, 0), (3, 4, None, 0), (5, 3, 2, 0), (5, 7, 3, 4), (6, 5, 4, 9)])
def test_simulated_update_equals_client_update_in_float64(n, steps, batch, seed):
    x, y = lb.data.load("digits", n, seed=seed, dtype=F64)
    net = lb.models.build("mlp", seed=seed, widths=(20,), activation="sigmoid",
                          dtype=F64)
    ref = fl.client_update(net, x, y, lr=0.7, local_steps=steps, batch_size=batch,
                           seed=seed)
    sim = fedavg.simulate_update(net, x, y, lr=0.7, local_steps=steps,
                                 batch_size=batch, shuffle_seed=seed)
    for a, b in zip(sim, ref):
        assert torch.allclose(a, b, rtol=0, atol=1e-14 * max(1.0, float(b.abs().max())))


def test_simulated_update_on_a_cnn_with_batchnorm_matches_and_changes_nothing():
    x, y = lb.data.load("photos", 3, seed=1, size=8, dtype=F64)
    net = lb.models.build("resnet_tiny", seed=0, image_size=8, width=4, dtype=F64)
    before = _state(net)
    ref = fl.client_update(net, x, y, lr=0.05, local_steps=4, batch_size=2, seed=2)
    sim = fedavg.simulate_update(net, x, y, lr=0.05, local_steps=4, batch_size=2,
                                 shuffle_seed=2)
    assert all(torch.allclose(a, b, rtol=0, atol=1e-13) for a, b in zip(sim, ref))
    assert _same_state(net, before)  # running statistics untouched


def test_simulated_update_is_differentiable_in_the_images():
    x, y = lb.data.load("digits", 2, seed=0, dtype=F64)
    net = lb.models.build("mlp", widths=(8,), activation="sigmoid", dtype=F64)
    x = x.clone().requires_grad_(True)
    u = fedavg.simulate_update(net, x, y, lr=0.5, local_steps=3, create_graph=True)
    (gx,) = torch.autograd.grad(sum((t * t).sum() for t in u), x)
    assert gx.shape == x.shape and gx.abs().sum() > 0


def test_schedule_and_as_gradient():
    steps = fedavg.schedule(5, 4, 2, shuffle_seed=3)
    order = torch.randperm(5, generator=torch.Generator().manual_seed(3))
    assert [s.tolist() for s in steps] == [order[0:2].tolist(), order[2:4].tolist(),
                                           [order[4].item(), order[0].item()],
                                           order[1:3].tolist()]
    x, y = lb.data.load("digits", 4, seed=0, dtype=F64)
    net = lb.models.build("mlp", widths=(8,), dtype=F64)
    u = fl.client_update(net, x, y, lr=0.3, local_steps=1)
    g = fl.shared_gradients(net, x, y)
    assert all(torch.allclose(a, b, atol=1e-15)
               for a, b in zip(fedavg.as_gradient(u, 0.3, 1), g))


# --- labels from an update ----------------------------------------------------

@pytest.fixture(scope="module")
def label_case():
    x, y = lb.data.load("digits", 1797, seed=0)
    lab = L.draw_labels(16, 10, 0.5, seed=3)
    xb, yb = L.sample_batch(x[900:], y[900:], lab, seed=3)
    net = lb.models.build("mlp", seed=3, widths=(50,), activation="relu", dtype=F64)
    return net, xb.double(), yb, x[700:900].double(), y[700:900]


def _true_path_mean(net, x, y, lr, steps):
    local, probs = copy.deepcopy(net), []
    for _ in range(steps):
        with torch.no_grad():
            probs.append(local(x).softmax(-1).mean(0))
        g = fl.shared_gradients(local, x, y)
        with torch.no_grad():
            for p, gi in zip(local.parameters(), g):
                p -= lr * gi
    return torch.stack(probs).mean(0)


def test_recover_fedavg_is_exact_with_the_path_softmax_mean(label_case):
    net, x, y, *_ = label_case
    lr, steps = 1.0, 10  # far from one gradient: the naive reading fails here
    u = fl.client_update(net, x, y, lr=lr, local_steps=steps)
    p = _true_path_mean(net, x, y, lr, steps)
    got = L.recover_fedavg(net, u, 16, lr=lr, local_steps=steps, softmax_mean=p)
    assert got.tolist() == sorted(y.tolist())
    p0 = net(x).softmax(-1).mean(0).detach()
    naive = L.recover(net, fedavg.as_gradient(u, lr, steps), 16, "geng",
                      softmax_mean=p0)
    assert naive.tolist() != sorted(y.tolist())


def test_recover_fedavg_exact_cases_of_the_two_paths(label_case):
    net, x, y, *_ = label_case
    u1 = fl.client_update(net, x, y, lr=0.5, local_steps=1)
    got = L.recover_fedavg(net, u1, 16, lr=0.5, local_steps=1, dummies=x,
                           path="interpolate")
    assert got.tolist() == sorted(y.tolist())  # one step, the batch as dummies
    u = fl.client_update(net, x, y, lr=1.0, local_steps=10)
    got = L.recover_fedavg(net, u, 16, lr=1.0, local_steps=10, dummies=x,
                           dummy_labels=y)
    assert got.tolist() == sorted(y.tolist())  # a surrogate that is the client


def test_recover_fedavg_beats_naive_geng_on_auxiliary_data(label_case):
    net, x, y, aux, aux_y = label_case
    u = fl.client_update(net, x, y, lr=0.5, local_steps=5)
    naive = L.recover(net, fedavg.as_gradient(u, 0.5, 5), 16, "geng", dummies=aux)
    sim = L.recover_fedavg(net, u, 16, lr=0.5, local_steps=5, dummies=aux,
                           dummy_labels=aux_y)
    acc = lb.metrics.label_accuracy
    assert acc(sim, y) > acc(naive, y) and acc(sim, y) >= 0.9


def test_recover_fedavg_leaves_model_and_update_unchanged(label_case):
    net, x, y, aux, _ = label_case
    u = fl.client_update(net, x, y, lr=0.5, local_steps=3)
    state, kept = _state(net), [t.clone() for t in u]
    for path in L.PATHS:
        L.recover_fedavg(net, u, 16, lr=0.5, local_steps=3, dummies=aux[:40], path=path)
    assert _same_state(net, state) and all(torch.equal(a, b) for a, b in zip(u, kept))


def test_recover_fedavg_bad_input(label_case):
    net, x, y, aux, aux_y = label_case
    u = fl.client_update(net, x, y, lr=0.5, local_steps=2)
    kw = {"lr": 0.5, "local_steps": 2, "dummies": aux}
    with pytest.raises(ValueError, match="path"):
        L.recover_fedavg(net, u, 16, path="straight", **kw)
    with pytest.raises(ValueError, match="num_samples"):
        L.recover_fedavg(net, u, 0, **kw)
    with pytest.raises(TypeError, match="num_samples"):
        L.recover_fedavg(net, u, 16.0, **kw)
    with pytest.raises(ValueError, match="lr"):
        L.recover_fedavg(net, u, 16, lr=-1.0, local_steps=2, dummies=aux)
    with pytest.raises(ValueError, match="local_steps"):
        L.recover_fedavg(net, u, 16, lr=0.5, local_steps=0, dummies=aux)
    with pytest.raises(ValueError, match="batch_size"):
        L.recover_fedavg(net, u, 16, batch_size=17, **kw)
    with pytest.raises(ValueError, match="dummies"):
        L.recover_fedavg(net, u, 16, lr=0.5, local_steps=2)
    with pytest.raises(ValueError, match="dummy_labels"):
        L.recover_fedavg(net, u, 16, dummy_labels=aux_y[:5], **kw)
    with pytest.raises(ValueError, match="gradient"):
        L.recover_fedavg(net, u[:-1], 16, **kw)
    with pytest.raises(ValueError, match="zero"):
        L.recover_fedavg(net, [torch.zeros_like(t) for t in u], 16, **kw)


# --- images from updates ------------------------------------------------------

@pytest.fixture(scope="module")
def image_case():
    x, y = lb.data.evaluation_set("dev", size=16)
    net = lb.models.build("lenet_dlg", seed=0, image_size=16)
    return net, x[:1], y[:1] % 10


def test_invert_fedavg_beats_the_naive_reading(image_case):
    net, x, y = image_case
    lr, steps = 0.01, 5
    u = fl.client_update(net, x, y, lr=lr, local_steps=steps)
    rec = invert_fedavg(net, u, tuple(x.shape), y, lr=lr, local_steps=steps,
                        iterations=150)
    naive = invert_pairs([(net, fedavg.as_gradient(u, lr, steps))], tuple(x.shape), y,
                         iterations=150)
    psnr = lb.metrics.psnr
    assert psnr(rec.images.clamp(0, 1), x) > psnr(naive.images.clamp(0, 1), x) + 5
    assert rec.stats["final_distance"] < naive.stats["final_distance"]


def test_invert_fedavg_leaves_inputs_unchanged_and_is_reproducible(image_case):
    net, x, y = image_case
    u = fl.client_update(net, x, y, lr=0.01, local_steps=2)
    state, kept = _state(net), [t.clone() for t in u]
    kw = {"lr": 0.01, "local_steps": 2, "iterations": 5, "seed": 3}
    a = invert_fedavg(net, u, tuple(x.shape), y, **kw)
    b = invert_fedavg(net, u, tuple(x.shape), y, **kw)
    c = invert_fedavg(net, u, tuple(x.shape), y, **{**kw, "seed": 4})
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert _same_state(net, state) and all(torch.equal(p, q) for p, q in zip(u, kept))
    adam = invert_fedavg(net, u, tuple(x.shape), y, optimizer="adam",
                         regularizers={"tv": 1e-3}, **kw)
    assert 0 <= adam.images.min() and adam.images.max() <= 1  # the box
    single = invert_fedavg(net, u, tuple(x.shape), y, dtype=torch.float32, **kw)
    assert single.images.dtype == torch.float32 and single.loss_history


def test_invert_pairs_restarts_and_mixed_pairs(image_case):
    net, x, y = image_case
    other = lb.models.build("lenet_dlg", seed=1, image_size=16)
    pairs = [(net, fl.shared_gradients(net, x, y)),
             (other, fl.client_update(other, x, y, lr=0.01, local_steps=2),
              {"lr": 0.01, "local_steps": 2})]
    rec = invert_pairs(pairs, tuple(x.shape), y, iterations=4, restarts=3)
    d = rec.stats["run_distances"]
    assert rec.stats["pairs"] == 2 and rec.stats["chosen_run"] == d.index(min(d))
    assert len(set(d)) == 3


def test_invert_pairs_bad_input(image_case):
    net, x, y = image_case
    g = fl.shared_gradients(net, x, y)
    shape = tuple(x.shape)
    with pytest.raises(ValueError, match="non-empty"):
        invert_pairs([], shape, y)
    with pytest.raises(TypeError, match="pair 0"):
        invert_pairs([net], shape, y)
    with pytest.raises(TypeError, match="pair 1"):
        invert_pairs([(net, g), (net, g, 0.1)], shape, y)
    with pytest.raises(TypeError, match="Module"):
        invert_pairs([("net", g)], shape, y)
    with pytest.raises(ValueError, match="pair 1.*gradient tensors"):
        invert_pairs([(net, g), (net, g[:-1])], shape, y)
    with pytest.raises(ValueError, match="pair 0.*zero"):
        invert_pairs([(net, [torch.zeros_like(t) for t in g])], shape, y)
    with pytest.raises(ValueError, match="unknown schedule"):
        invert_pairs([(net, g, {"steps": 3})], shape, y)
    with pytest.raises(ValueError, match="pair 0: local_steps"):
        invert_pairs([(net, g)], shape, y, lr=0.1, local_steps=0)
    with pytest.raises(ValueError, match="batch_size"):
        invert_pairs([(net, g)], shape, y, lr=0.1, batch_size=2)
    with pytest.raises(ValueError, match="shape"):
        invert_pairs([(net, g)], (1, 3, 16), y)
    with pytest.raises(ValueError, match="does not accept"):
        invert_pairs([(net, g)], (1, 1, 16, 16), y)
    with pytest.raises(ValueError, match="labels"):
        invert_pairs([(net, g)], shape, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels must lie"):
        invert_pairs([(net, g)], shape, torch.tensor([10]))
    with pytest.raises(ValueError, match="distance"):
        invert_pairs([(net, g)], shape, y, distance="l1")
    with pytest.raises(ValueError, match="optimizer"):
        invert_pairs([(net, g)], shape, y, optimizer="sgd")
    with pytest.raises(ValueError, match="regularizers"):
        invert_pairs([(net, g)], shape, y, regularizers={"sparsity": 1.0})
    with pytest.raises(ValueError, match="bn"):
        invert_pairs([(net, g)], shape, y, regularizers={"bn": 1.0})
    with pytest.raises(ValueError, match="restarts"):
        invert_pairs([(net, g)], shape, y, restarts=0)
    with pytest.raises(ValueError, match="lr"):
        invert_fedavg(net, g, shape, y, lr=None, local_steps=2)


def test_recover_fedavg_without_bias_reads_row_sums():
    x, y = lb.data.load("digits", 8, seed=5, dtype=F64)
    net = lb.models.build("mlp", seed=5, widths=(30,), bias=False, dtype=F64)
    u = fl.client_update(net, x, y, lr=0.1, local_steps=3)
    with pytest.raises(ValueError, match="no bias"):
        L.recover_fedavg(net, u, 8, lr=0.1, local_steps=3, dummies=x)
    for path in L.PATHS:
        got = L.recover_fedavg(net, u, 8, lr=0.1, local_steps=3, dummies=x,
                               dummy_labels=y, use_bias=False, path=path)
        assert got.shape == (8,) and torch.equal(got, got.sort().values)
        assert lb.metrics.label_accuracy(got, y) >= 0.75
