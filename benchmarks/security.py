"""Chapter 08 benchmark: audit run time, and does the audit predict attack success?

    PYTHONPATH=. python benchmarks/security.py [--quick] [--attacks copa ...]

1. Run time of ``leakbook.security.audit`` at 16x16 and 32x32 input for CNN6,
   CNN6-d, DLG's LeNet and Chen & Campbell's cnn4_c2 (one thread).
2. The zoo experiment: audit each model of a zoo (the literature's models and
   variants with other widths and strides) at 32x32 and run the layer-wise
   attacks (``rgap`` and ``copa`` of chapter 07) and gradient matching
   (``dlg``, ``inverting_gradients`` of chapters 04-05) on one photograph per
   model, recording PSNR (peak 1; metrics use the truth, attacks never do) and
   wall time. Attacks that are not importable are recorded as missing.

Writes a small JSON file that chapter 08 loads. Seeds: model seed 0, image
seed 0, audit seed 0.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import time
import traceback
from pathlib import Path

import torch
from torch import nn

import leakbook as lb
from leakbook import fl, metrics, models, security
from leakbook.models import make_activation

ROOT = Path(__file__).resolve().parents[1]
BUDGETS = {"rgap": "closed form", "copa": "300 L-BFGS correction steps",
           "dlg": "300 L-BFGS iterations or 30 s, known label, one start",
           "inverting_gradients": "300 signed-Adam steps, TV 1e-4, known label, one start"}


def custom_cnn(spec, act="tanh", bias=True, in_channels=3, size=32, classes=10, seed=0):
    """Convs from spec [(out, k, s, p), ...], each followed by act, then Flatten-FC."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers, c = [], in_channels
        for out, k, s, p in spec:
            layers += [nn.Conv2d(c, out, k, s, p, bias=bias), make_activation(act)]
            c, size = out, (size + 2 * p - k) // s + 1
        net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * size * size, classes,
                                                             bias=bias))
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
                                     act="leaky_relu", bias=False, classes=1)),
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


def image(entry) -> tuple[torch.Tensor, torch.Tensor]:
    """One photograph (1, C, H, W) in [0, 1] and its label for this model."""
    x, y = lb.data.load("photos", 1, seed=0, size=entry["size"])
    if entry["channels"] == 1:
        x = x.mean(dim=1, keepdim=True)
    if entry["loss"] == "logistic":
        y = y % 2
    return x.to(torch.float64), y


def _image_shape(shape):
    """(1, n) of a flat input -> (1, 1, r, r) with r*r = n; image shapes unchanged."""
    if len(shape) == 2:
        side = math.isqrt(shape[1])
        return (1, 1, side, side)
    return shape


def _attacks(budget: str) -> dict:
    """The attacks that are importable now, as callables (model, grads, y, x_shape)."""
    found = {}
    try:
        from leakbook.attacks import rgap
        found["rgap"] = lambda m, g, y, s, loss: rgap(m, g, y, input_shape=s[1:])
    except ImportError:
        pass
    try:
        from leakbook.attacks import copa
        found["copa"] = lambda m, g, y, s, loss: copa(m, g, y, input_shape=s[1:],
                                                      steps=300)
    except ImportError:
        pass
    try:
        from leakbook.attacks.matching import dlg, inverting_gradients
        it = 100 if budget == "quick" else 300
        # gradient matching takes image-shaped data, also for FCN3 (Flatten first)
        found["dlg"] = lambda m, g, y, s, loss: dlg(m, g, _image_shape(s), y, loss=loss,
                                                    max_iter=it, max_time=30.0)
        found["inverting_gradients"] = lambda m, g, y, s, loss: inverting_gradients(
            m, g, _image_shape(s), y, loss=loss, iterations=it)
    except ImportError:
        pass
    return found


def probe_accuracy(model: nn.Module, channels: int, size: int, flat: bool) -> float:
    """Accuracy proxy: a ridge classifier on the model's random penultimate features.

    Which of the 10 bundled photographs a random crop comes from (1600 crops of
    the model's input size, seed 1; 1200 to fit, 400 to test). A crude stand-in
    for what the architecture can learn: features that keep less of the input
    leave the probe less to work with.
    """
    x, y = lb.data.load("photos", 1600, seed=1, size=size)
    x = x.to(torch.float64)
    if channels == 1:
        x = x.mean(dim=1, keepdim=True)
    if flat:
        x = x.reshape(len(x), -1)
    with torch.no_grad():
        f = model[:-1](x).reshape(len(x), -1)
    f = (f - f[:1200].mean(0)) / (f[:1200].std(0) + 1e-12)
    f = torch.cat([f, torch.ones(len(f), 1, dtype=f.dtype)], dim=1)
    onehot = torch.nn.functional.one_hot(y, 10).to(f.dtype)
    a, t = f[:1200], onehot[:1200]
    ridge = torch.eye(a.shape[1], dtype=a.dtype)
    w = torch.linalg.solve(a.T @ a + ridge, a.T @ t)
    return float(((f[1200:] @ w).argmax(1) == y[1200:]).double().mean())


