"""Reproducibility: every seeded call is bit-identical, in one process and across.

The framework (issue 14, item 3): ``CASES`` maps a name to a function of no
arguments that makes one seeded call of a public entry point and returns its
output. ``digest`` hashes an output bit for bit (tensors by dtype, shape and
bytes; floats by their IEEE bytes; dicts, lists and dataclasses item by item,
skipping the keys in ``UNTIMED``, which hold wall-clock times). ``hashes``
runs every case at 1 and at 2 torch threads. The tests compare:

- two runs in this process, at 1 and at 2 threads (all four digests equal);
- two fresh processes (``python tests/test_reproducible.py`` prints the
  digests as JSON) against this process.

Phase 2 adds one case per public attack (see tests/ROBUSTNESS.md).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from leakbook import data, fl, isolation, metrics, models  # noqa: E402
from leakbook.attacks import analytic  # noqa: E402

F64 = torch.float64
#: result keys that hold wall-clock times, not results
UNTIMED = frozenset({"wall_time", "time", "seconds", "elapsed"})
THREADS = (1, 2)


# --- the framework --------------------------------------------------------------

def _feed(h, obj) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, np.ndarray):
        h.update(f"A{obj.dtype}{obj.shape}".encode() + np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, bool) or obj is None or isinstance(obj, str):
        h.update(f"S{obj!r}".encode())
    elif isinstance(obj, (int, np.integer)):
        h.update(f"I{int(obj)}".encode())
    elif isinstance(obj, (float, np.floating)):
        h.update(b"F" + struct.pack("<d", float(obj)))
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for v in obj:
            _feed(h, v)
    elif isinstance(obj, dict):
        keys = sorted((k for k in obj if k not in UNTIMED), key=str)
        h.update(f"D{len(keys)}".encode())
        for k in keys:
            _feed(h, str(k))
            _feed(h, obj[k])
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        _feed(h, {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
    else:
        raise TypeError(f"digest cannot hash a {type(obj).__name__}: add it to _feed")


def digest(obj) -> str:
    """A SHA-256 of obj's exact bits (times under UNTIMED keys left out)."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def hashes(cases: dict[str, Callable] | None = None, threads=THREADS) -> dict[str, str]:
    """{"name@threads": digest} for every case at every thread count."""
    cases = CASES if cases is None else cases
    before = torch.get_num_threads()
    out = {}
    try:
        for t in threads:
            torch.set_num_threads(t)
            for name, case in cases.items():
                out[f"{name}@{t}"] = digest(case())
    finally:
        torch.set_num_threads(before)
    return out


# --- the table: one seeded call per public entry point --------------------------

def _digits(n, dtype=torch.float32, seed=1):
    return data.load("digits", n, seed=seed, dtype=dtype)


def _shared(name, n=4, **kw):
    def run():
        kw_model = dict(in_features=64) if name == "mlp" else dict(in_channels=1,
                                                                   image_size=8)
        net = models.build(name, seed=3, **kw_model, **kw)
        x, y = _digits(n)
        return fl.shared_gradients(net, x, y)
    return run


def _client_update():
    net = models.build("resnet_tiny", in_channels=1, image_size=8, width=4, seed=0)
    x, y = _digits(6)
    return fl.client_update(net, x, y, lr=0.05, local_steps=4, batch_size=4, seed=7)


def _fedavg():
    gen = torch.Generator().manual_seed(0)
    updates = [[torch.randn(50, 40, generator=gen), torch.randn(40, generator=gen)]
               for _ in range(4)]
    return fl.fedavg(updates, weights=[1, 2, 3, 0.5])


def _report():
    x, y = data.load("photos", 4, seed=2)
    noisy = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1)))
    return metrics.report(noisy.flip(0), x, y.flip(0), y)


def _invert_fc():
    x, y = _digits(8, F64)
    net = models.build("mlp", in_features=64, widths=(200,), seed=0, dtype=F64)
    return analytic.invert_fc(*fl.shared_gradients(net, x, y)[:2])


