"""Chapter 08 benchmark: R-GAP on every model of the security zoo, on six images.

    python -m benchmarks.security_rgap  # -> chapters/data/security_rgap.json

About 5 min of CPU at one thread (more wall time on a loaded machine).

The zoo of ``benchmarks.security`` (its models, data conventions, labels and
losses), attacked by R-GAP alone (the chain of linear solves of chapter 07)
on every second image of ``lb.data.evaluation_set("test")``: five photo
crops and the face. Per model and image: the PSNR (peak 1, clamped to the
data range, capped at 300 dB), or the error if R-GAP refuses the model; the
flat baseline (the image's own mean colour); the PSNR caps of the blind
pixels for the three fills. Metrics read the truth; the attack never does.
Per model also the parameter count and the accuracy proxy of
``benchmarks.security.probe_accuracy`` (a ridge probe on random features).
(The audits are architecture-only and live in ``security_bench.json``.)
"""
from __future__ import annotations

import math
import os

import torch

import leakbook as lb
from leakbook import fl, metrics, security

from .common import command_line, provenance, write
from .security import IMAGES, attacks, data, probe_accuracy, run_attack, zoo

#: PSNRs (capped at 60 dB in the cheap run) within 0.05 dB
TOLERANCE = {"rel": 0.0, "abs": 0.05}


def model_row(entry, images=IMAGES) -> dict:
    """R-GAP, the flat baseline and the blind-pixel caps on each image."""
    model = entry["make"]().to(torch.float64)
    shape = (entry["channels"], entry["size"], entry["size"])
    flat = entry["name"] == "fcn3"
    blind = security.blind_spot(model, (math.prod(shape),) if flat else shape)
    blind = blind.reshape(shape)
    _, _, shift = data(entry, images[0])
    probe = probe_accuracy(model, entry["channels"], entry["size"], flat, shift)
    row = dict(name=entry["name"], family=entry["family"],
               parameters=sum(p.numel() for p in model.parameters()),
               probe_accuracy=round(probe, 4), rgap=[], baseline=[],
               caps={"mean": [], "nearest": [], "inpaint": []},
               blind=int(blind.sum()))
    for index in images:
        x, y, shift = data(entry, index)
        x_in = x - shift
        if flat:
            x, x_in = x.reshape(1, -1), x_in.reshape(1, -1)
        if entry["loss"] == "logistic":
            with torch.no_grad():
                y = torch.tensor([0 if model(x_in).item() > 0 else 1])
        grads = fl.shared_gradients(model, x_in, y, loss=entry["loss"])
        img = x.reshape(1, *shape)
        row["baseline"].append(round(metrics.psnr(metrics.flat_baseline(img), img), 2))
        for how in row["caps"]:
            cap = security.psnr_cap(img[0], blind, how) if row["blind"] else math.inf
            row["caps"][how].append(round(min(cap, 300.0), 2))
        row["rgap"].append(run_attack(attacks()["rgap"], model, grads, y, x, x_in,
                                      shift, entry["loss"], shift == 0))
        print(f"{entry['name']:38s} image {index:2d} rgap "
              f"{row['rgap'][-1].get('psnr', 'error')}", flush=True)
    return row


def cheap() -> dict:
    """R-GAP on cnn6_d and cnn4_c2 at 12x12, first test image."""
    torch.set_num_threads(1)
    out = {}
    for name in ("cnn6_d", "cnn4_c2"):
        entry = next(e for e in zoo() if e["name"] == name)
        entry = {**entry, "size": 12,
                 "make": lambda n=name: lb.models.build(n, image_size=12)}
        row = model_row(entry, images=(0,))
        out[name] = {"rgap": min(row["rgap"][0].get("psnr", -1.0), 60.0),
                     "probe": row["probe_accuracy"],
                     "baseline": row["baseline"][0], "blind": row["blind"]}
    return out


def main() -> None:
    lb.seed_everything(0, threads=1)
    record = provenance(command_line())
    payload = dict(images={"split": "test", "indices": list(IMAGES),
                           "names": [lb.data.EVALUATION_NAMES[i] for i in IMAGES]},
                   zoo=[model_row(entry) for entry in zoo()])
    payload["load_average"] = [round(v, 2) for v in os.getloadavg()]
    out = write("security_rgap.json", payload, record, cheap())
    print("wrote", out)


if __name__ == "__main__":
    main()
