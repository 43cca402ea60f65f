"""Property-based tests (Hypothesis) over the public API (issue 14, item 5).

Each test states a property that must hold for every input Hypothesis draws:
shapes, dtypes, label ranges, non-finite values and empty batches included.
Runs are deterministic and database-free (``derandomize=True``,
``database=None``), so CI sees the same examples every time; the whole file
runs in well under a minute (``max_examples`` per test below).
"""
from __future__ import annotations

import functools
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from leakbook import checks, data, fl, metrics, models, security
from leakbook.attacks import analytic, copa, hybrid, rgap
from leakbook.attacks import linear_systems as ls
from leakbook.attacks import gradinversion

F64 = torch.float64
CHECKED = (ValueError, TypeError)


def profile(examples: int):
    """The suite's settings: deterministic, no example database, no deadline."""
    return settings(max_examples=examples, deadline=None, derandomize=True,
                    database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.data_too_large,
                                           HealthCheck.function_scoped_fixture])


def names_argument(message: str, name: str) -> bool:
    return re.search(rf"(^|[^\w.]){re.escape(name)}(\[[^\]]*\])* must\b",
                     message) is not None


# --- strategies -------------------------------------------------------------------

unit = st.floats(0.0, 1.0, allow_nan=False, width=32)


@st.composite
def image_pairs(draw, min_side=1, max_batch=3):
    """Two float64 image batches (B, C, H, W) in [0, 1] of one shape."""
    b = draw(st.integers(1, max_batch))
    c = draw(st.sampled_from([1, 3]))
    h = draw(st.integers(min_side, 7))
    w = draw(st.integers(min_side, 7))
    shape = (b, c, h, w)
    x_hat = draw(hnp.arrays(np.float64, shape, elements=unit))
    x = draw(hnp.arrays(np.float64, shape, elements=unit))
    return torch.from_numpy(x_hat), torch.from_numpy(x)


@st.composite
def label_lists(draw, max_len=12, max_label=9):
    n = draw(st.integers(1, max_len))
    return draw(st.lists(st.integers(0, max_label), min_size=n, max_size=n))


@st.composite
def updates(draw, clients=None):
    """A list of client updates (each two float64 tensors) and positive weights."""
    k = clients or draw(st.integers(1, 4))
    shapes = [(draw(st.integers(1, 4)), draw(st.integers(1, 3))), (draw(st.integers(1, 5)),)]
    seed = draw(st.integers(0, 2 ** 16))
    gen = torch.Generator().manual_seed(seed)
    ups = [[torch.randn(s, generator=gen, dtype=F64) for s in shapes] for _ in range(k)]
    w = draw(st.lists(st.floats(0.01, 100.0), min_size=k, max_size=k))
    return ups, w


@st.composite
def small_classifier_batches(draw):
    """A float64 MLP on d inputs with C classes, and a batch (x, y)."""
    d = draw(st.integers(1, 12))
    c = draw(st.integers(2, 6))
    b = draw(st.integers(1, 6))
    width = draw(st.sampled_from([(), (5,), (8, 4)]))
    act = draw(st.sampled_from(["relu", "tanh", "sigmoid"]))
    seed = draw(st.integers(0, 1000))
    net = models.build("mlp", in_features=d, widths=width, num_classes=c, seed=seed,
                       activation=act, dtype=F64)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(b, d, generator=gen, dtype=F64)
    y = torch.tensor(draw(st.lists(st.integers(0, c - 1), min_size=b, max_size=b)))
    return net, x, y


# --- metrics ------------------------------------------------------------------------

@profile(40)
@given(image_pairs(min_side=3))
def test_report_gain_is_psnr_minus_the_flat_baseline(pair):
    x_hat, x = pair
    rep = metrics.report(x_hat, x)
    if rep["psnr"] == rep["psnr_baseline"] == math.inf:  # flat truth, exact answer
        assert rep["gain_db"] == 0.0
    else:
        assert rep["gain_db"] == rep["psnr"] - rep["psnr_baseline"]
    assert not math.isnan(rep["gain_db"])
    assert rep["psnr_baseline"] == metrics.psnr(metrics.flat_baseline(x), x)
    assert rep["psnr"] == metrics.psnr(x_hat.clamp(0, 1)[rep["order"]], x)
    assert sorted(rep["order"].tolist()) == list(range(len(x)))
    assert -1 <= rep["ssim"] <= 1 + 1e-12 and rep["mse"] >= 0


@profile(40)
@given(image_pairs())
def test_mse_and_psnr_are_symmetric_and_exact_only_for_equal_images(pair):
    x_hat, x = pair
    m = metrics.mse(x_hat, x)
    assert (m >= 0).all() and torch.equal(m, metrics.mse(x, x_hat))
    assert metrics.psnr(x_hat, x) == metrics.psnr(x, x_hat)
    assert metrics.psnr(x, x) == math.inf
    equal = (x_hat == x).flatten(1).all(1)
    assert torch.equal(m == 0, equal)


@profile(30)
@given(image_pairs(), st.floats(1e-3, 0.5), st.floats(0.5, 4.0))
def test_psnr_of_a_constant_offset_is_20_log10_peak_over_offset(pair, c, peak):
    _, x = pair
    expected = 20 * math.log10(peak / c)
    assert metrics.psnr(x + c, x, peak=peak) == pytest.approx(expected, abs=1e-9)


@profile(30)
@given(image_pairs(max_batch=5), st.randoms(use_true_random=False))
def test_match_undoes_any_shuffle_of_distinct_images(pair, rnd):
    _, x = pair
    assume(len({tuple(v.flatten().tolist()) for v in x}) == len(x))
    perm = list(range(len(x)))
    rnd.shuffle(perm)
    shuffled = x[perm]
    order = metrics.match(shuffled, x)
    assert torch.equal(shuffled[order], x)


