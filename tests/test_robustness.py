"""Issue 14, phase 1: a regression test for each item found by the QA probes,
and the contract of the validation layer (leakbook/checks.py).

Every refusal must be a ValueError or TypeError whose message names the
argument in the pattern "<name> must be <expected>, got <what came>"
(``assert_names``). See tests/ROBUSTNESS.md for what phase 2 adds.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

import leakbook as lb
from leakbook import checks, data, fl, metrics, models, threads, viz
from leakbook.attacks import analytic

F64 = torch.float64


def assert_names(error: pytest.ExceptionInfo, name: str) -> None:
    """The message says '<name> must ...' (or '<name>[i] must ...')."""
    pattern = rf"(^|[^\w.]){re.escape(name)}(\[[^\]]*\])* must\b"
    assert re.search(pattern, str(error.value)), str(error.value)


def refuses(call, name: str, error=(ValueError, TypeError)):
    with pytest.raises(error) as info:
        call()
    assert_names(info, name)
    return str(info.value)


@pytest.fixture(scope="module")
def mlp():
    return models.build("mlp", in_features=64, widths=(16,), seed=0)


@pytest.fixture(scope="module")
def digits():
    return data.load("digits", 2, seed=0)


def _one_logit():
    return models.build("cnn6", in_channels=1, image_size=8, seed=0)


# --- fl.fedavg ------------------------------------------------------------------

def _update(value, shapes=((3, 2), (3,))):
    return [torch.full(s, float(value)) for s in shapes]


def test_fedavg_refuses_updates_of_different_lengths():
    msg = refuses(lambda: fl.fedavg([_update(1), _update(2)[:1]]), "updates[1]")
    assert "as many tensors" in msg


def test_fedavg_refuses_tensors_of_different_shapes_instead_of_broadcasting():
    other = _update(2, shapes=((3, 1), (3,)))
    refuses(lambda: fl.fedavg([_update(1), other]), "updates[1][0]")
    refuses(lambda: fl.fedavg([_update(1), [t.double() for t in _update(2)]]),
            "updates[1][0]")


def test_fedavg_refuses_a_flat_list_of_tensors():
    msg = refuses(lambda: fl.fedavg(_update(1)), "updates", TypeError)
    assert "[update]" in msg
    assert torch.equal(fl.fedavg([_update(1)])[0], _update(1)[0])


@pytest.mark.parametrize("weights", [[1, -1], [1, float("nan")], [0, 0], [1, math.inf],
                                     [1], [1, 2, 3], "ab", [[1, 2]]])
def test_fedavg_refuses_bad_weights(weights):
    refuses(lambda: fl.fedavg([_update(1), _update(2)], weights=weights), "weights")


def test_fedavg_refuses_empty_and_non_finite_updates():
    refuses(lambda: fl.fedavg([]), "updates")
    refuses(lambda: fl.fedavg([[]]), "updates[0]")
    bad = _update(2)
    bad[1][0] = float("nan")
    refuses(lambda: fl.fedavg([_update(1), bad]), "updates[1][1]")


def test_fedavg_weights_zero_for_some_clients_is_fine():
    out = fl.fedavg([_update(1), _update(5)], weights=[0, 2])
    assert all(torch.equal(o, t) for o, t in zip(out, _update(5)))


# --- fl.shared_gradients: model state, losses and labels ---------------------------

def test_simulated_client_step_leaves_server_bn_prior_targets_alone():
    """The BN prior of inverting gradients reads the model's running statistics:
    after the server simulates a client they must still be the server's own."""
    net = models.build("resnet_tiny", in_channels=1, image_size=8, width=4, seed=0)
    server_targets = [(m.running_mean.clone(), m.running_var.clone())
                      for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 5 + 3
    fl.shared_gradients(net, x, torch.tensor([0, 1, 2, 3]))
    fl.client_update(net, x, torch.tensor([0, 1, 2, 3]), local_steps=3)
    now = [(m.running_mean, m.running_var) for m in net.modules()
           if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.equal(a, c) and torch.equal(b, d)
               for (a, b), (c, d) in zip(server_targets, now))
    assert all(int(m.num_batches_tracked) == 0 for m in net.modules()
               if isinstance(m, torch.nn.BatchNorm2d))


def test_logistic_loss_refuses_labels_other_than_0_and_1():
    msg = refuses(lambda: fl.shared_gradients(_one_logit(), torch.rand(2, 1, 8, 8),
                                              torch.tensor([2, 5]), loss="logistic"), "y")
    assert "0..1" in msg and "[2, 5]" in msg
    refuses(lambda: fl.shared_gradients(_one_logit(), torch.rand(2, 1, 8, 8),
                                        torch.tensor([0.5, 1.0]), loss="logistic"), "y")


def test_logistic_loss_refuses_a_model_with_ten_logits(mlp, digits):
    x, _ = digits
    with pytest.raises(ValueError, match="one output"):
        fl.shared_gradients(mlp, x, torch.tensor([0, 1]), loss="logistic")


def test_logistic_loss_accepts_labels_as_ints_bools_floats_and_columns():
    net, x = _one_logit(), torch.rand(2, 1, 8, 8)
    ref = fl.shared_gradients(net, x, torch.tensor([0, 1]), loss="logistic")
    for y in (torch.tensor([False, True]), torch.tensor([0.0, 1.0]),
              torch.tensor([[0], [1]]), [0, 1], torch.tensor([0, 1], dtype=torch.int32)):
        got = fl.shared_gradients(net, x, y, loss="logistic")
        assert all(torch.equal(a, b) for a, b in zip(ref, got)), y


def test_ce_refuses_a_one_logit_model():
    with pytest.raises(ValueError, match="2 or more outputs"):
        fl.shared_gradients(_one_logit(), torch.rand(2, 1, 8, 8), torch.tensor([0, 0]))


def test_nan_and_improper_soft_labels_are_refused(mlp, digits):
    x, _ = digits
    soft = torch.full((2, 10), 0.1)
    soft[1, 3] = float("nan")
    refuses(lambda: fl.shared_gradients(mlp, x, soft), "y")
    refuses(lambda: fl.shared_gradients(mlp, x, torch.full((2, 10), 0.5)), "y")
    refuses(lambda: fl.shared_gradients(mlp, x, -torch.eye(2, 10) + 0.2), "y")
    refuses(lambda: fl.shared_gradients(mlp, x, torch.full((2, 9), 1 / 9)), "y")


def test_int32_bool_and_list_labels_give_the_int64_gradient(mlp, digits):
    x, y = digits
    ref = fl.shared_gradients(mlp, x, y)
    for other in (y.int(), y.to(torch.int16), y.to(torch.uint8), y.tolist(),
                  tuple(y.tolist()), y.numpy()):
        got = fl.shared_gradients(mlp, x, other)
        assert all(torch.equal(a, b) for a, b in zip(ref, got)), type(other)
    bools = torch.tensor([True, False])
    assert all(torch.equal(a, b) for a, b in zip(
        fl.shared_gradients(mlp, x, bools), fl.shared_gradients(mlp, x, bools.long())))


@pytest.mark.parametrize("y, error", [
    ([1.5, 2.0], TypeError), ("ab", TypeError), (None, TypeError), (3, TypeError),
    (torch.tensor([[1, 2]]), ValueError), (torch.tensor([-1, 2]), ValueError),
    (torch.tensor([1, 10]), ValueError), (torch.tensor([1, 2, 3]), ValueError),
    (torch.tensor([], dtype=torch.long), ValueError)])
def test_bad_labels_are_named(mlp, digits, y, error):
    refuses(lambda: fl.shared_gradients(mlp, digits[0], y), "y", error)


def test_mse_targets_must_have_the_output_shape(mlp, digits):
    x, y = digits
    msg = refuses(lambda: fl.shared_gradients(mlp, x, y, loss="mse"), "y")
    assert "(2, 10)" in msg
    targets = torch.rand(2, 10)
    assert len(fl.shared_gradients(mlp, x, targets, loss="mse")) == 4


@pytest.mark.parametrize("x, error", [
    ("ab", TypeError), (np.zeros((2, 1, 8, 8), np.float32), TypeError),
    (torch.zeros(2, 1, 8, 8, dtype=torch.long), TypeError),
    (torch.zeros(2, 1, 8, 8, dtype=F64), TypeError), (torch.zeros(8), ValueError),
    (torch.zeros(0, 1, 8, 8), ValueError), (torch.full((2, 1, 8, 8), math.inf), ValueError),
    (torch.zeros(2, 1, 9, 9), ValueError)])
def test_bad_inputs_are_named(mlp, x, error):
    refuses(lambda: fl.shared_gradients(mlp, x, torch.tensor([0, 1])), "x", error)


def test_other_arguments_of_shared_gradients_are_named(mlp, digits):
    x, y = digits
    refuses(lambda: fl.shared_gradients("net", x, y), "model", TypeError)
    refuses(lambda: fl.shared_gradients(torch.nn.ReLU(), x, y), "model")
    refuses(lambda: fl.shared_gradients(mlp, x, y, loss=3), "loss", TypeError)
    refuses(lambda: fl.shared_gradients(mlp, x, y, loss="hinge"), "loss")
    refuses(lambda: fl.shared_gradients(mlp, x, y, create_graph=1), "create_graph",
            TypeError)
    refuses(lambda: fl.shared_gradients(mlp, x, y, loss=lambda o, t: o), "loss",
            TypeError)
    frozen = models.build("mlp", in_features=64, widths=(16,), seed=0)
    frozen[1].weight.requires_grad_(False)
    refuses(lambda: fl.shared_gradients(frozen, x, y), "model")


def test_forward_names_its_arguments(mlp, digits):
    x, _ = digits
    refuses(lambda: fl.forward("net", x), "model", TypeError)
    refuses(lambda: fl.forward(mlp, x.double()), "x", TypeError)
    refuses(lambda: fl.forward(mlp, x[:0]), "x")
    refuses(lambda: fl.forward(mlp, torch.rand(2, 1, 9, 9)), "x")
    assert fl.forward(mlp, x).shape == (2, 10)


def test_a_loss_that_overflows_is_named_not_returned_as_nan():
    net = models.build("mlp", in_features=4, widths=(), seed=0, activation="identity")
    with torch.no_grad():
        net[1].weight.fill_(1e30)
    refuses(lambda: fl.shared_gradients(net, torch.full((1, 4), 1e10),
                                        torch.tensor([[1.0] * 10]), loss="mse"), "x")


def test_unused_parameters_get_zero_gradients():
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 3))

    class Skip(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net[0](x)

    grads = fl.shared_gradients(Skip(), torch.rand(2, 4), torch.tensor([0, 2]))
    assert [tuple(g.shape) for g in grads] == [(3, 4), (3,), (3, 3), (3,)]
    assert not grads[2].any() and not grads[3].any()


# --- fl.client_update ---------------------------------------------------------------

@pytest.mark.parametrize("kwargs, name", [
    ({"batch_size": 0}, "batch_size"), ({"batch_size": 3}, "batch_size"),
    ({"batch_size": 1.0}, "batch_size"), ({"lr": float("nan")}, "lr"),
    ({"lr": -0.1}, "lr"), ({"lr": 0}, "lr"), ({"lr": math.inf}, "lr"),
    ({"lr": "0.1"}, "lr"), ({"local_steps": 0}, "local_steps"),
    ({"local_steps": True}, "local_steps"), ({"seed": 1.5}, "seed"),
    ({"loss": "hinge"}, "loss")])
def test_client_update_names_bad_settings(mlp, digits, kwargs, name):
    refuses(lambda: fl.client_update(mlp, *digits, **kwargs), name)


def test_client_update_batch_size_none_is_the_whole_batch(mlp, digits):
    a = fl.client_update(mlp, *digits, batch_size=None)
    b = fl.client_update(mlp, *digits, batch_size=2)
    assert all(torch.equal(u, v) for u, v in zip(a, b))


# --- data -----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, name, error", [
    (dict(size=0), "size", ValueError), (dict(size=-4), "size", ValueError),
    (dict(size=2.5), "size", TypeError), (dict(size=10 ** 6), "size", ValueError),
    (dict(labels=[1.5, 2.0]), "labels", TypeError),
    (dict(labels=torch.tensor([1.0, 2.0])), "labels", TypeError),
    (dict(labels=[]), "labels", ValueError), (dict(labels=[-1]), "labels", ValueError),
    (dict(labels=[12]), "labels", ValueError),
    (dict(dtype=torch.int64), "dtype", TypeError), (dict(dtype="float"), "dtype", TypeError),
    (dict(n=True), "n", TypeError), (dict(n=2.0), "n", TypeError),
    (dict(n=0), "n", ValueError), (dict(n=5000), "n", ValueError),
    (dict(seed="a"), "seed", TypeError), (dict(seed=2 ** 70), "seed", ValueError),
    (dict(rgb=1), "rgb", TypeError), (dict(nonfaces=True), "nonfaces", ValueError),
    (dict(varied="yes"), "varied", TypeError)])
