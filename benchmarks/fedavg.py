"""Beyond one gradient: labels and images from FedAvg updates and pairs (chapter 06).

    python -m benchmarks.fedavg                 # -> chapters/data/fedavg_bench.json
    python -m benchmarks.fedavg --only labels   # re-run some sections, keep the rest

Sections (each records its own provenance under ``section_provenance``):

labels      untrained ReLU MLP 64-100-10 on digits, N = 32 with half the batch
            in one class (``labels.draw_labels(32, 10, 0.5)``), client batches
            from a pool the attacker never sees, TRIALS trials (test seeds).
            Multiset label accuracy of naive Geng on update / (-lr T), the
            interpolated path, the simulated path with noise dummies,
            unlabelled auxiliary digits and labelled auxiliary digits, and the
            oracle (the batch's own softmax path), against lr, local steps and
            local batch size; and with a misstated schedule.
defaults    dev split: relative L2 against cosine distance, for the attack on
            the own gradient and for the unrolled attack (the chosen default).
images      lenet_dlg (sigmoid, U(-0.5, 0.5)), the 12 test images at 32x32,
            one image per client, label known, ITERATIONS L-BFGS iterations:
            the attack on the image's own gradient (reference), the update
            read as one gradient (cosine and L2), and the unrolled attack,
            against lr (5 steps) and local steps (lr = LR_IMAGES); a misstated
            lr or step count.
batches     the 12 test images at 16x16 as three batches of four (as many
            unknowns as one 32x32 image), lr = LR_IMAGES, two local epochs
            with local batch size 1, 2 or 4.
pairs       the same batches, gradients from 1-4 rounds: global models of a
            FedAvg run on other photos (the server's models in those rounds).

PSNR and accuracy read the truth: they score attacks, never steer them.

The sweep is reduced to fit about 15 minutes of one CPU thread on a shared
machine: 6 label trials (not 20) and no lr 0.3 row; for the images 300 L-BFGS
iterations (not 500), learning rates 0.001, 0.01, 0.1, 1, 2 and 5 local steps
(10 and 20 cost 2-4 times more per iteration), the L2 reading only at
LR_IMAGES, no misstated schedule; the distance default chosen on the first 4
dev images.
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import numpy as np
import torch

import leakbook as lb
from leakbook import fl, metrics
from leakbook.attacks import fedavg as FA
from leakbook.attacks import labels as L

from .common import DATA, command_line, finish, provenance, write

OUT = "fedavg_bench.json"
#: label trials: the method was designed on seeds 0..19 ("dev"), reported on these
TEST_SEEDS = list(range(1000, 1006))
LABEL_SETTINGS = [  # (lr, local steps, local batch size)
    (0.1, 5, None), (0.5, 5, None), (1.0, 5, None),
    (0.5, 1, None), (0.5, 2, None), (0.5, 10, None), (0.5, 20, None),
    (0.5, 5, 8), (0.5, 5, 16), (1.0, 10, None)]
#: the attacker states lr or steps wrongly; the client used lr 0.5, 5 steps
LABEL_MISSTATED = [("lr x0.5", 0.25, 5), ("lr x2", 1.0, 5), ("steps 4", 0.5, 4),
                   ("steps 6", 0.5, 6)]
ITERATIONS = 300
#: images of the first SHOWN test images are stored for the chapter's figures
SHOWN = 4
LR_IMAGES = 0.01
IMAGE_LRS = [0.001, 0.01, 0.1]
IMAGE_STEPS = [1, 2, 5]
IMAGE_MISSTATED = []
#: dev images the distance default is chosen on
DEV_IMAGES = 4
LOCAL_BATCHES = [1, 2, 4]
PAIRS = [1, 2, 3, 4]
#: name -> (lr, local steps, local batch size) of the rounds' other clients
ROUND_TRAINING = {"lr": 0.01, "local_steps": 1, "clients": 8}
#: label accuracies are exact; PSNR of 30 L-BFGS iterations may move by rounding
TOLERANCE = {"rel": 1e-3, "abs": 0.05}


# --- labels ------------------------------------------------------------------

def digit_split():
    """Digits: attacker's auxiliary images (with labels) and the clients' pool."""
    x, y = lb.data.load("digits", 1797, seed=0)
    return (x[700:900], y[700:900]), (x[900:], y[900:])


def true_path_mean(model, x, y, lr, steps, batch_size, seed):
    """The batch's softmax mean averaged over the client's own steps (an oracle)."""
    local, probs = copy.deepcopy(model), []
    for idx in FA.schedule(len(x), steps, batch_size, seed):
        with torch.no_grad():
            probs.append(local(x[idx]).double().softmax(-1).mean(0))
        g = fl.shared_gradients(local, x[idx], y[idx])
        with torch.no_grad():
            for p, gi in zip(local.parameters(), g):
                p -= lr * gi
    return torch.stack(probs).mean(0)


def label_trial(seed, lr, steps, batch_size, aux, pool, methods=None,
                stated=None) -> dict:
    """Accuracy of every label method on one client's update."""
    (xa, ya), (xp, yp) = aux, pool
    model = lb.models.build("mlp", seed=seed, widths=(100,), activation="relu")
    xb, yb = L.sample_batch(xp, yp, L.draw_labels(32, 10, 0.5, seed=seed), seed=seed)
    upd = fl.client_update(model, xb, yb, lr=lr, local_steps=steps,
                           batch_size=batch_size, seed=seed)
    s_lr, s_steps = stated or (lr, steps)
    kw = {"lr": s_lr, "local_steps": s_steps, "batch_size": batch_size,
          "shuffle_seed": seed}
    every = {
        "naive": lambda: L.recover(model, FA.as_gradient(upd, s_lr, s_steps), 32,
                                   "geng", dummies=xa),
        "interpolate": lambda: L.recover_fedavg(model, upd, 32, path="interpolate",
                                                dummies=xa, **kw),
        "simulate_noise": lambda: L.recover_fedavg(model, upd, 32,
                                                   input_shape=(1, 8, 8), **kw),
        "simulate_aux": lambda: L.recover_fedavg(model, upd, 32, dummies=xa, **kw),
        "simulate_labelled": lambda: L.recover_fedavg(model, upd, 32, dummies=xa,
                                                      dummy_labels=ya, **kw),
        "oracle": lambda: L.recover_fedavg(
            model, upd, 32, softmax_mean=true_path_mean(model, xb, yb, lr, steps,
                                                        batch_size, seed), **kw),
    }
    return {m: metrics.label_accuracy(every[m](), yb) for m in (methods or every)}


