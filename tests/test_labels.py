"""Unit tests of leakbook.attacks.labels (label recovery) and leakbook.train."""
import pytest
import torch

from leakbook import data, fl, metrics, models
from leakbook.attacks import labels as L
from leakbook.train import accuracy, train_classifier


@pytest.fixture(scope="module")
def digits():
    x, y = data.load("digits", 1797, seed=0)
    return {"train": (x[:700], y[:700]), "aux": x[700:900], "aux_labels": y[700:900],
            "pool": (x[900:], y[900:])}


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
    with pytest.raises(ValueError, match="method must be one of"):
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
    with pytest.raises(ValueError, match="epochs must"):
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


# --- LLG+ and LLG* -------------------------------------------------------------

def _stale_index_llg_plus(gw, batch_size, impact, offset):
    """The public port's bug, for contrast: stage 2 corrects a stale index."""
    g = gw.sum(1)
    present = sorted((g < 0).nonzero().flatten().tolist(), key=lambda i: float(g[i]))
    g = g - offset
    labels, idx = [], None
    for idx in present[:batch_size]:
        labels.append(idx)
        g[idx] -= impact
    while len(labels) < batch_size:
        labels.append(int(g.argmin()))
        g[idx] -= impact  # the bug: idx is the last stage-1 class
    return sorted(labels)


def test_llg_plus_stage_two_corrects_the_picked_class():
    # row sums -3, -3, 1, 1; impact -1: two classes with three labels each
    gw = torch.tensor([[-3.0], [-3.0], [1.0], [1.0]])
    offset = torch.zeros(4)
    got = L.llg_plus(gw, 6, -1.0, offset)
    assert got.tolist() == [0, 0, 0, 1, 1, 1]
    # the stale-index port sends every remaining label to one class
    assert _stale_index_llg_plus(gw, 6, -1.0, offset) == [0, 0, 0, 0, 0, 1]
    # the offset is subtracted before counting: class 2 (row sum 1, offset 3) shows
    offset = torch.tensor([0.0, 0.0, 3.0, 0.0])
    assert L.llg_plus(gw, 6, -1.0, offset).tolist() == [0, 0, 0, 1, 1, 2]


def test_impact_offset_signs_and_seed(digits):
    model = models.build("mlp", seed=0, widths=(50,), activation="relu")
    xa, ya = digits["aux"], digits["aux_labels"]
    impact, offset = L.impact_offset(model, xa, 8, ya, repeats=3, seed=1)
    assert impact < 0 and offset.shape == (10,) and (offset > 0).all()
    again = L.impact_offset(model, xa, 8, ya, repeats=3, seed=1)
    assert impact == again[0] and torch.equal(offset, again[1])
    other = L.impact_offset(model, xa, 8, ya, repeats=3, seed=2)
    assert not torch.equal(offset, other[1])


@pytest.mark.parametrize("batch_size", [16, 64])
def test_llg_plus_beats_llg_on_untrained_networks(digits, batch_size):
    x, y = digits["pool"]
    xa, ya = digits["aux"], digits["aux_labels"]
    plain, plus = [], []
    for seed in range(4):
        model = models.build("mlp", seed=seed, widths=(100,), activation="relu")
        labs = L.draw_labels(batch_size, 10, 0.5, seed=seed)
        xb, yb = L.sample_batch(x, y, labs, seed=seed)
        g = _grads(model, xb, yb)
        plain.append(metrics.label_accuracy(L.recover(model, g, batch_size, "llg"), yb))
        plus.append(metrics.label_accuracy(L.recover(
            model, g, batch_size, "llg+", dummies=xa, dummy_labels=ya, repeats=2), yb))
    assert sum(plus) > sum(plain)


