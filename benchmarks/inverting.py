"""Inverting gradients over the evaluation set: quality, restarts, batches,
duplicate labels and BatchNorm (chapter 05).

    python -m benchmarks.inverting          # -> chapters/data/inverting_bench.json
    python -m benchmarks.inverting fusion   # one section, merged into the file

Every attack runs with its default arguments (chosen on the dev split by
benchmarks.matching_tuning) on images of the evaluation set's *test* split;
the truth is read only to score, beside the flat baseline (each image's own
mean colour).

set: inverting gradients and iDLG on the 12 test images, on DLG's LeNet
    (16x16, 10 classes; at 32x32 with 100 classes inverting gradients takes
    thousands of steps, see the tuning) and on resnet_tiny (ReLU, BatchNorm
    in eval mode; 16x16, 10 classes).
restarts: four restarts on a gradient computed with 0.5 CE (LeNet, 16x16);
    the restart with the least cosine distance is kept; is it the best?
batches: batches of 1, 2, 4 and 8 test images with distinct labels (LeNet,
    16x16, 10 classes): inverting gradients, DLG with the labels known, DLG
    with labels optimised jointly; scored after Hungarian matching.
fusion: pairs of different test images given the same label or two labels.
    The same pairs are run both ways, so the images' similarity is the same
    in both arms; pairs span the range of similarity (PSNR between the two).
batchnorm: resnet_tiny with BatchNorm (running statistics from other
    photos), batches of 4 test images: the client in train or eval mode, the
    attacker in either, without and with the BN prior (running or batch
    statistics).
"""
from __future__ import annotations

import itertools
import sys
import time

import torch
import torch.nn.functional as F

import leakbook as lb
from leakbook.attacks import dlg, idlg, inverting_gradients, matching

from .matching_common import as_uint8, lenet, run_sections, score, summary

FILE = "inverting_bench.json"
HALF = (0, 2, 4, 6, 10, 11)  # 4 photos, the face, the digit
#: PSNRs rounded to 0.01 dB; short runs may differ in the last digits between
#: BLAS builds
TOLERANCE = {"rel": 1e-3, "abs": 0.02}


def resnet(size=16, classes=10, batchnorm=True):
    return lb.models.build("resnet_tiny", seed=0, image_size=size, num_classes=classes,
                           batchnorm=batchnorm)


def run(method: str, model, g, x, y, keep=False, **kw) -> dict:
    """One attack with its defaults; scores (after matching) and iterations."""
    start = time.perf_counter()
    if method == "ig":
        rec = inverting_gradients(model, g, tuple(x.shape), y, **kw)
    elif method == "idlg":
        rec = idlg(model, g, tuple(x.shape), **kw)
    elif method == "dlg known":
        rec = dlg(model, g, tuple(x.shape), labels=y, **kw)
    else:
        rec = dlg(model, g, tuple(x.shape), **kw)
    seconds = time.perf_counter() - start
    images = torch.nan_to_num(rec.images.float(), nan=0.5)
    scores, order = score(images, x, rec.labels, y)
    out = {**scores, "status": rec.stats["status"],
           "iterations": rec.stats["iterations"], "seconds": round(seconds, 1)}
    if keep:
        out["images"] = as_uint8(images.clamp(0, 1)[order])
    return out, rec, order


def section_set() -> dict:
    out = {}
    for arch, size, classes in (("lenet", 16, 10), ("resnet_tiny", 16, 10)):
        xs, ys = lb.data.evaluation_set("test", size=size)
        rows = {"ig": [], "idlg": []}
        for i in range(len(xs)):
            x, y = xs[i:i + 1], ys[i:i + 1] % classes
            model = lenet(size, classes) if arch == "lenet" else \
                resnet(size, classes).eval()
            g = lb.fl.shared_gradients(model, x, y)
            for method in rows:
                r, _, _ = run(method, model, g, x, y, keep=True)
                rows[method].append({"image": i, **r})
                print(f"set {arch} image {i} {method}: {r['psnr']} dB "
                      f"(flat {r['psnr_baseline']}), {r['iterations']} it", flush=True)
        out[arch] = {"size": size, "classes": classes, "truth": as_uint8(xs),
                     **{m: {"rows": rs, "psnr": summary(r["psnr"] for r in rs),
                            "ssim": summary(r["ssim"] for r in rs)}
                        for m, rs in rows.items()},
                     "baseline": summary(r["psnr_baseline"] for r in rows["ig"])}
    return out


