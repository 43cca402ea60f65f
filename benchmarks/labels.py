"""Label recovery per method, batch size, label mix, training stage, network (ch. 03).

    python -m benchmarks.labels   # -> chapters/data/labels_bench.json

Setting: the digits (8x8, 10 classes), split once into 700 training images
(for the "trained" networks: 10 epochs of Adam), 200 auxiliary images with
their labels (the attacker's data, for the methods that may hold data) and
897 images from which client batches are drawn. Networks: MLPs with 100
hidden units (ReLU, leaky ReLU, sigmoid, tanh), a narrow ReLU MLP (16 units)
and DLG's sigmoid LeNet; untrained and trained. Batches of B = 1..128 with
unique labels (B <= 10), i.i.d. uniform labels ("random") or half the batch
in one class ("heavy"). Trial t builds the network with seed t and draws
the batch of size B with seed 1000 t + B.

Each method and the data its attacker holds besides the gradient and the
model (``ATTACKER_DATA``): none; noise (uniform images it draws itself);
aux x (the auxiliary images, labels unused); aux x, y (with labels). LLG*
needs only the architecture: its shadow is trained on aux x, y for as many
epochs as the target (0 when untrained). ``geng_true`` reads the batch's
true softmax mean: an oracle that shows the counting identity, not an attack;
``calibrated_presence_oracle`` is told which classes are present: what the
calibrated counts would reach with a perfect presence test, not an attack.
Accuracy is the multiset label accuracy, computed with the true labels (a
metric, never part of an attack). The defaults of ``calibrated`` (prior,
ridge, simulations) were chosen on networks and batches of seeds 100-102
(dev), never on the trials reported here.
"""
from __future__ import annotations

import argparse
import time

import torch

import leakbook as lb
from leakbook import data, fl, metrics, models
from leakbook.attacks import labels as L
from leakbook.train import accuracy, train_classifier

from .common import command_line, provenance, write

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
TRIALS = 20
NOISE = 256
#: method -> the data its attacker holds besides the shared gradient and the model
ATTACKER_DATA = {
    "idlg": "none", "yin": "none", "llg": "none",
    "llg+_noise": "noise", "llg+_aux": "aux x, y", "llg*": "aux x, y (shadow)",
    "geng_noise": "noise", "geng_aux": "aux x", "geng_aux_nobias": "aux x",
    "geng_refined": "aux x", "calibrated": "aux x, y",
    "geng_true": "oracle (true softmax mean)",
    "calibrated_presence_oracle": "aux x, y + oracle (which classes are present)",
}
#: accuracies are means of multiples of 1/B: the cheap run must match exactly
TOLERANCE = {"rel": 0.0, "abs": 1e-9}


def split():
    """The fixed split of the digits: training set, attacker's labelled data, pool."""
    x, y = data.load("digits", 1797, seed=0)
    return (x[:700], y[:700]), (x[700:900], y[700:900]), (x[900:], y[900:])


def network(name: str, trained: bool, seed: int, train_set):
    """A seeded network, trained for TRAIN epochs on the training split if asked."""
    zoo, kw = NETWORKS[name]
    model = models.build(zoo, seed=seed, **kw)
    if trained:
        train_classifier(model, *train_set, seed=seed, **TRAIN)
    return model


class Attacker:
    """Everything an attacker prepares once per model and batch size (cached)."""

    def __init__(self, model, aux, noise, trained: bool, seed: int):
        self.model, self.aux, self.noise, self.seed = model, aux, noise, seed
        self.shadow = L.shadow_model(model, *aux, epochs=TRAIN["epochs"] if trained
                                     else 0, seed=seed)
        self.cache = {}
        self.seconds = {"calibration": 0.0, "llg_measurements": 0.0}

    def prepared(self, b: int) -> dict:
        if b not in self.cache:
            start = time.time()
            io = {"llg+_noise": L.impact_offset(self.model, self.noise, b,
                                                seed=self.seed),
                  "llg+_aux": L.impact_offset(self.model, *self.aux_args(b)),
                  "llg*": L.impact_offset(self.shadow, *self.aux_args(b))}
            self.seconds["llg_measurements"] += time.time() - start
            start = time.time()
            cal = L.calibrate_counts(self.model, *self.aux, b, seed=self.seed)
            self.seconds["calibration"] += time.time() - start
            self.cache[b] = {"io": io, "calibration": cal}
        return self.cache[b]

    def aux_args(self, b: int):
        return self.aux[0], b, self.aux[1], 10, self.seed

    def methods(self, grads, b: int, x_batch, y_batch) -> dict:
        """Every method's labels for one shared gradient (methods that apply)."""
        model, (xa, _) = self.model, self.aux
        prep = self.prepared(b)
        out = {}
        if b == 1:
            out["idlg"] = L.recover(model, grads, 1, "idlg")
        if b <= 10:
            out["yin"] = L.recover(model, grads, b, "yin")
        out["llg"] = L.recover(model, grads, b, "llg")
        for key, (impact, offset) in prep["io"].items():
            method = "llg*" if key == "llg*" else "llg+"
            out[key] = L.recover(model, grads, b, method, impact=impact, offset=offset)
        out["geng_noise"] = L.recover(model, grads, b, "geng", dummies=self.noise)
        out["geng_aux"] = L.recover(model, grads, b, "geng", dummies=xa)
        out["geng_aux_nobias"] = L.recover(model, grads, b, "geng", dummies=xa,
                                           use_bias=False)
        out["geng_refined"] = L.recover(model, grads, b, "geng", dummies=xa,
                                        refine=True)
        out["calibrated"] = L.recover(model, grads, b, "calibrated",
                                      calibration=prep["calibration"])
        # a ceiling, not an attack: calibrated counts told which classes are present
        gw, gb = L.last_layer_grads(model, grads)
        surv = L.count_survival(prep["calibration"], gw, gb)
        present = torch.bincount(y_batch, minlength=surv.shape[0]) > 0
        surv[~present] = 0.0
        surv[present, 0] = 1.0
        out["calibrated_presence_oracle"] = L.allocate(surv.cummin(1).values, b)
        with torch.no_grad():  # the true softmax mean: an oracle, for reference only
            p_true = model(x_batch).softmax(-1).mean(0)
        out["geng_true"] = L.recover(model, grads, b, "geng", softmax_mean=p_true)
        return out