@profile(50)
@given(label_lists(), st.randoms(use_true_random=False), label_lists())
def test_label_accuracy_is_a_multiset_score(labels, rnd, other):
    shuffled = list(labels)
    rnd.shuffle(shuffled)
    assert metrics.label_accuracy(shuffled, labels) == 1.0
    other = (other * len(labels))[:len(labels)]
    acc = metrics.label_accuracy(other, labels)
    assert 0.0 <= acc <= 1.0
    assert (acc == 1.0) == (sorted(other) == sorted(labels))
    assert acc == metrics.label_accuracy(labels, other)


@profile(40)
@given(image_pairs())
def test_flat_baseline_keeps_each_channels_mean_and_is_idempotent(pair):
    _, x = pair
    flat = metrics.flat_baseline(x)
    assert flat.shape == x.shape
    assert torch.allclose(flat.mean((2, 3)), x.mean((2, 3)), atol=1e-12)
    assert (flat == flat[:, :, :1, :1]).all()
    assert torch.allclose(metrics.flat_baseline(flat), flat, atol=1e-15)


@profile(50)
@given(st.lists(st.floats(-1e6, 1e6) | st.just(math.inf), min_size=1, max_size=20))
def test_summarize_orders_low_median_high(values):
    s = metrics.summarize(values)
    assert s["low"] <= s["median"] <= s["high"] and s["n"] == len(values)
    assert s["low"] == min(values) and s["high"] == max(values)


# --- fl -------------------------------------------------------------------------------

@profile(40)
@given(updates(), st.integers(1, 5))
def test_fedavg_of_identical_updates_is_that_update_exactly(ups_w, k):
    ups, w = ups_w
    same = [ups[0]] * k
    out = fl.fedavg(same, weights=(w * k)[:k])
    assert all(torch.equal(o, u) for o, u in zip(out, ups[0]))
    assert all(o is not u for o, u in zip(out, ups[0]))  # a new tensor, not an alias


@profile(40)
@given(updates(), st.randoms(use_true_random=False), st.floats(0.1, 10.0))
def test_fedavg_is_a_convex_combination_independent_of_order_and_scale(ups_w, rnd, scale):
    ups, w = ups_w
    out = fl.fedavg(ups, weights=w)
    order = list(range(len(ups)))
    rnd.shuffle(order)
    shuffled = fl.fedavg([ups[i] for i in order], weights=[w[i] * scale for i in order])
    for j, o in enumerate(out):
        stack = torch.stack([u[j] for u in ups])
        assert (o >= stack.min(0).values - 1e-12).all()
        assert (o <= stack.max(0).values + 1e-12).all()
        assert torch.allclose(o, shuffled[j], atol=1e-12)
        mean = sum(wi * u[j] for wi, u in zip(w, ups)) / sum(w)
        assert torch.allclose(o, mean, atol=1e-12)


@profile(25)
@given(small_classifier_batches(), st.floats(1e-3, 2.0), st.integers(0, 100))
def test_one_full_batch_step_is_minus_lr_times_the_shared_gradient(case, lr, seed):
    net, x, y = case
    update = fl.client_update(net, x, y, lr=lr, local_steps=1, seed=seed)
    grads = fl.shared_gradients(net, x, y)
    for u, g in zip(update, grads):
        assert torch.allclose(u, -lr * g, rtol=1e-9, atol=1e-15)


@profile(25)
@given(small_classifier_batches())
def test_the_batch_gradient_is_the_mean_of_the_per_sample_gradients(case):
    net, x, y = case
    whole = fl.shared_gradients(net, x, y)
    singles = [fl.shared_gradients(net, x[i:i + 1], y[i:i + 1]) for i in range(len(x))]
    mean = fl.fedavg(singles)
    for a, b in zip(whole, mean):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-14)


@profile(25)
@given(small_classifier_batches(),
       st.sampled_from([torch.int8, torch.int16, torch.int32, torch.uint8, "list",
                        "numpy", "onehot"]))
def test_labels_of_any_integer_form_give_the_same_gradient(case, form):
    net, x, y = case
    ref = fl.shared_gradients(net, x, y)
    if form == "list":
        other = y.tolist()
    elif form == "numpy":
        other = y.numpy().astype(np.int32)
    elif form == "onehot":
        other = torch.nn.functional.one_hot(y, net[-1].out_features).double()
    else:
        other = y.to(form)
    got = fl.shared_gradients(net, x, other)
    for a, b in zip(ref, got):
        if form == "onehot":
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-14)
        else:
            assert torch.equal(a, b)


# --- data ------------------------------------------------------------------------------

@profile(20)
@given(st.sampled_from(data.NAMES), st.integers(1, 5), st.integers(0, 2 ** 31),
       st.none() | st.integers(2, 20), st.booleans())
def test_load_is_deterministic_and_in_the_unit_range(name, n, seed, size, rgb):
    a = data.load(name, n, seed=seed, size=size, rgb=rgb)
    b = data.load(name, n, seed=seed, size=size, rgb=rgb)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    x, y = a
    side = size or {"digits": 8, "faces": 25, "photos": 32}[name]
    channels = 3 if rgb or name == "photos" else 1
    assert x.shape == (n, channels, side, side) and x.dtype == torch.float32
    assert y.shape == (n,) and y.dtype == torch.long
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0


@profile(20)
@given(st.lists(st.integers(0, 9), min_size=1, max_size=6), st.integers(0, 1000))
def test_load_returns_the_labels_asked_for_in_order(labels, seed):
    for name in ("digits", "photos"):
        x, y = data.load(name, 0, seed=seed, labels=labels, size=8)
        assert y.tolist() == labels and len(x) == len(labels)


# --- attacks.analytic --------------------------------------------------------------------