def section_restarts(size=16, classes=10, restarts=4) -> dict:
    xs, ys = lb.data.evaluation_set("test", size=size)
    rows = []
    for i in HALF:
        x, y = xs[i:i + 1], ys[i:i + 1] % classes
        model = lenet(size, classes)
        g = lb.fl.shared_gradients(model, x, y,
                                   loss=lambda o, t: 0.5 * F.cross_entropy(o, t))
        _, rec, _ = run("ig", model, g, x, y, restarts=restarts, seed=10)
        psnrs = [round(lb.metrics.psnr(im, x), 2) for im in rec.stats["run_images"]]
        chosen = rec.stats["chosen_run"]
        rows.append({"image": i, "distances": rec.stats["run_distances"],
                     "psnrs": psnrs, "chosen": chosen,
                     "chosen_is_best": psnrs[chosen] == max(psnrs),
                     "psnr_baseline": round(lb.metrics.psnr(
                         lb.metrics.flat_baseline(x), x), 2)})
        print(f"restarts image {i}: {psnrs}, kept {chosen}", flush=True)
    return {"size": size, "classes": classes, "restarts": restarts, "rows": rows}


def batch_indices(b: int) -> list:
    """Disjoint (or, for 8, overlapping) batches of test images."""
    if b == 1:
        return [[i] for i in HALF]
    if b == 8:
        return [list(range(0, 8)), list(range(4, 12))]
    return [list(range(s, s + b)) for s in range(0, 12, b)]


def section_batches(size=16, classes=10, sizes=(1, 2, 4, 8)) -> dict:
    xs, _ = lb.data.evaluation_set("test", size=size)
    out = {"size": size, "classes": classes, "rows": []}
    for b in sizes:
        for k, idx in enumerate(batch_indices(b)):
            x, y = xs[idx], torch.arange(b)
            model = lenet(size, classes)
            g = lb.fl.shared_gradients(model, x, y)
            row = {"batch": b, "images": idx}
            for method in ("ig", "dlg known", "dlg joint"):
                r, _, _ = run(method, model, g, x, y, keep=(k == 0 and b in (4, 8)))
                row[method] = r
            if k == 0 and b in (4, 8):
                row["truth"] = as_uint8(x)
            out["rows"].append(row)
            print(f"batch {b} {idx}: IG {row['ig']['psnr']}, DLG known "
                  f"{row['dlg known']['psnr']}, joint {row['dlg joint']['psnr']} "
                  f"(flat {row['ig']['psnr_baseline']})", flush=True)
    return out


def pair_similarity(xs: torch.Tensor) -> list:
    """(PSNR between the two images, i, j) for every pair, most different first."""
    pairs = [(round(lb.metrics.psnr(xs[i:i + 1], xs[j:j + 1]), 2), i, j)
             for i, j in itertools.combinations(range(len(xs)), 2)]
    return sorted(pairs)


def section_fusion(size=16, classes=10, n_pairs=8) -> dict:
    xs, _ = lb.data.evaluation_set("test", size=size)
    pairs = pair_similarity(xs)
    picks = [pairs[round(k * (len(pairs) - 1) / (n_pairs - 1))] for k in range(n_pairs)]
    rows = []
    for sim, i, j in picks:
        x = xs[[i, j]]
        mean = x.mean(0, keepdim=True).expand_as(x)
        for labels in ([0, 0], [0, 1]):
            y = torch.tensor(labels)
            model = lenet(size, classes)
            g = lb.fl.shared_gradients(model, x, y)
            row = {"pair": [i, j], "similarity": sim, "labels": labels}
            for method in ("ig", "dlg known"):
                r, rec, order = run(method, model, g, x, y, keep=True)
                x_hat = torch.nan_to_num(rec.images.float(), nan=0.5).clamp(0, 1)[order]
                r["psnr_to_average"] = round(lb.metrics.psnr(x_hat, mean), 2)
                r["psnr_between"] = round(lb.metrics.psnr(x_hat[:1], x_hat[1:]), 2)
                row[method] = r
            row["truth"] = as_uint8(x)
            row["truth_to_average"] = round(lb.metrics.psnr(x, mean), 2)
            rows.append(row)
            print(f"fusion {i},{j} (similarity {sim} dB) labels {labels}: IG own "
                  f"{row['ig']['psnr']} avg {row['ig']['psnr_to_average']} between "
                  f"{row['ig']['psnr_between']}; DLG own {row['dlg known']['psnr']} "
                  f"between {row['dlg known']['psnr_between']}", flush=True)
    return {"size": size, "classes": classes, "rows": rows,
            "all_pairs_similarity": summary(p[0] for p in pairs)}


