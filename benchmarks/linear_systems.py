"""R-GAP and the COPA-style attack on CNN6, CNN6-d and cnn4_c2 (chapter 07).

    python -m benchmarks.linear_systems  # -> chapters/data/linear_systems_bench.json

About 8 min of CPU at one thread (more wall time on a loaded machine).

Setting: the 12 test images of ``lb.data.evaluation_set("test")`` (ten photo
crops, the face and the digit) at 32x32,
float32 shared gradients as a client sends them, models built with seed 0.

- CNN6 and CNN6-d: R-GAP's setting (logistic loss, one logit, the label
  opposite to the prediction as in R-GAP's code, images in [0, 1]); R-GAP
  with and without the scale fix on CNN6, R-GAP on CNN6-d.
- cnn4_c2 (bias-free convolutions, as in Chen & Campbell's targets.py):
  their setting (cross-entropy, label y % 10, images centred by -0.5).
  The COPA-style fit runs once per image with fill=None; its blind pixels
  are then filled by ``fill_blind`` ("mean", the default, and "inpaint"),
  exactly what ``copa(fill=...)`` does at its end. The illustration (first
  image) adds the same objective fitted without the Gauss-Newton
  preconditioner (``refresh=0``, 300 steps).

Per image: PSNR (peak 1, clamped to the data range), the flat baseline (the
image's own mean colour), the PSNR caps of the blind pixels, wall and CPU
seconds. Metrics read the truth; the attacks never do. ``cheap()`` re-runs a
small, deterministic corner (8x8 and 12x12 images) for the provenance test.
"""
from __future__ import annotations

import os
import time

import torch

import leakbook as lb
from leakbook import security
from leakbook.attacks import copa, rgap
from leakbook.attacks.hybrid import fill_blind

from .common import command_line, provenance, write

SHAPE = (3, 32, 32)
#: PSNRs are compared in the cheap re-run after capping at 60 dB (above that
#: they only measure rounding) and within 0.05 dB
TOLERANCE = {"rel": 0.0, "abs": 0.05}
CAP_DB = 60.0
#: L-BFGS steps of the unpreconditioned (first-order) fit on cnn4_c2, the
#: baseline of the Gauss-Newton preconditioner
FIRST_ORDER_STEPS = 300
#: the test images measured: all twelve (ten photo crops, the face, the digit)
IMAGES = tuple(range(12))


def _db(value: float) -> float:
    """A PSNR as JSON can hold it: exact recoveries become 300 dB."""
    return round(min(float(value), 300.0), 3)


def _scores(x_hat: torch.Tensor, x: torch.Tensor) -> dict:
    """PSNR and flat baseline of one reconstruction (1, C, H, W) in [0, 1]."""
    r = lb.metrics.report(x_hat, x, reorder=False)
    return {"psnr": _db(r["psnr"]), "baseline": _db(r["psnr_baseline"])}


def _timed(fn):
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return (out, round(time.perf_counter() - wall, 2),
            round(time.process_time() - cpu, 2))


def logistic_label(net, x) -> torch.Tensor:
    """R-GAP's label: opposite to the prediction (a unique margin)."""
    with torch.no_grad():
        return torch.tensor([0 if net(x).item() > 0 else 1])


