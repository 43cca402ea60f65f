"""GradInversion-style group consistency against inverting gradients at equal
compute (chapter 05).

    python -m benchmarks.gradinversion       # -> chapters/data/gradinversion_bench.json
    python -m benchmarks.gradinversion dev      # one section, merged into the file

Both attacks use the same priors (TV 1e-3 and the BatchNorm prior 1e-2 at the
model's running statistics) and the same budget: group consistency with S
seeds of T signed-Adam steps against inverting gradients with S restarts of T
steps (the restart with the least cosine distance kept) and against one run
of S x T steps. Member s and restart s start from the same pixels. Models:
resnet_tiny and CNN6 with BatchNorm (``cnn6(batchnorm=True)``), 16x16, 10
classes, in eval mode with running statistics from 64 other photos (as after
training). Batches of 1 (12 images), 2 (6 disjoint pairs) and 4 (3 groups)
of test images with distinct labels, scored after Hungarian matching beside
the flat baseline (each image's own mean colour); the truth is read only to
score.

dev: the group weight (0 = fusion of independent seeds, 0.01 to 10; the
    paper's weight scales an L2 distance and does not transfer) and T on the dev split (resnet_tiny, 6 single images and 3
    batches of 4); the best median gain over inverting gradients is kept.
test: the chosen setting on the test split, both models, beside the same
    seeds fused without the group term (weight 0: "fusion") to tell the
    group term's share of the gain from the averaging's; the best member
    (read with the truth, an oracle) shows how far the members themselves got.
Budget: about 8 min for dev and 12 min for test at one thread (2 shared
cores); see "seconds" in the JSON.
"""
from __future__ import annotations

import sys
import time

import torch

import leakbook as lb
from leakbook.attacks import inverting_gradients
from leakbook.attacks import gradinversion

from .matching_common import as_uint8, run_sections, score, summary

FILE = "gradinversion_bench.json"
#: PSNRs rounded to 0.01 dB; short runs may differ in the last digits between
#: BLAS builds
TOLERANCE = {"rel": 1e-3, "abs": 0.02}
SIZE, CLASSES, SEEDS = 16, 10, 4
PRIORS = {"tv": 1e-3, "bn": 1e-2}
GROUPS = (0.0, 0.01, 0.1, 1.0, 10.0)
STEPS = (120, 240)


def model(arch: str) -> torch.nn.Module:
    """The attacked model in eval mode, running statistics from other photos."""
    if arch == "resnet_tiny":
        net = lb.models.build("resnet_tiny", seed=0, image_size=SIZE,
                              num_classes=CLASSES)
    else:
        net = lb.models.build("cnn6", seed=0, image_size=SIZE, num_classes=CLASSES,
                              batchnorm=True, head_bias=True)
    warm, _ = lb.data.load("photos", 64, seed=401, size=SIZE)
    with torch.no_grad():
        net.train()
        for _ in range(20):
            net(warm)
    return net.eval()


def batches(split_size: int, b: int, singles=None) -> list:
    if b == 1:
        return [[i] for i in (singles if singles is not None else range(split_size))]
    return [list(range(s, s + b)) for s in range(0, split_size - b + 1, b)]


def one_case(net, x, groups, steps, one_long=False) -> dict:
    """GI for each group weight and IG (S restarts) at each T on batch x."""
    y = torch.arange(len(x))
    g = lb.fl.shared_gradients(net, x, y)
    shape = tuple(x.shape)
    out = {}
    for t in steps:
        ig = inverting_gradients(net, g, shape, y, iterations=t, restarts=SEEDS,
                                 regularizers=PRIORS, max_time=None)
        r, _ = score(ig.images, x)
        out[f"ig T{t}"] = {**r, "distance": ig.stats["final_distance"]}
        if one_long:
            long = inverting_gradients(net, g, shape, y, iterations=t * SEEDS,
                                       regularizers=PRIORS, max_time=None)
            r, _ = score(long.images, x)
            out[f"ig1 T{t * SEEDS}"] = {**r, "distance": long.stats["final_distance"]}
        for a in groups:
            gi = gradinversion(net, g, shape, y, seeds=SEEDS, iterations=t, group=a,
                               regularizers=PRIORS)
            r, order = score(gi.images, x)
            members = [score(m, x)[0]["psnr"] for m in gi.stats["members"]]
            out[f"gi a{a} T{t}"] = {**r, "distance": gi.stats["fused_distance"],
                                    "member_psnr": members,
                                    "member_distances": gi.stats["member_distances"],
                                    "spread": round(gi.stats["member_spread"], 4),
                                    "shifts": gi.stats["shifts"].abs().sum().item()}
    return out


