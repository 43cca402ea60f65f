"""The answer checks: reference answers pass, cheats and near misses do not,
and the feedback never shows the expected value."""
import copy
import io
import itertools
from contextlib import redirect_stdout

import numpy as np
import pytest
import torch

import leakbook as lb
from leakbook import exercises as E


def fedavg_update(model, x, y, lr, steps):
    local = copy.deepcopy(model)
    for _ in range(steps):
        grads = lb.fl.shared_gradients(local, x, y)
        with torch.no_grad():
            for p, g in zip(local.parameters(), grads):
                p -= lr * g
    return [a.detach() - b.detach() for a, b in zip(local.parameters(), model.parameters())]


def update_size(num_classes, in_channels, image_size):
    side = image_size
    for stride in (2, 2, 1):
        side = (side - 1) // stride + 1
    return (12 * in_channels * 25 + 12) + 2 * (12 * 12 * 25 + 12) + (
        12 * side * side + 1) * num_classes


def recover_input(grad_weight, grad_bias):
    i = int(grad_bias.abs().argmax())
    return grad_weight[i] / grad_bias[i]


def isolating_rows(layer, x):
    with torch.no_grad():
        return (layer(x) > 0).sum(0) == 1


def certified_inputs(grad_weight, grad_bias, tol):
    usable = grad_bias.abs() > 1e-8 * grad_bias.abs().max()
    ratios = grad_weight[usable] / grad_bias[usable, None]
    norms = ratios.norm(dim=1)
    dist = torch.cdist(ratios, ratios, compute_mode="donot_use_mm_for_euclid_dist")
    agree = dist <= tol * torch.maximum(norms[:, None], norms[None, :])
    taken, found = torch.zeros(len(ratios), dtype=torch.bool), []
    for i in range(len(ratios)):
        group = agree[i] & ~taken
        if not taken[i] and int(group.sum()) >= 2:
            found.append(ratios[group].mean(0))
            taken |= group
    return torch.stack(found) if found else ratios.new_zeros(0, ratios.shape[1])


def delta_rank(logits, labels):
    delta = torch.softmax(logits, 1) - torch.nn.functional.one_hot(labels, logits.shape[1])
    s = torch.linalg.svdvals(delta)
    return int((s > 1e-10 * s[0]).sum())


REFERENCE = {"ch01-ex-fedavg": fedavg_update, "ch01-ex-count": update_size,
             "ch01-ex-recover": recover_input, "ch02-ex-rows": isolating_rows,
             "ch02-ex-certify": certified_inputs, "ch02-ex-rank": delta_rank}


# --- chapter 09 -------------------------------------------------------------

def third_coefficient(activation):
    z = torch.linspace(-12, 12, 200_001, dtype=torch.float64, requires_grad=True)
    d1 = torch.autograd.grad(activation(z).sum(), z, create_graph=True)[0]
    d2 = torch.autograd.grad(d1.sum(), z, create_graph=True)[0]
    d3 = torch.autograd.grad(d2.sum(), z)[0]
    zd = z.detach()
    return float(torch.trapezoid(d3 * torch.exp(-zd ** 2 / 2), zd)
                 / (2 * torch.pi) ** 0.5)


def third_coefficient_gauss_hermite(activation):
    """Another honest route: Gauss-Hermite nodes and He_3 = z^3 - 3z."""
    z, w = np.polynomial.hermite_e.hermegauss(120)
    z = torch.tensor(z, dtype=torch.float64)
    return float((activation(z) * (z ** 3 - 3 * z)).numpy() @ w / (2 * np.pi) ** 0.5)


def projected_tensor(W, a, grad_W, Q):
    Z, Y = W @ Q, (grad_W / a[:, None]) @ Q
    m, b = Z.shape
    T = (torch.einsum("jc,ja,jb->cab", Y, Z, Z)
         - torch.einsum("c,ab->cab", Y.sum(0), torch.eye(b, dtype=Z.dtype))) / m
    return sum(T.permute(*p) for p in itertools.permutations(range(3))) / 6


def targets(model, directions, weights, c3):
    signs = torch.where(directions.sum(1) < 0, -1.0, 1.0).to(directions.dtype)
    with torch.no_grad():
        f = model(signs[:, None] * directions).reshape(-1)
    return f - len(directions) / 2 * signs * weights / c3