@profile(30)
@given(st.integers(1, 20), st.integers(1, 30), st.integers(0, 10 ** 6))
def test_one_sample_comes_back_exactly_from_an_fc_layer(n, m, seed):
    gen = torch.Generator().manual_seed(seed)
    layer = torch.nn.Linear(n, m).double()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(m, n, generator=gen, dtype=F64))
        layer.bias.copy_(torch.randn(m, generator=gen, dtype=F64))
    x = torch.randn(1, n, generator=gen, dtype=F64)
    target = torch.randn(1, m, generator=gen, dtype=F64)
    gw, gb = fl.shared_gradients(layer, x, target, loss="mse")
    assume(float(gb.abs().max()) > 1e-8)
    out = analytic.invert_fc(gw, gb)
    assert torch.allclose(out.input, x[0], rtol=1e-8, atol=1e-10)


@profile(40)
@given(st.integers(1, 6), st.integers(2, 8), st.integers(0, 10 ** 6))
def test_last_layer_deltas_sum_to_zero_and_mean_is_sum_over_b(b, c, seed):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(b, c, generator=gen, dtype=F64) * 3
    y = torch.randint(c, (b,), generator=gen)
    mean = analytic.last_layer_deltas(z, y)
    total = analytic.last_layer_deltas(z, y, reduction="sum")
    assert torch.allclose(total.sum(1), torch.zeros(b, dtype=F64), atol=1e-12)
    assert torch.allclose(mean * b, total, atol=1e-15)


@profile(40)
@given(st.integers(1, 5), st.integers(0, 6), st.integers(1, 8), st.integers(0, 10 ** 6))
def test_solve_fc_inputs_recovers_inputs_when_deltas_have_full_rank(b, extra, n, seed):
    gen = torch.Generator().manual_seed(seed)
    deltas = torch.randn(b, b + extra, generator=gen, dtype=F64)
    xs = torch.randn(b, n, generator=gen, dtype=F64)
    sol = analytic.solve_fc_inputs(deltas.T @ xs, deltas)
    assume(sol.condition < 1e6)
    assert sol.determined and sol.rank == b
    assert torch.allclose(sol.inputs, xs, rtol=1e-6, atol=1e-8)


# --- phase 2: layer-wise attacks, security, models (helper robb) -------------------

@st.composite
def small_convs(draw):
    """A float64 Conv2d (c -> o, kernel k, stride s, padding p) with N(0, 1)
    weights and an input shape (c, h, w) it accepts."""
    c, o = draw(st.integers(1, 2)), draw(st.integers(1, 4))
    k, s, p = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(0, 1))
    h = draw(st.integers(max(1, k - 2 * p), 6))
    w = draw(st.integers(max(1, k - 2 * p), 6))
    conv = torch.nn.Conv2d(c, o, k, s, p).double()
    gen = torch.Generator().manual_seed(draw(st.integers(0, 10 ** 6)))
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen, dtype=F64))
        conv.bias.copy_(torch.randn(o, generator=gen, dtype=F64))
    return conv, (c, h, w), gen


@profile(30)
@given(st.integers(2, 10), st.lists(st.integers(2, 12), min_size=1, max_size=2),
       st.sampled_from(["leaky_relu", "tanh"]), st.integers(0, 10 ** 6))
def test_rgap_recovers_any_input_of_a_fully_determined_bias_free_net(n, widths, act,
                                                                      seed):
    """R-GAP is exact on a bias-free MLP with one logit (every FC layer's gradient
    rows delta (x) I have full column rank), whatever the weights and input."""
    from leakbook.attacks import rgap
    net = models.build("mlp", in_features=n, widths=tuple(widths), num_classes=1,
                       activation=act, bias=False, seed=seed, dtype=F64)
    x = torch.rand(1, n, generator=torch.Generator().manual_seed(seed + 1), dtype=F64)
    with torch.no_grad():
        y = torch.tensor([0 if net(x).item() > 0 else 1])  # R-GAP's unique margin
    grads = fl.shared_gradients(net, x, y, loss="logistic")
    assume(all(float(g.abs().max()) > 1e-12 for g in grads))
    rec = rgap(net, grads, y, input_shape=(n,))
    assert float((rec.images - x).abs().max()) <= 1e-6


@profile(30)
@given(small_convs())
def test_the_predicted_rank_bounds_the_numerical_rank(case):
    from leakbook import security
    from leakbook.attacks.linear_systems import output_shape
    conv, shape, gen = case
    out = output_shape(conv, shape)
    delta = torch.randn(out, generator=gen, dtype=F64)
    rank, _, _ = security.numerical_rank(security.layer_gram(conv, shape, delta), 1e-6)
    assert rank <= security.rank_bound(conv, shape) <= math.prod(shape)


@profile(30)
@given(small_convs())
def test_conv_matrices_are_the_forward_pass_and_the_weight_gradient(case):
    from leakbook.attacks import linear_systems as ls
    conv, shape, gen = case
    x = torch.randn(1, *shape, generator=gen, dtype=F64, requires_grad=True)
    z = conv(x)
    delta = torch.randn(z.shape, generator=gen, dtype=F64)
    (gw,) = torch.autograd.grad((z * delta).sum(), [conv.weight])
    a = ls.conv_matrix(conv, shape)
    k = ls.conv_gradient_matrix(conv, shape, delta[0])
    flat = x.detach().flatten()
    bias = conv.bias.detach()[:, None, None]
    assert torch.allclose(a @ flat, (z.detach()[0] - bias).flatten(), atol=1e-10)
    assert torch.allclose(k @ flat, gw.flatten(), atol=1e-10)
    unread = ls.unread_pixels(conv, shape).flatten()
    assert not (a[:, unread] != 0).any() and not (k[:, unread] != 0).any()


@profile(25)
@given(st.lists(st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 2),
                          st.integers(0, 1)), min_size=1, max_size=3),
       st.integers(6, 12))
