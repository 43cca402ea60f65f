"""Property-based tests (Hypothesis) over the phase-1 public API (issue 14, item 5).

Each test states a property that must hold for every input Hypothesis draws:
shapes, dtypes, label ranges, non-finite values and empty batches included.
Runs are deterministic and database-free (``derandomize=True``,
``database=None``), so CI sees the same examples every time; the whole file
runs in well under a minute (``max_examples`` per test below).
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from leakbook import checks, data, fl, metrics, models
from leakbook.attacks import analytic
from leakbook.attacks.gradinversion import gradinversion

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
