"""The answer checks: reference answers pass, cheats and near misses do not,
and the feedback never shows the expected value."""
import copy
import io
import itertools
import math
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


# --- chapter 03 -------------------------------------------------------------

def idlg_label(grad_bias):
    return int(grad_bias.argmin())


def label_counts(grad_bias, softmax_mean, batch_size):
    return (batch_size * (softmax_mean - grad_bias)).round()


def rounding_tolerance(batch_size):
    return 1 / (2 * batch_size)


def llg_plus_labels(grad_weight, batch_size, impact, offset, stale=False):
    sums = grad_weight.sum(1)
    first = sorted((sums < 0).nonzero().flatten().tolist(), key=lambda i: float(sums[i]))
    rest = sums - offset
    labels, last = [], None
    for last in first[:batch_size]:
        labels.append(last)
        rest[last] -= impact
    while len(labels) < batch_size:
        pick = int(rest.argmin())
        labels.append(pick)
        rest[last if stale else pick] -= impact
    return sorted(labels)


def absent_classes(grad_weight, grad_bias, batch_size):
    from scipy.optimize import nnls
    G = torch.cat([grad_weight, grad_bias[:, None]], 1)
    Q = torch.linalg.svd(G, full_matrices=False)[0][:, :batch_size].numpy()
    absent = []
    for c in range(len(Q)):
        rows = np.delete(Q, c, 0)
        w, _ = nnls(np.vstack([rows.T, np.ones(len(rows))]), np.r_[np.zeros(batch_size), 1.0])
        if np.linalg.norm(rows.T @ w) < 1e-9:
            absent.append(c)
    return absent


REFERENCE.update({"ch03-ex-idlg": idlg_label, "ch03-ex-counts": label_counts,
                  "ch03-ex-tolerance": rounding_tolerance,
                  "ch03-ex-llg-plus": llg_plus_labels, "ch03-ex-span": absent_classes})


# --- chapters 04-05 --------------------------------------------------------

def l2_gradient_distance(grads, target):
    return sum(((g - t) ** 2).sum() for g, t in zip(grads, target))


def loss_scale(model, grads, x, label):
    with torch.no_grad():
        p = torch.softmax(model(x), -1)[0]
    return float(grads[-1][label] / (p[label] - 1))


def loss_scale_by_norms(model, grads, x, label):
    """Another honest route: the plain cross-entropy's gradient, lengths compared."""
    plain = lb.fl.shared_gradients(model, x, torch.tensor([label]))
    return (sum((g * g).sum() for g in grads) / sum((g * g).sum() for g in plain)
            ) ** 0.5


def first_below(history, ratio):
    for i, value in enumerate(history):
        if value < ratio * history[0]:
            return i
    return None


def first_below_numpy(history, ratio):
    """Another honest route, vectorised."""
    h = np.asarray(history)
    hits = np.flatnonzero(h < ratio * h[0])
    return int(hits[0]) if len(hits) else None


def total_variation(img):
    return ((img[..., :, 1:] - img[..., :, :-1]).abs().mean()
            + (img[..., 1:, :] - img[..., :-1, :]).abs().mean())


def batch_mean(running_before, running_after, momentum):
    return (running_after - (1 - momentum) * running_before) / momentum


def cosine_distance(grads, target):
    dot = sum((g * t).sum() for g, t in zip(grads, target))
    norm_g = sum((g * g).sum() for g in grads).sqrt()
    norm_t = sum((t * t).sum() for t in target).sqrt()
    return 1 - dot / (norm_g * norm_t)


def cosine_distance_flat(grads, target):
    """Another honest route: concatenate, then torch's cosine similarity."""
    a = torch.cat([g.reshape(-1) for g in grads])
    b = torch.cat([t.reshape(-1) for t in target])
    return 1 - torch.nn.functional.cosine_similarity(a, b, dim=0)


REFERENCE.update({"ch04-ex-distance": l2_gradient_distance,
                  "ch04-ex-scale": loss_scale, "ch04-ex-iterations": first_below,
                  "ch05-ex-tv": total_variation, "ch05-ex-bn-mean": batch_mean,
                  "ch05-ex-cosine": cosine_distance})


