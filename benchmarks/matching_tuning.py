"""How the defaults of DLG and inverting gradients were chosen (chapters 04-05).

    python -m benchmarks.matching_tuning      # -> chapters/data/matching_tuning.json
    python -m benchmarks.matching_tuning dlg  # one section, merged into the file

Every run is on the *dev* split of the evaluation set (12 images); the book
reports the chosen defaults on the *test* split (benchmarks.dlg_speed,
benchmarks.matching, benchmarks.inverting). The truth is read only by the
scoring callback.

dlg: DLG's LeNet (sigmoid, 12 channels, weights U(-0.5, 0.5)) with the label
    known, at 32x32 and 16x16, 10 and 100 classes (DLG's published setting is
    32x32 with 100 classes). For each start (init) and L-BFGS history it
    records the iteration at which PSNR first passes 30, 40 and 50 dB, the
    PSNR when the relative gradient distance first falls below 1e-8 ... 1e-11
    (what a stopping tolerance would give), the run's status and seconds.
ig: inverting gradients (cosine distance, TV, signed Adam, box) on the same
    LeNet at 32x32/100 classes and 16x16/10 classes, and on resnet_tiny
    (ReLU, BatchNorm in eval mode) at 32x32/10 classes: step size, TV weight
    and the plateau schedule's patience.
"""
from __future__ import annotations

import sys
import time

import torch

import leakbook as lb
from leakbook.attacks import dlg, inverting_gradients

from .common import command_line, load, provenance, write
from .matching_common import Tracker, lenet, summary

FILE = "matching_tuning.json"
DLG_SETTINGS = [(32, 100), (32, 10), (16, 100), (16, 10)]
TOLS = (1e-8, 1e-9, 1e-10)
ALL, HALF = tuple(range(12)), (0, 2, 4, 6, 10, 11)  # HALF: 4 photos, face, digit
#: (name, keyword arguments, settings it runs on, dev images)
DLG_CONFIGS = [
    ("gray, history 200", {"init": "gray", "history": 200}, DLG_SETTINGS, ALL),
    ("gray, history 100", {"init": "gray", "history": 100}, DLG_SETTINGS, ALL),
    ("randn, history 100", {"init": "randn", "history": 100}, DLG_SETTINGS[:1], HALF),
]
#: floats are rounded before they are stored; the cheap run is a short float64
#: L-BFGS whose last digits may differ between BLAS builds
TOLERANCE = {"rel": 1e-3, "abs": 0.02}


def dlg_run(size: int, classes: int, image: int, max_iter=8000, max_time=600.0,
            **kw) -> dict:
    """One label-known DLG run on dev image ``image``, scored along the way."""
    xs, ys = lb.data.evaluation_set("dev", size=size)
    x, y = xs[image:image + 1], ys[image:image + 1] % classes
    model = lenet(size, classes)
    g = lb.fl.shared_gradients(model, x, y)
    scale = float(sum((t.double() ** 2).sum() for t in g))
    tr = Tracker(x, every=10)
    at_tol: dict = {}

    def cb(it, images, f):
        tr(it, images, f)
        for tol in TOLS:
            if f <= tol * scale and str(tol) not in at_tol:
                at_tol[str(tol)] = [it, round(lb.metrics.psnr(
                    images.float().clamp(0, 1), x), 2)]

    kw = {"rel_tol": min(TOLS), "stall": 200, **kw}
    rec = dlg(model, g, tuple(x.shape), labels=y, max_iter=max_iter,
              max_time=max_time, callback=cb, **kw)
    final = lb.metrics.report(rec.images, x)
    return {"image": image, "status": rec.stats["status"],
            "iterations": rec.stats["iterations"],
            "evaluations": rec.stats["evaluations"],
            "seconds": round(tr.elapsed(), 2),
            "iter_to": {str(db): tr.first(db, "iters") for db in (30, 40, 50)},
            "at_tol": at_tol, "psnr": round(final["psnr"], 2),
            "psnr_baseline": round(final["psnr_baseline"], 2)}


def section_dlg() -> dict:
    out = {}
    for size, classes in DLG_SETTINGS:  # DLG's published setting first
        for name, kw, settings, images in DLG_CONFIGS:
            if (size, classes) not in settings:
                continue
            key = f"{name} | {size}x{size}, {classes} classes"
            rows = []
            for i in images:
                rows.append(dlg_run(size, classes, i, **kw))
                print(key, rows[-1], flush=True)
            out[key] = {"config": kw, "size": size, "classes": classes, "rows": rows,
                        "iter_to_40": summary(r["iter_to"]["40"] for r in rows),
                        "reached_40": sum(r["iter_to"]["40"] is not None
                                          for r in rows)}
            print(f"{key}: 40 dB in {out[key]['reached_40']}/{len(rows)}, "
                  f"iterations {out[key]['iter_to_40']}", flush=True)
    return out