def test_load_names_bad_arguments(kwargs, name, error):
    args = {"name": "digits", "n": 2, **kwargs}
    refuses(lambda: data.load(**args), name, error)


def test_load_never_rounds_pixels_or_labels():
    x, y = data.load("digits", 3, seed=0, dtype=F64)
    assert x.dtype == F64 and ((x > 0) & (x < 1)).any()
    _, y2 = data.load("digits", 0, labels=np.array([3, 1], dtype=np.int32))
    assert y2.tolist() == [3, 1] and y2.dtype == torch.long
    refuses(lambda: data.load(3, 2), "name", TypeError)
    refuses(lambda: data.load("cifar", 2), "name")


@pytest.mark.parametrize("kwargs, name", [
    (dict(split="train"), "split"), (dict(split=0), "split"), (dict(size=0), "size"),
    (dict(rgb="no"), "rgb"), (dict(dtype=torch.int32), "dtype")])
def test_evaluation_set_names_bad_arguments(kwargs, name):
    refuses(lambda: data.evaluation_set(**kwargs), name)


def test_is_varied_names_bad_images():
    refuses(lambda: data.is_varied(torch.rand(1, 3, 8, 8)), "img")
    refuses(lambda: data.is_varied(torch.full((3, 4, 4), math.nan)), "img")
    refuses(lambda: data.is_varied(torch.rand(3, 1, 1)), "img")


