"""Chapter 08 benchmark: audit run time, and does the audit predict attack success?

    python -m benchmarks.security  # -> chapters/data/security_bench.json

About 15 min of CPU at one thread for the audits chapter 08 reads; with
``--attacks`` (the attacks of part 2 below on every model) several hours.

1. Run time of ``leakbook.security.audit`` at 16x16 input for CNN6, CNN6-d,
   DLG's LeNet and Chen & Campbell's cnn4_c2 (one thread; the 32x32 audits
   are timed in the zoo).
2. The zoo: audit each model (the literature's models and variants with other
   widths and strides) at 32x32 (28x28 grey for FCN3) and run the layer-wise
   attacks (``rgap`` and ``copa`` of chapter 07) and gradient matching
   (``inverting_gradients`` of chapter 05; DLG is compared with the layer-wise
   attack in chapter 07's benchmark) on six varied images: every
   second image of ``lb.data.evaluation_set("test")`` (five photo crops and a
   face). Each family keeps its source's data convention: R-GAP's models take
   images in [0, 1], the logistic loss and the label opposite to the
   prediction; DLG's LeNet images in [0, 1] and cross-entropy; Chen &
   Campbell's models images centred by -0.5 and cross-entropy (label y % 10).
   Per image: PSNR (peak 1, clamped to the data range; metrics read the truth,
   attacks never do), the flat baseline (the image's own mean colour), wall
   time, and the PSNR caps of the blind pixels.

Seeds: models 0, audit 0. ``cheap()`` audits two models at 12x12 and 16x16
and attacks one small model, deterministically, for the provenance test.
"""
from __future__ import annotations

import math
import os
import time

import torch
from torch import nn

import leakbook as lb
from leakbook import fl, metrics, models, security
from leakbook.attacks import copa, inverting_gradients, rgap
from leakbook.models import make_activation

from .common import command_line, provenance, write

#: the evaluation images of the zoo: every second test image
IMAGES = (0, 2, 4, 6, 8, 10)
MATCH_STEPS = 100
#: L-BFGS steps of the COPA-style fit (deterministic: no time budget)
COPA_STEPS = 300
BUDGETS = {"rgap": "closed form",
           "copa": f"{COPA_STEPS} Gauss-Newton preconditioned L-BFGS steps, "
                   "fill 'mean'",
           "inverting_gradients": f"{MATCH_STEPS} signed-Adam steps, TV 1e-4, known "
                                  "label, one start"}
#: integers must match exactly; PSNRs (capped at 60 dB) within 0.05 dB
TOLERANCE = {"rel": 0.0, "abs": 0.05}