def labels_section(seeds=TEST_SEEDS, settings=LABEL_SETTINGS,
                   misstated=LABEL_MISSTATED) -> dict:
    aux, pool = digit_split()
    rows = []
    for lr, steps, batch in settings:
        t0 = time.time()
        acc = [label_trial(s, lr, steps, batch, aux, pool) for s in seeds]
        rows.append({"lr": lr, "local_steps": steps, "batch_size": batch,
                     "accuracy": {m: [a[m] for a in acc] for m in acc[0]}})
        print(f"labels lr={lr} T={steps} b={batch}: {time.time() - t0:.0f} s",
              flush=True)
    wrong = []
    for name, lr, steps in misstated:
        acc = [label_trial(s, 0.5, 5, None, aux, pool,
                           methods=["naive", "interpolate", "simulate_labelled"],
                           stated=(lr, steps)) for s in seeds]
        wrong.append({"name": name, "stated_lr": lr, "stated_steps": steps,
                      "accuracy": {m: [a[m] for a in acc] for m in acc[0]}})
    return {"settings": {"model": "mlp 64-100-10 relu, untrained", "batch": 32,
                         "duplicate_share": 0.5, "seeds": list(seeds),
                         "aux": "digits[700:900] (labels for simulate_labelled)",
                         "pool": "digits[900:]", "client": {"lr": 0.5, "steps": 5}},
            "rows": rows, "misstated": wrong}


# --- images ------------------------------------------------------------------

def _u8(x: torch.Tensor) -> list:
    return (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).tolist()


def _score(rec, x, keep_images: bool = False) -> dict:
    """PSNR, SSIM, flat baseline, the attacker's final distance (and the images)."""
    r = metrics.report(rec.images, x)
    out = {"psnr": r["psnr"], "ssim": r["ssim"], "psnr_baseline": r["psnr_baseline"],
           "distance": rec.stats["final_distance"]}
    if keep_images:
        out["images"] = _u8(rec.images[r["order"]])
    return out


