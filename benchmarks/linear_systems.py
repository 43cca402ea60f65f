"""PSNR and wall time of R-GAP and COPA on CNN6, CNN6-d and cnn4_c2 (chapter 07).

    PYTHONPATH=. python benchmarks/linear_systems.py

Writes chapters/data/linear_systems_bench.json. One 32x32 photograph per case,
float32 shared gradients as a client sends them. Metrics read the truth;
the attacks never do. Times depend on the machine's load (printed).
"""
from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

import leakbook as lb
from leakbook.attacks import copa, rgap

OUT = Path(__file__).resolve().parents[1] / "chapters" / "data" / "linear_systems_bench.json"
SHAPE = (3, 32, 32)


def layer_inputs(net, x):
    """The true input of every Conv2d/Linear (flat), from the top layer down."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(i[0].detach().flatten().double()))
             for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return seen[::-1]


def layer_errors(rec, truth):
    return [float((s["input"] - t).norm() / t.norm()) for s, t in zip(rec.stats["layers"], truth)]


def clean(stats):
    keep = ("layer", "unknowns", "gradient_rows", "forward_rows", "rank", "deficiency",
            "deficiency_bound", "condition", "sv_max", "sv_min", "residual_gradient",
            "residual_forward", "method", "head", "margin")
    return [{k: s[k] for k in keep if k in s} for s in stats]


def image(t):
    return [round(v, 4) for v in t.detach().double().flatten().tolist()]


def logistic_case(name, seed=0):
    x, _ = lb.data.load("photos", 1, seed=seed)
    net = lb.models.build(name, seed=0)
    with torch.no_grad():
        y = torch.tensor([0 if net(x).item() > 0 else 1])   # R-GAP: label against the prediction
    return net, x, y, lb.fl.shared_gradients(net, x, y, loss="logistic")


def run_rgap_case(name):
    net, x, y, g = logistic_case(name)
    truth = layer_inputs(net, x)
    out = {}
    runs = [("rgap", dict(diagnostics=False)), ("rgap_diagnostics", {}),
            ("rgap_no_scale_fix", dict(scale=False, diagnostics=False))]
    for label, kw in runs if name == "cnn6" else runs[1:]:
        rec = rgap(net, g, y, input_shape=SHAPE, **kw)
        out[label] = {"psnr": lb.metrics.psnr(rec.images, x), "time": rec.wall_time,
                      "layer_errors": layer_errors(rec, truth), "layers": clean(rec.stats["layers"])}
        print(name, label, round(out[label]["psnr"], 2), "dB", round(rec.wall_time, 2), "s")
    return out, net, x, y, g


def run_copa(name, net, x, y, g, steps):
    rec = copa(net, g, y, input_shape=SHAPE, steps=steps)
    lin = rec.stats["linear_images"]
    res = {"psnr": lb.metrics.psnr(rec.images, x), "time": rec.wall_time, "steps": steps,
           "linear_psnr": lb.metrics.psnr(lin, x), "deficient_layer": rec.stats["deficient_layer"],
           "layers": clean(rec.stats["layers"]),
           "loss_history": rec.loss_history[:: max(1, len(rec.loss_history) // 200)],
           "image": image(rec.images), "linear_image": image(lin), "truth": image(x)}
    print(name, "copa", round(res["psnr"], 2), "dB (linear alone", round(res["linear_psnr"], 2),
          ")", round(rec.wall_time, 2), "s")
    return res


def main():
    torch.manual_seed(0)
    torch.set_num_threads(int(os.environ.get("THREADS", "1")))
    result = {"machine": {"platform": platform.platform(), "threads": torch.get_num_threads(),
                          "load_before": os.getloadavg()}, "cases": {}}
    for name in ("cnn6", "cnn6_d"):
        res, net, x, y, g = run_rgap_case(name)
        res["copa"] = run_copa(name, net, x, y, g, steps=1000)
        result["cases"][name] = res
    x, y = lb.data.load("photos", 1, seed=0)
    xc = x - 0.5                                         # centred, as Chen & Campbell
    net = lb.models.build("cnn4_c2", seed=0)
    g = lb.fl.shared_gradients(net, xc, y)
    res = {}
    rec = rgap(net, g, y, input_shape=SHAPE)
    res["rgap"] = {"psnr": lb.metrics.psnr(rec.images, xc), "time": rec.wall_time,
                   "layers": clean(rec.stats["layers"])}
    print("cnn4_c2 rgap", round(res["rgap"]["psnr"], 2))
    for steps in (2000,):
        res[f"copa_{steps}"] = run_copa("cnn4_c2", net, x=xc, y=y, g=g, steps=steps)
    result["cases"]["cnn4_c2"] = res
    result["machine"]["load_after"] = os.getloadavg()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(result, indent=0, default=float))
    print("wrote", OUT)


if __name__ == "__main__":
    main()
