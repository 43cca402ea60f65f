"""The answer checks: reference answers pass, cheats and near misses do not,
and the feedback never shows the expected value."""
import copy
import io
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
