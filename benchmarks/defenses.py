"""Leakage against utility for every defence of chapter 10, at a few strengths.

Writes chapters/data/defenses_bench.json, which chapter 10 plots. Regenerate with

    PYTHONPATH=. python benchmarks/defenses.py

Leakage is measured by attacks the server can run on the defended update:
- iDLG (L-BFGS gradient matching, labels from the signs) on lenet_dlg with
  16x16 photos, one image per client, a fixed budget of ITERS iterations;
  PSNR of the result against the truth (metric only), mean over IMAGES;
- inverting gradients (cosine matching, TV prior, IG_ITERS steps, float32,
  labels read off the defended gradient) on the same photos: cosine
  matching ignores the update's scale, which defeats clipping alone;
- invert_fc on the first layer of an MLP (digits, one sample, float64):
  relative error ||x_hat - x|| / ||x|| of the least-squares read-out;
- labels.recover("idlg") on the same MLP: share of labels right.
Utility: an MLP (64-100-10) trained on the digits by ROUNDS FedSGD rounds,
each on a fresh client batch of CLIENT_BATCH images whose gradient is
defended before the server applies it (SGD, step LR); test accuracy on
held-out digits. Batch size and local steps (FedAvg, client_update) are
swept the same way. Every random draw is seeded.
"""
from __future__ import annotations

import json
import math
import pathlib
import platform
import time

import torch

import leakbook as lb
from leakbook import defenses as D
from leakbook.attacks import labels as L
from leakbook.train import accuracy

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "chapters" / "data" / "defenses_bench.json"
IMAGES = 3          # photos attacked per setting
ITERS = 400         # iDLG budget (L-BFGS iterations)
IG_ITERS = 300      # inverting-gradients budget (signed Adam steps)
FC_SAMPLES = 20     # digits read by invert_fc / labels per setting
ROUNDS = 150        # FedSGD rounds for utility
CLIENT_BATCH = 32
LR = 0.5
STRENGTHS = {
    "none": [None],
    "noise": [1e-4, 1e-3, 1e-2, 1e-1],
    "clip": [1.0, 0.1, 0.01],
    "clip_and_noise": [0.01, 0.1, 1.0],   # noise multiplier z at max_norm C_DP
    "prune": [0.2, 0.5, 0.7, 0.9, 0.99],
    "quantize": [8, 4, 2, 1],
}
C_DP = 1.0
BATCH_SIZES = [1, 2, 4, 8, 10]  # iDLG on a batch needs distinct labels
LOCAL_STEPS = [1, 2, 4, 8]


def defend(name, strength, update, seed):
    """Apply one defence at one strength (``None``: the raw update)."""
    if name == "none":
        return [t.clone() for t in update]
    if name == "noise":
        return D.gaussian_noise(update, strength, seed=seed)
    if name == "clip":
        return D.clip(update, strength)
    if name == "clip_and_noise":
        return D.clip_and_noise(update, C_DP, strength, seed=seed)
    if name == "prune":
        return D.prune(update, strength)
    return D.quantize(update, int(strength), seed=seed)


def setup():
    photos, _ = lb.data.load("photos", n=IMAGES, seed=0, size=16)
    dx, dy = lb.data.load("digits", n=1797, seed=0)
    lenet = lb.models.build("lenet_dlg", seed=0, image_size=16, dtype=torch.float64)
    return {"photos": photos.double(), "lenet": lenet,
            "train": (dx[:1200], dy[:1200]), "test": (dx[1200:], dy[1200:]),
            "fc_x": dx[1200:1200 + FC_SAMPLES].double(),
            "fc_y": dy[1200:1200 + FC_SAMPLES]}


def idlg_psnr(s, name, strength, batch=1, local_steps=1):
    """Mean iDLG PSNR over the photos (batch > 1: one batch of distinct labels)."""
    m, out = s["lenet"], []
    # labels 0..B-1: the photos' own classes do not matter to the attack
    for i in range(IMAGES if batch == 1 else 1):
        x = s["photos"][i:i + 1] if batch == 1 else _batch_photos(batch)
        y = torch.arange(len(x)) % 10
        if local_steps == 1:
            g = lb.fl.shared_gradients(m, x, y)
        else:  # the server treats -update / (lr * steps) as a gradient
            u = lb.fl.client_update(m, x, y, lr=0.1, local_steps=local_steps)
            g = [-t / (0.1 * local_steps) for t in u]
        g = defend(name, strength, g, seed=i)
        try:
            r = lb.attacks.idlg(m, g, tuple(x.shape), max_iter=ITERS, seed=0)
            out.append(lb.metrics.report(r.images.clamp(0, 1), x)["psnr"])
        except ValueError:  # the defended gradient left nothing to read
            out.append(float("nan"))
    return float(torch.tensor(out).nanmean()) if out else float("nan")