def run(trials: int, networks=tuple(NETWORKS), stages=("untrained", "trained"),
        modes=tuple(MODES), batch_sizes=tuple(BATCH_SIZES),
        verbose: bool = True) -> dict:
    """Mean, worst and exact-share accuracy per (network, stage, mode, B, method)."""
    train_set, aux, (xp, yp) = split()
    noise = L.noise_dummies((1, 8, 8), NOISE, seed=0)
    rows, model_acc, seconds = [], {}, {"calibration": 0.0, "llg_measurements": 0.0}
    for name in networks:
        for stage in stages:
            trained = stage == "trained"
            acc, scores = [], {}
            for t in range(trials):
                model = network(name, trained, t, train_set)
                acc.append(accuracy(model, xp, yp))
                attacker = Attacker(model, aux, noise, trained, t)
                for mode in modes:
                    share = MODES[mode]
                    for b in batch_sizes:
                        if share is None and b > 10:
                            continue
                        seed = 1000 * t + b
                        labels = L.draw_labels(b, 10, share, seed=seed)
                        xb, yb = L.sample_batch(xp, yp, labels, seed=seed)
                        grads = fl.shared_gradients(model, xb, yb)
                        for m, got in attacker.methods(grads, b, xb, yb).items():
                            scores.setdefault((mode, b, m), []).append(
                                metrics.label_accuracy(got, yb))
                for k, v in attacker.seconds.items():
                    seconds[k] += v
            model_acc[f"{name}/{stage}"] = round(sum(acc) / len(acc), 4)
            for (mode, b, m), s in scores.items():
                exact = sum(v == 1.0 for v in s) / len(s)
                rows.append([name, stage, mode, b, m, round(sum(s) / len(s), 6),
                             round(min(s), 6), round(exact, 6)])
            if verbose:
                print(f"{name:14s} {stage:9s} test accuracy "
                      f"{model_acc[f'{name}/{stage}']:.3f}", flush=True)
    return {"rows": rows, "model_accuracy": model_acc,
            "method_seconds": {k: round(v, 1) for k, v in seconds.items()}}


COLUMNS = ["network", "stage", "mode", "batch_size", "method", "accuracy", "min",
           "exact"]


def cheap() -> dict:
    """One ReLU MLP (trial 0), untrained and trained, heavy duplicates, B = 4 and 16."""
    torch.set_num_threads(1)
    out = run(1, networks=("relu",), modes=("heavy",), batch_sizes=(4, 16),
              verbose=False)
    return {"rows": out["rows"], "model_accuracy": out["model_accuracy"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=TRIALS)
    args = parser.parse_args()
    lb.seed_everything(0, threads=1)
    record = provenance(command_line())
    start = time.time()
    result = run(args.trials)
    payload = {
        "columns": COLUMNS, **result,
        "settings": {
            "trials": args.trials, "batch_sizes": BATCH_SIZES, "modes": MODES,
            "networks": {k: [v[0], {a: list(b) if isinstance(b, tuple) else b
                                    for a, b in v[1].items()}]
                         for k, v in NETWORKS.items()},
            "train": TRAIN, "split": {"train": 700, "aux": 200, "pool": 897},
            "noise_dummies": NOISE, "attacker_data": ATTACKER_DATA,
            "dev_seeds": [100, 101, 102]},
        "seconds": round(time.time() - start, 1)}
    out = write("labels_bench.json", payload, record, cheap())
    print(f"wrote {out} in {payload['seconds']} s")


if __name__ == "__main__":
    main()
