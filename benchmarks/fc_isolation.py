"""How many inputs of a batch leak exactly through a ReLU layer's gradient (chapter 02).

    python -m benchmarks.fc_isolation  # -> chapters/data/fc_isolation.json (~30 s)

Setting: digits (64 pixels), an MLP 64 -> m (ReLU) -> 10 at its seeded PyTorch
initialisation, cross-entropy averaged over a batch of B images, float64.
For every width m, batch size B and trial t (batch drawn with seed t, model
built with seed t) it records

- leaked: samples that some usable row of the gradient returns exactly
  (relative error < 1e-8); a metric: it reads the true batch;
- certified: samples the attacker certifies without the truth (>= 2 rows agree);
  false_certified: certified samples that are not a true input (should be 0);
- isolating_rows: rows that exactly one sample activates (forward pass, truth);
- predicted: sum_k 1 - (1 - q_k)^m, where q_k is the share of 20,000 fresh rows,
  drawn like nn.Linear's initialisation, that sample k activates alone.
"""
from __future__ import annotations

import time

import torch

import leakbook as lb
from leakbook.attacks import invert_fc

from .common import command_line, provenance, write

WIDTHS = [4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]
BATCHES = [1, 2, 4, 8, 16, 32, 64]
TRIALS = 10
FRESH_ROWS = 20_000
EXACT = "donot_use_mm_for_euclid_dist"  # cdist's fast mode loses ~1e-8 relative
#: counts are integers and q_k are exact float64 shares: the cheap run must match exactly
TOLERANCE = {"rel": 1e-12, "abs": 0.0}


def trial(width: int, batch: int, seed: int) -> dict:
    """One measurement: leaked, certified and isolating-row counts for (m, B, seed)."""
    x, y = lb.data.load("digits", batch, seed=seed, dtype=torch.float64)
    net = lb.models.build("mlp", seed=seed, in_features=64, widths=(width,),
                          dtype=torch.float64)
    gw, gb = lb.fl.shared_gradients(net, x, y)[:2]
    xf = x.flatten(1)
    active = net[1](xf) > 0
    rows_alone = int((active.sum(0) == 1).sum())
    if not gb.abs().max() > 0:  # every row dead for the whole batch: nothing leaks
        return {"leaked": 0, "certified": 0, "false_certified": 0,
                "isolating_rows": rows_alone}
    out = invert_fc(gw, gb)
    # truth-based metric: relative distance of every row's ratio to every input
    dist = torch.cdist(out.ratios, xf, compute_mode=EXACT) / xf.norm(dim=1)
    leaked = int(((dist < 1e-8).sum(0) > 0).sum())
    if len(out.samples):
        sdist = torch.cdist(out.samples, xf, compute_mode=EXACT) / xf.norm(dim=1)
        good = sdist.min(1).values < 1e-8
        certified = len(set(sdist.argmin(1)[good].tolist()))
        false_cert = int((~good).sum())
    else:
        certified, false_cert = 0, 0
    return {"leaked": leaked, "certified": certified, "false_certified": false_cert,
            "isolating_rows": rows_alone}


def isolation_probabilities(batch: int, seed: int,
                            rows: int = FRESH_ROWS) -> torch.Tensor:
    """q_k (B,): share of fresh rows (nn.Linear init) sample k alone switches on."""
    x, _ = lb.data.load("digits", batch, seed=seed, dtype=torch.float64)
    gen = torch.Generator().manual_seed(10**6 + seed)
    bound = 64 ** -0.5
    a = (torch.rand(rows, 64, generator=gen, dtype=torch.float64) * 2 - 1) * bound
    c = (torch.rand(rows, generator=gen, dtype=torch.float64) * 2 - 1) * bound
    active = (x.flatten(1) @ a.T + c) > 0                        # (B, rows)
    alone = active & (active.sum(0, keepdim=True) == 1)
    return alone.double().mean(1)


def cheap() -> dict:
    """A corner of the grid (B in 4, 16; m in 16, 256; 3 seeds) and q for B = 16."""
    torch.set_num_threads(1)
    counts = {f"B{b}_m{m}": [trial(m, b, t) for t in range(3)]
              for b in (4, 16) for m in (16, 256)}
    return {"trials": counts,
            "q_sum_B16": float(isolation_probabilities(16, 0, rows=2000).sum())}


def main() -> None:
    torch.set_num_threads(1)
    record = provenance(command_line())
    start = time.time()
    shape = (len(BATCHES), len(WIDTHS), TRIALS)
    res = {k: torch.zeros(shape, dtype=torch.long).tolist()
           for k in ("leaked", "certified", "false_certified", "isolating_rows")}
    predicted = [[0.0] * len(WIDTHS) for _ in BATCHES]
    for bi, b in enumerate(BATCHES):
        qs = [isolation_probabilities(b, t) for t in range(TRIALS)]
        for wi, m in enumerate(WIDTHS):
            expected = sum((1 - (1 - q) ** m).sum() for q in qs) / TRIALS
            predicted[bi][wi] = float(expected)
            for t in range(TRIALS):
                for k, v in trial(m, b, t).items():
                    res[k][bi][wi][t] = v
        print(f"B={b:3d} done, {time.time() - start:.0f} s", flush=True)
    data = {"settings": {"dataset": "digits", "model": "mlp 64 -> m (relu) -> 10",
                         "loss": "ce (mean)", "dtype": "float64", "trials": TRIALS,
                         "fresh_rows": FRESH_ROWS, "exact_tol": 1e-8},
            "widths": WIDTHS, "batch_sizes": BATCHES, **res, "predicted": predicted,
            "seconds": round(time.time() - start, 1)}
    out = write("fc_isolation.json", data, record, cheap())
    print(f"wrote {out} in {data['seconds']} s")


if __name__ == "__main__":
    main()