# --- metrics --------------------------------------------------------------------------

def _imgs(n=2, side=8, seed=0):
    return torch.rand(n, 3, side, side, generator=torch.Generator().manual_seed(seed))


def test_metrics_refuse_a_nan_truth_instead_of_returning_nan():
    x = _imgs()
    bad = x.clone()
    bad[0, 0, 0, 0] = math.nan
    for fn in (metrics.mse, metrics.psnr, metrics.ssim, metrics.match, metrics.report):
        refuses(lambda: fn(x, bad), "x")
        refuses(lambda: fn(bad, x), "x_hat")


@pytest.mark.parametrize("peak", [0, -1, math.nan, math.inf, "1", True])
def test_psnr_names_a_bad_peak(peak):
    refuses(lambda: metrics.psnr(_imgs(), _imgs(seed=1), peak=peak), "peak")


def test_ssim_of_one_image_needs_its_batch_dimension():
    x, y = _imgs(1), _imgs(1, seed=1)
    msg = refuses(lambda: metrics.ssim(x[0], y[0]), "x_hat")
    assert "x_hat[None]" in msg
    for fn in (metrics.psnr, metrics.mse, metrics.report, metrics.match):
        refuses(lambda: fn(x[0], y[0]), "x_hat")
    assert -1 <= metrics.ssim(x, y) <= 1 and metrics.ssim(x, x) == pytest.approx(1)


def test_tiny_images_are_refused_by_ssim_but_fine_for_psnr():
    x, y = torch.rand(2, 1, 2, 2), torch.rand(2, 1, 2, 2)
    msg = refuses(lambda: metrics.ssim(x, y), "x")
    assert "3 x 3" in msg
    refuses(lambda: metrics.report(x, y), "x")
    assert math.isfinite(metrics.psnr(x, y))
    t = torch.rand(1, 1, 3, 3)
    assert metrics.ssim(t, t) == pytest.approx(1)


def test_metrics_accept_vectors_where_they_make_sense():
    v, w = torch.rand(3, 10), torch.rand(3, 10)
    assert metrics.mse(v, w).shape == (3,) and math.isfinite(metrics.psnr(v, w))
    assert sorted(metrics.match(v, w).tolist()) == [0, 1, 2]
    refuses(lambda: metrics.ssim(v, w), "x_hat")
    refuses(lambda: metrics.flat_baseline(v), "x")


def test_report_needs_both_label_lists_or_neither():
    x, y = _imgs(), _imgs(seed=1)
    refuses(lambda: metrics.report(x, y, labels_hat=[1, 2]), "labels")
    refuses(lambda: metrics.report(x, y, labels=[1, 2]), "labels_hat")
    refuses(lambda: metrics.report(x, y, [1, 2], [1, 2, 3]), "labels")
    refuses(lambda: metrics.report(x, y, reorder="yes"), "reorder")
    assert metrics.report(x, y, [1, 2], [2, 1])["label_acc"] == 1.0


def test_label_accuracy_refuses_floats_negatives_and_mismatches():
    refuses(lambda: metrics.label_accuracy([1.7, 2.0], [1, 2]), "labels_hat")
    refuses(lambda: metrics.label_accuracy([1, 2], torch.tensor([1.0, 2.0])), "labels")
    refuses(lambda: metrics.label_accuracy([-1, 2], [1, 2]), "labels_hat")
    refuses(lambda: metrics.label_accuracy([1], [1, 2]), "labels_hat")
    refuses(lambda: metrics.label_accuracy([], []), "labels")
    assert metrics.label_accuracy(np.array([2, 1]), (1, 2)) == 1.0


def test_summarize_refuses_nan_but_keeps_infinite_psnr():
    refuses(lambda: metrics.summarize([1.0, math.nan]), "values[1]")
    refuses(lambda: metrics.summarize([]), "values")
    refuses(lambda: metrics.summarize(3.0), "values")
    refuses(lambda: metrics.summarize(["a"]), "values[0]")
    assert metrics.summarize([1.0, math.inf, 3.0])["median"] == 3.0


# --- attacks.analytic ----------------------------------------------------------------

def _fc_gradient():
    x, y = data.load("digits", 1, seed=0, dtype=F64)
    net = models.build("mlp", in_features=64, widths=(32,), seed=0, dtype=F64)
    return x, fl.shared_gradients(net, x, y)[:2]


@pytest.mark.parametrize("kwargs, name", [
    (dict(rtol=2.0), "rtol"), (dict(rtol=1.0), "rtol"), (dict(rtol=-0.1), "rtol"),
    (dict(rtol=math.nan), "rtol"), (dict(agree_tol=-1.0), "agree_tol"),
    (dict(min_agree=0), "min_agree"), (dict(min_agree=1.5), "min_agree")])
def test_invert_fc_names_settings_that_would_give_nan(kwargs, name):
    _, (gw, gb) = _fc_gradient()
    refuses(lambda: analytic.invert_fc(gw, gb, **kwargs), name)


def test_invert_fc_largest_allowed_rtol_still_returns_the_input():
    x, (gw, gb) = _fc_gradient()
    out = analytic.invert_fc(gw, gb, rtol=0.999)
    assert torch.isfinite(out.input).all() and len(out.rows) >= 1
    assert torch.allclose(out.input, x.flatten(), atol=1e-12)
    refuses(lambda: analytic.invert_fc(torch.zeros(0, 4), torch.zeros(0)), "grad_weight")
    refuses(lambda: out.to_reconstruction((3, 8, 8)), "image_shape")
    refuses(lambda: out.to_reconstruction((1, -8, 8)), "image_shape[1]")


def test_last_layer_helpers_name_their_arguments():
    z = torch.zeros(2, 3, dtype=F64)
    refuses(lambda: analytic.last_layer_deltas(z, torch.tensor([0, 3])), "labels")
    refuses(lambda: analytic.last_layer_deltas(z, [0.5, 1.0]), "labels", TypeError)
    refuses(lambda: analytic.last_layer_deltas(z, torch.tensor([0, 1]), "max"),
            "reduction")
    refuses(lambda: analytic.last_layer_deltas(torch.zeros(0, 3), torch.tensor([], dtype=
                                               torch.long)), "logits")
    assert torch.equal(analytic.last_layer_deltas(z, torch.tensor([0, 2], dtype=torch.int32)),
                       analytic.last_layer_deltas(z, torch.tensor([0, 2])))
    w = torch.ones(3, 4, dtype=F64)
    refuses(lambda: analytic.solve_last_layer_inputs(w, w, None, [0, 5]), "labels")
    refuses(lambda: analytic.solve_last_layer_inputs(w, w, None, [0, 1], steps=0), "steps")
    refuses(lambda: analytic.solve_last_layer_inputs(w, w, None, [0, 1], tol=-1), "tol")
    refuses(lambda: analytic.solve_fc_inputs(w, torch.ones(2, 3, dtype=F64), rcond=-1),
            "rcond")
    refuses(lambda: analytic.solve_fc_inputs(w, torch.ones(0, 3, dtype=F64)), "deltas")