def width_for_error(widths, errors, target):
    w, e = np.asarray(widths, float), np.asarray(errors, float)
    return float((np.exp(np.mean(np.log(e * np.sqrt(w)))) / target) ** 2)


REFERENCE.update({"ch09-ex-sigmoid": third_coefficient,
                  "ch09-ex-estimator": projected_tensor,
                  "ch09-ex-targets": targets, "ch09-ex-width": width_for_error})


def test_other_honest_routes_pass_the_ch09_checks():
    assert run("ch09-ex-sigmoid", third_coefficient_gauss_hermite)[0]
    for per_width in (False, True):
        def arithmetic(widths, errors, target, per_width=per_width):
            w, e = np.asarray(widths, float), np.asarray(errors, float)
            if per_width:
                e = np.array([e[w == u].mean() for u in np.unique(w)])
                w = np.unique(w)
            return (np.mean(e * np.sqrt(w)) / target) ** 2
        assert run("ch09-ex-width", arithmetic)[0]


def test_the_ch09_target_cases_flip_a_direction_and_shuffle():
    """Every targets case has a flipped direction; the sign rule of the chapter
    (positive pixel sum) fixes it on every hidden case too."""
    def unsigned(model, directions, weights, c3):
        with torch.no_grad():
            f = model(directions).reshape(-1)
        return f - len(directions) / 2 * weights / c3
    check = E.ANSWER_CHECKS["ch09-ex-targets"]
    for seed in [0, 1, *E.hidden_seeds("ch09-ex-targets", 12, "probe")]:
        assert check.run(E._Answer(unsigned, ()), seed) is not None
        assert check.run(E._Answer(targets, ()), seed) is None



def test_ch09_feedback_shows_no_numbers():
    """Hints of the chapter 09 checks hold no number but the task's own."""
    wrong = [("ch09-ex-sigmoid", lambda f: 0.1), ("ch09-ex-sigmoid", c3_monte_carlo),
             ("ch09-ex-estimator", lambda W, a, g, Q: 2 * projected_tensor(W, a, g, Q)),
             ("ch09-ex-targets", lambda m, U, w, c3: 1.01 * targets(m, U, w, c3)),
             ("ch09-ex-width", lambda w, e, t: 1.1 * width_for_error(w, e, t)),
             ("ch09-ex-width", lambda w, e, t: width_for_error(w, e, t) ** 0.5)]
    for label, fn in wrong:
        ok, text = run(label, fn)
        assert not ok
        rest = text.replace("1e-6", "").replace("order 3", "").replace("float64", "")
        assert not any(ch.isdigit() for ch in rest), text


def test_ch09_numpy_and_torch_answers_are_accepted():
    for wrap in (np.float64, np.float32, torch.tensor, lambda v: np.array([v])):
        assert run("ch09-ex-sigmoid", lambda f, w=wrap: w(third_coefficient(f)),
                   hidden=False)[0], wrap
        assert run("ch09-ex-width", lambda *a, w=wrap: w(width_for_error(*a)),
                   hidden=False)[0], wrap
    assert run("ch09-ex-targets", lambda *a: targets(*a).numpy(), hidden=False)[0]
    assert run("ch09-ex-targets", lambda *a: targets(*a).tolist(), hidden=False)[0]
    assert run("ch09-ex-estimator", lambda *a: projected_tensor(*a).numpy(),
               hidden=False)[0]

def run(label, fn, hidden=True):
    out = io.StringIO()
    with redirect_stdout(out):
        ok = E.check(label, fn, hidden=hidden)
    return ok, out.getvalue()


@pytest.mark.parametrize("label", sorted(REFERENCE))
@pytest.mark.parametrize("salt", ["leakbook", "another-term"])
def test_reference_answers_pass_public_and_hidden_cases(label, salt, monkeypatch):
    monkeypatch.setenv(E.SALT_VARIABLE, salt)
    ok, text = run(label, REFERENCE[label])
    assert ok and text.strip() == "Correct!"


def test_hidden_seeds_follow_the_salt_and_differ_from_the_public_ones():
    a, b = E.hidden_seeds("x", 4, "s1"), E.hidden_seeds("x", 4, "s2")
    assert a != b and len(set(a)) == 4 and not set(a) & {0, 1}
    assert E.hidden_seeds("x", 4, "s1") == a


def test_every_converted_answer_check_is_registered():
    assert set(REFERENCE) <= set(E.ANSWER_CHECKS)