def _solve_last_layer():
    x, y = _digits(3, F64)
    head = models.build("mlp", in_features=64, widths=(), seed=0, dtype=F64)
    g = fl.shared_gradients(head, x, y)
    return analytic.solve_last_layer_inputs(g[0], head[1].weight, head[1].bias, y,
                                            steps=20)


def _large_images():
    """Images large enough (3 x 128 x 128) for torch to split reductions by thread."""
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(2, 3, 128, 128, generator=gen, dtype=F64)
    x_hat = (x + 0.05 * torch.randn(x.shape, generator=gen, dtype=F64)).clamp(0, 1)
    return [metrics.mse(x_hat, x), metrics.psnr(x_hat, x), metrics.ssim(x_hat, x)]


def _tensor_decomposition():
    """Issue 14: lstsq inside ALS differed by 1e-15 between identical calls."""
    from leakbook.attacks import tensor
    net = tensor.random_two_layer(6, 3000, seed=2)
    x = torch.randn(2, 6, generator=torch.Generator().manual_seed(3), dtype=F64)
    y = torch.tensor([[0.3], [-0.7]], dtype=F64)
    grads = fl.shared_gradients(net, x, y, loss="mse")
    rec = tensor.tensor_decomposition(net, grads, 2, seed=0)
    return [rec.images, rec.stats["weights"], rec.stats["residual"]]


def _rgap_case(name="cnn6", size=8, dtype=F64):
    """One digit, a seeded zoo model and its gradient (logistic for cnn6)."""
    net = models.build(name, in_channels=1, image_size=size, seed=0, dtype=dtype)
    x = data.load("digits", 1, seed=1, dtype=dtype, size=size)[0]
    if name == "cnn6":
        with torch.no_grad():
            y = torch.tensor([0 if net(x).item() > 0 else 1])
        return net, fl.shared_gradients(net, x, y, loss="logistic"), y
    y = torch.tensor([3])
    return net, fl.shared_gradients(net, x, y), y


def _rgap():
    from leakbook.attacks import rgap
    return rgap(*_rgap_case(), input_shape=(1, 8, 8), spectrum=True)


def _rgap_float32():
    from leakbook.attacks import rgap
    return rgap(*_rgap_case(dtype=torch.float32), input_shape=(1, 8, 8))


def _copa():
    """A rank-deficient net: linear solves, then the preconditioned joint fit."""
    from leakbook.attacks import copa
    return copa(*_rgap_case("cnn3_c1", 12), input_shape=(1, 12, 12), steps=30,
                warmup=5, max_time=None, start="linear", fill="inpaint")


def _audit():
    from leakbook import security
    net = models.build("cnn4_c2", in_channels=1, image_size=12, seed=0)
    out = security.audit(net, (1, 12, 12), seed=5)
    cost = security.estimate_cost(net, (1, 12, 12))
    return [out, out.to_rows(), out.scores(), cost]


def _linear_systems():
    from leakbook.attacks import linear_systems as ls
    gen = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(2, 3, 3, 2, 1).double()
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen, dtype=F64))
    delta = torch.randn(3, 4, 4, generator=gen, dtype=F64)
    return [ls.conv_matrix(conv, (2, 7, 7)), ls.conv_gradient_matrix(conv, (2, 7, 7),
                                                                      delta),
            ls.unread_pixels(conv, (2, 7, 7))]


def _build():
    return [models.build(name, seed=9, **kw).state_dict() for name, kw in (
        ("cnn6_d", {}), ("mlp", dict(widths=(5, 3))), ("resnet_tiny", dict(width=4)),
        ("lenet_dlg", dict(image_size=16)))]


def _gradinversion():
    """Chapter 05: several seeds, a registered mean; BN prior, eval mode."""
    from leakbook.attacks import gradinversion
    net = models.build("resnet_tiny", in_channels=1, image_size=8, width=4).eval()
    x, _ = _digits(2)
    y = torch.tensor([0, 1])
    rec = gradinversion(net, fl.shared_gradients(net, x, y), (2, 1, 8, 8), y, seeds=3,
                        iterations=8, every=2, seed=4,
                        regularizers={"tv": 1e-3, "bn": 1e-2})
    return [rec.images, rec.stats["members"], rec.stats["shifts"]]