# --- viz, isolation, Reconstruction, seed_everything -------------------------------------

def test_figure_helpers_name_bad_arguments():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    x = _imgs(3)
    refuses(lambda: viz.to_numpy_image(x), "img")
    refuses(lambda: viz.to_numpy_image(torch.rand(2, 4, 4)), "img")
    refuses(lambda: viz.show_images(x, titles=["a"]), "titles")
    refuses(lambda: viz.show_images(x, ncols=0), "ncols")
    refuses(lambda: viz.show_images(x[0]), "x")
    refuses(lambda: viz.compare(x, x[:2]), "recons[0]")
    refuses(lambda: viz.compare(x, x, names=["only one"]), "names")
    refuses(lambda: viz.plot_curves({}, "x", "y"), "curves")
    refuses(lambda: viz.plot_curves({"a": ([1, 2], [3])}, "x", "y"), "curves['a']")
    refuses(lambda: viz.panel_grid(2, panel=0), "panel")
    refuses(lambda: viz.mark_baseline(None, math.nan), "value")
    refuses(lambda: viz.check_figure("fig"), "fig", TypeError)
    refuses(lambda: viz.animation_html("anim"), "anim", TypeError)
    refuses(lambda: viz.book_style(vector="svg"), "vector", TypeError)
    plt.close("all")


def test_isolation_reconstruction_and_seeding_name_bad_arguments():
    refuses(lambda: lb.isolation.isolation_trial(8, 2, -1), "seed")
    refuses(lambda: lb.isolation.isolation_trial(8, 2, 0.5), "seed")
    refuses(lambda: lb.isolation.isolation_probabilities(True, 0), "batch")
    refuses(lambda: lb.Reconstruction(images=np.zeros(3)), "images", TypeError)
    refuses(lambda: lb.Reconstruction(images=None, labels=[1]), "labels", TypeError)
    refuses(lambda: lb.Reconstruction(images=None, wall_time=-1.0), "wall_time")
    refuses(lambda: lb.Reconstruction(images=None, stats=[]), "stats", TypeError)
    threads_before = torch.get_num_threads()
    refuses(lambda: lb.seed_everything(-1), "seed")
    refuses(lambda: lb.seed_everything(0, threads=0), "threads")
    assert torch.get_num_threads() == threads_before


# --- threads.one_thread ------------------------------------------------------------------

def test_one_thread_restores_the_callers_setting_even_on_error():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with pytest.raises(RuntimeError):
            with threads.one_thread():
                assert torch.get_num_threads() == 1
                with threads.one_thread():
                    assert torch.get_num_threads() == 1
                raise RuntimeError("inside")
        assert torch.get_num_threads() == 2
        seen = []
        fl.shared_gradients(models.build("mlp", in_features=4, widths=(), seed=0),
                            torch.rand(1, 4), torch.tensor([0]), loss=lambda o, t: seen.append(
                                torch.get_num_threads()) or o.sum())
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)



def test_one_thread_also_limits_the_blas_pools_of_numpy_and_scipy():
    """COPA's sparse and dense NumPy/SciPy solves differed between a process
    with OMP_NUM_THREADS=1 and one without: torch's setting does not reach
    the BLAS pools, so one_thread limits them too, and restores them."""
    from threadpoolctl import ThreadpoolController, threadpool_limits
    import scipy.linalg  # noqa: F401  (loads SciPy's BLAS)

    def blas_threads():
        return {p["filepath"]: p["num_threads"] for p in ThreadpoolController().info()
                if p["user_api"] == "blas"}

    with threadpool_limits(limits=2, user_api="blas"):
        outside = blas_threads()
        with threads.one_thread():
            inside = blas_threads()
            with threads.one_thread():
                assert blas_threads() == inside
        assert blas_threads() == outside
    assert inside and set(inside.values()) == {1}

# --- the validation layer ---------------------------------------------------------------

@pytest.mark.parametrize("call, name, error", [
    (lambda: checks.integer(True, "k"), "k", TypeError),
    (lambda: checks.integer(2.0, "k"), "k", TypeError),
    (lambda: checks.integer(0, "k", minimum=1), "k", ValueError),
    (lambda: checks.integer(9, "k", maximum=8), "k", ValueError),
    (lambda: checks.number(math.nan, "lr"), "lr", ValueError),
    (lambda: checks.number(math.inf, "lr"), "lr", ValueError),
    (lambda: checks.number("1", "lr"), "lr", TypeError),
    (lambda: checks.number(torch.ones(2), "lr"), "lr", TypeError),
    (lambda: checks.number(0.0, "lr", above=0), "lr", ValueError),
    (lambda: checks.number(1.0, "p", below=1), "p", ValueError),
    (lambda: checks.flag(1, "rgb"), "rgb", TypeError),
    (lambda: checks.choice("x", "mode", ("a", "b")), "mode", ValueError),
    (lambda: checks.choice(1, "mode", ("a", "b")), "mode", TypeError),
    (lambda: checks.choice(["a"], "mode", ("a", "b")), "mode", TypeError),
    (lambda: checks.seed(-2 ** 64), "seed", ValueError),
    (lambda: checks.float_dtype(torch.int8), "dtype", TypeError),
    (lambda: checks.float_dtype(float), "dtype", TypeError),
    (lambda: checks.shape((3, 0, 8), "input_shape"), "input_shape[1]", ValueError),
    (lambda: checks.shape((3, 8), "input_shape", dims=3), "input_shape", ValueError),
    (lambda: checks.shape(8, "input_shape"), "input_shape", TypeError),
    (lambda: checks.function(3, "fn"), "fn", TypeError),
    (lambda: checks.tensor([1.0], "t"), "t", TypeError),
    (lambda: checks.tensor(torch.ones(2, dtype=torch.long), "t"), "t", TypeError),
    (lambda: checks.tensor(torch.ones(2), "t", "integer"), "t", TypeError),
    (lambda: checks.tensor(torch.ones(2), "t", dims=2), "t", ValueError),
    (lambda: checks.tensor(torch.ones(0), "t", nonempty=True), "t", ValueError),
    (lambda: checks.float_tensor(torch.tensor([math.nan]), "g"), "g", ValueError),
    (lambda: checks.batch(torch.ones(0, 3), "x"), "x", ValueError),
    (lambda: checks.batch(torch.ones(3), "x"), "x", ValueError),
    (lambda: checks.check_batch(torch.ones(2, 3), [1, 2]), "y", TypeError),
    (lambda: checks.check_batch(torch.ones(2, 3), torch.ones(3)), "y", ValueError),
    (lambda: checks.labels([1, 2], "y", batch_size=3), "y", ValueError),
    (lambda: checks.labels(torch.ones(2, 2, dtype=torch.long), "y"), "y", ValueError),
    (lambda: checks.soft_labels(torch.ones(2, 3), "y"), "y", ValueError),
    (lambda: checks.weights([1, -2], "w", 2), "w", ValueError),
    (lambda: checks.weights(None, "w", 2), "w", TypeError),
    (lambda: checks.module(3), "model", TypeError),
    (lambda: checks.module(torch.nn.ReLU()), "model", ValueError),
    (lambda: checks.check_grads(torch.nn.Linear(2, 2), torch.ones(2, 2)), "grads",
     TypeError),
    (lambda: checks.check_grads(torch.nn.Linear(2, 2), [torch.ones(2, 2)]), "grads",
     ValueError),
    (lambda: checks.check_grads(torch.nn.Linear(2, 2), [torch.ones(2, 2), torch.ones(3)]),
     "grads[1]", ValueError),
    (lambda: checks.check_grads(torch.nn.Linear(2, 2),
                                [torch.ones(2, 2), torch.tensor([1.0, math.nan])]),
     "grads[1]", ValueError),
    (lambda: checks.tensor_lists([torch.ones(2)], "updates"), "updates", TypeError),
])
def test_every_helper_names_the_argument_and_says_what_came(call, name, error):
    msg = refuses(call, name, error)
    assert ", got " in msg or " got " in msg, msg