def test_the_package_reference_agrees_with_the_certify_cases():
    """The expected set of ch02-ex-certify (inputs two isolating rows reach) is
    what invert_fc certifies, on the public and many hidden cases."""
    for seed in [0, 1, *E.hidden_seeds("ch02-ex-certify", 12, "probe")]:
        x, gw, gb, leaked = E._ch02_batch_layer(seed)
        samples = lb.attacks.invert_fc(gw, gb).samples
        assert len(samples) == len(leaked)


def test_the_rank_cases_have_a_clear_gap():
    """Thresholds a thousand times looser or tighter give the same ranks."""
    def rank_at(tol):
        def fn(logits, labels):
            delta = torch.softmax(logits, 1) - torch.nn.functional.one_hot(
                labels, logits.shape[1])
            s = torch.linalg.svdvals(delta)
            return int((s > tol * s[0]).sum())
        return fn
    check = E.ANSWER_CHECKS["ch02-ex-rank"]
    for seed in [0, 1, *E.hidden_seeds("ch02-ex-rank", 40, "probe")]:
        for tol in (1e-7, 1e-10, 1e-13):
            assert check.run(E._Answer(rank_at(tol), ()), seed) is None, (seed, tol)


# --- answers that must fail -------------------------------------------------

cu = lb.fl.client_update


def fedavg_by_package(model, x, y, lr, steps):
    return lb.fl.client_update(model, x, y, lr=lr, local_steps=steps)


def fedavg_by_alias(model, x, y, lr, steps):
    return cu(model, x, y, lr=lr, local_steps=steps)


def fedavg_by_getattr(model, x, y, lr, steps):
    fn = getattr(lb.fl, "client_" + "update")
    try:
        return fn(model, x, y, lr=lr, local_steps=steps)
    except Exception:   # the stand-in raises: fall back to the alias taken before
        return cu(model, x, y, lr=lr, local_steps=steps)


def fedavg_without_profiler(model, x, y, lr, steps):
    import sys
    saved = sys.getprofile()
    sys.setprofile(None)
    try:
        return cu(model, x, y, lr=lr, local_steps=steps)
    finally:
        sys.setprofile(saved)


def fedavg_patching_torch(model, x, y, lr, steps):
    torch.allclose = lambda *a, **k: True
    return [torch.zeros_like(p) for p in model.parameters()]


def fedavg_patching_the_grader(model, x, y, lr, steps):
    lb.exercises.verdict = lambda ok, hint="": True
    return []


def fedavg_gradients_only(model, x, y, lr, steps):
    return lb.fl.shared_gradients(model, x, y)


def fedavg_in_place(model, x, y, lr, steps):
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(steps):
        grads = lb.fl.shared_gradients(model, x, y)
        with torch.no_grad():
            for p, g in zip(model.parameters(), grads):
                p -= lr * g
    return [p.detach() - b for p, b in zip(model.parameters(), before)]


CHEATS = [
    ("ch01-ex-fedavg", fedavg_by_package, "called leakbook.fl.client_update"),
    ("ch01-ex-fedavg", fedavg_by_alias, "used leakbook.fl.client_update"),
    ("ch01-ex-fedavg", fedavg_by_getattr, "leakbook.fl.client_update"),
    ("ch01-ex-fedavg", fedavg_without_profiler, "sys.setprofile"),
    ("ch01-ex-fedavg", fedavg_patching_torch, "torch.allclose"),
    ("ch01-ex-fedavg", fedavg_patching_the_grader, "leakbook.exercises.verdict"),
    ("ch01-ex-fedavg", fedavg_gradients_only, "Not the change"),
    ("ch01-ex-fedavg", fedavg_in_place, "changed the model"),
    ("ch01-ex-count", lambda *a: 85036, "Not the number"),
    ("ch01-ex-count", lambda *a: update_size(*a) + 0.9, "whole number"),
    ("ch01-ex-count", lambda *a: float(update_size(*a)) + 1e-9, "whole number"),
    ("ch01-ex-count", lambda *a: True, "whole number"),
    ("ch01-ex-count", lambda c, ch, s: sum(p.numel() for p in lb.models.build(
        "lenet_dlg", num_classes=c, in_channels=ch, image_size=s).parameters()),
     "leakbook.models.build"),
    ("ch01-ex-recover", lambda gw, gb: lb.attacks.invert_fc(gw, gb).input,
     "invert_fc"),
    ("ch01-ex-recover", lambda gw, gb: gw[0] / gb[0], ""),
    ("ch01-ex-recover", lambda gw, gb: gw[int(gb.abs().argmax())], "scale"),
    ("ch02-ex-rows", lambda layer, x: (layer(x) > 0).any(0), "differs"),
    ("ch02-ex-rows", lambda layer, x: torch.ones(layer.out_features), "differs"),
    ("ch02-ex-certify", lambda gw, gb, tol: lb.attacks.invert_fc(gw, gb).samples,
     "invert_fc"),
    ("ch02-ex-certify", lambda gw, gb, tol: gw[gb != 0] / gb[gb != 0, None],
     "not one of the inputs"),
    ("ch02-ex-rank", lambda z, y: min(len(y), z.shape[1] - 1), "Not the rank"),
    ("ch02-ex-rank", lambda z, y: next((r for r in range(20) if E.check(
        "ch02-ex-rank", lambda *a: r)), None), "Not yet"),
]