CASES: dict[str, Callable] = {
    "fl.shared_gradients[mlp]": _shared("mlp"),
    "fl.shared_gradients[lenet_dlg]": _shared("lenet_dlg"),
    "fl.shared_gradients[resnet_tiny]": _shared("resnet_tiny", width=4),
    "fl.client_update[resnet_tiny]": _client_update,
    "fl.fedavg": _fedavg,
    "data.load[digits]": lambda: data.load("digits", 5, seed=4, size=12),
    "data.load[faces]": lambda: data.load("faces", 3, seed=4, nonfaces=True),
    "data.load[photos]": lambda: data.load("photos", 3, seed=4, size=16),
    "data.evaluation_set": lambda: data.evaluation_set("dev", size=16),
    "metrics.report": _report,
    "metrics.mse-psnr-ssim[128 px]": _large_images,
    "fl.forward[resnet_tiny, eval]": lambda: fl.forward(
        models.build("resnet_tiny", in_channels=1, image_size=8, width=4).eval(),
        _digits(3)[0]),
    "attacks.invert_fc": _invert_fc,
    "attacks.solve_last_layer_inputs": _solve_last_layer,
    "isolation.isolation_trial": lambda: isolation.isolation_trial(64, 8, 1),
    "isolation.isolation_probabilities":
        lambda: isolation.isolation_probabilities(6, 1, rows=2000),
    "attacks.tensor_decomposition": _tensor_decomposition,
    # phase 2: layer-wise attacks, security, models (helper robb)
    "attacks.rgap": _rgap,
    "attacks.rgap[float32]": _rgap_float32,
    "attacks.copa": _copa,
    "security.audit": _audit,
    "linear_systems.conv_matrices": _linear_systems,
    "models.build": _build,
    "attacks.gradinversion": _gradinversion,
}


# --- phase 2 (helper roba): matching, labels, fedavg, optim, defenses ------------

def _conv(seed=3):
    """A conv net with BatchNorm (oneDNN sums split by thread) and its gradient."""
    net = models.build("resnet_tiny", in_channels=1, image_size=8, width=4, seed=seed)
    x, y = _digits(2)
    return net, x, y, fl.shared_gradients(net, x, y)


def _dlg():
    from leakbook.attacks import matching
    net = models.build("mlp", in_features=64, widths=(8,), num_classes=4, seed=0,
                       dtype=F64)
    x, y = _digits(1, F64)
    y = y % 4
    rec = matching.dlg(net, fl.shared_gradients(net, x, y), (1, 1, 8, 8), max_iter=10,
                       restarts=2)
    return [rec.images, rec.labels, rec.loss_history, rec.stats["run_distances"]]


def _idlg_conv():
    from leakbook.attacks import matching
    net, x, y, g = _conv()
    rec = matching.idlg(net, [t[:] for t in g], (2, 1, 8, 8), max_iter=4,
                        dtype=torch.float32)
    return [rec.images, rec.labels, rec.loss_history]


def _inverting_gradients():
    from leakbook.attacks import matching
    net, x, y, g = _conv()
    rec = matching.inverting_gradients(net, g, (2, 1, 8, 8), y, iterations=4,
                                       restarts=2, regularizers={"tv": 1e-3, "bn": 1e-2})
    return [rec.images, rec.loss_history, rec.stats["run_distances"]]


def _gradient_distance():
    from leakbook.attacks import matching
    net, x, y, g = _conv()
    x_hat = torch.rand(x.shape, generator=torch.Generator().manual_seed(2))
    return [matching.gradient_distance(net, x_hat, y, g, "cosine").detach(),
            matching.batchnorm_statistics(net, x)]


def _recover(method, **kw):
    def run():
        from leakbook.attacks import labels
        net, x, y, g = _conv()
        return labels.recover(net, g, 2, method, **kw)
    return run


def _recover_fedavg():
    from leakbook.attacks import labels
    net = models.build("mlp", in_features=64, widths=(8,), seed=0)
    x, y = _digits(4)
    update = fl.client_update(net, x, y, lr=0.5, local_steps=2)
    return labels.recover_fedavg(net, update, 4, lr=0.5, local_steps=2,
                                 input_shape=(1, 8, 8), num_dummies=16)


