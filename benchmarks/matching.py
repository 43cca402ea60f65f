"""When gradient matching works and when it fails, over the evaluation set (ch. 04-05).

    python -m benchmarks.matching                 # -> chapters/data/matching_bench.json
    python -m benchmarks.matching activation      # one section, merged into the file

Every attack runs with its default arguments (chosen on the dev split by
benchmarks.matching_tuning) on images of the evaluation set's *test* split;
the truth is read only to score the result, beside the flat baseline (each
image's own mean colour).

activation: DLG's LeNet at its published setting (32x32, 100 classes) with
    sigmoid or ReLU, and weights drawn as in DLG's code (U(-0.5, 0.5)) or by
    PyTorch's default initialisation; iDLG (label from the gradient, then
    DLG on the image) on all 12 test images.
variations: controlled changes of DLG's setting, one at a time, at 16x16
    with 10 classes on 6 varied test images (4 photos, the face, the digit):
    ReLU, the weights' scale, a briefly trained model, dropout on at the
    client, a client loss of 0.5 CE; iDLG and inverting gradients on each.
"""
from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F

import leakbook as lb
from leakbook.attacks import idlg, inverting_gradients

from .matching_common import as_uint8, lenet, run_sections, score, summary

FILE = "matching_bench.json"
HALF = (0, 2, 4, 6, 10, 11)  # 4 photos, the face, the digit
#: PSNRs rounded to 0.01 dB; short float64/float32 runs may differ in the last
#: digits between BLAS builds
TOLERANCE = {"rel": 1e-3, "abs": 0.02}


def attack(method: str, model, g, x, y, **kw) -> dict:
    """iDLG or inverting gradients (defaults) on one image; scores, not timings."""
    start = time.perf_counter()
    if method == "idlg":
        rec = idlg(model, g, tuple(x.shape), **kw)
    else:
        rec = inverting_gradients(model, g, tuple(x.shape), y, **kw)
    seconds = time.perf_counter() - start
    scores, _ = score(rec.images, x, rec.labels, y)
    return {**scores, "status": rec.stats["status"],
            "iterations": rec.stats["iterations"], "seconds": round(seconds, 1),
            "images": as_uint8(torch.nan_to_num(rec.images, nan=0.5))}


def section_activation() -> dict:
    xs, ys = lb.data.evaluation_set("test", size=32)
    out = {}
    for act in ("sigmoid", "relu"):
        for init in ("dlg", "default"):
            rows = []
            for i in range(len(xs)):
                x, y = xs[i:i + 1], ys[i:i + 1] % 100
                model = lenet(32, 100, act, init)
                g = lb.fl.shared_gradients(model, x, y)
                r = attack("idlg", model, g, x, y)
                del r["images"]
                rows.append({"image": i, **r})
                print(f"activation {act} init {init} image {i}: {r['psnr']} dB "
                      f"(flat {r['psnr_baseline']}), {r['status']}", flush=True)
            out[f"{act}, {init} init"] = {
                "activation": act, "init": init, "rows": rows,
                "psnr": summary(r["psnr"] for r in rows),
                "baseline": summary(r["psnr_baseline"] for r in rows),
                "above_40": sum(r["psnr"] >= 40 for r in rows)}
    return out


def train_briefly(net, steps=300, seed=0, size=16, classes=10):
    """Adam on other crops of the bundled photos (not the evaluation images)."""
    x, y = lb.data.load("photos", 320, seed=1000 + seed, size=size)
    y = y % classes
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(len(x), (32,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(net(x[idx]), y[idx]).backward()
        opt.step()
    with torch.no_grad():
        acc = (net(x).argmax(1) == y).float().mean().item()
    return net, acc


def half_ce(out, t):
    return 0.5 * F.cross_entropy(out, t)


def variation_cases(size: int, classes: int, steps: int = 300):
    """name -> (client model, attacker model, client loss, dropout seed or None)."""
    def net(**kw):
        return lenet(size, classes, **kw)

    trained, acc = train_briefly(net(), steps=steps, size=size, classes=classes)
    drop = torch.nn.Sequential(*net()[:-1], torch.nn.Dropout(0.3), net()[-1])
    drop_attacker = torch.nn.Sequential(*net()[:-1], torch.nn.Dropout(0.3),
                                        net()[-1]).eval()
    cases = {
        "DLG's setting": (net(), None, "ce", None),
        "ReLU, DLG's init": (net(activation="relu"), None, "ce", None),
        "ReLU, PyTorch init": (net(activation="relu", init="default"), None, "ce",
                               None),
        "weights x0.1": (net(scale=0.1), None, "ce", None),
        "weights x0.3": (net(scale=0.3), None, "ce", None),
        "weights x3": (net(scale=3.0), None, "ce", None),
        "trained model": (trained, None, "ce", None),
        "dropout at client": (drop, drop_attacker, "ce", 7),
        "client loss 0.5 CE": (net(), None, half_ce, None),
    }
    return cases, acc


def section_variations(size=16, classes=10, images=HALF) -> dict:
    xs, ys = lb.data.evaluation_set("test", size=size)
    cases, acc = variation_cases(size, classes)
    out = {"size": size, "classes": classes, "images": list(images),
           "truth": as_uint8(xs[list(images)]), "train_accuracy": round(acc, 3),
           "cases": {}}
    for name, (client, attacker, loss, drop_seed) in cases.items():
        rows = {"idlg": [], "ig": []}
        for i in images:
            x, y = xs[i:i + 1], ys[i:i + 1] % classes
            with torch.random.fork_rng(devices=[]):
                if drop_seed is not None:  # the client's mask, unknown to the attacker
                    torch.manual_seed(drop_seed + i)
                g = lb.fl.shared_gradients(client, x, y, loss=loss)
            for method in rows:
                r = attack(method, attacker or client, g, x, y)
                rows[method].append({"image": i, **r})
                print(f"variation {name} image {i} {method}: {r['psnr']} dB "
                      f"(flat {r['psnr_baseline']})", flush=True)
        out["cases"][name] = {m: {"rows": rs, "psnr": summary(r["psnr"] for r in rs),
                                  "gain": summary(r["psnr"] - r["psnr_baseline"]
                                                  for r in rs)}
                              for m, rs in rows.items()}
    out["baseline"] = summary(r["psnr_baseline"]
                              for r in out["cases"]["DLG's setting"]["idlg"]["rows"])
    return out


SECTIONS = {"activation": section_activation, "variations": section_variations}


def cheap() -> dict:
    """Short fixed-length runs at 16x16 on one test image: ReLU at both inits."""
    torch.set_num_threads(1)
    xs, ys = lb.data.evaluation_set("test", size=16)
    x, y = xs[:1], ys[:1] % 10
    out = {}
    for init in ("dlg", "default"):
        model = lenet(16, 10, "relu", init)
        g = lb.fl.shared_gradients(model, x, y)
        d = idlg(model, g, tuple(x.shape), max_iter=25, max_time=None)
        ig = inverting_gradients(model, g, tuple(x.shape), y, iterations=25)
        out[init] = {"idlg": round(lb.metrics.psnr(d.images.clamp(0, 1), x), 2),
                     "ig": round(lb.metrics.psnr(ig.images, x), 2)}
    return out


def main(names: list[str]) -> None:
    run_sections(FILE, SECTIONS, names, cheap)


if __name__ == "__main__":
    main(sys.argv[1:])