def section_dev() -> dict:
    xs, _ = lb.data.evaluation_set("dev", size=SIZE)
    net = model("resnet_tiny")
    rows = []
    for b in (1, 4):
        for idx in batches(len(xs), b, singles=(0, 2, 4, 6, 10, 11)):
            start = time.perf_counter()
            r = one_case(net, xs[idx], GROUPS, STEPS)
            rows.append({"batch": b, "images": idx, **r})
            print(f"dev {idx}: " + ", ".join(f"{k} {v['psnr']}" for k, v in r.items())
                  + f" ({time.perf_counter() - start:.0f} s)", flush=True)
    configs = [k for k in rows[0] if k.startswith("gi")]
    gains = {}
    for k in configs:
        t = k.split()[-1]
        gains[k] = summary(r[k]["psnr"] - r[f"ig {t}"]["psnr"] for r in rows)
    best = max(configs, key=lambda k: (gains[k]["median"], -float(k.split()[1][1:])))
    group, steps = float(best.split()[1][1:]), int(best.split()[2][1:])
    return {"split": "dev", "arch": "resnet_tiny", "groups": list(GROUPS),
            "steps": list(STEPS), "rows": rows, "gain": gains,
            "psnr": {k: summary(r[k]["psnr"] for r in rows) for k in rows[0]
                     if k.startswith(("gi", "ig"))},
            "chosen": {"group": group, "iterations": steps, "config": best}}


def section_test() -> dict:
    from .common import load
    chosen = load(FILE)["dev"]["chosen"]
    group, steps = chosen["group"], chosen["iterations"]
    xs, _ = lb.data.evaluation_set("test", size=SIZE)
    out = {"split": "test", "group": group, "iterations": steps, "seeds": SEEDS,
           "evaluations_per_case": SEEDS * steps, "archs": {}}
    gi_key, ig_key, long_key = (f"gi a{group} T{steps}", f"ig T{steps}",
                                f"ig1 T{steps * SEEDS}")
    for arch in ("resnet_tiny", "cnn6_bn"):
        net = model(arch)
        rows = []
        for b in (1, 2, 4):
            for idx in batches(len(xs), b):
                start = time.perf_counter()
                x = xs[idx]
                r = one_case(net, x, sorted({0.0, group}), (steps,), one_long=True)
                row = {"batch": b, "images": idx, "gi": r[gi_key], "ig": r[ig_key],
                       "ig_long": r[long_key], "fusion": r[f"gi a0.0 T{steps}"]}
                gi, inverting = row["gi"], row["ig"]
                row["gain"] = round(gi["psnr"] - inverting["psnr"], 2)
                if idx == [0] or idx == [0, 1, 2, 3]:
                    row["truth"] = as_uint8(x)
                rows.append(row)
                print(f"test {arch} {idx}: GI {gi['psnr']} IG {inverting['psnr']} "
                      f"IG1 {row['ig_long']['psnr']} (flat {gi['psnr_baseline']}) "
                      f"spread {gi['spread']} ({time.perf_counter() - start:.0f} s)",
                      flush=True)
        out["archs"][arch] = summarize_rows(rows)
    return out


def summarize_rows(rows: list) -> dict:
    """Median and range per attack, per batch size and overall, and the gain."""
    def block(rs):
        gains = [r["gain"] for r in rs]
        return {"n": len(rs),
                **{k: summary(r[k]["psnr"] for r in rs)
                   for k in ("gi", "ig", "ig_long", "fusion")},
                "group_over_fusion": summary(r["gi"]["psnr"] - r["fusion"]["psnr"]
                                             for r in rs),
                "best_member_over_ig": summary(
                    max(r["gi"]["member_psnr"]) - r["ig"]["psnr"] for r in rs),
                "fused_over_best_member": summary(
                    r["gi"]["psnr"] - max(r["gi"]["member_psnr"]) for r in rs),
                "baseline": summary(r["gi"]["psnr_baseline"] for r in rs),
                "gain": summary(gains), "wins": sum(g > 0 for g in gains),
                "spread": summary(r["gi"]["spread"] for r in rs)}
    return {"rows": rows, "all": block(rows),
            "by_batch": {str(b): block([r for r in rows if r["batch"] == b])
                         for b in (1, 2, 4)}}


SECTIONS = {"dev": section_dev, "test": section_test}


def cheap() -> dict:
    """Short fixed runs at 16x16: one image and a batch of two, both attacks."""
    torch.set_num_threads(1)
    xs, _ = lb.data.evaluation_set("test", size=SIZE)
    net = model("resnet_tiny")
    out = {}
    for idx in ([0], [1, 2]):
        x, y = xs[idx], torch.arange(len(idx))
        g = lb.fl.shared_gradients(net, x, y)
        gi = gradinversion(net, g, tuple(x.shape), y, seeds=2, iterations=12,
                           group=0.1, every=4, regularizers=PRIORS)
        ig = inverting_gradients(net, g, tuple(x.shape), y, iterations=12, restarts=2,
                                 regularizers=PRIORS, max_time=None)
        out[str(idx)] = {"gi": round(lb.metrics.report(gi.images, x)["psnr"], 2),
                         "ig": round(lb.metrics.report(ig.images, x)["psnr"], 2)}
    return out


def main(names: list[str]) -> None:
    run_sections(FILE, SECTIONS, names, cheap)


if __name__ == "__main__":
    main(sys.argv[1:])
