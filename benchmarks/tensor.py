"""Chapter 09 benchmark: tensor-decomposition recovery vs network width.

For a few (d, B) and widths m = 10^3 .. 10^6, draw a random two-layer tanh
network, a batch of B random unit-norm inputs with random regression
targets, take one MSE gradient and run ``tensor_decomposition`` with the
first-layer and with the output-layer gradient. Records the mean and minimum
|cos| between recovered and true inputs, the relative error of the moment
tensor against the exact c_3 sum_i r_i x_i^(x)3 (both metrics read the truth),
the attacker's own error estimate and CP residual, over several seeds.

Run:  PYTHONPATH=. python benchmarks/tensor.py   (a few minutes on one core)
Writes chapters/data/tensor_bench.json.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

import leakbook as lb
from leakbook.attacks.tensor import (cp_tensor, direction_cosines, hermite_coefficient,
                                     random_two_layer, tensor_decomposition)

SETTINGS = [(10, 3), (20, 5)]
WIDTHS = [1000, 3162, 10_000, 31_623, 100_000, 316_228, 1_000_000]
SEEDS = [0, 1, 2]
OUT = Path(__file__).resolve().parents[1] / "chapters" / "data" / "tensor_bench.json"


def one_run(d: int, B: int, m: int, seed: int) -> dict:
    net = random_two_layer(d, m, "tanh", seed=1000 * seed + 1)
    g = torch.Generator().manual_seed(1000 * seed + 2)
    x = torch.randn(B, d, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    y = torch.randn(B, 1, generator=g, dtype=torch.float64)
    grads = lb.fl.shared_gradients(net, x, y, loss="mse")
    with torch.no_grad():
        r = 2 * (net(x) - y).reshape(-1) / B
    truth = cp_tensor(hermite_coefficient(torch.tanh, 3) * r, x)
    out = {}
    for gradient in ("first", "output"):
        t0 = time.process_time()
        rec = tensor_decomposition(net, grads, B, gradient=gradient, seed=seed)
        cos = direction_cosines(rec.images, x)
        T = rec.stats["tensor"]
        out[gradient] = {
            "mean_cos": float(cos.mean()), "min_cos": float(cos.min()),
            "tensor_error": float((T - truth).norm() / truth.norm()),
            "error_estimate": rec.stats["tensor_error_estimate"],
            "residual": rec.stats["residual"],
            "cpu_seconds": time.process_time() - t0}
    return out


def main() -> None:
    lb.seed_everything(0, threads=1)
    rows = []
    for d, B in SETTINGS:
        for m in WIDTHS:
            for seed in SEEDS:
                res = one_run(d, B, m, seed)
                for gradient, r in res.items():
                    rows.append({"d": d, "B": B, "m": m, "seed": seed,
                                 "gradient": gradient, **r})
                    print(d, B, m, seed, gradient,
                          {k: round(v, 4) for k, v in r.items()}, flush=True)
    slopes = {}
    for d, B in SETTINGS:
        for gradient in ("first", "output"):
            sel = [r for r in rows if (r["d"], r["B"], r["gradient"]) == (d, B, gradient)]
            lm = np.log([r["m"] for r in sel])
            le = np.log([r["tensor_error"] for r in sel])
            slopes[f"d{d}_B{B}_{gradient}"] = float(np.polyfit(lm, le, 1)[0])
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({
        "description": "tensor_decomposition vs width m; tanh, MSE, random unit inputs",
        "command": "PYTHONPATH=. python benchmarks/tensor.py",
        "settings": SETTINGS, "widths": WIDTHS, "seeds": SEEDS,
        "slopes_log_error_vs_log_m": slopes, "rows": rows}, indent=1))
    print("slopes", slopes)


if __name__ == "__main__":
    main()
