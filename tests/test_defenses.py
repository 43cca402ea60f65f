"""Tests for leakbook.defenses: each transform does what it says, and only that."""
import pytest
import torch

from leakbook import defenses as D


def _update(seed=0, shapes=((30, 20), (30,), (10, 30))):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]


def test_clip_sets_the_global_norm_and_leaves_small_updates():
    u = _update()
    assert D.global_norm(u) > 5
    c = D.clip(u, 2.0)
    assert abs(D.global_norm(c) - 2.0) < 1e-12
    ratio = c[0] / u[0]  # one common scale for every tensor
    assert torch.allclose(ratio, ratio.flatten()[0].expand_as(ratio))
    big = D.clip(u, 1e6)
    assert all(torch.equal(a, b) for a, b in zip(big, u))


def test_noise_std_and_seed():
    u = [torch.zeros(200_000, dtype=torch.float64)]
    n = D.gaussian_noise(u, 0.1, seed=3)[0]
    assert abs(float(n.std()) - 0.1) < 1e-3 and abs(float(n.mean())) < 1e-3
    assert torch.equal(n, D.gaussian_noise(u, 0.1, seed=3)[0])
    assert not torch.equal(n, D.gaussian_noise(u, 0.1, seed=4)[0])
    assert torch.equal(D.gaussian_noise(u, 0.0)[0], u[0])


def test_clip_and_noise_is_clip_then_noise_of_z_times_c():
    u = _update()
    out = D.clip_and_noise(u, 1.0, 0.5, seed=1)
    ref = D.gaussian_noise(D.clip(u, 1.0), 0.5, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(out, ref))


@pytest.mark.parametrize("per_tensor", [False, True])
def test_prune_share_and_kept_entries(per_tensor):
    u = _update()
    p = D.prune(u, 0.7, per_tensor=per_tensor)
    n = sum(t.numel() for t in u)
    if per_tensor:
        assert [int((t == 0).sum()) for t in p] == [round(0.7 * t.numel()) for t in u]
    else:
        assert sum(int((t == 0).sum()) for t in p) == round(0.7 * n)
    for a, b in zip(p, u):  # survivors are untouched
        assert torch.equal(a[a != 0], b[a != 0])
    if not per_tensor:  # every kept entry is at least as large as every zeroed one
        kept = torch.cat([b[a != 0].abs() for a, b in zip(p, u)])
        gone = torch.cat([b[a == 0].abs() for a, b in zip(p, u)])
        assert kept.min() >= gone.max()
    assert all(torch.equal(a, b) for a, b in zip(D.prune(u, 0.0), u))


@pytest.mark.parametrize("bits", [1, 2, 4])
@pytest.mark.parametrize("stochastic", [False, True])
def test_quantize_levels(bits, stochastic):
    u = _update()
    q = D.quantize(u, bits, stochastic=stochastic, seed=0)
    for a, b in zip(q, u):
        assert len(torch.unique(a)) <= 2 ** bits
        step = (b.max() - b.min()) / (2 ** bits - 1)
        err = (a - b).abs().max()
        assert err <= (1 if stochastic else 0.5) * step + 1e-12
    assert len(torch.unique(D.quantize(u, 4)[0])) > 8


def test_stochastic_quantisation_is_unbiased():
    t = [torch.linspace(-1, 1, 11, dtype=torch.float64)]
    mean = sum(D.quantize(t, 1, stochastic=True, seed=s)[0] for s in range(4000)) / 4000
    assert (mean - t[0]).abs().max() < 0.05


def test_input_is_unchanged():
    u = _update()
    copy = [t.clone() for t in u]
    for name, (fn, _) in D.DEFENSES.items():
        arg = {"clip": 1.0, "noise": 0.1, "relative_noise": 1.0,
               "clip_and_noise": 1.0, "prune": 0.5,
               "quantize": 2}[name]
        out = fn(u, arg) if name != "clip_and_noise" else fn(u, 1.0, arg)
        assert len(out) == len(u)
        assert all(torch.equal(a, b) for a, b in zip(u, copy)), name


def test_errors():
    u = _update()
    with pytest.raises(ValueError, match="sigma"):
        D.gaussian_noise(u, -0.1)
    with pytest.raises(ValueError, match="fraction"):
        D.prune(u, 1.0)
    with pytest.raises(ValueError, match="fraction"):
        D.prune(u, -0.1)
    with pytest.raises(ValueError, match="bits"):
        D.quantize(u, 0)
    with pytest.raises(TypeError, match="bits"):
        D.quantize(u, 2.5)
    with pytest.raises(ValueError, match="max_norm"):
        D.clip(u, 0.0)
    with pytest.raises(ValueError, match="NaN"):
        D.clip([torch.tensor([1.0, float("nan")])], 1.0)
    with pytest.raises(ValueError, match="sigma"):
        D.gaussian_noise(u, float("nan"))
    with pytest.raises(TypeError, match="list"):
        D.clip(u[0], 1.0)
    with pytest.raises(ValueError, match="empty"):
        D.prune([], 0.5)
    with pytest.raises(TypeError, match="floating"):
        D.quantize([torch.arange(4)], 2)


# --- relative noise and the federated task of chapter 10 ---------------------

import leakbook as lb  # noqa: E402


def test_relative_noise_has_the_asked_norm_ratio():
    u = [torch.randn(200_000, dtype=torch.float64,
                     generator=torch.Generator().manual_seed(0)) * 3]
    for ratio in (0.1, 1.0, 5.0):
        out = D.relative_noise(u, ratio, seed=1)
        noise = D.global_norm([out[0] - u[0]])
        assert abs(noise / D.global_norm(u) - ratio) < 0.01 * ratio
    assert torch.equal(D.relative_noise(u, 0.0)[0], u[0])
    assert torch.equal(D.relative_noise(u, 1.0, seed=2)[0],
                       D.relative_noise(u, 1.0, seed=2)[0])
    with pytest.raises(ValueError, match="ratio"):
        D.relative_noise(u, -1.0)


