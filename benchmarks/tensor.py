"""The tensor method against network width (chapter 09).

    python -m benchmarks.tensor   # -> chapters/data/tensor_bench.json

Running time: 21 minutes at one thread under a load average of 8 to 12 on
2 cores (the "digits" sweep 11 minutes, the "random" sweep to m = 10^6 the
rest); expect less on a quiet machine, where its CPU times should be
re-measured.

digits (issue 10's target setting). 8x8 digits as unit vectors (d = 64), a
batch of B = 8 drawn with seed s (s = 0..9), a random tanh network
``random_two_layer(64, m, seed=100 + s)`` and one MSE gradient, for widths m
from 10^3 to 10^5. Two target rules: "sign", y_i = -sign f(x_i) (the random
network is wrong on every sample, so every |r_i| >= 2 / B), and "class",
y_i = class / 9 (a regression a client might run; a sample the network
already fits has a small residual and little weight in the tensor). Two
estimators, both in the span read off dL/dW: "projected" (plain Monte-Carlo
mean) and "projected_cv" (Hermite-regression control variates, default
"auto"). Per run: |cos| of every input with its match (a metric: it reads
the truth), the relative error of the B x B x B tensor against the exact
c_3 sum_i r_i (Q^T x_i)^(x)3 (truth), the attacker's own error estimate and
CP residual (no truth), CPU seconds for the gradient and for the attack,
and the per-image PSNR of ``as_images`` (sign and scale without the truth)
beside the flat baseline (each digit's own mean grey). The d-dimensional
pipeline (project=False) is not run at d = 64: at width 10^4 it did not
finish in 10 minutes (issue 10).

random (the 1/sqrt(m) law). Random unit-norm inputs at (d, B) = (10, 3)
and (20, 5), random regression targets, widths 10^3 to 10^6, three seeds,
the plain d-dimensional estimator (project=False, control_variates=None)
from the first-layer and from the output-layer gradient.
"""
from __future__ import annotations

import time

import numpy as np
import torch

import leakbook as lb
from leakbook.attacks.tensor import (as_images, cp_tensor, direction_cosines,
                                     hermite_coefficient, random_two_layer,
                                     tensor_decomposition)

from .common import command_line, provenance, write

DIGIT_WIDTHS = [1000, 3162, 10_000, 31_623, 100_000]
DIGIT_SEEDS = list(range(10))
TARGETS = ("sign", "class")
METHODS = {"projected": None, "projected_cv": "auto"}
B_DIGITS = 8
RANDOM_SETTINGS = [(10, 3), (20, 5)]
RANDOM_WIDTHS = [1000, 3162, 10_000, 31_623, 100_000, 316_228, 1_000_000]
RANDOM_SEEDS = [0, 1, 2]
#: the CP refinement is iterative: round-off of another CPU's BLAS may move
#: the cosines and errors slightly
TOLERANCE = {"rel": 1e-4, "abs": 1e-6}
F64 = torch.float64
C3 = hermite_coefficient(torch.tanh, 3)


def digit_batch(seed: int, B: int = B_DIGITS):
    """(x (B, 64) unit rows, images (B, 1, 8, 8) in [0, 1], classes (B,))."""
    img, cls = lb.data.load("digits", B, seed=seed, dtype=F64)
    x = img.flatten(1)
    return x / x.norm(dim=1, keepdim=True), img, cls


def targets(net, x, cls, rule: str) -> torch.Tensor:
    """(B, 1) regression targets of the client's batch."""
    if rule == "sign":
        with torch.no_grad():
            return -torch.sign(net(x))
    return cls.to(F64)[:, None] / 9


def _psnr_each(a: torch.Tensor, b: torch.Tensor) -> list[float]:
    return [lb.metrics.psnr(a[i:i + 1], b[i:i + 1]) for i in range(len(a))]


