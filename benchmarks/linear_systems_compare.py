"""Gradient matching against the COPA-style attack on the same budget (chapter 07).

    python -m benchmarks.linear_systems_compare
    # -> chapters/data/linear_systems_compare.json

About 15 min of CPU at one thread (more wall time on a loaded machine).

On the two rank-deficient cases of chapter 07, CNN6-d (R-GAP's setting:
logistic loss, label against the prediction, images in [0, 1]) and cnn4_c2
(Chen & Campbell's: cross-entropy, label y % 10, images centred by -0.5),
for six of the test images of the evaluation set (every second: five photo
crops and the face), side by side in one
process: the COPA-style attack (defaults), then DLG (L-BFGS on the L2
gradient distance, known label) stopped at COPA's wall time on that image,
then inverting gradients (500 signed-Adam steps, cosine + TV 1e-4, known
label; boxed to the data range). PSNR (peak 1) against the truth and the
flat baseline. Metrics read the truth; the attacks never do.
"""
from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F

import leakbook as lb
from leakbook.attacks import copa, dlg, inverting_gradients

from .common import command_line, provenance, write
from .linear_systems import logistic_label

IG_STEPS = 500
#: the test images compared: every second one (five photo crops and the face)
IMAGES = (0, 2, 4, 6, 8, 10)
#: the cheap run caps PSNRs at 60 dB and compares them within 0.05 dB
TOLERANCE = {"rel": 0.0, "abs": 0.05}


def _psnr(x_hat, x, shift: float) -> float:
    psnr = lb.metrics.report(x_hat + shift, x, reorder=False)["psnr"]
    return round(min(psnr, 300.0), 3)


def case(name: str, x: torch.Tensor, label: int | None, size: int = 32,
         dlg_iterations: int | None = None, ig_steps: int = IG_STEPS) -> dict:
    """COPA, DLG and inverting gradients on one image (1, 3, size, size) in [0, 1].

    label None: R-GAP's logistic setting; else cross-entropy with images
    centred by -0.5. dlg_iterations None: DLG runs until COPA's wall time.
    """
    net = lb.models.build(name, seed=0, image_size=size)
    shape = (3, size, size)
    if label is None:
        y, loss, xin, shift, box = logistic_label(net, x), "logistic", x, 0.0, True
    else:
        y, loss, xin, shift, box = torch.tensor([label]), "ce", x - 0.5, 0.5, False
    g = lb.fl.shared_gradients(net, xin, y, loss=loss)
    start = time.perf_counter()
    rec = copa(net, g, y, input_shape=shape, max_time=None)
    budget = time.perf_counter() - start
    out = {"baseline": round(lb.metrics.report(lb.metrics.flat_baseline(x), x,
                                               reorder=False)["psnr"], 3),
           "copa": {"psnr": _psnr(rec.images, x, shift), "wall": round(budget, 2)}}
    limit = {"max_iter": 10 ** 6, "max_time": budget} if dlg_iterations is None \
        else {"max_iter": dlg_iterations}
    dlg_y, dlg_loss = y, loss
    if label is None:
        # dlg checks labels against the number of logits (one here), so the
        # known label enters through the loss: the same logistic loss
        sign = 2.0 * float(y[0]) - 1.0
        dlg_y = torch.tensor([0])
        dlg_loss = lambda out, _y: F.softplus(-sign * out.reshape(-1)).mean()  # noqa
    start = time.perf_counter()
    rec = dlg(net, g, (1, *shape), dlg_y, loss=dlg_loss, **limit)
    out["dlg"] = {"psnr": _psnr(rec.images, x, shift),
                  "wall": round(time.perf_counter() - start, 2)}
    start = time.perf_counter()
    rec = inverting_gradients(net, g, (1, *shape), y, loss=loss, iterations=ig_steps,
                              boxed=box)
    out["inverting_gradients"] = {"psnr": _psnr(rec.images, x, shift),
                                  "wall": round(time.perf_counter() - start, 2),
                                  "iterations": ig_steps}
    return out


def cheap() -> dict:
    """cnn4_c2 at 12x12 on two test images; DLG and inverting gradients 30 steps."""
    torch.set_num_threads(1)
    x, y = lb.data.evaluation_set("test", size=12)
    out = {}
    for i in (0, 5):
        r = case("cnn4_c2", x[i:i + 1], int(y[i]) % 10, size=12, dlg_iterations=30,
                 ig_steps=30)
        out[str(i)] = {k: min(v["psnr"], 60.0) if isinstance(v, dict) else v
                       for k, v in r.items()}
    return out


def main() -> None:
    torch.set_num_threads(1)
    record = provenance(command_line())
    x, y = lb.data.evaluation_set("test")
    names = list(lb.data.EVALUATION_NAMES)
    cases = {"cnn6_d": [], "cnn4_c2": []}
    for i in IMAGES:
        for name, label in (("cnn6_d", None), ("cnn4_c2", int(y[i]) % 10)):
            r = case(name, x[i:i + 1], label)
            cases[name].append(r)
            print(f"{names[i]:10s} {name:8s} " + " ".join(
                f"{k} {v['psnr']:.1f}" for k, v in r.items() if isinstance(v, dict)),
                flush=True)
    payload = {"settings": {"images": "evaluation_set('test'), 32x32",
                            "indices": list(IMAGES),
                            "names": [names[i] for i in IMAGES],
                            "dlg": "known label, L-BFGS until COPA's wall time",
                            "inverting_gradients": f"{IG_STEPS} signed-Adam steps, "
                                                   "TV 1e-4, known label"},
               "cases": cases,
               "load_average": [round(v, 2) for v in os.getloadavg()]}
    out = write("linear_systems_compare.json", payload, record, cheap())
    print("wrote", out)


if __name__ == "__main__":
    main()
