"""Unit tests of the core: data, models, fl, metrics, viz, exercises."""
import math

import pytest
import torch

import leakbook as lb
from leakbook import data, fl, metrics, models


# --- data -------------------------------------------------------------------

@pytest.mark.parametrize("name,shape", [("digits", (1, 8, 8)), ("faces", (1, 25, 25)),
                                        ("photos", (3, 32, 32))])
def test_load_shapes_and_range(name, shape):
    x, y = data.load(name, 5, seed=3)
    assert x.shape == (5, *shape) and y.shape == (5,)
    assert x.dtype == torch.float32 and y.dtype == torch.long
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.05


def test_load_is_seeded():
    a, _ = data.load("photos", 4, seed=1)
    b, _ = data.load("photos", 4, seed=1)
    c, _ = data.load("photos", 4, seed=2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_load_chosen_and_duplicate_labels():
    x, y = data.load("digits", 0, labels=[7, 7, 7, 2], seed=0)
    assert y.tolist() == [7, 7, 7, 2]
    assert len({tuple(v.flatten().tolist()) for v in x}) == 4  # distinct images
    _, yp = data.load("photos", 0, labels=[0, 0, 9])
    assert yp.tolist() == [0, 0, 9]


def test_load_resize_and_rgb():
    x, _ = data.load("digits", 2, size=32, rgb=True)
    assert x.shape == (2, 3, 32, 32)


def test_load_bad_input():
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load("cifar10", 3)
    with pytest.raises(ValueError, match="positive integer"):
        data.load("digits", 0)
    with pytest.raises(ValueError, match="label 1"):
        data.load("faces", 0, labels=[1] * 101)
    with pytest.raises(ValueError, match="photo labels"):
        data.load("photos", 0, labels=[10])


# --- models -----------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(models.ZOO))
def test_build_is_seeded_and_runs(name):
    kw = {"in_features": 3 * 32 * 32} if name in ("mlp", "fcn3") else {}
    a, b = models.build(name, seed=5, **kw), models.build(name, seed=5, **kw)
    c = models.build(name, seed=6, **kw)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)
    out = a(torch.rand(2, 3, 32, 32))
    assert out.shape[0] == 2 and torch.isfinite(out).all()


def test_build_leaves_global_rng_alone():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    models.build("cnn6")
    assert torch.equal(torch.rand(3), expected)


def test_zoo_architectures_match_the_papers():
    lenet = models.build("lenet_dlg", num_classes=100)
    assert lenet[-1].in_features == 768                      # DLG's LeNet
    assert all(p.abs().max() <= 0.5 for p in lenet.parameters())
    cnn6 = models.build("cnn6")
    assert cnn6[-1].in_features == 3200 and cnn6[-1].out_features == 1
    assert all(m.bias is None for m in cnn6 if isinstance(m, torch.nn.Conv2d))
    assert models.build("cnn6_d")[2].out_channels == 20
    assert models.build("cnn4_c2")[-1].in_features == 4608   # Chen & Campbell
    assert models.build("fcn3")[1].out_features == 1000


def test_activation_choice_and_errors():
    net = models.build("lenet_dlg", activation="relu")
    assert isinstance(net[1], torch.nn.ReLU)
    with pytest.raises(ValueError, match="name must be one of"):
        models.build("vgg16")
    with pytest.raises(ValueError, match="activation must be one of"):
        models.build("mlp", activation="swishy")
    with pytest.raises(TypeError, match="build"):
        models.build("cnn6", colour=True)


# --- fl -----------------------------------------------------------------------

def _manual_grads(net, x, y):
    net.zero_grad()
    torch.nn.functional.cross_entropy(net(x), y).backward()
    return [p.grad.clone() for p in net.parameters()]


def test_shared_gradients_agree_with_autograd():
    net = models.build("lenet_dlg", dtype=torch.float64)
    x, y = data.load("photos", 3, dtype=torch.float64)
    grads = fl.shared_gradients(net, x, y)
    for g, h in zip(grads, _manual_grads(net, x, y)):
        assert torch.allclose(g, h, rtol=1e-12, atol=1e-14)
    assert all(not g.requires_grad for g in grads)