def image_attacks(model, x, y, lr, steps, batch_size=None, which=("naive", "unrolled"),
                  iterations=ITERATIONS, distance="cosine", stated=None,
                  keep_images: bool = False) -> dict:
    """One client's update (full schedule known unless ``stated``); the attacks."""
    shape = tuple(x.shape)
    upd = fl.client_update(model, x, y, lr=lr, local_steps=steps, batch_size=batch_size)
    s_lr, s_steps = stated or (lr, steps)
    kw = {"iterations": iterations, "distance": distance}
    runs = {
        "own": lambda: FA.invert_pairs([(model, fl.shared_gradients(model, x, y))],
                                       shape, y, **kw),
        "naive": lambda: FA.invert_pairs([(model, FA.as_gradient(upd, s_lr, s_steps))],
                                         shape, y, **kw),
        "naive_l2": lambda: FA.invert_pairs(
            [(model, FA.as_gradient(upd, s_lr, s_steps))], shape, y,
            **{**kw, "distance": "l2"}),
        "unrolled": lambda: FA.invert_fedavg(model, upd, shape, y, lr=s_lr,
                                             local_steps=s_steps, batch_size=batch_size,
                                             **kw),
    }
    return {w: _score(runs[w](), x, keep_images) for w in which}


def images_section(split="test", lrs=IMAGE_LRS, steps_list=IMAGE_STEPS,
                   misstated=IMAGE_MISSTATED, iterations=ITERATIONS) -> dict:
    x, y = lb.data.evaluation_set(split)
    model = lb.models.build("lenet_dlg")
    per_image = []
    for i in range(len(x)):
        t0 = time.time()
        xi, yi = x[i:i + 1], y[i:i + 1] % 10
        own = image_attacks(model, xi, yi, 1.0, 1, which=("own",),
                            iterations=iterations, keep_images=i < SHOWN)
        rec = {"own": own["own"]}
        rec["lr"] = {str(lr): image_attacks(model, xi, yi, lr, 5, iterations=iterations,
                                            which=("naive", "unrolled") + (
                                                ("naive_l2",) if lr == LR_IMAGES
                                                else ()),
                                            keep_images=lr == LR_IMAGES and i < SHOWN)
                     for lr in lrs}
        rec["steps"] = {str(s): rec["lr"][str(LR_IMAGES)] if s == 5 else
                        image_attacks(model, xi, yi, LR_IMAGES, s,
                                      iterations=iterations)
                        for s in steps_list}
        rec["misstated"] = {n: image_attacks(model, xi, yi, LR_IMAGES, 5,
                                             which=("unrolled",), iterations=iterations,
                                             stated=(lr, s))["unrolled"]
                            for n, lr, s in misstated}
        if i < SHOWN:
            rec["truth"] = _u8(xi)
        per_image.append(rec)
        print(f"image {i}: {time.time() - t0:.0f} s", flush=True)
    return {"settings": {"model": "lenet_dlg", "size": 32, "split": split,
                         "iterations": iterations, "optimizer": "lbfgs",
                         "distance": "cosine", "lr_for_steps": LR_IMAGES,
                         "steps_for_lr": 5, "lrs": list(lrs),
                         "steps": list(steps_list),
                         "misstated": [list(m) for m in misstated]},
            "names": list(lb.data.EVALUATION_NAMES), "per_image": per_image}


def defaults_section(iterations=ITERATIONS) -> dict:
    """Dev split: relative L2 or cosine, for the own-gradient and unrolled attacks."""
    x, y = lb.data.evaluation_set("dev")
    model = lb.models.build("lenet_dlg")
    out = {"own_l2": [], "own_cosine": [], "unrolled_l2": [], "unrolled_cosine": []}
    for i in range(DEV_IMAGES):
        xi, yi = x[i:i + 1], y[i:i + 1] % 10
        for d in ("l2", "cosine"):
            r = image_attacks(model, xi, yi, LR_IMAGES, 5, which=("own", "unrolled"),
                              iterations=iterations, distance=d)
            out[f"own_{d}"].append(r["own"]["psnr"])
            out[f"unrolled_{d}"].append(r["unrolled"]["psnr"])
    return {"split": "dev", "images": DEV_IMAGES, "lr": LR_IMAGES, "local_steps": 5, "psnr": out}


def eval_batches(split="test", size=16):
    """The evaluation set as three batches of four (labels distinct in each)."""
    x, y = lb.data.evaluation_set(split, size=size)
    return [(x[k:k + 4], y[k:k + 4] % 10) for k in range(0, len(x), 4)]