# chapter 09


def estimator_unsymmetrised(W, a, grad_W, Q):
    Z, Y = W @ Q, (grad_W / a[:, None]) @ Q
    b = Z.shape[1]
    return (torch.einsum("jc,ja,jb->cab", Y, Z, Z)
            - torch.einsum("c,ab->cab", Y.sum(0), torch.eye(b, dtype=Z.dtype))) / len(Z)


def estimator_z_cubed(W, a, grad_W, Q):
    Z, Y = W @ Q, (grad_W / a[:, None]) @ Q
    T = torch.einsum("jc,ja,jb->cab", Y, Z, Z) / len(Z)
    return sum(T.permute(*p) for p in itertools.permutations(range(3))) / 6


def c3_monte_carlo(activation):
    z = torch.randn(10 ** 6, generator=torch.Generator().manual_seed(0),
                    dtype=torch.float64)
    return float((activation(z) * (z ** 3 - 3 * z)).mean())


def c3_z_cubed(activation):
    z, w = np.polynomial.hermite_e.hermegauss(120)
    z = torch.tensor(z, dtype=torch.float64)
    return float((activation(z) * z ** 3).numpy() @ w / (2 * np.pi) ** 0.5)


def targets_unsigned(model, directions, weights, c3):
    with torch.no_grad():
        f = model(directions).reshape(-1)
    return f - len(directions) / 2 * weights / c3


def width_free_slope(widths, errors, target):
    slope, icept = np.polyfit(np.log(widths), np.log(errors), 1)
    return float(np.exp((np.log(target) - icept) / slope))


hc = lb.attacks.hermite_coefficient

CHEATS += [
    ("ch09-ex-sigmoid", lambda f: lb.attacks.hermite_coefficient(f, 3),
     "called leakbook.attacks.tensor.hermite_coefficient"),
    ("ch09-ex-sigmoid", lambda f: hc(f, 3), "hermite_coefficient"),
    ("ch09-ex-sigmoid", lambda f: -0.0624, "Not yet"),
    ("ch09-ex-sigmoid", c3_monte_carlo, "Monte-Carlo"),
    ("ch09-ex-sigmoid", c3_z_cubed, "z cubed"),
    ("ch09-ex-sigmoid", lambda f: -third_coefficient(f), "Wrong sign"),
    ("ch09-ex-estimator", lambda W, a, g, Q: lb.attacks.projected_moment_tensor(
        W, a, g, torch.zeros(len(a), dtype=W.dtype), Q)[0], "projected_moment_tensor"),
    ("ch09-ex-estimator", lambda W, a, g, Q: lb.attacks.moment_tensor(
        W @ Q, a, g @ Q, torch.zeros(len(a), dtype=W.dtype))[0], "moment_tensor"),
    ("ch09-ex-estimator", lambda W, a, g, Q: lb.attacks.tensor_decomposition(
        (W, a, torch.tanh), [g, torch.zeros(1, len(a), dtype=W.dtype)], Q.shape[1],
        control_variates=None).stats["tensor"], "tensor_decomposition"),
    ("ch09-ex-estimator", estimator_unsymmetrised, "not symmetric"),
    ("ch09-ex-estimator", estimator_z_cubed, "misses a term"),
    ("ch09-ex-estimator", lambda W, a, g, Q: projected_tensor(W, torch.ones_like(a),
                                                              g, Q), "output weight"),
    ("ch09-ex-estimator", lambda W, a, g, Q: projected_tensor(W, a, g, Q) * len(W),
     "factor of the width"),
    ("ch09-ex-estimator", lambda W, a, g, Q: projected_tensor(
        W.float(), a.float(), g.float(), Q.float()), "single precision"),
    ("ch09-ex-targets",
     lambda m, U, w, c3: lb.attacks.tensor.as_images(U).sum((1, 2, 3)), "as_images"),
    ("ch09-ex-targets", targets_unsigned, "wrong sign"),
    ("ch09-ex-targets", lambda *a: targets(*a).sort().values, "order"),
    ("ch09-ex-targets", lambda m, U, w, c3: torch.arange(len(U)) / 9,
     "Not the targets"),
    ("ch09-ex-width", width_free_slope, "Not the width"),
    ("ch09-ex-width", lambda w, e, t: width_for_error(w, e, t) ** 0.5, "power"),
    ("ch09-ex-width", lambda w, e, t: max(w), "Not the width"),
]


