"""Unit tests of leakbook.attacks.labels (label recovery) and leakbook.train."""
import pytest
import torch

from leakbook import data, fl, metrics, models
from leakbook.attacks import labels as L
from leakbook.train import accuracy, train_classifier



@pytest.fixture(scope="module")
def digits():
    x, y = data.load("digits", 1797, seed=0)
    return {"train": (x[:700], y[:700]), "aux": x[700:900], "pool": (x[900:], y[900:])}


def _grads(model, x, y):
    return fl.shared_gradients(model, x, y)


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
@pytest.mark.parametrize("use_bias", [True, False])
def test_idlg_always_right_for_one_sample(digits, activation, use_bias):
    # non-negative features before the last layer: the sign rule cannot fail
    x, y = digits["pool"]
    for seed in range(40):
        model = models.build("mlp", seed=seed, widths=(32,), activation=activation)
        i = seed * 17 % len(x)
        got = L.recover(model, _grads(model, x[i:i + 1], y[i:i + 1]), 1, "idlg",
                        use_bias=use_bias)
        assert got.tolist() == [int(y[i])] and got.dtype == torch.int64


def test_idlg_on_the_dlg_lenet(digits):
    x, y = digits["pool"]
    for seed in range(10):
        model = models.build("lenet_dlg", seed=seed, in_channels=1, image_size=8)
        got = L.recover(model, _grads(model, x[seed:seed + 1], y[seed:seed + 1]), 1,
                        use_bias=False)
        assert got.tolist() == [int(y[seed])]


@pytest.mark.parametrize("batch_size", [2, 5, 10])
def test_yin_right_for_unique_labels_on_untrained_relu(digits, batch_size):
    x, y = digits["pool"]
    for seed in range(10):
        model = models.build("mlp", seed=seed, widths=(100,), activation="relu")
        labels = L.draw_labels(batch_size, 10, None, seed=seed)
        xb, yb = L.sample_batch(x, y, labels, seed=seed)
        got = L.recover(model, _grads(model, xb, yb), batch_size, "yin")
        assert got.tolist() == sorted(yb.tolist())


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_geng_exact_with_true_softmax_mean(digits, activation):
    x, y = digits["pool"]
    model = models.build("mlp", seed=1, widths=(50,), activation=activation,
                         dtype=torch.float64)
    xb, yb = L.sample_batch(x, y, L.draw_labels(64, 10, 0.6, seed=3), seed=3)
    xb = xb.double()
    with torch.no_grad():
        p_mean = model(xb).softmax(-1).mean(0)
    got = L.recover(model, _grads(model, xb, yb), 64, "geng", softmax_mean=p_mean)
    assert got.tolist() == sorted(yb.tolist())
    # without the true mean, a uniform guess is wrong: the test could fail
    skewed = torch.full((10,), 0.1) + 0.05 * torch.arange(10) - 0.225
    wrong = L.recover(model, _grads(model, xb, yb), 64, "geng", softmax_mean=skewed)
    assert wrong.tolist() != sorted(yb.tolist())


def test_geng_estimated_from_dummies_at_batch_64(digits):
    x, y = digits["pool"]
    model = models.build("mlp", seed=2, widths=(100,), activation="relu")
    xb, yb = L.sample_batch(x, y, L.draw_labels(64, 10, 0.5, seed=5), seed=5)
    g = _grads(model, xb, yb)
    for kw in ({"dummies": digits["aux"]}, {"dummies": digits["aux"], "refine": True}):
        assert L.recover(model, g, 64, "geng", **kw).tolist() == sorted(yb.tolist())
    # noise dummies are a rougher estimate of the softmax mean
    noise = L.recover(model, g, 64, "geng", input_shape=(1, 8, 8), seed=1)
    assert metrics.label_accuracy(noise, yb) >= 0.95


def test_refine_beats_zero_shot_on_a_trained_network(digits):
    x, y = digits["pool"]
    model = models.build("mlp", seed=0, widths=(100,), activation="sigmoid")
    train_classifier(model, *digits["train"], epochs=10, lr=1e-2, seed=0)
    zero, ref = [], []
    for seed in range(6):
        xb, yb = L.sample_batch(x, y, L.draw_labels(64, 10, 0.5, seed=seed), seed=seed)
        g = _grads(model, xb, yb)
        zero.append(metrics.label_accuracy(
            L.recover(model, g, 64, "geng", dummies=digits["aux"]), yb))
        ref.append(metrics.label_accuracy(
            L.recover(model, g, 64, "geng", dummies=digits["aux"], refine=True), yb))
    assert sum(ref) > sum(zero) + 0.3


def test_llg_counts_and_published_impact():
    # a hand-made gradient: row sums -3, -1, +2, +2 with B = 4, C = 4
    gw = torch.tensor([[-3.0], [-1.0], [2.0], [2.0]])
    got = L.llg(gw, 4)
    # impact = (-4 / 4) * (1 + 1/4) = -1.25: after stage 1 g = [-1.75, 0.25, 2, 2]
    assert got.tolist() == [0, 0, 0, 1]
    assert L.llg(gw, 1).tolist() == [0]