def custom_cnn(spec, act="tanh", bias=False, head_bias=True, in_channels=3, size=32,
               classes=10, seed=0):
    """Convs from spec [(out, k, s, p), ...], each followed by act, then Flatten-FC.

    The defaults are Chen & Campbell's: bias-free convolutions, an FC with bias.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers, c = [], in_channels
        for out, k, s, p in spec:
            layers += [nn.Conv2d(c, out, k, s, p, bias=bias), make_activation(act)]
            c, size = out, (size + 2 * p - k) // s + 1
        net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * size * size, classes,
                                                             bias=head_bias))
    return net


def zoo() -> list[dict]:
    """name, builder, loss and image channels/size of every audited model."""
    c6 = [(4, 2, 2), (3, 2, 1), (3, 1, 1), (3, 1, 1), (3, 2, 1), (3, 1, 1)]
    z = [
        dict(name="cnn6", family="R-GAP", loss="logistic",
             make=lambda: models.build("cnn6")),
        dict(name="cnn6_d", family="R-GAP", loss="logistic",
             make=lambda: models.build("cnn6_d")),
        dict(name="cnn6 narrow (6-18-18-18-32-64)", family="R-GAP variant",
             loss="logistic",
             make=lambda: models.build("cnn6", widths=(6, 18, 18, 18, 32, 64))),
        dict(name="cnn6 bottleneck (12-8-36-36-64-128)", family="R-GAP variant",
             loss="logistic",
             make=lambda: models.build("cnn6", widths=(12, 8, 36, 36, 64, 128))),
        dict(name="cnn6 first conv k4 s4 p0", family="R-GAP variant", loss="logistic",
             make=lambda: custom_cnn([(12, 4, 4, 0)] + [(w, *k) for w, k in
                                     zip((36, 36, 36, 64, 128), c6[1:])],
                                     act="leaky_relu", head_bias=False, classes=1)),
        dict(name="fcn3", family="R-GAP", loss="logistic", channels=1, size=28,
             make=lambda: models.build("fcn3")),
        dict(name="lenet_dlg", family="DLG", loss="ce",
             make=lambda: models.build("lenet_dlg")),
        dict(name="cnn2_c1", family="Chen & Campbell", loss="ce",
             make=lambda: models.build("cnn2_c1")),
        dict(name="cnn3_c1", family="Chen & Campbell", loss="ce",
             make=lambda: models.build("cnn3_c1")),
        dict(name="cnn3_c1 wide (6-12)", family="C&C variant", loss="ce",
             make=lambda: custom_cnn([(6, 3, 1, 0), (12, 4, 2, 0)])),
        dict(name="cnn3_c1 stride 1 (6-3 s1)", family="C&C variant", loss="ce",
             make=lambda: custom_cnn([(6, 3, 1, 0), (3, 4, 1, 0)])),
        dict(name="cnn4_c2", family="Chen & Campbell", loss="ce",
             make=lambda: models.build("cnn4_c2")),
        dict(name="cnn4_c2 padded (p2 on conv 2)", family="C&C variant", loss="ce",
             make=lambda: custom_cnn([(16, 5, 1, 0), (6, 5, 2, 2), (32, 5, 1, 2)])),
        dict(name="cnn4_c2 wide (16-24-32)", family="C&C variant", loss="ce",
             make=lambda: custom_cnn([(16, 5, 1, 0), (24, 5, 2, 0), (32, 5, 1, 2)])),
    ]
    for entry in z:
        entry.setdefault("channels", 3)
        entry.setdefault("size", 32)
    return z


def data(entry, index: int):
    """One evaluation image (in [0, 1]) for this model, the model's input and label.

    Returns (x, x_in, y, shift): x_in = x - shift is what the model sees.
    """
    size = entry["size"]
    if entry["channels"] == 1:
        x, y = lb.data.evaluation_set("test", size=size, rgb=False)
    else:
        x, y = lb.data.evaluation_set("test", size=size)
    x, y = x[index:index + 1].to(torch.float64), y[index:index + 1]
    shift = 0.5 if entry["family"] in ("Chen & Campbell", "C&C variant") else 0.0
    return x, y % 10, shift


def _image_shape(shape):
    """(1, n) of a flat input -> (1, 1, r, r) with r*r = n; image shapes unchanged."""
    if len(shape) == 2:
        side = math.isqrt(shape[1])
        return (1, 1, side, side)
    return shape


def attacks() -> dict:
    """The attacks as callables (model, grads, y, x_shape, loss, boxed)."""
    return {
        "rgap": lambda m, g, y, s, loss, box: rgap(m, g, y, input_shape=s[1:],
                                                   diagnostics=False),
        "copa": lambda m, g, y, s, loss, box: copa(m, g, y, input_shape=s[1:],
                                                   steps=COPA_STEPS, max_time=None),
        "inverting_gradients": lambda m, g, y, s, loss, box: inverting_gradients(
            m, g, _image_shape(s), y, loss=loss, iterations=MATCH_STEPS, boxed=box),
    }


def probe_accuracy(model: nn.Module, channels: int, size: int, flat: bool,
                   shift: float) -> float:
    """Accuracy proxy: a ridge classifier on the model's random penultimate features.

    Which of the 10 bundled photographs a random crop comes from (1600 crops of
    the model's input size, seed 1; 1200 to fit, 400 to test). A crude stand-in
    for what the architecture can learn: features that keep less of the input
    leave the probe less to work with.
    """
    x, y = lb.data.load("photos", 1600, seed=1, size=size)
    x = x.to(torch.float64) - shift
    if channels == 1:
        x = x.mean(dim=1, keepdim=True)
    if flat:
        x = x.reshape(len(x), -1)
    last = max(i for i, m in enumerate(model) if isinstance(m, nn.Linear))
    body = model[:last]                        # up to the head (FCN3: one after it)
    with torch.no_grad():
        f = body(x).reshape(len(x), -1)
    f = (f - f[:1200].mean(0)) / (f[:1200].std(0) + 1e-12)
    f = torch.cat([f, torch.ones(len(f), 1, dtype=f.dtype)], dim=1)
    onehot = torch.nn.functional.one_hot(y, 10).to(f.dtype)
    a, t = f[:1200], onehot[:1200]
    ridge = torch.eye(a.shape[1], dtype=a.dtype)
    w = torch.linalg.solve(a.T @ a + ridge, a.T @ t)
    return float(((f[1200:] @ w).argmax(1) == y[1200:]).double().mean())


def run_attack(fn, model, grads, y, x, x_in, shift, loss, box) -> dict:
    """One attack on one image: PSNR (clamped to the data range), or the error."""
    start = time.perf_counter()
    try:
        rec = fn(model, grads, y, tuple(x_in.shape), loss, box)
    except Exception as err:  # an attack that refuses a model is a result too
        return dict(error=f"{type(err).__name__}: {err}".splitlines()[0][:200],
                    wall=round(time.perf_counter() - start, 2))
    x_hat = rec.images.detach().to(torch.float64).reshape(x.shape) + shift
    if not torch.isfinite(x_hat).all():
        return dict(error="non-finite reconstruction",
                    wall=round(time.perf_counter() - start, 2))
    psnr = metrics.psnr(x_hat.clamp(0, 1), x)
    out = dict(psnr=round(min(psnr, 300.0), 2),
               wall=round(time.perf_counter() - start, 2))
    if isinstance(rec.stats.get("fit"), dict):
        out["status"] = rec.stats["fit"].get("status")
    return out


def timing(sizes=(16,)) -> list[dict]:
    """Audit time at 16x16 (the 32x32 audits are timed inside the zoo)."""
    rows = []
    for name in ("cnn6", "cnn6_d", "lenet_dlg", "cnn4_c2"):
        for size in sizes:
            model = models.build(name, image_size=size)
            start, cpu = time.perf_counter(), time.process_time()
            a = security.audit(model, (3, size, size))
            est = security.estimate_cost(model, (3, size, size))
            rows.append(dict(model=name, size=size,
                             seconds=round(time.perf_counter() - start, 3),
                             cpu_seconds=round(time.process_time() - cpu, 3),
                             estimate_seconds=round(est["seconds"], 3),
                             estimate_mb=round(est["bytes"] / 2**20, 1),
                             copa_index=a.copa_index, ra_index=a.ra_index))
            print(f"audit {name} {size}x{size}: {rows[-1]['seconds']:.2f} s",
                  flush=True)
    return rows


def audit_row(entry, model, shape, shift) -> dict:
    """The audit, parameter count and probe accuracy of one zoo model."""
    flat = entry["name"] == "fcn3"
    start, cpu = time.perf_counter(), time.process_time()
    # the widest variant's second conv needs a 3.5 GB Gram matrix: allow it
    a = security.audit(model, (math.prod(shape),) if flat else shape,
                       max_memory_gb=6)
    seconds = dict(wall=round(time.perf_counter() - start, 2),
                   cpu=round(time.process_time() - cpu, 2))
    probe = probe_accuracy(model, entry["channels"], entry["size"], flat, shift)
    return dict(family=entry["family"], loss=entry["loss"], input_shape=list(shape),
                data="images - 0.5" if shift else "images in [0, 1]",
                parameters=sum(p.numel() for p in model.parameters()),
                probe_accuracy=round(probe, 4), scores=a.scores(), layers=a.to_rows(),
                audit_seconds=seconds, blind=a.blind)


def zoo_row(entry, images=IMAGES, only=None) -> dict:
    """Audit one zoo model and attack it on each image."""
    model = entry["make"]().to(torch.float64)
    shape = (entry["channels"], entry["size"], entry["size"])
    flat = entry["name"] == "fcn3"
    _, _, shift = data(entry, images[0])
    row = dict(name=entry["name"], **audit_row(entry, model, shape, shift))
    blind = row.pop("blind")
    found = {k: v for k, v in attacks().items() if only is None or k in only}
    row["attacks"] = {k: [] for k in found}
    row["baseline"], row["caps"] = [], {"mean": [], "nearest": [], "inpaint": []}
    for index in images:
        x, y, shift = data(entry, index)
        x_in = x - shift
        if flat:
            x, x_in = x.reshape(1, -1), x_in.reshape(1, -1)
        if entry["loss"] == "logistic":
            with torch.no_grad():
                y = torch.tensor([0 if model(x_in).item() > 0 else 1])
        grads = fl.shared_gradients(model, x_in, y, loss=entry["loss"])
        base = metrics.flat_baseline(x.reshape(1, *shape))
        row["baseline"].append(round(metrics.psnr(base, x.reshape(1, *shape)), 2))
        for how in row["caps"]:
            cap = security.psnr_cap(x.reshape(shape), blind.reshape(shape), how) \
                if bool(blind.any()) else math.inf
            row["caps"][how].append(round(min(cap, 300.0), 2))
        for name, fn in found.items():
            row["attacks"][name].append(run_attack(fn, model, grads, y, x, x_in, shift,
                                                   entry["loss"], shift == 0))
        print(f"{entry['name']:38s} image {index:2d} " + " ".join(
            f"{k} {v[-1].get('psnr', 'err')}" for k, v in row["attacks"].items()),
            flush=True)
    return row


def cheap() -> dict:
    """Audits of cnn4_c2 (16x16) and cnn6_d (12x12); rgap and copa on cnn3_c1
    at 12x12."""
    torch.set_num_threads(1)
    out = {}
    for name, size in (("cnn4_c2", 16), ("cnn6_d", 12)):
        a = security.audit(models.build(name, image_size=size), (3, size, size))
        out[name] = {**{k: v for k, v in a.scores().items() if k != "seconds"},
                     "ranks": [r.rank for r in a.layers],
                     "bounds": [r.rank_bound for r in a.layers]}
    net = models.build("cnn3_c1", image_size=12, dtype=torch.float64)
    x, y = lb.data.evaluation_set("test", size=12, dtype=torch.float64)
    x, y = x[:1] - 0.5, y[:1] % 10
    g = fl.shared_gradients(net, x, y)
    for name in ("rgap", "copa"):
        rec = attacks()[name](net, g, y, tuple(x.shape), "ce", False)
        out[f"cnn3_c1_{name}"] = round(min(metrics.psnr(rec.images, x), 60.0), 3)
    return out


def main(argv=None) -> None:
    """By default the zoo's audits, blind-pixel caps and baselines, no attacks
    (about 15 min at one thread; what chapter 08 reads). ``--attacks`` runs
    every attack on every model too (hours on a shared machine)."""
    import argparse
    parser = argparse.ArgumentParser(prog="python -m benchmarks.security")
    parser.add_argument("--attacks", action="store_true",
                        help="also run every attack on every zoo model (hours)")
    args = parser.parse_args(argv)
    lb.seed_everything(0, threads=1)
    record = provenance(command_line())
    started = time.time()
    budgets = BUDGETS if args.attacks else {
        "attacks": "not run (without --attacks); chapter 07's benchmark attacks "
                   "the models the chapters discuss"}
    payload = dict(audit_seed=0, audit_rtol=1e-6, budgets=budgets,
                   images={"split": "test", "indices": list(IMAGES),
                           "names": [lb.data.EVALUATION_NAMES[i] for i in IMAGES]},
                   timing=timing())
    payload["zoo"] = [zoo_row(entry, only=None if args.attacks else ())
                      for entry in zoo()]
    payload["total_seconds"] = round(time.time() - started, 1)
    payload["load_average"] = [round(v, 2) for v in os.getloadavg()]
    out = write("security_bench.json", payload, record, cheap())
    print("wrote", out)


if __name__ == "__main__":
    main()