def run_attack(fn, model, grads, y, x, loss) -> dict:
    start = time.perf_counter()
    try:
        rec = fn(model, grads, y, tuple(x.shape), loss)
    except Exception as err:  # an attack that refuses a model is a result too
        return dict(error=f"{type(err).__name__}: {err}".splitlines()[0][:200],
                    seconds=round(time.perf_counter() - start, 2))
    x_hat = rec.images.detach().to(torch.float64).reshape(x.shape)
    if not torch.isfinite(x_hat).all():
        return dict(error="non-finite reconstruction",
                    seconds=round(time.perf_counter() - start, 2))
    psnr = metrics.psnr(x_hat.clamp(0, 1), x)
    return dict(psnr=None if math.isinf(psnr) else round(psnr, 2),
                exact=math.isinf(psnr), seconds=round(time.perf_counter() - start, 2))


def timing(sizes=(16, 32)) -> list[dict]:
    rows = []
    for name in ("cnn6", "cnn6_d", "lenet_dlg", "cnn4_c2"):
        for size in sizes:
            model = models.build(name, image_size=size)
            start = time.perf_counter()
            a = security.audit(model, (3, size, size))
            rows.append(dict(model=name, size=size,
                             seconds=round(time.perf_counter() - start, 3),
                             largest_layer_seconds=round(max(r.seconds
                                                             for r in a.layers), 3),
                             copa_index=a.copa_index, ra_index=a.ra_index))
            print(f"audit {name} {size}x{size}: {rows[-1]['seconds']:.2f} s",
                  flush=True)
    return rows


def audit_row(entry, model, x, shape) -> dict:
    """The audit, parameter count, probe accuracy and PSNR caps of one zoo model."""
    a = security.audit(model, shape if entry["name"] != "fcn3" else (784,))
    probe = probe_accuracy(model, entry["channels"], entry["size"],
                           entry["name"] == "fcn3")
    row = dict(family=entry["family"], loss=entry["loss"], input_shape=list(shape),
               parameters=sum(p.numel() for p in model.parameters()),
               probe_accuracy=round(probe, 4), scores=a.scores(), layers=a.to_rows())
    if a.blind_pixels:
        blind = a.blind.reshape(x.shape[1:])
        row["psnr_cap_mean_fill"] = round(security.psnr_cap(x, blind), 2)
        row["psnr_cap_nearest_fill"] = round(security.psnr_cap(x, blind, "nearest"), 2)
    return row


def zoo_experiment(budget: str, only=None, names=None) -> list[dict]:
    attacks = _attacks(budget)
    if only:
        attacks = {k: v for k, v in attacks.items() if k in only}
    print("attacks available:", sorted(attacks), flush=True)
    rows = []
    for entry in zoo():
        if names and entry["name"] not in names:
            continue
        model = entry["make"]().to(torch.float64)
        shape = (entry["channels"], entry["size"], entry["size"])
        x, y = image(entry)
        if entry["name"] == "fcn3":
            x = x.reshape(1, 784)
        grads = fl.shared_gradients(model, x, y, loss=entry["loss"])
        row = dict(name=entry["name"], attacks={})
        if not only:
            row.update(audit_row(entry, model, x, shape))
        for attack, fn in attacks.items():
            row["attacks"][attack] = run_attack(fn, model, grads, y, x, entry["loss"])
            print(f"{entry['name']:40s} {attack:20s} {row['attacks'][attack]}",
                  flush=True)
        rows.append(row)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small attack budgets")
    parser.add_argument("--skip-zoo", action="store_true")
    parser.add_argument("--attacks", nargs="+", default=None,
                        help="run only these attacks and merge them into --out")
    parser.add_argument("--models", nargs="+", default=None,
                        help="with --attacks: only these zoo models")
    parser.add_argument("--out",
                        default=str(ROOT / "chapters/data/security_bench.json"))
    args = parser.parse_args(argv)
    lb.seed_everything(0, threads=1)
    started = time.time()
    if args.attacks:
        old = json.loads(Path(args.out).read_text())
        rows = zoo_experiment("full", args.attacks, args.models)
        new = {row["name"]: row for row in rows}
        for row in old["zoo"]:
            if row["name"] in new:
                row["attacks"].update(new[row["name"]]["attacks"])
        old["budgets"] = BUDGETS
        old["command"] += " && ... --attacks " + " ".join(args.attacks)
        if args.models:
            old["command"] += " --models " + " ".join(f"'{m}'" for m in args.models)
        Path(args.out).write_text(json.dumps(old, indent=1))
        print("updated", args.out)
        return
    result = dict(command="PYTHONPATH=. python benchmarks/security.py"
                  + (" --quick" if args.quick else ""),
                  machine=dict(python=platform.python_version(),
                               torch=torch.__version__,
                               threads=torch.get_num_threads(),
                               load=open("/proc/loadavg").read().split()[:3]),
                  audit_seed=0, audit_rtol=1e-6, budgets=BUDGETS, timing=timing())
    if not args.skip_zoo:
        try:
            result["zoo"] = zoo_experiment("quick" if args.quick else "full")
        except Exception:
            traceback.print_exc()
            raise
    result["total_seconds"] = round(time.time() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print("wrote", out)


if __name__ == "__main__":
    main()