def test_copa_and_the_audit_agree_on_what_no_gradient_sees(spec, size):
    """hybrid.reached_inputs over the whole network is the complement of
    security.blind_spot (two walks, one from each chapter)."""
    from leakbook import security
    from leakbook.attacks import hybrid, layers
    mods, c, side = [], 1, size
    for out, k, s, p in spec:
        side_next = (side + 2 * p - k) // s + 1
        assume(side_next >= 1)
        mods += [torch.nn.Conv2d(c, out, k, s, p), torch.nn.Tanh()]
        c, side = out, side_next
    net = torch.nn.Sequential(*mods, torch.nn.Flatten(),
                              torch.nn.Linear(c * side * side, 2))
    parts = layers.blocks(net, (1, size, size))
    reached = hybrid.reached_inputs(parts, len(parts) - 1)
    assert torch.equal(~reached, security.blind_spot(net, (1, size, size)))


@profile(30)
@given(st.sampled_from(sorted(models.ZOO)), st.integers(-2 ** 40, 2 ** 40))
def test_build_is_seeded_and_leaves_the_global_generator_alone(name, seed):
    kw = {"image_size": 16} if name not in ("mlp", "fcn3") else {"in_features": 12}
    state = torch.get_rng_state()
    a, b = models.build(name, seed=seed, **kw), models.build(name, seed=seed, **kw)
    assert torch.equal(state, torch.get_rng_state())
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


@profile(40)
@given(st.integers(1, 3), st.integers(1, 5), st.integers(1, 5), st.integers(0, 10 ** 6),
       st.sampled_from(["mean", "nearest", "inpaint", 0.25]))
def test_fill_blind_keeps_the_visible_entries_and_fills_the_rest(c, h, w, seed, how):
    from leakbook.attacks import hybrid
    gen = torch.Generator().manual_seed(seed)
    image = torch.rand(c, h, w, generator=gen, dtype=F64)
    blind = torch.rand(c, h, w, generator=gen) < 0.4
    blind[:, 0, 0] = False                              # a visible entry per channel
    out = hybrid.fill_blind(image, blind, how)
    assert torch.equal(out[~blind], image[~blind]) and torch.isfinite(out).all()
    if how == "mean":
        for ch in range(c):
            seen = image[ch][~blind[ch]]
            assert torch.allclose(out[ch][blind[ch]], seen.mean().expand(
                int(blind[ch].sum())))
    if how == 0.25:
        assert (out[blind] == 0.25).all()


@profile(60)
@given(st.floats(-0.2784, 50.0, allow_nan=False), st.sampled_from(["small", "large"]))
def test_solve_margin_returns_a_root_of_the_margin_equation(value, branch):
    from leakbook.attacks.recursive import solve_margin
    mu = solve_margin(value, branch)
    g = -mu / (1 + math.exp(mu)) if mu < 700 else 0.0
    assert g == pytest.approx(value, rel=1e-9, abs=1e-12)
    if value < 0:
        assert (mu < 1.2784645427610738) == (branch == "small")


# --- bad input is refused, by name, and never crashes deeper ----------------------------

def _garbage_tensors():
    return st.sampled_from([
        None, "x", 3.0, 7, [1.0, 2.0], True,
        torch.zeros(0, 1, 4, 4), torch.full((2, 1, 4, 4), math.nan),
        torch.full((2, 1, 4, 4), -math.inf), torch.zeros(4),
        torch.zeros(2, 1, 4, 4, dtype=torch.long), torch.zeros(2, 1, 4, 4, dtype=torch.bool),
        torch.zeros(2, 1, 4, 4, dtype=torch.complex64)])


_bad_positive_int = st.sampled_from([None, "3", 2.5, True, 0, -1, [2], math.nan])
_bad_positive_float = st.sampled_from([None, "0.1", 0.0, -1.0, math.nan, math.inf, True,
                                       [0.1], torch.ones(2)])


def _fl_case():
    net = models.build("mlp", in_features=16, widths=(4,), num_classes=3, seed=0)
    x = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    return net, x, torch.tensor([0, 2])


def _img():
    return torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))



def _gi_case():
    """Valid arguments of gradinversion on a tiny BN model (2 steps)."""
    net = models.build("resnet_tiny", in_channels=1, image_size=4, width=2,
                       num_classes=3).eval()
    x, y = _img(), torch.tensor([0, 2])
    return dict(model=net, grads=fl.shared_gradients(net, x, y), shape=(2, 1, 4, 4),
                labels=y, seeds=2, iterations=2)

