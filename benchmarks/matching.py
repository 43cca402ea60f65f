"""Benchmark of the gradient-matching attacks of chapters 04 and 05.

    PYTHONPATH=. python benchmarks/matching.py            # full run (~15 min)
    PYTHONPATH=. python benchmarks/matching.py --quick    # smoke test

Writes chapters/data/matching_bench.json: for every fixed case, PSNR, SSIM,
label accuracy and wall time of each attack, and its time-to-quality curve
(PSNR of the current iterate against attack time). The truth is read only by
the scoring callback, whose own time is excluded from the clock.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import leakbook as lb
from leakbook.attacks import dlg, idlg, inverting_gradients

OUT = Path(__file__).resolve().parents[1] / "chapters" / "data" / "matching_bench.json"


class Tracker:
    """Callback that records (attack seconds, PSNR) every ``every`` iterations.

    The time spent scoring (which reads the truth) is excluded from the clock.
    """

    def __init__(self, x_true: torch.Tensor, every: int = 10):
        self.x, self.every = x_true, every
        self.start, self.excluded = time.perf_counter(), 0.0
        self.times, self.psnrs = [], []

    def __call__(self, it, images, loss):
        t = time.perf_counter()
        if it % self.every == 0:
            x_hat = images.detach().float().clamp(0, 1)
            perm = lb.metrics.match(x_hat, self.x)
            self.times.append(round(t - self.start - self.excluded, 4))
            self.psnrs.append(round(lb.metrics.psnr(x_hat[perm], self.x), 3))
        self.excluded += time.perf_counter() - t

    def time_to(self, db: float):
        """Attack seconds until the PSNR first reached ``db`` (None if never)."""
        return next((t for t, p in zip(self.times, self.psnrs) if p >= db), None)


def reference_dlg(model, grads, shape, num_classes=10, steps=300, seed=0,
                  callback=None):
    """The published DLG loop: torch L-BFGS (lr 1, max_iter 20 per step),
    float32, joint soft labels, 300 outer steps (mit-han-lab/dlg main.py)."""
    gen = torch.Generator().manual_seed(seed)
    dx = torch.randn(shape, generator=gen).requires_grad_(True)
    dy = torch.randn(shape[0], num_classes, generator=gen).requires_grad_(True)
    opt = torch.optim.LBFGS([dx, dy])
    params = list(model.parameters())

    def closure():
        opt.zero_grad()
        out = model(dx)
        loss = -(F.softmax(dy, -1) * F.log_softmax(out, -1)).sum(-1).mean()
        dg = torch.autograd.grad(loss, params, create_graph=True)
        d = sum(((a - b) ** 2).sum() for a, b in zip(dg, grads))
        d.backward()
        return d

    t0, hist = time.perf_counter(), []
    for step in range(steps):
        d = opt.step(closure)
        hist.append(float(d.detach()))
        if callback is not None:
            callback(step * 20, dx.detach(), hist[-1])  # every step = 20 iterations
        if not math.isfinite(hist[-1]):
            break
    return lb.Reconstruction(dx.detach(), F.softmax(dy, -1).argmax(1).detach(), hist,
                             time.perf_counter() - t0, {})


# --- cases -------------------------------------------------------------------


def lenet(activation="sigmoid", scale=1.0, dropout=0.0, size=32, seed=0):
    """DLG's LeNet, optionally with weights scaled or dropout before the head."""
    net = lb.models.build("lenet_dlg", seed=seed, activation=activation, image_size=size)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(scale)
    if dropout:
        net = torch.nn.Sequential(*net[:-1], torch.nn.Dropout(dropout), net[-1])
    return net


def train_briefly(net, steps=300, seed=0, size=32):
    """Train on bundled photos (not the attacked ones) with Adam: a 'trained' model."""
    x, y = lb.data.load("photos", 320, seed=1000 + seed, size=size)
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


def as_uint8(images: torch.Tensor) -> list:
    """Images (B, C, H, W) as nested lists of 0..255 integers (a small JSON)."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).tolist()


def run(attack: str, model, x, y, grads, keep_images=False, every=10, **kw) -> dict:
    """Run one attack on (x, y)'s shared gradient; score it against the truth."""
    tr = Tracker(x, every=every)
    shape = tuple(x.shape)
    if attack == "reference":
        rec = reference_dlg(model, grads, shape, callback=tr, **kw)
    elif attack == "dlg":
        rec = dlg(model, grads, shape, callback=tr, **kw)
    elif attack == "idlg":
        rec = idlg(model, grads, shape, callback=tr, **kw)
    elif attack == "ig":
        rec = inverting_gradients(model, grads, shape, kw.pop("labels", y), callback=tr,
                                  **kw)
    else:
        raise ValueError(attack)
    images = rec.images.float()
    if not torch.isfinite(images).all():
        images = torch.nan_to_num(images, nan=0.5)
    rep = lb.metrics.report(images, x, rec.labels, y)
    out = {"attack": attack, "psnr": round(rep["psnr"], 2), "ssim": round(rep["ssim"], 4),
           "label_acc": rep["label_acc"], "wall_time": round(rec.wall_time, 2),
           "iterations": len(rec.loss_history),
           "final_loss": float(rec.loss_history[-1]) if rec.loss_history else None,
           "status": rec.stats.get("status"), "curve": [tr.times, tr.psnrs],
           "time_to": {str(db): tr.time_to(db) for db in (20, 30, 40, 50)}}
    if keep_images:
        out["images"] = as_uint8(images[rep["order"]])
    return out