def section_batchnorm(size=16, classes=10) -> dict:
    xs, _ = lb.data.evaluation_set("test", size=size)
    reference = resnet(size, classes)
    warm, _ = lb.data.load("photos", 64, seed=401, size=size)
    with torch.no_grad():  # running statistics from other data, as after training
        reference.train()
        for _ in range(20):
            reference(warm)
    state = reference.state_dict()
    out = {"size": size, "classes": classes, "cases": {}}
    for k, idx in enumerate(batch_indices(4)):
        x, y = xs[idx], torch.arange(4)
        for client_mode in ("train", "eval"):
            client = resnet(size, classes)
            client.load_state_dict(state)
            client.train(client_mode == "train")
            g = lb.fl.shared_gradients(client, x, y)
            batch_stats = matching.batchnorm_statistics(client, x)
            for attacker_mode, prior in (("train", "none"), ("train", "running"),
                                         ("train", "batch"), ("eval", "none")):
                att = resnet(size, classes)
                att.load_state_dict(state)
                att.train(attacker_mode == "train")
                regs = {"tv": matching.IG_DEFAULTS["tv"]}
                kw = {}
                if prior != "none":
                    regs["bn"] = 1e-2
                    if prior == "batch":
                        kw["bn_targets"] = batch_stats
                r, _, _ = run("ig", att, g, x, y, keep=(k == 0), regularizers=regs,
                              **kw)
                name = f"client {client_mode}, attacker {attacker_mode}, prior {prior}"
                case = out["cases"].setdefault(name, {"rows": []})
                case["rows"].append({"images_idx": idx, **r})
                print(f"bn batch {idx} {name}: {r['psnr']} dB "
                      f"(flat {r['psnr_baseline']})", flush=True)
        if k == 0:
            out["truth"] = as_uint8(x)
    for case in out["cases"].values():
        case["psnr"] = summary(r["psnr"] for r in case["rows"])
    return out


SECTIONS = {"set": section_set, "restarts": section_restarts,
            "batches": section_batches, "fusion": section_fusion,
            "batchnorm": section_batchnorm}


def cheap() -> dict:
    """Fixed-length runs at 16x16: a duplicate-label pair and a BN-prior batch."""
    torch.set_num_threads(1)
    xs, _ = lb.data.evaluation_set("test", size=16)
    x = xs[[0, 5]]
    out = {}
    for labels in ([0, 0], [0, 1]):
        y = torch.tensor(labels)
        model = lenet(16, 10)
        g = lb.fl.shared_gradients(model, x, y)
        rec = inverting_gradients(model, g, tuple(x.shape), y, iterations=20)
        out[str(labels)] = round(lb.metrics.psnr(rec.images, x), 2)
    model = resnet(16, 10)
    g = lb.fl.shared_gradients(model, xs[:4], torch.arange(4))
    stats = matching.batchnorm_statistics(model, xs[:4])
    rec = inverting_gradients(model, g, (4, 3, 16, 16), torch.arange(4), iterations=10,
                              regularizers={"tv": 1e-2, "bn": 1e-2}, bn_targets=stats)
    out["bn"] = round(lb.metrics.report(rec.images, xs[:4])["psnr"], 2)
    return out


def main(names: list[str]) -> None:
    run_sections(FILE, SECTIONS, names, cheap)


if __name__ == "__main__":
    main(sys.argv[1:])