def digit_run(seed: int, m: int, rule: str, methods=METHODS, timed: bool = True):
    """One batch, one width, one target rule: a row per method."""
    x, img, cls = digit_batch(seed)
    t0 = time.process_time()
    net = random_two_layer(64, m, "tanh", seed=100 + seed)
    y = targets(net, x, cls, rule)
    grads = lb.fl.shared_gradients(net, x, y, loss="mse")
    cpu_gradient = time.process_time() - t0
    with torch.no_grad():
        r = 2 * (net(x) - y).reshape(-1) / len(x)
    rows = []
    for method, cv in methods.items():
        t1 = time.process_time()
        rec = tensor_decomposition(net, grads, len(x), control_variates=cv)
        cpu_attack = time.process_time() - t1
        cos = direction_cosines(rec.images, x)
        Q = rec.stats["basis"]
        truth = cp_tensor(C3 * r, x @ Q)
        shown = as_images(rec.images)
        order = lb.metrics.match(shown, img)
        row = {"seed": seed, "m": m, "targets": rule, "method": method,
               "min_cos": float(cos.min()), "cos": [float(c) for c in cos],
               "tensor_error": float((rec.stats["tensor"] - truth).norm()
                                     / truth.norm()),
               "error_estimate": rec.stats["tensor_error_estimate"],
               "residual": rec.stats["residual"],
               "residual_ratio": float(r.abs().min() / r.abs().max()),
               "psnr": _psnr_each(shown[order], img),
               "psnr_baseline": _psnr_each(lb.metrics.flat_baseline(img), img),
               "features": rec.stats["features"].get("first", 0)}
        if timed:
            row["cpu_gradient"] = cpu_gradient
            row["cpu_attack"] = cpu_attack
        rows.append(row)
    return rows


def random_run(d: int, B: int, m: int, seed: int, timed: bool = True) -> list[dict]:
    """Random unit inputs, plain d-dimensional estimator, both gradients."""
    net = random_two_layer(d, m, "tanh", seed=1000 * seed + 1)
    g = torch.Generator().manual_seed(1000 * seed + 2)
    x = torch.randn(B, d, generator=g, dtype=F64)
    x = x / x.norm(dim=1, keepdim=True)
    y = torch.randn(B, 1, generator=g, dtype=F64)
    grads = lb.fl.shared_gradients(net, x, y, loss="mse")
    with torch.no_grad():
        r = 2 * (net(x) - y).reshape(-1) / B
    truth = cp_tensor(C3 * r, x)
    rows = []
    for gradient in ("first", "output"):
        t0 = time.process_time()
        rec = tensor_decomposition(net, grads, B, gradient=gradient, seed=seed,
                                   project=False, control_variates=None)
        cos = direction_cosines(rec.images, x)
        row = {"d": d, "B": B, "m": m, "seed": seed, "gradient": gradient,
               "mean_cos": float(cos.mean()), "min_cos": float(cos.min()),
               "tensor_error": float((rec.stats["tensor"] - truth).norm()
                                     / truth.norm()),
               "error_estimate": rec.stats["tensor_error_estimate"],
               "residual": rec.stats["residual"]}
        if timed:
            row["cpu_seconds"] = time.process_time() - t0
        rows.append(row)
    return rows


def summary(rows: list[dict]) -> dict:
    """Per target rule, method and width: median and range over the batches of
    the smallest |cos|, the tensor error, the CPU time; and the smallest width
    at which every batch has min |cos| > 0.99 (issue 10's target)."""
    out = {}
    for rule in TARGETS:
        for method in METHODS:
            key, per_m = f"{rule}/{method}", {}
            for m in DIGIT_WIDTHS:
                sel = [r for r in rows if (r["targets"], r["method"], r["m"])
                       == (rule, method, m)]
                per_m[str(m)] = {
                    "min_cos": lb.metrics.summarize([r["min_cos"] for r in sel]),
                    "tensor_error": lb.metrics.summarize([r["tensor_error"]
                                                          for r in sel]),
                    "cpu_total": lb.metrics.summarize(
                        [r["cpu_gradient"] + r["cpu_attack"] for r in sel]),
                    "psnr": lb.metrics.summarize([p for r in sel for p in r["psnr"]]),
                    "psnr_baseline": lb.metrics.summarize(
                        [p for r in sel for p in r["psnr_baseline"]])}
            met = [m for m in DIGIT_WIDTHS if per_m[str(m)]["min_cos"]["low"] > 0.99]
            out[key] = {"by_width": per_m, "smallest_width_all_above_0.99":
                        met[0] if met else None}
    return out


