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
        arg = {"clip": 1.0, "noise": 0.1, "clip_and_noise": 1.0, "prune": 0.5,
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