IG_SETTINGS = [("lenet", 16, 10), ("lenet", 32, 100), ("resnet_tiny", 16, 10)]
#: (name, keyword arguments, settings it runs on); images: HALF
IG_CONFIGS = [
    *[(f"tv {tv:g}, lr 0.1, patience 50", {"tv": tv, "patience": 50}, IG_SETTINGS)
      for tv in (1e-4, 1e-3, 1e-2, 1e-1)],
    ("tv 0.01, lr 0.1, patience 25", {"tv": 1e-2, "patience": 25}, IG_SETTINGS[:1]),
    ("tv 0.01, lr 0.1, patience 100", {"tv": 1e-2, "patience": 100}, IG_SETTINGS[:1]),
    ("tv 0.01, lr 0.03, patience 50", {"tv": 1e-2, "patience": 50, "lr": 0.03},
     IG_SETTINGS[:1]),
    ("tv 0.01, lr 0.3, patience 50", {"tv": 1e-2, "patience": 50, "lr": 0.3},
     IG_SETTINGS[:1]),
    ("tv 0.01, lr 0.1, patience 50, 4 restarts",
     {"tv": 1e-2, "patience": 50, "restarts": 4}, IG_SETTINGS[:1]),
]


def ig_model(arch: str, size: int, classes: int) -> torch.nn.Module:
    """The attacked model: DLG's LeNet, or resnet_tiny with BatchNorm in eval mode."""
    if arch == "lenet":
        return lenet(size, classes)
    return lb.models.build("resnet_tiny", seed=0, image_size=size,
                           num_classes=classes).eval()


def ig_run(arch: str, size: int, classes: int, image: int, tv: float,
           max_time=900.0, **kw) -> dict:
    """One inverting-gradients run on dev image ``image``, scored along the way."""
    xs, ys = lb.data.evaluation_set("dev", size=size)
    x, y = xs[image:image + 1], ys[image:image + 1] % classes
    model = ig_model(arch, size, classes)
    g = lb.fl.shared_gradients(model, x, y)
    tr = Tracker(x, every=25)
    rec = inverting_gradients(model, g, tuple(x.shape), y, regularizers={"tv": tv},
                              max_time=max_time, callback=tr, **kw)
    rep = lb.metrics.report(rec.images, x)
    runs = [round(lb.metrics.psnr(im, x), 2) for im in rec.stats["run_images"]]
    return {"image": image, "status": rec.stats["status"],
            "iterations": rec.stats["iterations"],
            "final_distance": rec.stats["final_distance"],
            "seconds": round(tr.elapsed(), 2), "psnr": round(rep["psnr"], 2),
            "psnr_baseline": round(rep["psnr_baseline"], 2),
            "run_psnrs": runs, "run_distances": rec.stats["run_distances"],
            "chosen_run": rec.stats["chosen_run"]}


def section_ig() -> dict:
    out = {}
    for name, kw, settings in IG_CONFIGS:
        for arch, size, classes in settings:
            key = f"{name} | {arch} {size}x{size}, {classes} classes"
            rows = []
            for i in HALF:
                rows.append(ig_run(arch, size, classes, i, **kw))
                print(key, rows[-1], flush=True)
            out[key] = {"config": kw, "arch": arch, "size": size, "classes": classes,
                        "rows": rows, "psnr": summary(r["psnr"] for r in rows),
                        "gain": summary(r["psnr"] - r["psnr_baseline"] for r in rows),
                        "seconds": summary(r["seconds"] for r in rows)}
            print(f"{key}: PSNR {out[key]['psnr']}, gain {out[key]['gain']}",
                  flush=True)
    return out


SECTIONS = {"dlg": section_dlg, "ig": section_ig}


def cheap() -> dict:
    """40 L-BFGS iterations of DLG at 16x16, 10 classes, on two dev images."""
    torch.set_num_threads(1)
    rows = [dlg_run(16, 10, i, max_iter=40, max_time=None, history=200)
            for i in (0, 11)]
    ig = ig_run("lenet", 16, 10, 0, 1e-2, max_time=None, iterations=40)
    return {"rows": [{k: r[k] for k in ("image", "status", "iterations",
                                        "evaluations", "psnr", "psnr_baseline")}
                     for r in rows],
            "ig": {k: ig[k] for k in ("image", "iterations", "psnr", "psnr_baseline")}}


def main(names: list[str]) -> None:
    torch.set_num_threads(1)
    record = provenance(command_line())
    start = time.time()
    fresh, seconds = {}, {}
    for name in names or list(SECTIONS):
        t = time.time()
        fresh[name] = SECTIONS[name]()
        seconds[name] = round(time.time() - t, 1)
    try:  # re-read: another process may have written another section meanwhile
        previous = load(FILE) if names else {}
    except FileNotFoundError:
        previous = {}
    result = {k: v for k, v in previous.items() if k in SECTIONS}
    result.update(fresh)
    seconds = {**previous.get("seconds", {}), **seconds}
    sections = {**previous.get("section_provenance", {}),
                **{name: record for name in fresh}}
    out = write(FILE, {**result, "seconds": seconds, "section_provenance": sections},
                record, cheap())
    print(f"wrote {out} in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