def round_models(n: int, size: int = 16) -> list:
    """The server's global models in n consecutive rounds of a FedAvg run.

    Round 0 is the seeded lenet_dlg; each later round adds the mean update of
    ROUND_TRAINING["clients"] clients holding other photographs.
    """
    w = lb.models.build("lenet_dlg", image_size=size)
    models = [w]
    for r in range(n - 1):
        updates = []
        for c in range(ROUND_TRAINING["clients"]):
            xo, yo = lb.data.load("photos", 8, seed=10_000 + 100 * r + c, size=size)
            updates.append(fl.client_update(w, xo, yo, lr=ROUND_TRAINING["lr"],
                                            local_steps=ROUND_TRAINING["local_steps"]))
        w = copy.deepcopy(w)
        with torch.no_grad():
            for p, d in zip(w.parameters(), fl.fedavg(updates)):
                p += d
        models.append(w)
    return models


def batches_section(iterations=ITERATIONS) -> dict:
    model = lb.models.build("lenet_dlg", image_size=16)
    rows = []
    for k, (xb, yb) in enumerate(eval_batches()):
        row = {"own": image_attacks(model, xb, yb, 1.0, 1, which=("own",),
                                    iterations=iterations, keep_images=k == 0)["own"],
               "local_batch": {}}
        if k == 0:
            row["truth"] = _u8(xb)
        for b in LOCAL_BATCHES:  # two local epochs
            row["local_batch"][str(b)] = image_attacks(model, xb, yb, LR_IMAGES,
                                                       2 * 4 // b, batch_size=b,
                                                       iterations=iterations,
                                                       keep_images=b == 1 and k == 0)
        rows.append(row)
        print(f"batch {k} done", flush=True)
    return {"settings": {"size": 16, "batch": 4, "epochs": 2, "lr": LR_IMAGES,
                         "local_batches": LOCAL_BATCHES, "iterations": iterations},
            "rows": rows}


def pairs_section(iterations=ITERATIONS) -> dict:
    models = round_models(max(PAIRS))
    rows = []
    for k, (xb, yb) in enumerate(eval_batches()):
        grads = [(m, fl.shared_gradients(m, xb, yb)) for m in models]
        row = {}
        for n in PAIRS:
            rec = FA.invert_pairs(grads[:n], tuple(xb.shape), yb, iterations=iterations)
            row[str(n)] = _score(rec, xb, keep_images=k == 0 and n in (1, max(PAIRS)))
        rows.append(row)
        print(f"pairs batch {k} done", flush=True)
    return {"settings": {"size": 16, "batch": 4, "pairs": PAIRS,
                         "rounds": ROUND_TRAINING, "iterations": iterations},
            "rows": rows}


SECTIONS = {"images": images_section, "labels": labels_section,
            "defaults": defaults_section, "batches": batches_section,
            "pairs": pairs_section}


# --- the cheap re-run --------------------------------------------------------

def cheap() -> dict:
    """Two label trials and one small image attack of each kind (16x16, 30 its)."""
    torch.set_num_threads(1)
    aux, pool = digit_split()
    labels = [label_trial(s, 0.5, 5, None, aux, pool,
                          methods=["naive", "interpolate", "simulate_labelled"])
              for s in (1000, 1001)]
    x, y = lb.data.evaluation_set("test", size=16)
    model = lb.models.build("lenet_dlg", image_size=16)
    img = image_attacks(model, x[:1], y[:1] % 10, LR_IMAGES, 5, iterations=30,
                        which=("own", "naive", "unrolled"))
    return {"labels": labels,
            "images": {k: round(v["psnr"], 3) for k, v in img.items()}}


def _saved() -> dict:
    path = DATA / OUT
    return json.loads(path.read_text()) if path.exists() else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", choices=sorted(SECTIONS),
                        help="re-run these sections and keep the others")
    args = parser.parse_args()
    torch.set_num_threads(1)
    record = provenance(command_line())
    names = args.only or list(SECTIONS)
    done, section_prov = {}, {}
    # keep what is done if a later section fails; cheap is added at the end
    partial = DATA / f"{OUT}.{'+'.join(names)}.partial"
    for name in names:
        start = provenance(command_line())
        done[name] = SECTIONS[name]()
        section_prov[name] = finish(start)
        partial.write_text(json.dumps({**done, "section_provenance": section_prov},
                                      separators=(",", ":")) + "\n")
        print(f"section {name} done", flush=True)
    check = cheap()
    # the saved file is read only now, so --only runs of other sections that
    # finished in the meantime are kept
    old = _saved() if args.only else {}
    payload = {k: done.get(k, old.get(k)) for k in SECTIONS
               if k in done or k in old}
    payload["section_provenance"] = {**old.get("section_provenance", {}),
                                     **section_prov}
    out = write(OUT, payload, record, check)
    partial.unlink()
    print(f"wrote {out}")

if __name__ == "__main__":
    main()