def test_helpers_return_normalised_values():
    assert checks.integer(np.int64(3), "k") == 3 and type(checks.integer(np.int64(3), "k")) is int
    assert checks.integer(torch.tensor(4), "k") == 4
    assert checks.number(np.float32(0.5), "p") == 0.5
    assert checks.number(torch.tensor(2.0), "p") == 2.0
    assert checks.number(math.inf, "p", finite=False) == math.inf
    assert checks.flag(np.bool_(True), "b") is True
    assert checks.shape(torch.Size([3, 8, 8]), "s") == (3, 8, 8)
    assert checks.labels(np.array([True, False]), "y").tolist() == [1, 0]
    assert checks.weights(np.array([1, 3]), "w", 2).dtype == F64
    g = [torch.ones(2, 2), torch.ones(2)]
    out = checks.check_grads(torch.nn.Linear(2, 2), tuple(g))
    assert isinstance(out, list) and all(a is b for a, b in zip(out, g))


def test_describe_is_short_and_shows_small_values():
    assert checks.describe(torch.tensor([1, 12])) == "an int64 tensor of shape (2,) [1, 12]"
    assert checks.describe(torch.zeros(100, 100)) == "a float32 tensor of shape (100, 100)"
    assert checks.describe([1, 2]) == "[1, 2]"
    assert checks.describe(list(range(100))) == "a list of 100 ints"
    assert len(checks.describe("x" * 500)) <= 60