#: (entry point, argument, strategy of invalid values, valid keyword arguments)
BAD = [
    (fl.shared_gradients, "x", _garbage_tensors(),
     lambda: dict(zip(("model", "x", "y"), _fl_case()))),
    (fl.shared_gradients, "y", st.sampled_from([
        None, "y", [0.5, 1.0], torch.tensor([0, 3]), torch.tensor([-1, 0]),
        torch.tensor([0]), torch.tensor([[0, 1]]), torch.tensor([math.nan, 0.0]),
        torch.full((2, 3), 0.5), torch.zeros(0, dtype=torch.long)]),
     lambda: dict(zip(("model", "x", "y"), _fl_case()))),
    (fl.shared_gradients, "model", st.sampled_from([None, "mlp", 3, torch.nn.ReLU()]),
     lambda: dict(zip(("model", "x", "y"), _fl_case()))),
    (fl.shared_gradients, "loss", st.sampled_from([None, 3, "hinge", "CE", ["ce"]]),
     lambda: dict(zip(("model", "x", "y"), _fl_case()))),
    (fl.client_update, "lr", _bad_positive_float,
     lambda: dict(zip(("model", "x", "y"), _fl_case()))),
    (fl.client_update, "batch_size", st.sampled_from([0, 3, -1, 1.0, "2", True]),
     lambda: dict(zip(("model", "x", "y"), _fl_case()))),
    (fl.client_update, "local_steps", _bad_positive_int,
     lambda: dict(zip(("model", "x", "y"), _fl_case()))),
    (fl.fedavg, "weights", st.sampled_from([[1.0], [1, -1], [0, 0], [math.nan, 1], "ab",
                                            [[1, 1]], 3, {"a": 1}]),
     lambda: dict(updates=[[torch.ones(2)], [torch.zeros(2)]])),
    (fl.fedavg, "updates", st.sampled_from([None, [], torch.ones(2), [torch.ones(2)],
                                            [[torch.ones(2)], [torch.ones(3)]],
                                            [[torch.ones(2)], []], "ab"]),
     lambda: dict()),
    (data.load, "n", _bad_positive_int, lambda: dict(name="digits")),
    (data.load, "size", st.sampled_from(["3", 2.5, True, 0, -1, [2], math.nan, 10 ** 5]),
     lambda: dict(name="digits", n=2)),
    (data.load, "seed", st.sampled_from([None, "0", 1.5, True, 2 ** 65]),
     lambda: dict(name="digits", n=2)),
    (data.load, "labels", st.sampled_from([[1.5], [], [-2], [10], "ab", [[1, 2]], 3.0]),
     lambda: dict(name="digits", n=2)),
    (data.load, "dtype", st.sampled_from([None, "float32", torch.int64, torch.bool, float]),
     lambda: dict(name="digits", n=2)),
    (metrics.psnr, "x_hat", _garbage_tensors(), lambda: dict(x=_img())),
    (metrics.psnr, "peak", _bad_positive_float, lambda: dict(x_hat=_img(), x=_img())),
    (metrics.ssim, "x", _garbage_tensors(), lambda: dict(x_hat=_img())),
    (metrics.report, "x", _garbage_tensors(), lambda: dict(x_hat=_img())),
    (metrics.label_accuracy, "labels", st.sampled_from([None, [1.5, 2.0], [-1, 0], [],
                                                        "ab", 3]),
     lambda: dict(labels_hat=[1, 2])),
    (analytic.invert_fc, "rtol", st.sampled_from([-0.1, 1.0, 2.0, math.nan, "0", math.inf]),
     lambda: dict(grad_weight=torch.ones(3, 2), grad_bias=torch.ones(3))),
    (analytic.invert_fc, "grad_weight", _garbage_tensors(),
     lambda: dict(grad_bias=torch.ones(3))),
    (gradinversion, "seeds", _bad_positive_int, _gi_case),
    (gradinversion, "group", st.sampled_from([None, "0.1", -1.0, math.nan, math.inf,
                                              True, [0.1]]), _gi_case),
    (gradinversion, "register", st.sampled_from([None, "flow", "SHIFT", 1, True]),
     _gi_case),
    (gradinversion, "max_shift", st.sampled_from([-1, 5, 1.5, "2", None]), _gi_case),
]


# phase 2 (helper robb): layer-wise attacks, security, models

@functools.lru_cache(maxsize=None)
def _rgap_inputs():
    """A bias-free cnn6 on one 8x8 image, R-GAP's label and logistic gradients
    (cached: every refusal below happens before any work touches them)."""
    net = models.build("cnn6", in_channels=1, image_size=8, seed=0, dtype=F64)
    x = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    with torch.no_grad():
        y = torch.tensor([0 if net(x).item() > 0 else 1])
    return net, tuple(fl.shared_gradients(net, x, y, loss="logistic")), y


def _rgap_valid():
    net, grads, y = _rgap_inputs()
    return dict(model=net, grads=list(grads), labels=y, input_shape=(1, 8, 8))


def _bad_grads(kind):
    net, grads, _ = _rgap_inputs()
    return {"zeros": [torch.zeros_like(g) for g in grads], "short": list(grads[:-1]),
            "none": None, "tensor": grads[0], "nan": [g * math.nan for g in grads],
            "transposed": [g.transpose(0, 1) for g in grads],
            "batch": [torch.stack([g, g]) for g in grads]}[kind]


def _conv_valid():
    return dict(conv=torch.nn.Conv2d(1, 2, 3), input_shape=(1, 6, 6))


def _audit_valid():
    return dict(model=models.build("cnn3_c1", in_channels=1, image_size=12, seed=0),
                input_shape=(1, 12, 12))


def _blind_valid():
    blind = torch.zeros(1, 4, 4, dtype=torch.bool)
    blind[0, -1] = True
    return dict(x=torch.rand(1, 4, 4, generator=torch.Generator().manual_seed(0)),
                blind=blind)


_bad_fraction = st.sampled_from([0, 0.5, -1.0, math.nan, math.inf, "0.1", None, True])
_bad_count = st.sampled_from([-1, 1.5, "3", None, True, math.nan])
_bad_seed = st.sampled_from([None, "0", 1.5, True, 2 ** 65])
_bad_shape = st.sampled_from([None, "1x8x8", (1, 0, 8), (1, -8, 8), (1, 8.0, 8),
                              (True, 8, 8), 8, (1, 16, 16), (2, 8, 8), ()])