def slopes(rows: list[dict]) -> dict:
    """Fitted slope of log(tensor error) against log(m), per setting and gradient."""
    out = {}
    for d, B in RANDOM_SETTINGS:
        for gradient in ("first", "output"):
            sel = [r for r in rows
                   if (r["d"], r["B"], r["gradient"]) == (d, B, gradient)]
            out[f"d{d}_B{B}_{gradient}"] = float(np.polyfit(
                np.log([r["m"] for r in sel]), np.log([r["tensor_error"] for r in sel]),
                1)[0])
    return out


def cheap() -> dict:
    """Two digit batches at m = 3162 (both estimators, sign targets) and one
    random run at d = 10, m = 1000; no timings."""
    torch.set_num_threads(1)
    keep = ("min_cos", "tensor_error", "error_estimate", "residual", "psnr")
    digits = [{k: row[k] for k in keep}
              for s in (0, 1) for row in digit_run(s, 3162, "sign", timed=False)]
    rand = random_run(10, 3, 1000, 0, timed=False)
    return {"digits": digits, "random": rand}


def main() -> None:
    torch.set_num_threads(1)
    record = provenance(command_line())
    start = time.time()
    digit_rows = []
    for m in DIGIT_WIDTHS:
        for s in DIGIT_SEEDS:
            for rule in TARGETS:
                digit_rows += digit_run(s, m, rule)
        worst = {f"{r['targets']}/{r['method']}": 1.0 for r in digit_rows}
        for r in digit_rows:
            if r["m"] == m:
                key = f"{r['targets']}/{r['method']}"
                worst[key] = min(worst[key], r["min_cos"])
        print(f"digits m={m}: worst min|cos| "
              + ", ".join(f"{k} {v:.4f}" for k, v in worst.items())
              + f" ({time.time() - start:.0f} s)", flush=True)
    digits_seconds = time.time() - start
    random_rows = []
    for d, B in RANDOM_SETTINGS:
        for m in RANDOM_WIDTHS:
            for s in RANDOM_SEEDS:
                random_rows += random_run(d, B, m, s)
        print(f"random d={d}: done ({time.time() - start:.0f} s)", flush=True)
    data = {
        "settings": {
            "digits": {"d": 64, "B": B_DIGITS, "activation": "tanh", "loss": "mse",
                       "inputs": "8x8 digits divided by their norm",
                       "network": "random_two_layer(64, m, seed=100 + batch seed)",
                       "widths": DIGIT_WIDTHS, "seeds": DIGIT_SEEDS,
                       "targets": list(TARGETS), "methods": {
                           k: f"project=True, control_variates={v!r}"
                           for k, v in METHODS.items()}},
            "random": {"settings": RANDOM_SETTINGS, "widths": RANDOM_WIDTHS,
                       "seeds": RANDOM_SEEDS, "estimator":
                       "project=False, control_variates=None"}},
        "digits": {"summary": summary(digit_rows), "rows": digit_rows,
                   "seconds": round(digits_seconds, 1)},
        "random": {"slopes_log_error_vs_log_m": slopes(random_rows),
                   "rows": random_rows},
        "seconds": round(time.time() - start, 1)}
    out = write("tensor_bench.json", data, record, cheap())
    print(f"wrote {out} in {data['seconds']} s")


if __name__ == "__main__":
    main()