def test_shared_gradients_soft_labels_equal_hard():
    net = models.build("mlp", in_features=64, dtype=torch.float64)
    x, y = data.load("digits", 4, dtype=torch.float64)
    hard = fl.shared_gradients(net, x, y)
    soft = fl.shared_gradients(net, x, torch.nn.functional.one_hot(y, 10).double())
    assert all(torch.allclose(a, b) for a, b in zip(hard, soft))


def test_shared_gradients_create_graph_is_differentiable():
    net = models.build("mlp", in_features=64)
    x = torch.rand(1, 1, 8, 8, requires_grad=True)
    grads = fl.shared_gradients(net, x, torch.tensor([3]), create_graph=True)
    sum(g.pow(2).sum() for g in grads).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_logistic_loss_for_one_logit():
    net = models.build("cnn6", dtype=torch.float64)
    x, _ = data.load("photos", 1, dtype=torch.float64)
    grads = fl.shared_gradients(net, x, torch.tensor([1]), loss="logistic")
    f = net(x).squeeze()
    net.zero_grad()
    torch.log1p(torch.exp(-f)).backward()
    assert torch.allclose(grads[0], next(net.parameters()).grad)


def test_client_update_one_step_is_minus_lr_times_gradient():
    net = models.build("mlp", in_features=64, dtype=torch.float64)
    x, y = data.load("digits", 4, dtype=torch.float64)
    before = [p.clone() for p in net.parameters()]
    update = fl.client_update(net, x, y, lr=0.05, local_steps=1)
    grads = fl.shared_gradients(net, x, y)
    assert all(torch.allclose(u, -0.05 * g) for u, g in zip(update, grads))
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # untouched