def test_llg_star_uses_a_shadow_and_leaves_the_model_alone(digits):
    x, y = digits["pool"]
    xa, ya = digits["aux"], digits["aux_labels"]
    model = models.build("mlp", seed=3, widths=(60,), activation="relu")
    before = [p.detach().clone() for p in model.parameters()]
    shadow = L.shadow_model(model, xa, ya, epochs=2, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert not torch.equal(next(shadow.parameters()), before[0])
    xb, yb = L.sample_batch(x, y, L.draw_labels(16, 10, 0.5, seed=2), seed=2)
    g = _grads(model, xb, yb)
    got = L.recover(model, g, 16, "llg*", shadow=shadow, dummies=xa, dummy_labels=ya,
                    repeats=2)
    assert len(got) == 16 and metrics.label_accuracy(got, yb) > 0.5
    # without a shadow, one is trained from the labelled auxiliary data
    built = L.recover(model, g, 16, "llg*", dummies=xa, dummy_labels=ya,
                      shadow_epochs=2, seed=5, repeats=2)
    assert torch.equal(built, got)
    with pytest.raises(ValueError, match="architecture"):
        L.recover(model, g, 16, "llg*", shadow=models.build("mlp", widths=(30,)),
                  dummies=xa)


# --- the span test, calibrated counts ------------------------------------------

def test_span_test_on_hand_made_errors():
    # three samples, labels 1, 4, 4; every error is > 0 except at its label
    gen = torch.Generator().manual_seed(0)
    probs = torch.rand(3, 8, generator=gen, dtype=torch.float64).softmax(-1)
    y = torch.tensor([1, 4, 4])
    errors = probs - torch.nn.functional.one_hot(y, 8).double()
    feats = torch.rand(3, 5, generator=gen, dtype=torch.float64)
    gw, gb = errors.T @ feats / 3, errors.mean(0)
    excluded = L.span_test(gw, gb, 3)
    assert not excluded[[1, 4]].any()          # present classes are never excluded
    assert excluded.sum() == 6                 # and here every absent one is
    assert not L.span_test(gw, gb, 7).any()    # B > C - 2: no information


def test_span_test_never_excludes_a_present_class(digits):
    x, y = digits["pool"]
    model = models.build("mlp", seed=1, widths=(100,), activation="tanh")
    train_classifier(model, *digits["train"], epochs=10, seed=1)
    all_absent_found = 0
    for seed in range(12):
        b = (2, 4, 8)[seed % 3]
        xb, yb = L.sample_batch(x, y, L.draw_labels(b, 10, 0.0, seed=seed), seed=seed)
        gw, gb = L.last_layer_grads(model, _grads(model, xb, yb))
        excluded = L.span_test(gw, gb, b)
        present = torch.bincount(yb, minlength=10) > 0
        assert not (excluded & present).any()
        all_absent_found += bool((excluded | present).all())
    assert all_absent_found >= 6


def test_allocate_maximises_expected_accuracy():
    import itertools
    surv = torch.tensor([[0.9, 0.6, 0.1, 0.0], [1.0, 0.2, 0.1, 0.1],
                         [0.5, 0.45, 0.4, 0.3]], dtype=torch.float64)

    def expected(counts):
        return sum(float(surv[c, :k].sum()) for c, k in enumerate(counts))

    best = max((c for c in itertools.product(range(5), repeat=3) if sum(c) == 4),
               key=expected)
    got = torch.bincount(L.allocate(surv, 4), minlength=3).tolist()
    assert expected(got) == pytest.approx(expected(best))


@pytest.fixture(scope="module")
def trained_relu(digits):
    model = models.build("mlp", seed=4, widths=(100,), activation="relu")
    train_classifier(model, *digits["train"], epochs=10, lr=1e-2, seed=4)
    return model


def test_calibrated_beats_zero_shot_counts_on_a_trained_network(digits, trained_relu):
    x, y = digits["pool"]
    xa, ya = digits["aux"], digits["aux_labels"]
    cal = {b: L.calibrate_counts(trained_relu, xa, ya, b, simulations=200)
           for b in (4, 32)}
    ours, zero = [], []
    for seed in range(8):
        b = (4, 32)[seed % 2]
        xb, yb = L.sample_batch(x, y, L.draw_labels(b, 10, 0.5, seed=seed), seed=seed)
        g = _grads(trained_relu, xb, yb)
        ours.append(metrics.label_accuracy(
            L.recover(trained_relu, g, b, "calibrated", calibration=cal[b]), yb))
        zero.append(metrics.label_accuracy(
            L.recover(trained_relu, g, b, "geng", dummies=xa), yb))
    assert sum(ours) > sum(zero) + 0.5


def test_calibrated_is_exact_on_an_untrained_network(digits):
    x, y = digits["pool"]
    xa, ya = digits["aux"], digits["aux_labels"]
    model = models.build("mlp", seed=2, widths=(100,), activation="sigmoid")
    xb, yb = L.sample_batch(x, y, L.draw_labels(64, 10, 0.5, seed=5), seed=5)
    got = L.recover(model, _grads(model, xb, yb), 64, "calibrated", dummies=xa,
                    dummy_labels=ya)
    assert got.tolist() == sorted(yb.tolist())


def test_calibration_is_seeded(digits, trained_relu):
    xa, ya = digits["aux"], digits["aux_labels"]
    a = L.calibrate_counts(trained_relu, xa, ya, 8, simulations=50, seed=3)
    b = L.calibrate_counts(trained_relu, xa, ya, 8, simulations=50, seed=3)
    for (_, wa), (_, wb) in zip(a.folds, b.folds):
        assert all(torch.equal(torch.as_tensor(wa[k]), torch.as_tensor(wb[k]))
                   for k in a.grid)


# --- recovery changes nothing it was given ---------------------------------------

@pytest.mark.parametrize("method", ["geng", "geng_refined", "llg+", "llg*",
                                    "calibrated"])
def test_recovery_leaves_model_buffers_modes_and_grads_alone(digits, method):
    x, y = digits["pool"]
    xa, ya = digits["aux"], digits["aux_labels"]
    model = models.build("resnet_tiny", seed=0, in_channels=1, image_size=8, width=8)
    xb, yb = L.sample_batch(x, y, L.draw_labels(4, 10, 0.5, seed=1), seed=1)
    g = _grads(model, xb, yb)
    model.eval()
    model[4].train()                      # a mix of modes, to see it is kept
    modes = [m.training for m in model.modules()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    g_copy = [t.clone() for t in g]
    kw = {"dummies": xa, "dummy_labels": ya, "repeats": 1, "shadow_epochs": 1}
    if method == "geng_refined":
        method, kw = "geng", {"dummies": xa, "refine": True}
    elif method == "geng":
        kw = {"dummies": xa}
    L.recover(model, g, 4, method, **kw)
    assert [m.training for m in model.modules()] == modes
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert all(torch.equal(a, b) for a, b in zip(g, g_copy))


def test_bad_inputs_of_the_new_methods(digits, trained_relu):
    x, y = digits["pool"]
    xa, ya = digits["aux"], digits["aux_labels"]
    model = trained_relu
    g = _grads(model, x[:8], y[:8])
    with pytest.raises(ValueError, match="dummies or input_shape"):
        L.recover(model, g, 8, "llg+")
    with pytest.raises(ValueError, match="shadow model or labelled"):
        L.recover(model, g, 8, "llg*", dummies=xa)
    with pytest.raises(ValueError, match="both impact and offset"):
        L.recover(model, g, 8, "llg+", impact=-1.0)
    with pytest.raises(ValueError, match="labelled auxiliary data"):
        L.recover(model, g, 8, "calibrated", dummies=xa)
    with pytest.raises(TypeError, match="int64"):
        L.calibrate_counts(model, xa, ya.float(), 8)
    with pytest.raises(ValueError, match="one label per dummy"):
        L.calibrate_counts(model, xa, ya[:-1], 8)
    with pytest.raises(ValueError, match=r"0\.\.9"):
        L.calibrate_counts(model, xa, ya + 5, 8)
    with pytest.raises(ValueError, match="two samples of every class"):
        L.calibrate_counts(model, xa[ya != 3], ya[ya != 3], 8)
    with pytest.raises(ValueError, match="alpha"):
        L.calibrate_counts(model, xa, ya, 8, alpha=(3.0, 1.0))
    with pytest.raises(ValueError, match="simulations"):
        L.calibrate_counts(model, xa, ya, 8, simulations=5)
    with pytest.raises(ValueError, match="batch_size must be at least 1"):
        L.calibrate_counts(model, xa, ya, 0)
    with pytest.raises(ValueError, match="non-empty tensor"):
        L.impact_offset(model, [1.0, 2.0], 8)
    with pytest.raises(ValueError, match="repeats must be at least 1"):
        L.impact_offset(model, xa, 8, repeats=0)
    with pytest.raises(ValueError, match="no sample of class 3"):
        L.impact_offset(model, xa[ya != 3], 8, ya[ya != 3])
    with pytest.raises(ValueError, match="epochs"):
        L.shadow_model(model, xa, ya, epochs=-1)
    cal = L.calibrate_counts(model, xa, ya, 4, simulations=20)
    with pytest.raises(ValueError, match="calibration is for B = 4"):
        L.recover(model, g, 8, "calibrated", calibration=cal)
    with pytest.raises(TypeError, match="CountCalibration"):
        L.recover(model, g, 8, "calibrated", calibration={"batch_size": 8})
    nobias = models.build("mlp", seed=0, widths=(20,), bias=False)
    with pytest.raises(ValueError, match="bias"):
        L.recover(nobias, _grads(nobias, x[:4], y[:4]), 4, "calibrated",
                  use_bias=False, dummies=xa, dummy_labels=ya)