def shared(model, x, y, loss="ce"):
    return lb.fl.shared_gradients(model, x, y, loss=loss)


# --- sections ----------------------------------------------------------------


def speed(quick):
    """The published DLG loop against ours, side by side, on 32x32 photos."""
    rows = []
    for s in range(1 if quick else 3):
        model = lenet()
        x, y = lb.data.load("photos", 1, seed=s)
        g = shared(model, x, y)
        common = dict(max_iter=200 if quick else 8000, rel_tol=1e-14)
        for name, attack, kw in [("reference DLG (torch L-BFGS, float32)", "reference",
                                  {"steps": 10 if quick else 300}),
                                 ("DLG, ours (joint labels)", "dlg", common),
                                 ("iDLG, ours (label first)", "idlg", common)]:
            r = run(attack, model, x, y, g, every=1 if attack == "reference" else 10,
                    keep_images=(s == 0), **kw)
            r.update(name=name, image_seed=s)
            rows.append(r)
            print(f"speed seed {s} {name}: to 40 dB {r['time_to']['40']} s, "
                  f"to 50 dB {r['time_to']['50']} s, PSNR {r['psnr']}", flush=True)
    return {"rows": rows, "truth": as_uint8(lb.data.load("photos", 1, seed=0)[0])}


def reliability(quick):
    """DLG (joint labels) against iDLG over several images and fresh models."""
    rows = []
    for s in range(2 if quick else 8):
        model = lenet(seed=100 + s)
        x, y = lb.data.load("photos", 1, seed=200 + s)
        g = shared(model, x, y)
        for attack in ("dlg", "idlg"):
            r = run(attack, model, x, y, g, max_iter=100 if quick else 1500)
            r.update(seed=s)
            rows.append(r)
            print(f"reliability {s} {attack}: PSNR {r['psnr']} label {r['label_acc']}",
                  flush=True)
    return rows


def variations(quick):
    """Controlled failures of DLG (as iDLG, label first) on one 32x32 photo."""
    x, y = lb.data.load("photos", 1, seed=0)
    it = 100 if quick else 1500
    cases = {}

    def attack(name, client, attacker=None, loss="ce", **kw):
        g = shared(client, x, y, loss=loss)
        attacker = attacker or client
        r = run("idlg", attacker, x, y, g, max_iter=it, keep_images=True, **kw)
        ig = run("ig", attacker, x, y, g, iterations=200 if quick else 1500,
                 regularizers={"tv": 1e-3}, keep_images=True)
        cases[name] = {"dlg": r, "ig": ig}
        print(f"variation {name}: DLG {r['psnr']} dB, IG {ig['psnr']} dB", flush=True)

    attack("sigmoid, U(-0.5, 0.5) (DLG's setting)", lenet())
    attack("ReLU instead of sigmoid", lenet("relu"))
    for sc in (0.1, 0.3, 3.0):
        attack(f"initial weights x{sc}", lenet(scale=sc))
    trained, acc = train_briefly(lenet(), steps=20 if quick else 300)
    attack("trained model", trained)
    cases["trained model"]["train_accuracy"] = acc
    client = lenet(dropout=0.3)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)  # the client's dropout mask, unknown to the attacker
        g = shared(client, x, y)
    attacker = lenet(dropout=0.3).eval()
    r = run("idlg", attacker, x, y, g, max_iter=it, keep_images=True)
    ig = run("ig", attacker, x, y, g, iterations=200 if quick else 1500,
             regularizers={"tv": 1e-3}, keep_images=True)
    cases["dropout on at the client"] = {"dlg": r, "ig": ig}
    print(f"variation dropout: DLG {r['psnr']} dB, IG {ig['psnr']} dB", flush=True)
    attack("client loss 0.5 CE, attacker CE", lenet(),
           loss=lambda out, t: 0.5 * F.cross_entropy(out, t))
    return {"truth": as_uint8(x), "cases": cases}