def test_client_update_several_steps_match_manual_sgd():
    net = models.build("mlp", in_features=64, dtype=torch.float64)
    x, y = data.load("digits", 4, dtype=torch.float64)
    update = fl.client_update(net, x, y, lr=0.1, local_steps=3, batch_size=4)
    manual = models.build("mlp", in_features=64, dtype=torch.float64)
    opt = torch.optim.SGD(manual.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(manual(x), y).backward()
        opt.step()
    for u, a, b in zip(update, manual.parameters(), net.parameters()):
        assert torch.allclose(u, a - b, atol=1e-12)


def test_fedavg_is_weighted_mean():
    u1, u2 = [torch.ones(2)], [torch.zeros(2)]
    assert torch.allclose(fl.fedavg([u1, u2], weights=[3, 1])[0], torch.full((2,), 0.75))


def test_fl_bad_input():
    net = models.build("mlp", in_features=64)
    x, y = data.load("digits", 2)
    with pytest.raises(ValueError, match="2 samples but y has 3"):
        fl.shared_gradients(net, x, torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match=r"labels in 0\.\.9"):
        fl.shared_gradients(net, x, torch.tensor([1, 12]))
    with pytest.raises(ValueError, match="NaN"):
        fl.shared_gradients(net, x * float("nan"), y)
    with pytest.raises(ValueError, match="unknown loss"):
        fl.shared_gradients(net, x, y, loss="hinge")
    with pytest.raises(ValueError, match="local_steps"):
        fl.client_update(net, x, y, local_steps=0)


def test_check_grads_names_the_mismatch():
    from leakbook.checks import check_grads
    net = models.build("mlp", in_features=64)
    other = models.build("mlp", in_features=64, widths=(50,))
    grads = [torch.zeros_like(p) for p in other.parameters()]
    with pytest.raises(ValueError, match="another model"):
        check_grads(net, grads)
    with pytest.raises(ValueError, match="parameter tensors"):
        check_grads(net, grads[:2])


# --- metrics ----------------------------------------------------------------

def test_psnr_values():
    x = torch.rand(2, 1, 8, 8)
    assert metrics.psnr(x, x) == math.inf
    assert metrics.psnr(x + 0.1, x) == pytest.approx(20.0, abs=1e-6)


def test_ssim_identity_and_noise():
    x, _ = data.load("photos", 2)
    assert metrics.ssim(x, x) == pytest.approx(1.0)
    assert metrics.ssim((x + 0.2 * torch.randn_like(x)).clamp(0, 1), x) < 0.8


def test_label_accuracy_is_a_multiset_measure():
    assert metrics.label_accuracy([1, 2, 2], [2, 1, 2]) == 1.0
    assert metrics.label_accuracy([1, 1, 1], [1, 2, 2]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="batch of 3"):
        metrics.label_accuracy([1], [1, 2, 3])


def test_report_matches_a_shuffled_batch():
    x, y = data.load("photos", 4, seed=2)
    perm = torch.tensor([2, 0, 3, 1])
    rep = metrics.report(x[perm], x, y[perm], y)
    assert rep["psnr"] == math.inf and rep["label_acc"] == 1.0
    assert torch.equal(x[perm][rep["order"]], x)
    with pytest.raises(ValueError, match="shape"):
        metrics.report(x[:2], x)


# --- viz and exercises --------------------------------------------------------

def test_viz_figures():
    import matplotlib
    matplotlib.use("Agg")
    x, _ = data.load("photos", 3)
    fig = lb.viz.compare(x, x * 0.9, names=["truth", "dim"])
    assert len(fig.axes) == 6
    assert len(lb.viz.show_images(x).axes) == 3
    with pytest.raises(ValueError, match="expected an image"):
        lb.viz.to_numpy_image(torch.zeros(3, 3))


def test_exercise_checks(capsys):
    assert lb.exercises.close(torch.ones(2), torch.ones(2))
    assert "Correct" in capsys.readouterr().out
    assert not lb.exercises.close(torch.ones(3), torch.ones(2))
    assert "shape" in capsys.readouterr().out
    assert lb.exercises.same_multiset([2, 1, 1], [1, 2, 1])
    with pytest.raises(KeyError, match="no check"):
        lb.exercises.check("no-such-exercise", 1)


def test_seed_everything_reproduces():
    lb.seed_everything(3)
    a = torch.rand(2)
    lb.seed_everything(3)
    assert torch.equal(a, torch.rand(2))


def test_animation_html_is_self_contained():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import animation
    fig, ax = plt.subplots()
    anim = animation.FuncAnimation(fig, lambda k: ax.plot([k]), frames=2)
    html = lb.viz.animation_html(anim)
    plt.close(fig)
    assert "<img" in html and "font-awesome" not in html and "https://" not in html


def test_report_sets_every_psnr_beside_the_flat_baseline():
    x, _ = data.load("photos", 3, seed=4)
    rep = metrics.report(x.flip(0), x)
    flat = metrics.flat_baseline(x)
    assert flat.shape == x.shape and torch.allclose(flat[:, :, 0, 0], x.mean((2, 3)))
    assert rep["psnr_baseline"] == pytest.approx(metrics.psnr(flat, x))
    assert rep["gain_db"] == pytest.approx(rep["psnr"] - rep["psnr_baseline"])
    assert rep["gain_db"] > 100  # the flipped batch is matched back exactly
    bad = metrics.report(flat, x)
    assert bad["gain_db"] == pytest.approx(0.0, abs=1e-9)
    assert bad["ssim"] == pytest.approx(bad["ssim_baseline"])


def test_summarize_gives_median_and_range():
    s = metrics.summarize([3.0, 1.0, 2.0, 10.0])
    assert s == {"median": 2.5, "low": 1.0, "high": 10.0, "n": 4}
    with pytest.raises(ValueError):
        metrics.summarize([])


def test_default_photo_crops_are_varied_and_the_old_rule_is_available():
    x, _ = data.load("photos", 60, seed=0)
    assert all(data.is_varied(v) for v in x)
    raw, _ = data.load("photos", 60, seed=0, varied=False)
    assert not all(data.is_varied(v) for v in raw)


def test_evaluation_set_is_fixed_varied_and_split():
    dev, ydev = data.evaluation_set("dev")
    test, ytest = data.evaluation_set("test")
    assert dev.shape == test.shape == (12, 3, 32, 32)
    assert ydev.tolist() == list(range(12)) and len(data.EVALUATION_NAMES) == 12
    assert all(data.is_varied(v) for v in dev) and all(data.is_varied(v) for v in test)
    assert torch.equal(dev, data.evaluation_set("dev")[0])
    assert all(not torch.equal(a, b) for a, b in zip(dev, test))
    small, _ = data.evaluation_set("test", size=8, rgb=False)
    assert small.shape == (12, 1, 8, 8)
    with pytest.raises(ValueError, match="split"):
        data.evaluation_set("train")