def test_other_honest_routes_pass_the_ch04_ch05_checks():
    assert run("ch04-ex-scale", loss_scale_by_norms)[0]
    assert run("ch04-ex-iterations", first_below_numpy)[0]
    assert run("ch05-ex-cosine", cosine_distance_flat)[0]
    assert run("ch04-ex-distance", lambda g, t: l2_gradient_distance(g, t)
               .reshape(1))[0]


def test_the_ch04_ch05_cases_hold_their_traps():
    """Public cases catch the plausible wrong answers, hidden ones vary."""
    def never(history, ratio):
        return int(np.argmax(np.asarray(history) < ratio * history[0]))
    check = E.ANSWER_CHECKS["ch04-ex-iterations"]
    assert check.run(E._Answer(never, ()), 1) is not None
    def last(history, ratio):
        hits = [i for i, h in enumerate(history) if h < ratio * history[0]]
        return hits[-1] if hits else None
    assert check.run(E._Answer(last, ()), 0) is not None
    seeds = [0, 1, *E.hidden_seeds("probe", 30, "probe")]
    for label, fn in [("ch04-ex-distance", l2_gradient_distance),
                      ("ch04-ex-scale", loss_scale),
                      ("ch04-ex-iterations", first_below),
                      ("ch05-ex-tv", total_variation),
                      ("ch05-ex-bn-mean", batch_mean),
                      ("ch05-ex-cosine", cosine_distance)]:
        check = E.ANSWER_CHECKS[label]
        for seed in seeds:
            assert check.run(E._Answer(fn, ()), seed) is None, (label, seed)


def test_ch04_ch05_feedback_shows_no_numbers():
    wrong = [("ch04-ex-distance", lambda g, t: 1.1 * l2_gradient_distance(g, t)),
             ("ch04-ex-scale", lambda *a: 1.1 * loss_scale(*a)),
             ("ch04-ex-iterations", lambda h, r: 3),
             ("ch05-ex-tv", lambda img: 1.1 * total_variation(img)),
             ("ch05-ex-bn-mean", lambda b, a, m: 1.1 * batch_mean(b, a, m)),
             ("ch05-ex-cosine", lambda g, t: 1.1 * cosine_distance(g, t))]
    for label, fn in wrong:
        ok, text = run(label, fn)
        assert not ok and not any(ch.isdigit() for ch in text), text


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


# --- chapter 06 -------------------------------------------------------------

def unroll(model, x, y, lr, steps):
    names = [n for n, _ in model.named_parameters()]
    w0 = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    w = dict(w0)
    for _ in range(steps):
        out = torch.func.functional_call(model, w, (x,))
        loss = torch.nn.functional.cross_entropy(out, y)
        g = torch.autograd.grad(loss, list(w.values()), create_graph=True)
        w = {n: v - lr * gi for (n, v), gi in zip(w.items(), g)}
    return [w[n] - w0[n] for n in names]


def unroll_detached(model, x, y, lr, steps):
    """Right values, no derivative through the earlier steps."""
    names = [n for n, _ in model.named_parameters()]
    w0 = {n: p.detach().clone().requires_grad_(True) for n, p in model.named_parameters()}
    w = dict(w0)
    for _ in range(steps):
        out = torch.func.functional_call(model, w, (x,))
        loss = torch.nn.functional.cross_entropy(out, y)
        g = torch.autograd.grad(loss, list(w.values()))
        w = {n: v - lr * gi for (n, v), gi in zip(w.items(), g)}
    return [w[n] - w0[n] for n in names]


def interpolated_mean(model, update, dummies, local_steps, first=0):
    """The softmax mean at w_t + s/T u for s = first .. first + T - 1."""
    means = []
    for s in range(first, first + local_steps):
        net = copy.deepcopy(model)
        with torch.no_grad():
            for p, d in zip(net.parameters(), update):
                p += s / local_steps * d
            means.append(net(dummies).softmax(-1).mean(0))
    return torch.stack(means).mean(0)


def interpolated_mean_ahead(model, update, dummies, local_steps):
    """Off by one: the points s = 1 .. T."""
    return interpolated_mean(model, update, dummies, local_steps, first=1)