BAD += [
    (rgap, "input_shape", _bad_shape, _rgap_valid),
    (rgap, "grads", st.sampled_from(["zeros", "short", "none", "tensor", "nan",
                                     "transposed", "batch"]).map(_bad_grads),
     _rgap_valid),
    (rgap, "labels", st.sampled_from([[2], [0, 1], [-1], [0.5], "a",
                                      torch.tensor([[1]]), torch.tensor([1.0])]),
     _rgap_valid),
    (rgap, "branch", st.sampled_from(["medium", None, 1, "Small", ["small"]]),
     _rgap_valid),
    (rgap, "clip", _bad_fraction, _rgap_valid),
    (rgap, "grad_weight", _bad_positive_float, _rgap_valid),
    (rgap, "dense_limit", _bad_count, _rgap_valid),
    (rgap, "max_memory_gb", st.sampled_from([0, -1.0, math.nan, "2", None]),
     _rgap_valid),
    (rgap, "model", st.sampled_from([None, "cnn6", 3, torch.nn.ReLU()]), _rgap_valid),
    (copa, "steps", _bad_count, _rgap_valid),
    (copa, "refresh", _bad_count, _rgap_valid),
    (copa, "fill", st.sampled_from(["median", True, math.nan, [1], torch.ones(1)]),
     _rgap_valid),
    (copa, "start", st.sampled_from(["ones", None, 0]), _rgap_valid),
    (copa, "tol", st.sampled_from([-1.0, math.nan, "0", None]), _rgap_valid),
    (copa, "max_time", st.sampled_from([0, -1.0, math.nan, "60", True]), _rgap_valid),
    (copa, "rank_rtol", _bad_fraction.filter(lambda v: v != 0.5) | st.just(1.0),
     _rgap_valid),
    (copa, "input_shape", _bad_shape, _rgap_valid),
    (copa, "grads", st.sampled_from(["zeros", "short", "batch"]).map(_bad_grads),
     _rgap_valid),
    (ls.conv_matrix, "input_shape", st.sampled_from([(2, 6, 6), (1, 6), (1, 0, 6), None,
                                                     "a", (1, 1, 1), (1, 6, 6, 1)]),
     _conv_valid),
    (ls.conv_matrix, "sparse", st.sampled_from([None, 1, "yes"]), _conv_valid),
    (ls.conv_gradient_matrix, "delta", _garbage_tensors() | st.just(torch.ones(5)),
     _conv_valid),
    (ls.unread_pixels, "conv", st.sampled_from([None, torch.nn.Linear(2, 2), "conv"]),
     lambda: dict(input_shape=(1, 6, 6))),
    (security.audit, "input_shape", _bad_shape.filter(lambda v: v != (2, 8, 8))
     | st.just((1, 12)) | st.just((2, 12, 12)), _audit_valid),
    (security.audit, "seed", _bad_seed, _audit_valid),
    (security.audit, "rtol", st.sampled_from([0, 1, 2.0, math.nan, -1, "a"]),
     _audit_valid),
    (security.audit, "weights", st.sampled_from(["Random", None, 3, "trained"]),
     _audit_valid),
    (security.audit, "max_memory_gb", st.sampled_from([0, -1.0, math.nan, "2"]),
     _audit_valid),
    (security.audit, "progress", st.sampled_from([1, "yes", 0]), _audit_valid),
    (security.psnr_cap, "fill", st.sampled_from(["median", None, 3]), _blind_valid),
    (security.psnr_cap, "x", _garbage_tensors(), _blind_valid),
    (security.psnr_cap, "blind", st.sampled_from([None, torch.ones(1, 4, 4),
                                                  torch.zeros(1, 3, 3, dtype=torch.bool),
                                                  torch.ones(1, 4, 4, dtype=torch.bool)]),
     _blind_valid),
    (models.build, "name", st.sampled_from(["vgg16", None, 3, "MLP"]), lambda: dict()),
    (models.build, "seed", _bad_seed, lambda: dict(name="mlp")),
    (models.build, "dtype", st.sampled_from([torch.int64, "float32", None, float]),
     lambda: dict(name="mlp")),
    (models.build, "widths", st.sampled_from([(0,), (10, 0), 5, "ab", (1.5,), (-1,)]),
     lambda: dict(name="mlp")),
    (models.build, "num_classes", st.sampled_from([0, -1, 1.5, True, None]),
     lambda: dict(name="cnn4_c2")),
    (models.build, "width", st.sampled_from([0, -3, 2.5]),
     lambda: dict(name="resnet_tiny")),
    (models.build, "image_size", st.sampled_from([0, -4, 2.5, "32"]),
     lambda: dict(name="lenet_dlg")),
    (hybrid.fill_blind, "how", st.sampled_from(["median", None, True, math.nan]),
     lambda: dict(image=torch.zeros(1, 2, 2), blind=torch.eye(2, dtype=torch.bool)[None])),
]


# --- phase 2 (helper roba): matching, labels, optim, defenses -----------------------

from leakbook import defenses, optim  # noqa: E402
from leakbook.attacks import fedavg as fedavg_attack  # noqa: E402
from leakbook.attacks import labels as label_rules  # noqa: E402
from leakbook.attacks import matching  # noqa: E402


@profile(25)
@given(small_classifier_batches())
def test_idlg_reads_the_label_of_one_sample_exactly_on_any_model(case):
    """B = 1 with a bias: dL/db = p - e_y is negative only at the true class."""
    net, x, y = case
    grads = fl.shared_gradients(net, x[:1], y[:1])
    assert label_rules.recover(net, grads, 1, "idlg").tolist() == [int(y[0])]


@profile(20)
@given(small_classifier_batches(), st.sampled_from(["l2", "cosine"]))
def test_the_gradient_distance_is_zero_at_the_true_batch(case, distance):
    net, x, y = case
    target = fl.shared_gradients(net, x, y)
    d = float(matching.gradient_distance(net, x, y, target, distance).detach())
    assert abs(d) <= 1e-12 * max(1.0, float(sum((t * t).sum() for t in target)))


@profile(40)
@given(updates(clients=1), st.floats(1e-3, 1e3))
def test_clip_never_increases_a_norm_and_keeps_the_direction(ups_w, max_norm):
    (update,), _ = ups_w
    before = defenses.global_norm(update)
    out = defenses.clip(update, max_norm)
    after = defenses.global_norm(out)
    assert after <= before * (1 + 1e-12) and after <= max_norm * (1 + 1e-12)
    scale = after / before
    assert all(torch.allclose(o, u * scale, rtol=1e-12, atol=1e-300)
               for o, u in zip(out, update))


@profile(40)
@given(updates(clients=1), st.integers(1, 30))
def test_quantize_error_is_at_most_half_a_step_and_vanishes_with_many_bits(ups_w, bits):
    (update,), _ = ups_w
    out = defenses.quantize(update, bits)
    for o, t in zip(out, update):
        step = float(t.max() - t.min()) / (2 ** bits - 1)
        assert float((o - t).abs().max()) <= step / 2 * (1 + 1e-9) + 1e-15
        assert len(torch.unique(o)) <= 2 ** bits