def test_make_defence_matches_the_functions():
    u = _update()
    same = [
        (D.make_defence("none")(u, seed=3), u),
        (D.make_defence("clip", 0.5)(u, seed=3), D.clip(u, 0.5)),
        (D.make_defence("noise", 0.1)(u, seed=3), D.gaussian_noise(u, 0.1, seed=3)),
        (D.make_defence("relative_noise", 2.0)(u, seed=3),
         D.relative_noise(u, 2.0, seed=3)),
        (D.make_defence("clip_and_noise", 0.1, max_norm=2.0)(u, seed=3),
         D.clip_and_noise(u, 2.0, 0.1, seed=3)),
        (D.make_defence("prune", 0.7)(u, seed=3), D.prune(u, 0.7)),
        (D.make_defence("quantize", 2)(u, seed=3), D.quantize(u, 2, seed=3)),
    ]
    for got, want in same:
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    with pytest.raises(ValueError, match="unknown defence"):
        D.make_defence("dropout", 0.5)
    with pytest.raises(ValueError, match="max_norm"):
        D.make_defence("clip_and_noise", 0.1)


def test_digits_task_split_and_targets():
    t8, t16 = D.digits_task(8), D.digits_task(16)
    assert t8.x_train.shape == (1200, 1, 8, 8) and t16.x_test.shape == (597, 1, 16, 16)
    assert torch.equal(t8.y_train, t16.y_train) and torch.equal(t8.y_test, t16.y_test)
    every = torch.cat(t8.clients).sort().values
    assert torch.equal(every, torch.arange(1200)) and len(t8.clients) == 100
    dev, test = D.target_digits(t16, "dev"), D.target_digits(t16, "test")
    assert torch.equal(dev[1], torch.arange(10))
    assert torch.equal(test[1], torch.arange(10))
    assert not any(torch.equal(a, b) for a in dev[0] for b in test[0])
    # every target is a training digit of its class
    for img, c in zip(*test):
        assert any(torch.equal(img, v) for v in t16.x_train[t16.y_train == c])
    with pytest.raises(ValueError, match="split"):
        D.target_digits(t16, "train")
    with pytest.raises(ValueError, match="num_test"):
        D.digits_task(8, num_test=1790)


def test_sent_update_is_the_gradient_or_the_mean_local_gradient():
    task = D.digits_task(8)
    net = lb.models.build("mlp", seed=0, dtype=torch.float64)
    x, y = task.x_train[:2].double(), task.y_train[:2]
    before = [p.clone() for p in net.parameters()]
    g = D.sent_update(net, x, y)
    assert all(torch.equal(a, b) for a, b in zip(g, lb.fl.shared_gradients(net, x, y)))
    u = D.sent_update(net, x, y, lr=0.2, local_steps=3)
    delta = lb.fl.client_update(net, x, y, lr=0.2, local_steps=3)
    assert all(torch.allclose(a, -d / 0.6) for a, d in zip(u, delta))
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


@pytest.mark.parametrize("local_steps", [1, 3])
def test_vectorised_client_updates_agree_with_sent_update(local_steps):
    task = D.digits_task(8)
    net = lb.models.build("mlp", seed=0, dtype=torch.float64)
    x = task.x_train[:6].double().view(3, 2, 1, 8, 8)
    y = task.y_train[:6].view(3, 2)
    params = [p.detach() for p in net.parameters()]
    ups = D._client_updates(net, params, x, y, 0.3, local_steps)
    for k in range(3):
        ref = D.sent_update(net, x[k], y[k], lr=0.3, local_steps=local_steps)
        assert all(torch.allclose(t[k], r, atol=1e-12) for t, r in zip(ups, ref))


def test_federated_training_learns_is_seeded_and_applies_the_defence():
    task = D.digits_task(8)

    def run(defend=None, seed=0, rounds=60):
        net = lb.models.build("mlp", seed=0)
        D.federated_training(net, task, defend, rounds=rounds, seed=seed)
        return net

    a, b = run(), run()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert lb.train.accuracy(a, task.x_test, task.y_test) > 0.5
    c = run(D.make_defence("none"))
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))
    calls = []

    def spy(update, seed):
        calls.append(seed)
        return [torch.zeros_like(t) for t in update]
    z = run(spy, rounds=3)  # every client's update goes through the defence
    assert len(calls) == 30 and len(set(calls)) == 30
    fresh = lb.models.build("mlp", seed=0)
    assert all(torch.equal(p, q) for p, q in zip(z.parameters(), fresh.parameters()))


def test_federated_training_errors():
    task = D.digits_task(8)
    net = lb.models.build("mlp", seed=0)
    with pytest.raises(ValueError, match="rounds"):
        D.federated_training(net, task, rounds=0)
    with pytest.raises(ValueError, match="clients_per_round"):
        D.federated_training(net, task, clients_per_round=101)
    with pytest.raises(ValueError, match="batch_size"):
        D.federated_training(net, task, batch_size=13)

    def nan(update, seed):
        return [t * float("nan") for t in update]
    before = [p.clone() for p in net.parameters()]
    with pytest.raises(RuntimeError, match="diverged at round 0"):
        D.federated_training(net, task, nan, rounds=2)
    assert all(torch.equal(p, q) for p, q in zip(before, net.parameters()))