def counts_from_path(bias_update, softmax_path, lr, num_samples):
    return num_samples * (softmax_path.mean(0) + bias_update / (lr * len(softmax_path)))


REFERENCE.update({"ch06-ex-unroll": unroll, "ch06-ex-path-mean": interpolated_mean,
                  "ch06-ex-counts": counts_from_path})



# --- chapter 10 -------------------------------------------------------------

def predicted_rms_error(update, x, ratio):
    d = sum(t.numel() for t in update)
    norm = float(torch.sqrt(sum((t ** 2).sum() for t in update)))
    sigma = ratio * norm / d ** 0.5
    return (sigma * (x.numel() + float((x ** 2).sum())) ** 0.5
            / float(update[1].abs().max()))


def uniform_levels(t, bits, levels=None, floor=False):
    """Each tensor on 2**bits evenly spaced levels from its min to its max."""
    levels = 2 ** bits - 1 if levels is None else levels
    lo, hi = t.min(), t.max()
    if hi == lo:
        return t.clone()
    step = (hi - lo) / levels
    k = (t - lo) / step
    return lo + step * (torch.floor(k) if floor else torch.round(k))


def smallest_bits(grad_weight, grad_bias, x, target, **how):
    flat = x.flatten()
    for bits in range(1, 33):
        qw = uniform_levels(grad_weight, bits, **{k: v(bits) if callable(v) else v
                                                  for k, v in how.items()})
        qb = uniform_levels(grad_bias, bits, **{k: v(bits) if callable(v) else v
                                                for k, v in how.items()})
        est = lb.attacks.invert_fc(qw, qb).input
        if float((est - flat).norm() / flat.norm()) < target:
            return bits
    return None


def noisy_readout(grad_weight, grad_bias):
    return (grad_bias[:, None] * grad_weight).sum(0) / (grad_bias ** 2).sum()


def noisy_readout_lstsq(grad_weight, grad_bias):
    """Another honest route: least squares by the library's solver."""
    return torch.linalg.lstsq(grad_bias[:, None], grad_weight).solution[0]


def best_row(grad_weight, grad_bias):
    i = int(grad_bias.abs().argmax())
    return grad_weight[i] / grad_bias[i]


REFERENCE.update({"ch10-ex-noise-error": predicted_rms_error,
                  "ch10-ex-bits": smallest_bits, "ch10-ex-denoise": noisy_readout})


def test_other_honest_routes_pass_the_ch10_checks():
    assert run("ch10-ex-denoise", noisy_readout_lstsq)[0]


def test_the_public_ch10_cases_hit_the_traps():
    """Seed 0 or 1 already rejects the mistakes the tasks warn about."""
    traps = [
        ("ch10-ex-bits", lambda *a: smallest_bits(*a, levels=lambda b: 2 ** b)),
        ("ch10-ex-bits", lambda *a: smallest_bits(*a, floor=True)),
        ("ch10-ex-denoise", best_row),
        ("ch10-ex-noise-error", lambda u, x, r: predicted_rms_error(u[:2], x, r)),
        ("ch10-ex-noise-error", lambda u, x, r: predicted_rms_error(u, x, r) * (
            x.numel() / (x.numel() + float((x ** 2).sum()))) ** 0.5),
    ]
    for label, fn in traps:
        check = E.ANSWER_CHECKS[label]
        assert any(check.run(E._Answer(fn, ()), seed) for seed in (0, 1)), label


def test_ch10_feedback_shows_no_numbers():
    wrong = [("ch10-ex-noise-error", lambda u, x, r: 1.2 * predicted_rms_error(u, x, r)),
             ("ch10-ex-noise-error", lambda u, x, r: predicted_rms_error(u, x, r) ** 2),
             ("ch10-ex-bits", lambda *a: smallest_bits(*a) + 1),
             ("ch10-ex-bits", lambda *a: smallest_bits(*a) - 1),
             ("ch10-ex-denoise", best_row),
             ("ch10-ex-denoise", lambda gw, gb: 1.5 * noisy_readout(gw, gb))]
    for label, fn in wrong:
        ok, text = run(label, fn)
        assert not ok and not any(ch.isdigit() for ch in text), text