@profile(40)
@given(updates(clients=1), st.floats(0.0, 0.99), st.booleans())
def test_prune_zeroes_the_fraction_of_smallest_entries_and_keeps_the_rest(
        ups_w, fraction, per_tensor):
    (update,), _ = ups_w
    out = defenses.prune(update, fraction, per_tensor=per_tensor)
    groups = [(o.flatten(), t.flatten()) for o, t in zip(out, update)] if per_tensor \
        else [(torch.cat([o.flatten() for o in out]),
               torch.cat([t.flatten() for t in update]))]
    for o, t in groups:
        pruned = o != t
        assert int(pruned.sum()) <= round(fraction * t.numel())
        assert int((o == 0).sum()) >= round(fraction * t.numel())
        kept = o != 0
        if kept.any() and (~kept).any():  # no kept entry is smaller than a pruned one
            assert float(t[kept].abs().min()) >= float(t[~kept].abs().max())


@profile(30)
@given(updates(clients=1), st.integers(0, 2 ** 31))
def test_noise_of_zero_is_the_identity_and_a_seed_repeats_its_noise(ups_w, seed):
    (update,), _ = ups_w
    assert all(torch.equal(o, u) for o, u in
               zip(defenses.gaussian_noise(update, 0.0, seed=seed), update))
    a = defenses.gaussian_noise(update, 0.5, seed=seed)
    b = defenses.gaussian_noise(update, 0.5, seed=seed)
    assert all(torch.equal(p, q) for p, q in zip(a, b))


@profile(40)
@given(st.lists(st.floats(-3.0, 20.0), min_size=1, max_size=8), st.integers(1, 30))
def test_counts_to_labels_returns_exactly_b_labels_of_the_given_classes(counts, b):
    out = label_rules.counts_to_labels(torch.tensor(counts, dtype=F64), b)
    assert len(out) == b and out.dtype == torch.long
    assert int(out.min()) >= 0 and int(out.max()) < len(counts)
    assert torch.equal(out, out.sort().values)


@profile(20)
@given(st.integers(1, 8), st.integers(0, 10 ** 6), st.integers(1, 10))
def test_lbfgs_finds_the_minimum_of_a_convex_quadratic(n, seed, history):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n, generator=gen, dtype=F64)
    h = a @ a.T / n + torch.eye(n, dtype=F64)  # eigenvalues >= 1: well conditioned
    s = torch.randn(n, generator=gen, dtype=F64)  # the minimum, where f = 0
    run = optim.lbfgs(lambda z: (float((z - s) @ h @ (z - s) / 2), h @ (z - s)),
                      torch.zeros(n, dtype=F64), max_iter=300, history=history,
                      stall=None, tol=1e-14)
    assert run["status"] == "converged"
    assert torch.allclose(run["z"], s, rtol=1e-5, atol=1e-6)
    assert run["history"] == sorted(run["history"], reverse=True)  # never goes up


def _tiny():
    net = models.build("mlp", in_features=16, widths=(4,), num_classes=3, seed=0)
    x = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    return net, fl.shared_gradients(net, x, torch.tensor([2]))


def _tiny_attack():
    net, g = _tiny()
    return dict(model=net, grads=g, shape=(1, 1, 4, 4), max_iter=1)


def _tiny_ig():
    net, g = _tiny()
    return dict(model=net, grads=g, shape=(1, 1, 4, 4), labels=torch.tensor([2]),
                iterations=1)


def _tiny_recover():
    net, g = _tiny()
    return dict(model=net, grads=g, batch_size=1)


def _quadratic():
    return dict(fun=lambda z: (float((z ** 2).sum()), 2 * z), z0=torch.ones(2, dtype=F64),
                max_iter=2)


def _u():
    return [torch.ones(2, 3), torch.ones(3)]


_bad_seed = st.sampled_from([None, "0", 1.5, True, 2 ** 65])
_bad_shape = st.sampled_from([None, (1, 1, 4), (0, 1, 4, 4), (1, 1, 4, 4.0), "abcd",
                              (1, -1, 4, 4), 7])
_bad_labels = st.sampled_from([[0.5], torch.tensor([0, 1]), torch.tensor([[0]]), "a",
                               torch.tensor([5]), torch.tensor([-1]), torch.tensor([0.0]),
                               torch.tensor([True])])
_bad_fraction = st.sampled_from([1.0, -0.1, math.nan, "0.5", None, True, 2.0])