def layer_inputs(net, x):
    """The true input of every Conv2d/Linear (flat, float64), from the top down."""
    seen = []
    hooks = [m.register_forward_hook(
        lambda m, i, o: seen.append(i[0].detach().flatten().double()))
        for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    return seen[::-1]


def layer_errors(rec, truth) -> list[float]:
    return [float((s["input"] - t).norm() / t.norm())
            for s, t in zip(rec.stats["layers"], truth)]


def rgap_case(name: str, x: torch.Tensor, size: int, errors: bool,
              raw: bool = True) -> dict:
    """R-GAP with (and if raw, without) the scale fix on one image of a
    logistic model."""
    net = lb.models.build(name, seed=0, image_size=size)
    y = logistic_label(net, x)
    g = lb.fl.shared_gradients(net, x, y, loss="logistic")
    shape = (3, size, size)
    out = {}
    runs = (("rgap", {}), ("rgap_raw", {"scale": False}))
    for key, kw in runs if raw else runs[:1]:
        rec, wall, cpu = _timed(lambda: rgap(net, g, y, input_shape=shape,
                                             diagnostics=False, **kw))
        out[key] = {**_scores(rec.images, x), "wall": wall, "cpu": cpu}
        if errors:
            out[key]["layer_errors"] = layer_errors(rec, layer_inputs(net, x))
    return out


def copa_case(name: str, x: torch.Tensor, size: int, label: int | None,
              steps: int = 1000) -> dict:
    """R-GAP and the COPA-style attack (one fit, two fills) on one image.

    (R-GAP below the first deficient layer is the chain of minimum-norm
    linear solves, what ``copa(steps=0)`` returns: it is not run twice.)

    label None: R-GAP's logistic setting, images in [0, 1]; else Chen &
    Campbell's, cross-entropy with this label and images centred by -0.5.
    """
    net = lb.models.build(name, seed=0, image_size=size)
    shape = (3, size, size)
    logistic = label is None
    if logistic:
        y, loss, xin = logistic_label(net, x), "logistic", x
    else:
        y, loss, xin = torch.tensor([label]), "ce", x - 0.5
    g = lb.fl.shared_gradients(net, xin, y, loss=loss)
    shift = 0.0 if logistic else 0.5
    out = {}
    rec, wall, cpu = _timed(lambda: rgap(net, g, y, input_shape=shape,
                                         diagnostics=False))
    out["rgap"] = {**_scores(rec.images + shift, x), "wall": wall, "cpu": cpu}
    rec, wall, cpu = _timed(lambda: copa(net, g, y, input_shape=shape, fill=None,
                                         steps=steps, max_time=None))
    blind = rec.stats["inferred"][0]
    out["copa"] = {"wall": wall, "cpu": cpu, "fit": rec.stats["fit"],
                   "deficient_layer": rec.stats["deficient_layer"],
                   "blind": int(blind.sum()),
                   "visible_psnr": _scores(torch.where(blind, xin, rec.images)
                                           + shift, x)["psnr"]}
    for how in ("mean", "inpaint"):
        filled = fill_blind(rec.images[0], blind, how)[None] if blind.any() \
            else rec.images
        out["copa"][how] = _scores(filled + shift, x)["psnr"]
        out["copa"][f"cap_{how}"] = _db(security.psnr_cap(x, blind, how)) \
            if blind.any() else 300.0
    out["copa"]["cap_nearest"] = _db(security.psnr_cap(x, blind, "nearest")) \
        if blind.any() else 300.0
    out["copa"]["baseline"] = out["rgap"]["baseline"]
    return out


def _image(t: torch.Tensor) -> list[float]:
    return [round(v, 4) for v in t.detach().double().flatten().tolist()]


def illustration(x: torch.Tensor, label: int) -> dict:
    """cnn4_c2 on one image: the truth and what each stage returns (chapter 07)."""
    net = lb.models.build("cnn4_c2", seed=0)
    xc, y = x - 0.5, torch.tensor([label])
    g = lb.fl.shared_gradients(net, xc, y)
    out = {"truth": _image(x)}
    for key, kw in (("linear", {"steps": 0}), ("first_order", {"refresh": 0, "steps": FIRST_ORDER_STEPS}),
                    ("copa", {}), ("copa_inpaint", {"fill": "inpaint"})):
        rec = copa(net, g, y, input_shape=SHAPE, max_time=None, **kw)
        out[key] = _image((rec.images + 0.5).clamp(0, 1))
    return out


def cheap() -> dict:
    """R-GAP on CNN6 (8x8, two images) and COPA on cnn4_c2 (12x12, two images)."""
    torch.set_num_threads(1)
    x8, _ = lb.data.evaluation_set("test", size=8)
    x12, y12 = lb.data.evaluation_set("test", size=12)
    out = {}
    for i in (0, 5):
        r = rgap_case("cnn6", x8[i:i + 1], 8, errors=False)
        out[f"cnn6_{i}"] = {k: min(v["psnr"], CAP_DB) for k, v in r.items()}
        c = copa_case("cnn4_c2", x12[i:i + 1], 12, int(y12[i]) % 10)
        out[f"cnn4_c2_{i}"] = {"rgap": min(c["rgap"]["psnr"], CAP_DB),
                               "copa_mean": min(c["copa"]["mean"], CAP_DB),
                               "copa_inpaint": min(c["copa"]["inpaint"], CAP_DB),
                               "cap_mean": min(c["copa"]["cap_mean"], CAP_DB),
                               "blind": c["copa"]["blind"]}
    return out


def main() -> None:
    torch.set_num_threads(1)
    record = provenance(command_line())
    x, y = lb.data.evaluation_set("test")
    names = [lb.data.EVALUATION_NAMES[i] for i in IMAGES]
    cases: dict = {"cnn6": [], "cnn6_d": [], "cnn4_c2": []}
    for k, i in enumerate(IMAGES):
        xi = x[i:i + 1]
        cases["cnn6"].append(rgap_case("cnn6", xi, 32, errors=True))
        print(f"{names[k]:10s} cnn6 done at {time.process_time():.0f} s CPU",
              flush=True)
        cases["cnn6_d"].append(rgap_case("cnn6_d", xi, 32, errors=False, raw=False))
        print(f"{names[k]:10s} cnn6_d done at {time.process_time():.0f} s CPU",
              flush=True)
        c = copa_case("cnn4_c2", xi, 32, int(y[i]) % 10)
        cases["cnn4_c2"].append(c)
        print(f"{names[k]:10s} cnn6 {cases['cnn6'][-1]['rgap']['psnr']:.1f} "
              f"cnn6_d rgap {cases['cnn6_d'][-1]['rgap']['psnr']:.1f} cnn4_c2 copa "
              f"{c['copa']['mean']:.1f}/{c['copa']['cap_mean']:.1f} inpaint "
              f"{c['copa']['inpaint']:.1f} ({c['copa']['cpu']:.1f} s CPU)", flush=True)
    net = lb.models.build("cnn6_d", seed=0)
    diag = rgap(net, lb.fl.shared_gradients(net, x[:1], logistic_label(net, x[:1]),
                                            loss="logistic"),
                logistic_label(net, x[:1]), input_shape=SHAPE)
    table = [{k: s[k] for k in ("layer", "unknowns", "gradient_rows", "forward_rows",
                                "rank", "deficiency") if k in s}
             for s in diag.stats["layers"][1:]]
    payload = {
        "settings": {"images": "evaluation_set('test'), 32x32, all 12 images",
                     "indices": list(IMAGES), "names": names,
                     "gradients": "float32", "models": "seed 0",
                     "cnn6": "logistic, label against the prediction, [0, 1]",
                     "cnn4_c2": "cross-entropy, label y % 10, images - 0.5",
                     "copa": "defaults, max_time=None; fills applied to one fit",
                     "cnn6_d": "R-GAP only",
                     "first_order": f"illustration only: refresh=0, "
                                    f"{FIRST_ORDER_STEPS} steps"},
        "cases": cases, "cnn6_d_layers": table,
        "illustration": {"index": 0, "name": names[0],
                         **illustration(x[:1], int(y[0]) % 10)},
        "load_average": [round(v, 2) for v in os.getloadavg()]}
    out = write("linear_systems_bench.json", payload, record, cheap())
    print("wrote", out)


if __name__ == "__main__":
    main()