def test_ch10_numpy_and_torch_answers_are_accepted():
    for wrap in (np.float64, np.float32, torch.tensor, lambda v: np.array([v])):
        assert run("ch10-ex-noise-error", lambda *a, w=wrap: w(predicted_rms_error(*a)),
                   hidden=False)[0], wrap
    for wrap in (np.int64, np.int32, torch.tensor, float):
        assert run("ch10-ex-bits", lambda *a, w=wrap: w(smallest_bits(*a)),
                   hidden=False)[0], wrap
    assert run("ch10-ex-denoise", lambda *a: noisy_readout(*a).numpy(), hidden=False)[0]
    assert run("ch10-ex-denoise", lambda *a: noisy_readout(*a)[None], hidden=False)[0]


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



# chapters 07-08


def conv_system_rank(in_channels, out_channels, kernel, stride, size):
    n_x = in_channels * size * size
    side = (size - kernel) // stride + 1
    rows = out_channels * in_channels * kernel ** 2 + out_channels * side ** 2
    return min(n_x, rows - out_channels * min(out_channels, side ** 2))


def margin(value):
    def g(m):
        return -m / (1 + math.exp(m))
    lo, hi = -1.0, 0.0
    while g(lo) < value:
        lo *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if g(mid) > value else (lo, mid)
    return (lo + hi) / 2


def margin_by_newton(value):
    mu = -value - 1.0
    for _ in range(100):
        e = math.exp(mu)
        g, dg = -mu / (1 + e) - value, -(1 + e * (1 - mu)) / (1 + e) ** 2
        mu -= g / dg
    return mu


def invisible_pixels(model, input_shape):
    ls = lb.attacks.linear_systems
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    shapes = [tuple(input_shape)]
    for conv in convs:
        shapes.append(ls.output_shape(conv, shapes[-1]))
    live = torch.ones(shapes[-1], dtype=torch.bool)
    for conv, shape in zip(reversed(convs), reversed(shapes[:-1])):
        idx = ls.patch_indices(conv, shape)
        taps = idx[:, live.any(0).flatten()]
        seen = torch.zeros(math.prod(shape), dtype=torch.bool)
        seen[taps[taps >= 0]] = True
        live = seen.reshape(shape)
    return ~live


def rank_with_dependencies(in_channels, out_channels, kernel, stride, size):
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    shape = (in_channels, size, size)
    conv = torch.nn.Conv2d(in_channels, out_channels, kernel, stride, bias=False)
    idx = lb.attacks.linear_systems.patch_indices(conv, shape)
    m, n_pos = idx.shape
    n_x, o = math.prod(shape), out_channels
    tap, pos = torch.nonzero(idx >= 0, as_tuple=True)
    edges = coo_matrix((np.ones(len(tap)), (tap.numpy(), m + idx[tap, pos].numpy())),
                       shape=(m + n_x, m + n_x))
    _, group = connected_components(edges, directed=False)
    taps = np.bincount(group[:m], minlength=group.max() + 1)
    pixels = np.bincount(group[m:], minlength=group.max() + 1)
    read = int(pixels[taps > 0].sum())
    r_k = int(np.minimum(o * taps, pixels).sum())
    r_a = min(read, n_pos * min(o, m))
    return min(read, r_k + r_a - min(o * min(o, n_pos), r_k, r_a))


def widest_by(rank):
    def widest_deficient(in_channels, size, kernel, stride):
        n_x = in_channels * size * size
        widest, width, full_run = 0, 0, 0
        while full_run < 20:
            width += 1
            if rank(in_channels, width, kernel, stride, size) < n_x:
                widest, full_run = width, 0
            else:
                full_run += 1
        return widest
    return widest_deficient


widest_deficient = widest_by(rank_with_dependencies)

REFERENCE.update({"ch07-ex-rank": conv_system_rank, "ch07-ex-margin": margin,
                  "ch07-ex-invisible": invisible_pixels,
                  "ch08-ex-rank": rank_with_dependencies,
                  "ch08-ex-blind": invisible_pixels,
                  "ch08-ex-safer": widest_deficient})


