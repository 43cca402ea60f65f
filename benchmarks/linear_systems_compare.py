"""DLG and inverting gradients on chapter 07's rank-deficient cases, same time budget as COPA.

    PYTHONPATH=. python benchmarks/linear_systems.py          # first
    PYTHONPATH=. python benchmarks/linear_systems_compare.py

Adds a "comparison" entry to chapters/data/linear_systems_bench.json: for
CNN6-d (logistic loss, images in [0, 1]) and cnn4_c2 (cross-entropy, images
centred at 0) the PSNR and time of DLG (L-BFGS, stopped at COPA's wall time)
and of inverting gradients (signed Adam, cosine + TV), known labels.
"""
from __future__ import annotations

import json
import os

import torch

import leakbook as lb
from leakbook.attacks import dlg, inverting_gradients

from linear_systems import OUT, logistic_case  # noqa: E402  (same folder)


def main():
    torch.set_num_threads(int(os.environ.get("THREADS", "1")))
    bench = json.loads(OUT.read_text())
    comparison = {}
    net, x, y, g = logistic_case("cnn6_d")
    cases = {"cnn6_d": (net, x, y, g, "logistic", True, bench["cases"]["cnn6_d"]["copa"])}
    x4, y4 = lb.data.load("photos", 1, seed=0)
    x4 = x4 - 0.5
    net4 = lb.models.build("cnn4_c2", seed=0)
    cases["cnn4_c2"] = (net4, x4, y4, lb.fl.shared_gradients(net4, x4, y4), "ce", False,
                        bench["cases"]["cnn4_c2"]["copa_2000"])
    for name, (model, truth, labels, grads, loss, boxed, ref) in cases.items():
        budget = ref["time"]
        rec = dlg(model, grads, tuple(truth.shape), labels, loss=loss, max_iter=100000,
                  max_time=budget)
        res = {"copa": {"psnr": ref["psnr"], "time": budget},
               "dlg": {"psnr": lb.metrics.psnr(rec.images, truth), "time": rec.wall_time}}
        ig = inverting_gradients(model, grads, tuple(truth.shape), labels, loss=loss,
                                 iterations=500, boxed=boxed)
        res["inverting_gradients"] = {"psnr": lb.metrics.psnr(ig.images, truth),
                                      "time": ig.wall_time, "iterations": 500}
        print(name, {k: (round(v["psnr"], 2), round(v["time"], 1)) for k, v in res.items()})
        comparison[name] = res
    bench["comparison"] = comparison
    OUT.write_text(json.dumps(bench, separators=(",", ":"), default=float))
    print("updated", OUT)


if __name__ == "__main__":
    main()