BAD += [
    (matching.dlg, "shape", _bad_shape, _tiny_attack),
    (matching.dlg, "labels", _bad_labels, _tiny_attack),
    (matching.dlg, "restarts", _bad_positive_int, _tiny_attack),
    (matching.dlg, "history", _bad_positive_int, _tiny_attack),
    (matching.dlg, "rel_tol", st.sampled_from([-1.0, math.nan, "a", None, True]),
     _tiny_attack),
    (matching.dlg, "init", st.sampled_from(["grey", None, 3, "Gray"]), _tiny_attack),
    (matching.dlg, "seed", _bad_seed, _tiny_attack),
    (matching.dlg, "dtype", st.sampled_from([None, torch.int64, "float32", float]),
     _tiny_attack),
    (matching.idlg, "shape", _bad_shape, _tiny_attack),
    (matching.inverting_gradients, "labels", _bad_labels, _tiny_ig),
    (matching.inverting_gradients, "lr", _bad_positive_float, _tiny_ig),
    (matching.inverting_gradients, "iterations",
     st.sampled_from(["3", 2.5, True, 0, -1, [2], math.nan]), _tiny_ig),
    (matching.inverting_gradients, "restarts", _bad_positive_int, _tiny_ig),
    (matching.inverting_gradients, "regularizers",
     st.sampled_from([{"tv": -1.0}, {"tv": math.nan}, "tv", [("tv", 1.0)], 3]), _tiny_ig),
    (matching.inverting_gradients, "signed", st.sampled_from([1, None, "yes"]), _tiny_ig),
    (matching.gradient_distance, "distance", st.sampled_from(["l1", None, 3, "L2"]),
     lambda: dict(model=_tiny()[0], x=torch.rand(1, 1, 4, 4), y=torch.tensor([2]),
                  target=_tiny()[1])),
    (label_rules.recover, "method", st.sampled_from([None, "dlg", "IDLG", 3, ["idlg"]]),
     _tiny_recover),
    (label_rules.recover, "batch_size", st.sampled_from([0, -1, 2.0, "2", True, None]),
     _tiny_recover),
    (label_rules.recover, "seed", _bad_seed, _tiny_recover),
    (label_rules.noise_dummies, "input_shape",
     st.sampled_from([None, (0, 4, 4), "abc", (1, -1), 3]), lambda: dict(num=2)),
    (label_rules.draw_labels, "duplicate_share",
     st.sampled_from([-0.1, 1.5, math.nan, "a"]), lambda: dict(batch_size=4)),
    (fedavg_attack.simulate_update, "lr", st.sampled_from([0, -1.0, math.nan, "a", None]),
     lambda: dict(model=_tiny()[0], x=torch.rand(2, 1, 4, 4), y=torch.tensor([0, 1]),
                  local_steps=1)),
    (optim.lbfgs, "max_iter", st.sampled_from([-1, 2.5, "3", True]), _quadratic),
    (optim.lbfgs, "history", _bad_positive_int, _quadratic),
    (optim.lbfgs, "tol", st.sampled_from([-1.0, math.nan, "a", None, True]), _quadratic),
    (optim.lbfgs, "stall", st.sampled_from([0, -1, 2.5, "3", True]), _quadratic),
    (optim.lbfgs, "max_time", st.sampled_from([-1.0, math.nan, "1", True]), _quadratic),
    (optim.lbfgs, "z0", st.sampled_from([None, torch.zeros(0, dtype=F64),
                                         torch.tensor([math.nan]),
                                         torch.ones(2, dtype=torch.long), [1.0]]),
     _quadratic),
    (defenses.clip, "update", st.sampled_from([None, torch.ones(3), [], "ab", 3,
                                               [torch.tensor([math.nan])],
                                               [torch.ones(2, dtype=torch.long)]]),
     lambda: dict(max_norm=1.0)),
    (defenses.clip, "max_norm", _bad_positive_float, lambda: dict(update=_u())),
    (defenses.gaussian_noise, "sigma", st.sampled_from([-0.1, math.nan, math.inf, "a",
                                                        None, True]),
     lambda: dict(update=_u())),
    (defenses.gaussian_noise, "seed", _bad_seed, lambda: dict(update=_u(), sigma=0.1)),
    (defenses.clip_and_noise, "noise_multiplier",
     st.sampled_from([-0.1, math.nan, "a", None]),
     lambda: dict(update=_u(), max_norm=1.0)),
    (defenses.prune, "fraction", _bad_fraction, lambda: dict(update=_u())),
    (defenses.quantize, "bits", st.sampled_from([0, -1, 2.5, "3", True, None]),
     lambda: dict(update=_u())),
    (defenses.quantize, "stochastic", st.sampled_from([1, None, "yes"]),
     lambda: dict(update=_u(), bits=2)),
]


@pytest.mark.parametrize("fn, arg, bad, valid", BAD,
                         ids=[f"{f.__name__}-{a}" for f, a, _, _ in BAD])
def test_every_bad_argument_is_refused_by_name(fn, arg, bad, valid):
    @profile(10)
    @given(bad)
    def run(value):
        kwargs = {**valid(), arg: value}
        with pytest.raises(CHECKED) as info:
            fn(**kwargs)
        message = str(info.value)
        assert names_argument(message, arg) or (arg == "updates"
                                                and "updates" in message), message
    run()


@profile(60)
@given(st.fixed_dictionaries({}, optional={
    "lr": st.sampled_from([0.1, 1.0, 0.0, -1.0, math.nan, "a", None]),
    "local_steps": st.sampled_from([1, 2, 0, True, 1.5]),
    "batch_size": st.sampled_from([None, 1, 2, 0, 5, 1.0]),
    "loss": st.sampled_from(["ce", "mse", "logistic", "hinge", None]),
    "seed": st.sampled_from([0, -5, 2 ** 63, 1.0, "s"]),
}), st.sampled_from(["labels", "float labels", "soft", "list", "wrong count"]))
def test_client_update_either_works_or_raises_a_named_error(kwargs, y_form):
    net, x, y = _fl_case()
    y = {"labels": y, "float labels": y.double(),
         "soft": torch.full((2, 3), 1 / 3), "list": [0, 2],
         "wrong count": torch.tensor([0, 1, 2])}[y_form]
    try:
        update = fl.client_update(net, x, y, **kwargs)
    except CHECKED as err:
        assert re.search(r"\w+(\[[^\]]*\])* must\b", str(err)), str(err)
    else:
        assert len(update) == 4 and all(torch.isfinite(u).all() for u in update)


@profile(60)
@given(st.one_of(st.integers(-10, 10), st.floats(allow_nan=True), st.booleans(),
                 st.none(), st.text(max_size=3), st.lists(st.integers(), max_size=2)))
def test_scalar_checks_accept_exactly_their_kind(value):
    for check, ok in ((lambda v: checks.integer(v, "k", minimum=1),
                       isinstance(value, int) and not isinstance(value, bool) and value >= 1),
                      (lambda v: checks.number(v, "p", above=0),
                       isinstance(value, (int, float)) and not isinstance(value, bool)
                       and math.isfinite(value) and value > 0),
                      (lambda v: checks.flag(v, "f"), isinstance(value, bool))):
        if ok:
            assert check(value) == value
        else:
            with pytest.raises(CHECKED) as info:
                check(value)
            assert names_argument(str(info.value), str(info.value).split()[0])