def test_other_honest_routes_pass_the_ch07_ch08_checks():
    assert run("ch07-ex-margin", margin_by_newton)[0]
    assert run("ch07-ex-rank", lambda *a: np.int64(conv_system_rank(*a)))[0]
    assert run("ch08-ex-rank", lambda *a: torch.tensor(rank_with_dependencies(*a)))[0]
    assert run("ch08-ex-blind", lambda m, s: invisible_pixels(m, s).int().numpy())[0]
    assert run("ch07-ex-invisible", lambda m, s: invisible_pixels(m, s).tolist())[0]


def test_the_ch07_ch08_cases_hold_their_traps():
    """Chapter 07's count fails a public ch08 case; a first-layer-only mask fails
    a public mask case; the chapter-07 count passes every ch07 case and the
    structural count agrees with the numerical rank on the ch08 cases."""
    ls = lb.attacks.linear_systems
    for label in ("ch07-ex-invisible", "ch08-ex-blind"):
        ok, _ = run(label, lambda m, s: ls.unread_pixels(m[0], s).clone(), hidden=False)
        assert not ok
    check = E.ANSWER_CHECKS["ch08-ex-rank"]
    assert check.run(E._Answer(conv_system_rank, ()), 1) is not None
    assert E.ANSWER_CHECKS["ch08-ex-safer"].run(
        E._Answer(widest_by(conv_system_rank), ()), 1) is not None
    for seed in [0, 1, *E.hidden_seeds("ch08-ex-rank", 12, "probe")]:
        case = E._ch08_layer_case(seed)
        assert rank_with_dependencies(*case) == E._system_rank(seed, *case), case
    for seed in [0, 1, *E.hidden_seeds("ch07-ex-rank", 12, "probe")]:
        case = E._ch07_layer_case(seed)
        assert conv_system_rank(*case) == E._system_rank(seed, *case), case


def test_ch07_ch08_feedback_shows_no_numbers():
    wrong = [("ch07-ex-rank", lambda *a: conv_system_rank(*a) - 1),
             ("ch07-ex-margin", lambda v: 1.01 * margin(v)),
             ("ch07-ex-invisible", lambda m, s: ~invisible_pixels(m, s)),
             ("ch08-ex-rank", lambda *a: rank_with_dependencies(*a) + 1),
             ("ch08-ex-blind", lambda m, s: ~invisible_pixels(m, s)),
             ("ch08-ex-safer", lambda *a: widest_deficient(*a) + 1)]
    for label, fn in wrong:
        ok, text = run(label, fn)
        assert not ok and not any(ch.isdigit() for ch in text), text


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
    ("ch03-ex-idlg", lambda g: lb.attacks.labels.idlg(g), "labels.idlg"),
    ("ch03-ex-idlg", lambda g: int(g.argmax()), "Not the label"),
    ("ch03-ex-counts", lambda g, p, b: lb.attacks.labels.geng(None, g, b, p), "labels.geng"),
    ("ch03-ex-counts", lambda g, p, b: b * (p - g), "whole numbers"),
    ("ch03-ex-counts", lambda g, p, b: (b * (p + g)).round(), "Not"),
    ("ch03-ex-tolerance", lambda b: 1 / b, "Not the bound"),
    ("ch03-ex-tolerance", lambda b: 0.5, "Not the bound"),
    ("ch03-ex-llg-plus", lambda *a: llg_plus_labels(*a, stale=True), "too many labels"),
    ("ch03-ex-llg-plus", lambda gw, b, m, o: lb.attacks.labels.llg_plus(gw, b, m, o),
     "llg_plus"),
    ("ch03-ex-span", lambda gw, gb, b: [], "You miss classes"),
    ("ch03-ex-span", lambda gw, gb, b: list(range(len(gb))), "cannot rule out"),
    ("ch03-ex-span", lambda gw, gb, b: lb.attacks.labels.span_test(gw, gb, b)
     .nonzero().flatten(), "span_test"),
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