@pytest.mark.parametrize("label,fn,says", CHEATS,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CHEATS)])
def test_cheats_and_near_misses_fail(label, fn, says):
    ok, text = run(label, fn)
    assert not ok
    assert says in text.splitlines()[-1]
    assert torch.allclose is not None and E.verdict.__name__ == "verdict"
    assert lb.fl.client_update is cu and lb.attacks.invert_fc.__name__ == "invert_fc"


def test_feedback_never_shows_the_expected_value():
    """Wrong answers of every kind: no printed message holds the number."""
    expected = [update_size(100, 3, 32)]
    for k in range(3):
        _, text = run("ch01-ex-count", lambda *a, k=k: update_size(*a) + k - 1)
        assert not any(str(v) in text for v in expected)
    ok, text = run("ch02-ex-rank", lambda z, y: 0)
    assert not ok and not any(ch.isdigit() for ch in text.replace("1e-10", ""))


def test_numpy_and_torch_scalars_are_accepted():
    for wrap in (int, np.int64, np.int32, torch.tensor, lambda v: torch.tensor([v]),
                 lambda v: np.array(v), float, np.float64):
        ok, _ = run("ch01-ex-count", lambda *a, w=wrap: w(update_size(*a)),
                    hidden=False)
        assert ok, wrap
    ok, _ = run("ch02-ex-rows", lambda layer, x: isolating_rows(layer, x).numpy(),
                hidden=False)
    assert ok
    ok, _ = run("ch02-ex-rows", lambda layer, x: isolating_rows(layer, x).int().tolist(),
                hidden=False)
    assert ok
    ok, _ = run("ch01-ex-recover", lambda gw, gb: recover_input(gw, gb).numpy(),
                hidden=False)
    assert ok


def test_readers_of_answers():
    assert E.as_int(np.int64(7)) == 7 and E.as_int(torch.tensor(7)) == 7
    assert E.as_int(7.0) == 7 and E.as_int(7.9) is None and E.as_int(True) is None
    assert E.as_int(torch.tensor([1, 2])) is None and E.as_int("7") is None
    assert E.as_float(np.float32(0.5)) == 0.5 and E.as_float(torch.tensor(0.5)) == 0.5
    assert E.as_float([0.5]) is None and E.as_float(True) is None
    assert E.as_mask([1, 0, 1]).dtype == torch.bool and E.as_mask([0.5]) is None


def test_a_stub_fails_loudly():
    def stub(*args):
        raise NotImplementedError()
    for label in REFERENCE:
        with pytest.raises(NotImplementedError):
            run(label, stub)


def test_an_answer_that_crashes_shows_its_own_error():
    def broken(gw, gb):
        return gw[10_000]
    with pytest.raises(IndexError):
        run("ch01-ex-recover", broken)


def test_a_value_instead_of_a_function_is_refused():
    ok, text = run("ch01-ex-count", 85036)
    assert not ok and "function" in text
    with pytest.raises(TypeError):
        E.check("ch01-ex-count", update_size, 3)


def test_the_guard_restores_the_package_after_a_forbidden_call():
    run("ch01-ex-recover", lambda gw, gb: lb.attacks.invert_fc(gw, gb).input)
    gw = torch.randn(4, 3, dtype=torch.float64)
    gb = torch.tensor([1.0, 2.0, 0.5, 1.5], dtype=torch.float64)
    assert lb.attacks.invert_fc(gw * gb[:, None], gb).ratios.shape == (4, 3)