def ig_psnr(s, name, strength):
    """Mean inverting-gradients PSNR over the photos, one image per client."""
    m = lb.models.build("lenet_dlg", seed=0, image_size=16)
    out = []
    for i in range(IMAGES):
        x = s["photos"][i:i + 1].float()
        g = defend(name, strength, lb.fl.shared_gradients(m, x, torch.tensor([i])),
                   seed=i)
        try:
            lab = L.recover(m, g, 1, method="idlg")
        except ValueError:
            lab = torch.tensor([0])
        r = lb.attacks.inverting_gradients(m, g, tuple(x.shape), lab,
                                           iterations=IG_ITERS, seed=0)
        out.append(lb.metrics.psnr(r.images, x))
    return float(torch.tensor(out).mean())


def _batch_photos(b):
    x, _ = lb.data.load("photos", n=b, seed=1, size=16)
    return x.double()


def fc_leakage(s, name, strength):
    """invert_fc relative error and label accuracy on an MLP, one digit per client."""
    mlp = lb.models.build("mlp", seed=0, dtype=torch.float64)
    errs, hits = [], []
    for i in range(FC_SAMPLES):
        x, y = s["fc_x"][i:i + 1], s["fc_y"][i:i + 1]
        g = defend(name, strength, lb.fl.shared_gradients(mlp, x, y), seed=i)
        try:
            est = lb.attacks.invert_fc(g[0], g[1]).input
            errs.append(float((est - x.flatten()).norm() / x.norm()))
        except ValueError:
            errs.append(float("inf"))
        try:
            lab = L.recover(mlp, g, 1, method="idlg")
            hits.append(float(lab[0] == y[0]))
        except ValueError:
            hits.append(0.0)
    errs = torch.tensor(errs)
    return float(errs.median()), float(torch.tensor(hits).mean())


def utility(s, name, strength, batch=CLIENT_BATCH, local_steps=1):
    """Test accuracy of an MLP after ROUNDS rounds on defended updates."""
    model = lb.models.build("mlp", seed=0)
    (x, y), (xt, yt) = s["train"], s["test"]
    gen = torch.Generator().manual_seed(0)
    for r in range(ROUNDS):
        idx = torch.randint(len(x), (batch * local_steps,), generator=gen)
        if local_steps == 1:
            u = [-LR * g for g in lb.fl.shared_gradients(model, x[idx], y[idx])]
        else:
            u = lb.fl.client_update(model, x[idx], y[idx], lr=LR,
                                    local_steps=local_steps, batch_size=batch, seed=r)
        u = defend(name, strength, u, seed=1000 + r) if name != "none" else u
        with torch.no_grad():
            for p, d in zip(model.parameters(), u):
                p += d
    return accuracy(model, xt, yt)


def main():
    torch.set_num_threads(1)
    lb.seed_everything(0, threads=1)
    start = time.time()
    s = setup()
    rows = []
    for name, strengths in STRENGTHS.items():
        for st in strengths:
            t = time.time()
            psnr = idlg_psnr(s, name, st)
            ig = ig_psnr(s, name, st)
            fc_err, lab = fc_leakage(s, name, st)
            acc = utility(s, name, st)
            rows.append({"defence": name, "strength": st, "idlg_psnr": psnr,
                         "ig_psnr": ig,
                         "fc_rel_error": fc_err, "label_accuracy": lab,
                         "test_accuracy": acc, "seconds": time.time() - t})
            print(rows[-1], flush=True)
    for name, key, values in [("batch_size", "batch", BATCH_SIZES),
                              ("local_steps", "local_steps", LOCAL_STEPS)]:
        for v in values:
            t = time.time()
            rows.append({"defence": name, "strength": v,
                         "idlg_psnr": idlg_psnr(s, "none", None, **{key: v}),
                         "test_accuracy": utility(s, "none", None, **{key: v}),
                         "seconds": time.time() - t})
            print(rows[-1], flush=True)
    for r in rows:
        for k, v in r.items():
            if isinstance(v, float) and not math.isfinite(v):
                r[k] = None
    result = {
        "settings": {"images": IMAGES, "idlg_max_iter": ITERS,
                     "ig_iterations": IG_ITERS, "image_size": 16,
                     "attack_model": "lenet_dlg (float64)", "fc_samples": FC_SAMPLES,
                     "utility_model": "mlp 64-100-10", "rounds": ROUNDS,
                     "client_batch": CLIENT_BATCH, "lr": LR, "dp_max_norm": C_DP,
                     "train": 1200, "test": 597,
                     "batch_size_note": "utility with client batch B, one step",
                     "local_steps_note": "lenet lr 0.1 on one image; utility: "
                                         "FedAvg, k steps of 32 images, lr LR"},
        "rows": rows,
        "seconds": time.time() - start,
        "machine": platform.platform(), "torch": torch.__version__,
    }
    OUT.write_text(json.dumps(result, indent=1))
    print(f"wrote {OUT} in {result['seconds']:.0f} s")


if __name__ == "__main__":
    main()