CHEATS += [
    ("ch06-ex-unroll", lambda m, x, y, lr, s: lb.fl.client_update(
        m, x, y, lr=lr, local_steps=s), "client_update"),
    ("ch06-ex-unroll", lambda m, x, y, lr, s: lb.attacks.fedavg.simulate_update(
        m, x, y, lr=lr, local_steps=s, create_graph=True), "simulate_update"),
    ("ch06-ex-unroll", unroll_detached, "derivative"),
    ("ch06-ex-unroll", lambda m, x, y, lr, s: unroll(m, x, y, lr, s + 1), "differs"),
    ("ch06-ex-unroll", lambda m, x, y, lr, s: unroll(m, x, y, lr, s)[:-1], "list"),
    ("ch06-ex-path-mean", lambda m, u, d, T: lb.attacks.labels.path_softmax_mean(
        m, u, d, T)["softmax_mean"], "path_softmax_mean"),
    ("ch06-ex-path-mean", lambda m, u, d, T: interpolated_mean(m, u, d, 1), "w_t only"),
    ("ch06-ex-path-mean", interpolated_mean_ahead, "Off by one"),
    ("ch06-ex-counts", lambda b, p, lr, n: n * (p[0] + b / (lr * len(p))),
     "Not the batch's counts"),
    ("ch06-ex-counts", lambda b, p, lr, n: counts_from_path(b, p, lr, n).round(),
     "estimated path"),
    ("ch06-ex-counts", lambda b, p, lr, n: lb.attacks.labels.geng(
        None, -b / lr, n, p.mean(0)), "geng"),
]


l2d = lb.attacks.matching.l2_distance
tvf = lb.attacks.REGULARIZERS["tv"]


def scale_in_place(model, grads, x, label):
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.0)
            p.add_(1.0)
    return loss_scale(model, grads, x, label)


CHEATS += [
    ("ch04-ex-distance", lambda g, t: lb.attacks.matching.l2_distance(g, t),
     "matching.l2_distance"),
    ("ch04-ex-distance", lambda g, t: l2d(g, t), "l2_distance"),
    ("ch04-ex-distance", lambda g, t: l2_gradient_distance(g, t).sqrt(), "squared"),
    ("ch04-ex-distance", lambda g, t: l2_gradient_distance(g, t).item(),
     "differentiate"),
    ("ch04-ex-distance", lambda g, t: l2_gradient_distance(
        [a.detach() for a in g], t), "differentiate"),
    ("ch04-ex-distance", lambda g, t: ((g[0].detach() - t[0]) ** 2).sum()
     + l2_gradient_distance(g[1:], t[1:]), "derivative"),
    ("ch04-ex-distance", lambda g, t: sum(((a - b) ** 2).mean() for a, b in zip(g, t)),
     "Not DLG's distance"),
    ("ch04-ex-scale", lambda *a: -loss_scale(*a), "Wrong sign"),
    ("ch04-ex-scale", lambda *a: 1 / loss_scale(*a), "Upside down"),
    ("ch04-ex-scale", lambda *a: 0.5, "Not the client's factor"),
    ("ch04-ex-scale", scale_in_place, "changed the model"),
    ("ch04-ex-iterations", lambda h, r: int(np.argmax(np.asarray(h) < r * h[0])),
     "never falls below"),
    ("ch04-ex-iterations", lambda h, r: first_below(h, r) + 1 if first_below(h, r)
     is not None else None, "Off by one"),
    ("ch04-ex-iterations", lambda h, r: max((i for i, v in enumerate(h)
                                            if v < r * h[0]), default=None),
     "not the first one"),
    ("ch04-ex-iterations", lambda h, r: next((i for i in range(1, len(h))
                                              if h[i] < r * h[i - 1]), None),
     "does fall below"),
    ("ch04-ex-iterations", lambda h, r: next((i for i in range(1, len(h))
                                              if h[i] < r * h[i - 1]), 0),
     "Not the first iteration"),
    ("ch05-ex-tv", lambda img: lb.attacks.matching.total_variation(img, {}),
     "total_variation"),
    ("ch05-ex-tv", lambda img: tvf(img, {}), "total_variation"),
    ("ch05-ex-tv", lambda img: ((img[..., :, 1:] - img[..., :, :-1]).abs().sum()
                                + (img[..., 1:, :] - img[..., :-1, :]).abs().sum()),
     "Average"),
    ("ch05-ex-tv", lambda img: (img[..., :, 1:] - img[..., :, :-1]).abs().mean(),
     "one direction"),
    ("ch05-ex-tv", lambda img: ((img[..., :, 1:] - img[..., :, :-1]).abs().sum()
                                + (img[..., 1:, :] - img[..., :-1, :]).abs().sum())
     / img.numel(), "Not the total variation"),
    ("ch05-ex-tv", lambda img: total_variation(img).item(), "differentiate"),
    ("ch05-ex-bn-mean", lambda b, a, m: (a - m * b) / (1 - m), "swapped"),
    ("ch05-ex-bn-mean", lambda b, a, m: a / m, "held a value"),
    ("ch05-ex-bn-mean", lambda b, a, m: a, "Not the batch mean"),
    ("ch05-ex-bn-mean", lambda b, a, m: batch_mean(b, a, m)[:-1], "shape"),
    ("ch05-ex-cosine", lambda g, t: lb.attacks.matching.cosine_distance(g, t),
     "cosine_distance"),
    ("ch05-ex-cosine", lambda g, t: 1 - cosine_distance(g, t), "similarity"),
    ("ch05-ex-cosine", lambda g, t: sum(cosine_distance([a], [b]) for a, b
                                        in zip(g, t)) / len(g), "layer by layer"),
    ("ch05-ex-cosine", lambda g, t: cosine_distance(g, t).item(), "differentiate"),
    ("ch05-ex-cosine", lambda g, t: 1 - sum((a * b).sum() for a, b in zip(g, t))
     / (sum((a * a).sum() for a in g) * sum((b * b).sum() for b in t)),
     "Not the cosine distance"),
]