def _invert_fedavg():
    from leakbook.attacks import fedavg
    net = models.build("lenet_dlg", in_channels=1, image_size=8, seed=1, dtype=F64)
    x, y = _digits(2, F64)
    update = fl.client_update(net, x, y, lr=0.1, local_steps=2)
    rec = fedavg.invert_fedavg(net, update, (2, 1, 8, 8), y, lr=0.1, local_steps=2,
                               iterations=3)
    return [rec.images, rec.loss_history, rec.stats["run_distances"]]


def _lbfgs():
    from leakbook import optim
    a = torch.randn(40, 40, generator=torch.Generator().manual_seed(0), dtype=F64)
    h = a @ a.T + torch.eye(40, dtype=F64)
    run = optim.lbfgs(lambda z: (float(z @ h @ z / 2 - z.sum()), h @ z - 1),
                      torch.zeros(40, dtype=F64), max_iter=30, history=5)
    return {k: v for k, v in run.items() if k != "seconds"}


def _defenses():
    from leakbook import defenses
    gen = torch.Generator().manual_seed(4)
    update = [torch.randn(300, 200, generator=gen), torch.randn(200, generator=gen)]
    return [defenses.global_norm(update), defenses.clip(update, 1.0),
            defenses.clip_and_noise(update, 1.0, 0.3, seed=2),
            defenses.relative_noise(update, 0.5, seed=1), defenses.prune(update, 0.3),
            defenses.quantize(update, 3, stochastic=True, seed=5)]


CASES.update({
    "matching.dlg[mlp, 2 restarts]": _dlg,
    "matching.idlg[resnet_tiny]": _idlg_conv,
    "matching.inverting_gradients[resnet_tiny, bn prior]": _inverting_gradients,
    "matching.gradient_distance+batchnorm_statistics": _gradient_distance,
    "labels.recover[llg, resnet_tiny]": _recover("llg"),
    "labels.recover[geng, resnet_tiny]": _recover("geng", input_shape=(1, 8, 8),
                                                  num_dummies=16, refine=True),
    "labels.recover[llg+, resnet_tiny]": _recover("llg+", input_shape=(1, 8, 8),
                                                  num_dummies=8, repeats=1),
    "labels.recover_fedavg": _recover_fedavg,
    "fedavg.invert_fedavg[lenet_dlg]": _invert_fedavg,
    "optim.lbfgs": _lbfgs,
    "defenses[clip, noise, prune, quantize]": _defenses,
})


# --- the tests -------------------------------------------------------------------

_in_process: dict[str, str] = {}


def _here() -> dict[str, str]:
    if not _in_process:
        _in_process.update(hashes())
    return _in_process


def test_digest_sees_one_bit_and_ignores_wall_time():
    a = torch.tensor([1.0, 2.0], dtype=F64)
    b = a.clone()
    b[1] = math.nextafter(2.0, 3.0)
    assert digest(a) != digest(b) and digest(a) == digest(a.clone())
    assert digest(torch.tensor([0.0])) != digest(torch.tensor([-0.0]))
    assert digest({"wall_time": 1.0, "x": a}) == digest({"wall_time": 2.0, "x": a})
    assert digest(a.float()) != digest(a)


def test_every_case_is_bit_identical_in_one_process_at_one_and_two_threads():
    first, again = _here(), hashes()
    assert first == again, [k for k in first if first[k] != again[k]]
    for name in CASES:
        by_threads = {t: first[f"{name}@{t}"] for t in THREADS}
        assert len(set(by_threads.values())) == 1, f"{name} depends on the thread count"


def test_every_case_is_bit_identical_in_two_fresh_processes():
    procs = []
    for k in range(2):  # side by side; a different str hash seed in each
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": str(k)}
        procs.append(subprocess.Popen([sys.executable, __file__], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, env=env,
                                      cwd=ROOT))
    here = _here()
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        run = json.loads(out.strip().splitlines()[-1])
        assert run == here, [k for k in here if run.get(k) != here[k]]


if __name__ == "__main__":
    print(json.dumps(hashes()))
