"""Label accuracy per method, batch size, label mix, training stage and network.

Writes chapters/data/labels_bench.json, which chapter 03 plots. Regenerate with

    PYTHONPATH=. python benchmarks/labels.py [--trials 10]

Data: the digits, split once into 700 training images (for the trained
networks), 200 held-out images (the attacker's dummies) and 897 images from
which client batches are drawn. Accuracy is the multiset label accuracy,
computed with the true labels (a metric, never part of an attack).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import platform
import time

import torch

import leakbook as lb
from leakbook import data, fl, metrics, models
from leakbook.attacks import labels as L
from leakbook.train import accuracy, train_classifier

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "chapters" / "data" / "labels_bench.json"
BATCH_SIZES = [1, 2, 4, 8, 10, 16, 32, 64, 128]
MODES = {"unique": None, "random": 0.0, "heavy": 0.5}
#: name -> (zoo name, build keywords)
NETWORKS = {
    "relu": ("mlp", {"widths": (100,), "activation": "relu"}),
    "leaky_relu": ("mlp", {"widths": (100,), "activation": "leaky_relu"}),
    "sigmoid": ("mlp", {"widths": (100,), "activation": "sigmoid"}),
    "tanh": ("mlp", {"widths": (100,), "activation": "tanh"}),
    "relu_narrow": ("mlp", {"widths": (16,), "activation": "relu"}),
    "lenet_sigmoid": ("lenet_dlg", {"in_channels": 1, "image_size": 8}),
}
TRAIN = {"epochs": 10, "lr": 1e-2}


def split():
    """The fixed split of the digits: training, attacker's dummies, client pool."""
    x, y = data.load("digits", 1797, seed=0)
    return (x[:700], y[:700]), x[700:900], (x[900:], y[900:])


def network(name: str, trained: bool, seed: int, train_set):
    """A seeded network, trained for TRAIN epochs on the training split if asked."""
    zoo, kw = NETWORKS[name]
    model = models.build(zoo, seed=seed, **kw)
    if trained:
        train_classifier(model, *train_set, seed=seed, **TRAIN)
    return model


def methods(model, grads, batch_size, x_batch, heldout):
    """Every method's labels for one shared gradient (methods that apply)."""
    out = {}
    if batch_size == 1:
        out["idlg"] = L.recover(model, grads, 1, "idlg")
    if batch_size <= 10:
        out["yin"] = L.recover(model, grads, batch_size, "yin")
    out["llg"] = L.recover(model, grads, batch_size, "llg")
    with torch.no_grad():  # the true softmax mean: an oracle, for reference only
        p_true = model(x_batch).softmax(-1).mean(0)
    out["geng_true"] = L.recover(model, grads, batch_size, "geng", softmax_mean=p_true)
    out["geng_heldout"] = L.recover(model, grads, batch_size, "geng", dummies=heldout)
    out["geng_noise"] = L.recover(model, grads, batch_size, "geng",
                                  input_shape=(1, 8, 8))
    out["geng_heldout_nobias"] = L.recover(model, grads, batch_size, "geng",
                                           dummies=heldout, use_bias=False)
    out["geng_refined"] = L.recover(model, grads, batch_size, "geng", dummies=heldout,
                                    refine=True)
    return out


def run(trials: int) -> dict:
    train_set, heldout, (xp, yp) = split()
    rows, model_acc = [], {}
    for name in NETWORKS:
        for trained in (False, True):
            stage = "trained" if trained else "untrained"
            acc, scores = [], {}
            for t in range(trials):
                model = network(name, trained, t, train_set)
                acc.append(accuracy(model, xp, yp))
                for mode, share in MODES.items():
                    for b in BATCH_SIZES:
                        if share is None and b > 10:
                            continue
                        seed = 1000 * t + b
                        labels = L.draw_labels(b, 10, share, seed=seed)
                        xb, yb = L.sample_batch(xp, yp, labels, seed=seed)
                        grads = fl.shared_gradients(model, xb, yb)
                        for m, got in methods(model, grads, b, xb, heldout).items():
                            scores.setdefault((mode, b, m), []).append(
                                metrics.label_accuracy(got, yb))
            model_acc[f"{name}/{stage}"] = sum(acc) / len(acc)
            for (mode, b, m), s in scores.items():
                rows.append({"network": name, "stage": stage, "mode": mode,
                             "batch_size": b, "method": m, "accuracy": sum(s) / len(s),
                             "min": min(s), "exact": sum(v == 1.0 for v in s) / len(s)})
            key = f"{name}/{stage}"
            print(f"{name:14s} {stage:9s} test accuracy {model_acc[key]:.3f}",
                  flush=True)
    return {"rows": rows, "model_accuracy": model_acc}


COLUMNS = ["network", "stage", "mode", "batch_size", "method", "accuracy", "min",
           "exact"]


def dump(result: dict) -> str:
    """Compact JSON: rows as lists (see ``columns``), 4 decimals, one row a line."""
    rows = [[round(r[c], 4) if isinstance(r[c], float) else r[c] for c in COLUMNS]
            for r in result["rows"]]
    body = ",\n".join(json.dumps(r, separators=(",", ":")) for r in rows)
    rest = {k: v for k, v in result.items() if k != "rows"}
    rest["model_accuracy"] = {k: round(v, 4) for k, v in rest["model_accuracy"].items()}
    rest["columns"] = COLUMNS
    return '{"rows": [\n' + body + "\n],\n" + json.dumps(rest, indent=1)[1:] + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--out", type=pathlib.Path, default=OUT)
    args = parser.parse_args()
    lb.seed_everything(0, threads=1)
    start = time.time()
    result = run(args.trials)
    result["meta"] = {
        "command": "PYTHONPATH=. python benchmarks/labels.py",
        "trials": args.trials, "batch_sizes": BATCH_SIZES, "modes": MODES,
        "networks": {k: [v[0], {a: list(b) if isinstance(b, tuple) else b
                                for a, b in v[1].items()}]
                     for k, v in NETWORKS.items()},
        "train": TRAIN, "split": {"train": 700, "heldout": 200, "pool": 897},
        "noise_dummies": 256, "seconds": round(time.time() - start, 1),
        "torch": torch.__version__, "python": platform.python_version(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(dump(result))
    print(f"wrote {args.out} in {result['meta']['seconds']} s")


if __name__ == "__main__":
    main()