def test_counts_to_labels_sums_to_batch():
    got = L.counts_to_labels(torch.tensor([2.6, -0.4, 0.7, 0.2]), 4)
    assert got.tolist() == [0, 0, 0, 2]
    assert len(L.counts_to_labels(torch.tensor([9.0, 9.0]), 3)) == 3


def test_label_accuracy_is_a_multiset_measure():
    assert metrics.label_accuracy([1, 1, 2], [2, 1, 1]) == 1.0
    assert metrics.label_accuracy([1, 1, 1], [1, 2, 3]) == pytest.approx(1 / 3)
    assert metrics.label_accuracy([0, 0], [0, 1]) == 0.5


def test_no_bias_variant_runs(digits):
    x, y = digits["pool"]
    model = models.build("mlp", seed=0, widths=(100,), activation="sigmoid", bias=False)
    xb, yb = L.sample_batch(x, y, L.draw_labels(16, 10, 0.5, seed=0), seed=0)
    g = _grads(model, xb, yb)
    got = L.recover(model, g, 16, "geng", use_bias=False, dummies=digits["aux"])
    assert metrics.label_accuracy(got, yb) == 1.0
    with pytest.raises(ValueError, match="no bias"):
        L.recover(model, g, 16, "geng", dummies=digits["aux"])


def test_bad_inputs(digits):
    x, y = digits["pool"]
    model = models.build("mlp", seed=0, widths=(20,))
    g = _grads(model, x[:4], y[:4])
    with pytest.raises(ValueError, match="at least 1"):
        L.recover(model, g, 0, "llg")
    with pytest.raises(ValueError, match="batch_size must be 1"):
        L.recover(model, g, 4, "idlg")
    with pytest.raises(ValueError, match="unique labels"):
        L.recover(model, g, 11, "yin")
    with pytest.raises(TypeError, match="int"):
        L.recover(model, g, 2.0, "llg")
    with pytest.raises(ValueError, match="unknown method"):
        L.recover(model, g, 4, "dlg")
    with pytest.raises(ValueError, match="another model"):
        L.recover(models.build("mlp", seed=0, widths=(30,)), g, 4, "llg")
    with pytest.raises(ValueError, match="softmax_mean, dummies or input_shape"):
        L.recover(model, g, 4, "geng")
    with pytest.raises(ValueError, match="zero"):
        L.recover(model, [torch.zeros_like(t) for t in g], 4, "llg")
    conv_last = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10),
                                    torch.nn.Unflatten(1, (10, 1, 1)),
                                    torch.nn.Conv2d(10, 10, 1), torch.nn.Flatten())
    with pytest.raises(TypeError, match="not Linear"):
        L.recover(conv_last, [torch.ones_like(p) for p in conv_last.parameters()], 1)
    with pytest.raises(ValueError, match="unique"):
        L.draw_labels(11, 10, None)
    with pytest.raises(ValueError, match="pool has"):
        L.sample_batch(x[:5], y[:5], [y[0]] * 6)


def test_train_classifier_learns_and_is_seeded(digits):
    (xt, yt), (xp, yp) = digits["train"], digits["pool"]
    a = models.build("mlp", seed=0, widths=(50,))
    b = models.build("mlp", seed=0, widths=(50,))
    hist = train_classifier(a, xt, yt, epochs=4, seed=1)
    train_classifier(b, xt, yt, epochs=4, seed=1)
    assert hist[-1] < hist[0] and accuracy(a, xp, yp) > 0.85
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    with pytest.raises(ValueError, match="positive"):
        train_classifier(a, xt, yt, epochs=0)


def test_count_lower_bounds_hold(digits):
    x, y = digits["pool"]
    model = models.build("mlp", seed=3, widths=(100,), activation="tanh")
    train_classifier(model, *digits["train"], epochs=3, seed=3)
    for seed in range(5):
        xb, yb = L.sample_batch(x, y, L.draw_labels(16, 10, 0.5, seed=seed), seed=seed)
        _, gb = L.last_layer_grads(model, _grads(model, xb, yb))
        low = L.count_lower_bounds(gb, 16)
        assert (low <= torch.bincount(yb, minlength=10)).all() and low.sum() >= 1


def test_chapter_03_exercise_checks():
    from leakbook import exercises
    gb = torch.tensor([0.2, -0.5, 0.3])
    assert exercises.check("ch03-ex-idlg", 1, gb)
    assert not exercises.check("ch03-ex-idlg", 0, gb)
    assert not exercises.check("ch03-ex-idlg", [1, 2], gb)
    p = torch.tensor([0.3, 0.3, 0.4])
    gb = p - torch.tensor([1.0, 3.0, 0.0]) / 4  # counts 1, 3, 0 in a batch of 4
    assert exercises.check("ch03-ex-counts", torch.tensor([1.0, 3.0, 0.0]), gb, p, 4)
    wrong = torch.tensor([2.0, 2.0, 0.0])
    assert not exercises.check("ch03-ex-counts", wrong, gb, p, 4)
    assert exercises.check("ch03-ex-tolerance", 1 / 128, 64)
    assert not exercises.check("ch03-ex-tolerance", 1 / 64, 64)