def test_training_validates_first_and_accuracy_leaves_the_model_alone():
    """Issue 14 phase 2 (train): checks before work; accuracy keeps BN buffers."""
    from leakbook.train import accuracy, train_classifier
    net = lb.models.build("resnet_tiny", in_channels=1, image_size=8, width=4)
    x, y = torch.rand(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    for kwargs, match in [({"epochs": 0}, "epochs must"), ({"lr": float("nan")}, "lr must"),
                          ({"batch_size": True}, "batch_size must"),
                          ({"lr": -1.0}, "lr must")]:
        with pytest.raises((ValueError, TypeError), match=match):
            train_classifier(net, x, y, **kwargs)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    accuracy(net, x, y)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


# --- phase 2: layer-wise attacks, security, models, command line (helper robb) -------

def _rgap_inputs(dtype=F64):
    """A bias-free cnn6 on one 8x8 digit, R-GAP's label, logistic gradients."""
    net = models.build("cnn6", in_channels=1, image_size=8, seed=0, dtype=dtype)
    x = data.load("digits", 1, seed=1, dtype=dtype)[0]
    with torch.no_grad():
        y = torch.tensor([0 if net(x).item() > 0 else 1])
    return x, net, fl.shared_gradients(net, x, y, loss="logistic"), y


def test_layerwise_attacks_refuse_all_zero_gradients_by_name():
    """Issue 14: rgap returned a zero image and copa raised ZeroDivisionError."""
    from leakbook.attacks import copa, rgap
    _, net, g, y = _rgap_inputs()
    zeros = [torch.zeros_like(t) for t in g]
    for attack in (rgap, copa):
        msg = refuses(lambda: attack(net, zeros, y, input_shape=(1, 8, 8)), "grads",
                      ValueError)
        assert "every gradient is zero" in msg


def test_layerwise_attacks_refuse_the_gradient_of_a_batch():
    """Issue 14: a batch-of-2 gradient returned an image (R-GAP inverts B=1)."""
    from leakbook.attacks import copa, rgap
    _, net, _, _ = _rgap_inputs()
    x2 = data.load("digits", 2, seed=4, dtype=F64)[0]
    g2 = fl.shared_gradients(net, x2, torch.tensor([0, 1]), loss="logistic")
    refuses(lambda: rgap(net, g2, [0], input_shape=(1, 8, 8)), "grads", ValueError)
    ce = models.build("cnn3_c1", in_channels=1, image_size=12, seed=0, dtype=F64)
    xb, yb = data.load("digits", 2, seed=5, size=12, dtype=F64)
    gb = fl.shared_gradients(ce, xb, yb)
    for attack in (rgap, copa):
        msg = refuses(lambda: attack(ce, gb, input_shape=(1, 12, 12)), "grads")
        assert "one sample" in msg


def test_layerwise_attacks_check_branch_shape_labels_and_options_first():
    """Issue 14: branch="medium" was accepted. Every option is checked before
    the model is copied or a system solved (a bad option costs no work)."""
    from leakbook.attacks import copa, recursive, rgap
    _, net, g, y = _rgap_inputs()
    for attack in (rgap, copa):
        refuses(lambda: attack(net, g, y, input_shape=(1, 8, 8), branch="medium"),
                "branch")
        refuses(lambda: attack(net, g, y, input_shape=(1, -8, 8)), "input_shape[1]")
        refuses(lambda: attack(net, g, y, input_shape=(1, 16, 16)), "input_shape")
        refuses(lambda: attack(net, g, [2], input_shape=(1, 8, 8)), "labels")
        refuses(lambda: attack(net, g, None, input_shape=(1, 8, 8)), "labels")
        refuses(lambda: attack(net, g, y, input_shape=(1, 8, 8), clip=0.7), "clip")
    refuses(lambda: recursive.solve_margin(-0.5), "value")
    refuses(lambda: recursive.solve_margin(0.1, branch="medium"), "branch")
    refuses(lambda: copa(net, g, y, input_shape=(1, 8, 8), fill="median"), "fill")
    refuses(lambda: copa(net, g, y, input_shape=(1, 8, 8), steps=-1), "steps")
    refuses(lambda: copa(net, g, y, input_shape=(1, 8, 8), max_time=0), "max_time")


def test_layerwise_attacks_accept_labels_as_int_list_tensor_or_array():
    from leakbook.attacks import rgap
    x, net, g, y = _rgap_inputs()
    ref = rgap(net, g, y, input_shape=(1, 8, 8))
    for form in (int(y), [int(y)], y[0], np.array([int(y)]), y.int()):
        out = rgap(net, g, form, input_shape=(1, 8, 8))
        assert torch.equal(out.images, ref.images) and torch.equal(out.labels, y)
        assert out.labels is not y
    assert float((ref.images - x).abs().max()) < 1e-8


def test_dense_matrices_are_estimated_before_they_are_built():
    """Issue 14, item 4: the dense solvers refuse past a limit, with the estimate
    in the message, and a keyword raises the limit."""
    from leakbook.attacks import linear_systems as ls
    from leakbook.attacks import rgap
    conv = torch.nn.Conv2d(3, 64, 3, 1, 1)
    with pytest.raises(MemoryError, match=r"conv_matrix needs a dense 262144x12288 .*"
                                          r"24\.0 GB, over max_memory_gb=2"):
        ls.conv_matrix(conv, (3, 64, 64))
    sparse = ls.conv_matrix(conv, (3, 64, 64), sparse=True)      # the sparse form is fine
    assert sparse.shape == (262144, 12288) and sparse.is_sparse
    small = torch.nn.Conv2d(1, 2, 3)
    with pytest.raises(MemoryError, match="max_memory_gb=1e-06"):
        ls.conv_gradient_matrix(small, (1, 20, 20), torch.zeros(2, 18, 18),
                                max_memory_gb=1e-6)
    assert ls.conv_matrix(small, (1, 20, 20), max_memory_gb=1e-2).shape == (648, 400)
    x, net, g, y = _rgap_inputs()
    with pytest.raises(MemoryError, match="this layer's solve needs a dense"):
        rgap(net, g, y, input_shape=(1, 8, 8), max_memory_gb=1e-6)
    refuses(lambda: rgap(net, g, y, input_shape=(1, 8, 8), max_memory_gb=0),
            "max_memory_gb")


def test_copa_estimates_its_preconditioner(monkeypatch):
    from leakbook.attacks import copa, hybrid
    net = models.build("cnn3_c1", in_channels=1, image_size=12, seed=0, dtype=F64)
    x = data.load("digits", 1, seed=1, dtype=F64, size=12)[0]
    g = fl.shared_gradients(net, x, torch.tensor([3]))
    called = []
    monkeypatch.setattr(hybrid._JointFit, "preconditioner",
                        lambda self, x: called.append(1))
    with pytest.raises(MemoryError, match="Gauss-Newton preconditioner"):
        copa(net, g, [3], input_shape=(1, 12, 12), max_memory_gb=1e-4, max_time=None)
    assert not called                                  # refused before it was built


def test_the_audit_refuses_3x64x64_from_its_estimate_before_any_work(monkeypatch):
    """Issue 14: audit on 3x64x64 ran past 90 s and 2.7 GB with no output. Every
    zoo CNN is refused there from the estimate, before a Gram matrix exists."""
    from leakbook import security
    monkeypatch.setattr(security, "layer_gram",
                        lambda *a, **k: pytest.fail("layer_gram ran"))
    for name in ("lenet_dlg", "cnn6", "cnn6_d", "cnn2_c1", "cnn3_c1", "cnn4_c2"):
        with pytest.raises(MemoryError, match=r"about \d+\.\d GB and \d+ min"):
            security.audit(models.build(name, image_size=64), (3, 64, 64))


def test_audit_checks_its_arguments_with_the_validation_layer():
    from leakbook import security
    net = models.build("cnn3_c1", in_channels=1, image_size=12, seed=0)
    refuses(lambda: security.audit(net, (1, 0, 12)), "input_shape[1]")
    refuses(lambda: security.audit(net, (1, 12.5, 12)), "input_shape[1]", TypeError)
    refuses(lambda: security.audit(net, "1x12x12"), "input_shape", TypeError)
    refuses(lambda: security.audit(net, (1, 12)), "input_shape")
    refuses(lambda: security.audit(net, (2, 12, 12)), "input_shape")
    refuses(lambda: security.audit(net, (1, 12, 12), seed=1.5), "seed", TypeError)
    refuses(lambda: security.audit(net, (1, 12, 12), weights="trained"), "weights")
    refuses(lambda: security.audit(net, (1, 12, 12), progress=1), "progress", TypeError)
    refuses(lambda: security.rank_bound(torch.nn.Linear(4, 2), (5,)), "in_shape")
    refuses(lambda: security.numerical_rank(np.ones((2, 3)), 1e-6), "gram")
    a = security.audit(net, (1, 12, 12), seed=3)
    b = security.audit(net, (1, 12, 12), seed=3)
    assert a.to_rows() == b.to_rows() and torch.equal(a.blind, b.blind)


def test_build_refuses_zero_size_layers_and_bad_settings_by_name():
    """Issue 14: build accepted widths=(0,), num_classes=0 and width=0."""
    refuses(lambda: models.build("mlp", widths=(0,)), "widths[0]")
    refuses(lambda: models.build("mlp", widths=(8, 0)), "widths[1]")
    refuses(lambda: models.build("cnn6", num_classes=0), "num_classes")
    refuses(lambda: models.build("resnet_tiny", width=0), "width")
    refuses(lambda: models.build("cnn6", widths=(12, 0, 36, 36, 64, 128)), "widths[1]")
    refuses(lambda: models.build("mlp", seed=0.5), "seed", TypeError)
    refuses(lambda: models.build("mlp", dtype=torch.int64), "dtype", TypeError)
    refuses(lambda: models.build("resnet"), "name")
    refuses(lambda: models.build("mlp", activation="swish"), "activation")
    refuses(lambda: models.make_activation("gelu"), "activation")
    # the zoo builders called directly check the same sizes
    refuses(lambda: models.mlp(widths=(0,)), "widths[0]")
    refuses(lambda: models.lenet_dlg(num_classes=0), "num_classes")
    refuses(lambda: models.resnet_tiny(width=0), "width")
    refuses(lambda: models.cnn4_c2(in_channels=0), "in_channels")


@pytest.mark.parametrize("args,message", [
    (["cnn6", "--input-shape", "-3", "8", "8"], "--input-shape[0] must be a positive"),
    (["cnn6", "--input-shape", "3", "4096", "4096"], "entries"),
    (["mlp", "--input-shape", "4000000"], "parameters"),
    (["cnn6", "--input-shape", "3", "8", "x"], "invalid int value"),
    (["cnn6"], "required: --input-shape"),
    (["cnn6", "--input-shape", "3", "8", "8", "--rtol", "2"], "rtol must be less"),
    (["cnn6", "--input-shape", "3", "8", "9"], "--input-shape must be a square"),
])
def test_the_command_line_reports_every_error_in_one_line(capsys, args, message):
    """Issue 14: bad shapes and huge shapes ended in tracebacks; usage errors now
    also print one line (no usage block). The thread count is left alone."""
    from leakbook.__main__ import main
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(["audit", *args]) == 2
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err and err.startswith("error: ")


def test_the_command_line_main_leaves_the_thread_count_alone(capsys):
    from leakbook.__main__ import main
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(["audit", "cnn3_c1", "--input-shape", "1", "12", "12"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert "COPA index" in capsys.readouterr().out


def test_linear_system_helpers_name_their_arguments():
    from leakbook.attacks import layer_system, layers
    from leakbook.attacks import linear_systems as ls
    conv = torch.nn.Conv2d(1, 2, 3)
    refuses(lambda: ls.conv_matrix(torch.nn.Linear(2, 2), (1, 4, 4)), "conv", TypeError)
    refuses(lambda: ls.conv_matrix(conv, (1, 2, 2)), "input_shape")
    refuses(lambda: ls.patch_indices(conv, (1, 4)), "input_shape")
    refuses(lambda: ls.conv_gradient_matrix(conv, (1, 4, 4), torch.zeros(5)), "delta")
    refuses(lambda: ls.conv_csr(conv, (1, 4, 4), torch.zeros(3)), "values")
    refuses(lambda: ls.conv_matrix(torch.nn.Conv2d(2, 2, 3, groups=2), (2, 4, 4)),
            "conv")
    refuses(lambda: layers.blocks(torch.nn.Sequential(torch.nn.Linear(4, 2)), (4, 0)),
            "input_shape[1]")
    refuses(lambda: layers.blocks(torch.nn.Sequential(conv, torch.nn.MaxPool2d(2)),
                                  (1, 6, 6)), "model", TypeError)
    refuses(lambda: layers.Activation(torch.nn.ReLU()), "activation")
    refuses(lambda: layers.Activation(torch.nn.Tanh(), clip=0.0), "clip")
    net = torch.nn.Sequential(conv.double(), torch.nn.Tanh(), torch.nn.Flatten(),
                              torch.nn.Linear(8, 1).double())
    block = layers.blocks(net, (1, 4, 4))[0]
    refuses(lambda: layer_system.LayerSystem(block, torch.zeros(3, dtype=F64),
                                             torch.zeros(2, 1, 3, 3, dtype=F64)),
            "delta")
    system = layer_system.LayerSystem(block, torch.ones(2, 2, 2, dtype=F64),
                                      torch.ones(2, 1, 3, 3, dtype=F64))
    refuses(lambda: system.solve(rank_rtol=2.0), "rank_rtol")
    refuses(lambda: system.solve(dense_limit=-1), "dense_limit")


# --- phase 2 (helper roba): matching, labels, fedavg, optim, defenses -------------

class _NoForward(torch.nn.Module):
    """A model whose forward pass must not run: any call fails the test."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(16, 3)

    def forward(self, x):
        raise AssertionError("the forward pass ran before the arguments were checked")


def _no_forward_grads(net):
    return [torch.ones_like(p) for p in net.parameters()]


@pytest.mark.parametrize("labels", [torch.tensor([0, 1]), torch.tensor([0.5]),
                                    "a", torch.tensor([[1]])])
def test_matching_attacks_check_labels_before_any_forward_pass(labels):
    """Issue 14: inverting_gradients checked its labels after a second of work."""
    from leakbook.attacks import fedavg, matching
    net = _NoForward()
    g = _no_forward_grads(net)
    refuses(lambda: matching.inverting_gradients(net, g, (1, 1, 4, 4), labels), "labels")
    refuses(lambda: matching.dlg(net, g, (1, 1, 4, 4), labels=labels), "labels")
    refuses(lambda: fedavg.invert_pairs([(net, g)], (1, 1, 4, 4), labels), "labels")


@pytest.mark.parametrize("kwargs, name", [
    ({"restarts": 0}, "restarts"), ({"seed": 1.5}, "seed"), ({"lr": -1.0}, "lr"),
    ({"iterations": 0}, "iterations"), ({"regularizers": {"tv": math.nan}},
                                        "regularizers['tv']"),
    ({"init": "grey"}, "init"), ({"dtype": torch.int64}, "dtype"),
    ({"signed": 1}, "signed"), ({"callback": 3}, "callback")])
def test_inverting_gradients_names_bad_options_before_any_forward_pass(kwargs, name):
    from leakbook.attacks import matching
    net = _NoForward()
    refuses(lambda: matching.inverting_gradients(net, _no_forward_grads(net),
                                                 (1, 1, 4, 4), torch.tensor([1]),
                                                 **kwargs), name)


def _bn_case(n=4):
    net = models.build("resnet_tiny", in_channels=1, image_size=8, width=4, seed=0)
    x = torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(n)
    return net, x, y, fl.shared_gradients(net, x, y)


def _buffer_record(net):
    return [(k, b._version, b.clone()) for k, b in net.named_buffers()]


def test_recover_geng_leaves_every_batchnorm_buffer_alone():
    """Issue 14: recover(method="geng") changed 15 BN buffers; now none, bit for bit
    and without even a write-back (version counters unchanged)."""
    from leakbook.attacks import labels
    net, x, y, g = _bn_case()
    before = _buffer_record(net)
    assert len(before) == 15 and net.training
    for kw in ({}, {"refine": True}):
        labels.recover(net, g, 4, "geng", input_shape=(1, 8, 8), num_dummies=16, **kw)
    after = _buffer_record(net)
    assert [(k, v) for k, v, _ in after] == [(k, v) for k, v, _ in before]
    assert all(torch.equal(a[2], b[2]) for a, b in zip(after, before))
    assert net.training and all(m.training for m in net.modules())


def test_bn_prior_helpers_read_the_running_statistics_without_writing_them():
    """batchnorm_statistics and gradient_distance ran model(x) in train mode, which
    wrote the dummy batch's statistics into the running buffers."""
    from leakbook.attacks import matching
    net, x, y, g = _bn_case()
    before = _buffer_record(net)
    stats = matching.batchnorm_statistics(net, x)
    d = matching.gradient_distance(net, x, y, g, "cosine").detach()
    assert len(stats) == len(matching.batchnorm_layers(net)) and float(d) < 1e-6
    assert all(torch.equal(a[2], b[2]) and a[1] == b[1]
               for a, b in zip(_buffer_record(net), before))


def test_recover_reads_the_bias_when_every_last_relu_is_dead():
    """Found by the iDLG property: with a zero dL/dW (dead ReLUs before the last
    layer) recover refused, although the bias rule needs only dL/db."""
    from leakbook.attacks import labels
    net = models.build("mlp", in_features=4, widths=(3,), num_classes=4, seed=0,
                       dtype=F64)
    with torch.no_grad():
        net[1].bias.fill_(-100.0)  # every hidden unit dead
    x = torch.rand(1, 4, dtype=F64)
    g = fl.shared_gradients(net, x, torch.tensor([2]))
    assert float(g[2].abs().sum()) == 0 and float(g[3].abs().sum()) > 0
    assert labels.recover(net, g, 1, "idlg").tolist() == [2]
    refuses(lambda: labels.recover(net, g, 1, "dlg"), "method")
    with pytest.raises(ValueError, match="zero"):  # llg reads dL/dW only
        labels.recover(net, g, 1, "llg")


def test_attacks_return_labels_that_do_not_alias_the_callers_tensor():
    from leakbook.attacks import matching
    net = models.build("mlp", in_features=16, widths=(4,), num_classes=3, seed=0)
    x, y = torch.rand(1, 1, 4, 4), torch.tensor([1])
    rec = matching.inverting_gradients(net, fl.shared_gradients(net, x, y), (1, 1, 4, 4),
                                       y, iterations=1)
    rec.labels[0] = 2
    assert y.tolist() == [1]


def test_lbfgs_names_bad_options_before_calling_fun():
    from leakbook import optim

    def fun(z):
        raise AssertionError("fun ran before the options were checked")
    z0 = torch.ones(2, dtype=F64)
    for kwargs, name in [({"max_iter": -1}, "max_iter"), ({"history": 0}, "history"),
                         ({"tol": math.nan}, "tol"), ({"stall": 1.5}, "stall"),
                         ({"max_time": "1"}, "max_time"), ({"callback": 3}, "callback")]:
        refuses(lambda: optim.lbfgs(fun, z0, **kwargs), name)
    refuses(lambda: optim.lbfgs(fun, torch.tensor([math.nan], dtype=F64)), "z0")
    refuses(lambda: optim.lbfgs("f", z0), "fun")


def test_defences_name_strings_seeds_and_flags_instead_of_converting_them():
    """A string "0.1" used to pass through float(); seeds went through int()."""
    from leakbook import defenses
    u = [torch.ones(2, 3), torch.ones(3)]
    refuses(lambda: defenses.clip(u, "0.1"), "max_norm", TypeError)
    refuses(lambda: defenses.gaussian_noise(u, 0.1, seed=1.7), "seed", TypeError)
    refuses(lambda: defenses.prune(u, 0.5, per_tensor=1), "per_tensor", TypeError)
    refuses(lambda: defenses.quantize(u, 4, stochastic="yes"), "stochastic", TypeError)
    refuses(lambda: defenses.clip_and_noise(u, -1.0, 0.5), "max_norm")
    refuses(lambda: defenses.prune([], 0.5), "update")
    copies = [t.clone() for t in u]
    for out in (defenses.clip(u, 0.1), defenses.prune(u, 0.5), defenses.quantize(u, 2)):
        assert all(o.data_ptr() != t.data_ptr() for o, t in zip(out, u))
    assert all(torch.equal(a, b) for a, b in zip(u, copies))


# --- the last label helpers: calibrated counts (ch. 03), surrogate clients (ch. 06) ----

def _calibration_case():
    from leakbook.attacks import labels as L
    net = models.build("mlp", in_features=8, widths=(6,), num_classes=3, seed=0)
    gen = torch.Generator().manual_seed(0)
    xa = torch.rand(30, 8, generator=gen)
    ya = torch.arange(30) % 3
    return net, xa, ya, L.calibrate_counts(net, xa, ya, 4, simulations=20, seed=1)


def test_count_survival_refuses_what_its_calibration_does_not_fit():
    from leakbook.attacks import labels as L
    net, xa, ya, cal = _calibration_case()
    gw, gb = [g.detach() for g in fl.shared_gradients(net, xa[:4], ya[:4])[-2:]]
    surv = L.count_survival(cal, gw, gb)
    assert surv.shape == (3, 4) and bool(((surv >= 0) & (surv <= 1)).all())
    refuses(lambda: L.count_survival({"batch_size": 4}, gw, gb), "calibration")
    refuses(lambda: L.count_survival(cal, gw[:2], gb), "gw")
    refuses(lambda: L.count_survival(cal, gw, gb[:2]), "gb")
    refuses(lambda: L.count_survival(cal, gw, gb * math.nan), "gb")
    refuses(lambda: L.count_survival(cal, gw.long(), gb), "gw")


def test_surrogate_inputs_refuse_counts_that_are_no_counts():
    from leakbook.attacks import labels as L
    xa = torch.rand(12, 8, generator=torch.Generator().manual_seed(1))
    ya = torch.arange(12) % 3
    xs, ys = L.surrogate_inputs(torch.tensor([2, 0, 1]), xa, ya, seed=3)
    assert xs.shape == (3, 8) and ys.tolist() == [0, 0, 2]
    refuses(lambda: L.surrogate_inputs(torch.tensor([2.5, 0.0]), xa, ya), "counts")
    refuses(lambda: L.surrogate_inputs(torch.tensor([-1, 2]), xa, ya), "counts")
    refuses(lambda: L.surrogate_inputs([2, 1], xa, ya), "counts")
    refuses(lambda: L.surrogate_inputs(torch.tensor([1, 1]), xa, ya[:5]), "dummy_labels")
    refuses(lambda: L.surrogate_inputs(torch.tensor([1, 1]), xa[:0], None), "dummies")
    refuses(lambda: L.surrogate_inputs(torch.tensor([1, 1]), xa, ya, seed=1.5), "seed")


def test_simulate_counts_checks_everything_before_training_a_surrogate():
    from leakbook.attacks import labels as L
    net = models.build("mlp", in_features=8, widths=(6,), num_classes=3, seed=0)
    xa = torch.rand(12, 8, generator=torch.Generator().manual_seed(1))
    ya = torch.arange(12) % 3
    observed, start = torch.zeros(3), torch.tensor([0, 1])
    good = dict(lr=0.1, local_steps=2)
    labels, info = L.simulate_counts(net, observed, start, xa, ya, max_sweeps=1, **good)
    assert len(labels) == 2 and info["sweeps"] == 1
    for bad, name in [(dict(observed=torch.zeros(4)), "observed"),
                      (dict(observed=torch.full((3,), math.nan)), "observed"),
                      (dict(start=torch.tensor([0, 3])), "start"),
                      (dict(start=torch.tensor([0.0, 1.0])), "start"),
                      (dict(start=torch.tensor([], dtype=torch.long)), "start"),
                      (dict(lr=0.0), "lr"), (dict(local_steps=0), "local_steps"),
                      (dict(batch_size=0), "batch_size"), (dict(max_sweeps=0), "max_sweeps"),
                      (dict(use_bias="yes"), "use_bias"), (dict(seed=1.5), "seed"),
                      (dict(dummy_labels=ya[:3]), "dummy_labels")]:
        kw = dict(model=net, observed=observed, start=start, dummies=xa,
                  dummy_labels=ya, **good)
        kw.update(bad)
        refuses(lambda: L.simulate_counts(**kw), name)