def batches(quick):
    """DLG and IG on batches of 32x32 photos; IG quality against batch size."""
    rows = []
    sizes = (1, 2) if quick else (1, 2, 4, 8)
    for b in sizes:
        x, y = lb.data.load("photos", 0, seed=300 + b, labels=list(range(b)))
        model = lenet()
        g = shared(model, x, y)
        ig = run("ig", model, x, y, g, iterations=200 if quick else 1500, restarts=2,
                 regularizers={"tv": 1e-3}, keep_images=b in (1, 4, 8))
        d = run("dlg", model, x, y, g, labels=y, max_iter=100 if quick else 1500,
                keep_images=b in (1, 4, 8))
        dj = run("dlg", model, x, y, g, max_iter=100 if quick else 1500)
        rows.append({"batch": b, "truth": as_uint8(x) if b in (1, 4, 8) else None,
                     "ig": ig, "dlg_labels_known": d, "dlg_joint": dj})
        print(f"batch {b}: IG {ig['psnr']} DLG(known) {d['psnr']} DLG(joint) "
              f"{dj['psnr']} label {dj['label_acc']}", flush=True)
    return rows


def batchnorm(quick):
    """IG on resnet_tiny with BN: train vs eval mode, with and without the BN prior."""
    x, y = lb.data.load("photos", 0, seed=400, labels=[0, 1, 2, 3], size=16)
    model = lb.models.build("resnet_tiny", seed=0, image_size=16)
    warm, _ = lb.data.load("photos", 64, seed=401, size=16)
    with torch.no_grad():  # running statistics from other data, as after training
        model.train()
        for _ in range(20):
            model(warm)
    it = 200 if quick else 1500
    out = {"truth": as_uint8(x), "cases": {}}
    for client_mode in ("train", "eval"):
        client = lb.models.build("resnet_tiny", seed=0, image_size=16)
        client.load_state_dict(model.state_dict())
        client.train(client_mode == "train")
        g = shared(client, x, y)
        batch_stats = lb.attacks.matching.batchnorm_statistics(client, x)
        for attacker_mode in ("train", "eval"):
            for prior in ("none", "running", "batch"):
                if prior != "none" and attacker_mode == "eval":
                    continue
                att = lb.models.build("resnet_tiny", seed=0, image_size=16)
                att.load_state_dict(model.state_dict())
                att.train(attacker_mode == "train")
                regs = {"tv": 1e-3}
                kw = {}
                if prior != "none":
                    regs["bn"] = 1e-2
                    if prior == "batch":
                        kw["bn_targets"] = batch_stats
                r = run("ig", att, x, y, g, iterations=it, regularizers=regs,
                        keep_images=True, **kw)
                name = f"client {client_mode}, attacker {attacker_mode}, BN prior {prior}"
                out["cases"][name] = r
                print(f"bn {name}: {r['psnr']} dB", flush=True)
    return out


def fusion(quick):
    """IG on pairs with a duplicate label against pairs with distinct labels.

    With one label for two images, the gradient cannot tell which image is
    which; reconstructions drift towards the pair's average (fusion).
    """
    model = lenet(size=16)
    rows = []
    for s in range(1 if quick else 4):
        for labs in ([3, 3], [3, 5]) if s % 2 == 0 else ([8, 8], [8, 1]):
            x, y = lb.data.load("photos", 0, seed=500 + s, labels=labs, size=16)
            g = shared(model, x, y)
            r = run("ig", model, x, y, g, iterations=100 if quick else 600,
                    regularizers={"tv": 1e-2}, keep_images=True)
            x_hat = torch.tensor(r["images"], dtype=torch.float32) / 255
            mean = x.mean(0, keepdim=True).expand_as(x)
            r.update(labels=labs, seed=s, truth=as_uint8(x),
                     psnr_to_average=round(lb.metrics.psnr(x_hat, mean), 2),
                     psnr_truths_to_average=round(lb.metrics.psnr(x, mean), 2))
            rows.append(r)
            print(f"fusion {labs}: own {r['psnr']} dB, to average "
                  f"{r['psnr_to_average']} dB", flush=True)
    return rows


SECTIONS = {"speed": speed, "reliability": reliability, "variations": variations,
            "batches": batches, "batchnorm": batchnorm,
            "fusion": fusion}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny settings, smoke test")
    ap.add_argument("--only", nargs="*", choices=sorted(SECTIONS), help="sections to run")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    lb.seed_everything(0, threads=1)
    path = Path(args.out)
    result = json.loads(path.read_text()) if path.exists() and args.only else {}
    for name in args.only or SECTIONS:
        t = time.perf_counter()
        load = os.getloadavg()[0]
        result[name] = SECTIONS[name](args.quick)
        result.setdefault("seconds", {})[name] = round(time.perf_counter() - t, 1)
        result.setdefault("load_average", {})[name] = [round(load, 2),
                                                       round(os.getloadavg()[0], 2)]
        result["meta"] = {"torch": torch.__version__, "python": platform.python_version(),
                          "threads": torch.get_num_threads(), "quick": args.quick,
                          "command": "PYTHONPATH=. python benchmarks/matching.py"}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, separators=(",", ":")))  # after each section
        print(f"wrote {path} ({path.stat().st_size // 1024} kB)", flush=True)


if __name__ == "__main__":
    main()