rbd = lb.security.rank_bound
solve_mu = lb.attacks.recursive.solve_margin


def margin_by_brentq(value):
    from scipy.optimize import brentq
    return brentq(lambda m: -m / (1 + math.exp(m)) - value, -100.0, 0.0)


CHEATS += [
    ("ch07-ex-rank", lambda i, o, k, s, n: min(i * n * n, o * i * k * k
                                               + o * ((n - k) // s + 1) ** 2),
     "depend on each other"),
    ("ch07-ex-rank", lambda *a: rbd(torch.nn.Conv2d(*a[:4]), (a[0], a[4], a[4])),
     "rank_bound"),
    ("ch07-ex-rank", lambda *a: 192, "Not yet"),
    ("ch07-ex-rank", lambda *a: conv_system_rank(*a) + 0.5, "whole number"),
    ("ch07-ex-margin", lambda v: solve_mu(v), "solve_margin"),
    ("ch07-ex-margin", margin_by_brentq, "scipy.optimize.brentq"),
    ("ch07-ex-margin", lambda v: -margin(v), "sign"),
    ("ch07-ex-margin", lambda v: 1.001 * margin(v), "six digits"),
    ("ch07-ex-invisible", lambda m, s: lb.security.blind_spot(m, s), "blind_spot"),
    ("ch07-ex-invisible", lambda m, s: torch.zeros(s, dtype=torch.bool),
     "Not the mask"),
    ("ch07-ex-invisible", lambda m, s: invisible_pixels(m, s)[0], "shape"),
    ("ch08-ex-rank", conv_system_rank, "chapter 7's count"),
    ("ch08-ex-rank", lambda *a: rbd(torch.nn.Conv2d(*a[:4]), (a[0], a[4], a[4])),
     "rank_bound"),
    ("ch08-ex-rank", lambda *a: lb.security.audit(torch.nn.Sequential(
        torch.nn.Conv2d(*a[:4])), (a[0], a[4], a[4])).layers[0].rank, "audit"),
    ("ch08-ex-rank", lambda *a: 100, "Not the rank"),
    ("ch08-ex-blind", lambda m, s: lb.security.blind_spot(m, s).numpy(), "blind_spot"),
    ("ch08-ex-blind", lambda m, s: lb.attacks.linear_systems.unread_pixels(m[0], s),
     "unread_pixels"),
    ("ch08-ex-blind", lambda m, s: torch.zeros(s), "Not the mask"),
    ("ch08-ex-safer", lambda *a: 9, "Not yet"),
    ("ch08-ex-safer", widest_by(lambda i, o, k, s, n: min(
        i * n * n, o * i * k * k + o * ((n - k) // s + 1) ** 2)), "counted plainly"),
    ("ch08-ex-safer", widest_by(conv_system_rank), "every dependency"),
    ("ch08-ex-safer", lambda *a: widest_deficient(*a) + 1, "Not the widest"),
    ("ch08-ex-safer", widest_by(lambda i, o, k, s, n: rbd(
        torch.nn.Conv2d(i, o, k, s), (i, n, n))), "rank_bound"),
]


def test_ch06_feedback_shows_no_numbers():
    wrong = [("ch06-ex-unroll", unroll_detached),
             ("ch06-ex-path-mean", interpolated_mean_ahead),
             ("ch06-ex-counts", lambda b, p, lr, n: 1.1 * counts_from_path(b, p, lr, n))]
    for label, fn in wrong:
        ok, text = run(label, fn)
        assert not ok and not any(ch.isdigit() for ch in text), text


# chapter 10

def noise_error_by_sampling(update, x, ratio):
    """Measures with the package's noise instead of predicting."""
    d = sum(t.numel() for t in update)
    sigma = ratio * float(torch.sqrt(sum((t ** 2).sum() for t in update))) / d ** 0.5
    i = int(update[1].abs().argmax())
    sq = [float(((h[0][i] / h[1][i] - x.flatten()) ** 2).sum())
          for h in (lb.defenses.gaussian_noise(update, sigma, seed=s)
                    for s in range(200))]
    return float(np.sqrt(np.mean(sq)))


def sigma_from_ratio(update, x, ratio):
    return (ratio * (x.numel() + float((x ** 2).sum())) ** 0.5
            / float(update[1].abs().max()))


CHEATS += [
    ("ch10-ex-noise-error", lambda u, x, r: predicted_rms_error(u, x, r) ** 2,
     "mean squared"),
    ("ch10-ex-noise-error", lambda u, x, r: predicted_rms_error(u, x, r) * float(
        u[1].abs().max() / u[1].norm()), "combination of all rows"),
    ("ch10-ex-noise-error", lambda u, x, r: predicted_rms_error(u[:2], x, r),
     "whole update"),
    ("ch10-ex-noise-error", lambda u, x, r: predicted_rms_error(u, x, r) * (
        x.numel() / (x.numel() + float((x ** 2).sum()))) ** 0.5, "bias entry"),
    ("ch10-ex-noise-error", sigma_from_ratio, "standard deviation"),
    ("ch10-ex-noise-error", noise_error_by_sampling, "gaussian_noise"),
    ("ch10-ex-noise-error", lambda u, x, r: float(np.sqrt(np.mean([float((
        (h[0][0] / h[1][0] - x.flatten()) ** 2).sum()) for h in (
            lb.defenses.relative_noise(u, r, seed=s) for s in range(3))]))),
     "relative_noise"),
    ("ch10-ex-noise-error", lambda u, x, r: "small", "positive number"),
    ("ch10-ex-bits", lambda gw, gb, x, t: next(
        b for b in range(1, 33) if float((lb.attacks.invert_fc(
            *lb.defenses.quantize([gw, gb], b)).input - x.flatten()).norm()
            / x.norm()) < t), "defenses.quantize"),
    ("ch10-ex-bits", lambda *a: smallest_bits(*a, levels=lambda b: 2 ** b),
     "Not the smallest"),
    ("ch10-ex-bits", lambda *a: smallest_bits(*a, floor=True), "Not the smallest"),
    ("ch10-ex-bits", lambda *a: smallest_bits(*a) + 0.5, "whole number"),
    ("ch10-ex-bits", lambda *a: 4, "Not the smallest"),
    ("ch10-ex-denoise", lambda gw, gb: lb.attacks.invert_fc(gw, gb).input,
     "invert_fc"),
    ("ch10-ex-denoise", lambda gw, gb: lb.attacks.analytic.solve_fc_inputs(
        gw, gb[None]).inputs[0], "solve_fc_inputs"),
    ("ch10-ex-denoise", best_row, "You read one row"),
    ("ch10-ex-denoise", lambda gw, gb: (gw / gb[:, None]).mean(0),
     "further from the input"),
    ("ch10-ex-denoise", lambda gw, gb: gw.sum(0) / gb.sum(), "further from the input"),
    ("ch10-ex-denoise", lambda gw, gb: noisy_readout(gw, gb)[:-1], "shape"),
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


