"""How many inputs of a batch leak exactly through a ReLU layer's gradient (chapter 02).

    python -m benchmarks.fc_isolation  # -> chapters/data/fc_isolation.json (~30 s)

The measurement itself (``isolation_trial``, ``isolation_probabilities``) lives in
``leakbook.isolation``, so chapter 02 re-runs one cell of the grid from the package.
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

from leakbook.isolation import EXACT_TOL, isolation_probabilities
from leakbook.isolation import isolation_trial as trial

from .common import command_line, provenance, write

WIDTHS = [4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]
BATCHES = [1, 2, 4, 8, 16, 32, 64]
TRIALS = 10
FRESH_ROWS = 20_000
#: counts are integers and q_k are exact float64 shares: the cheap run must match exactly
TOLERANCE = {"rel": 1e-12, "abs": 0.0}


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
        qs = [isolation_probabilities(b, t, rows=FRESH_ROWS) for t in range(TRIALS)]
        for wi, m in enumerate(WIDTHS):
            expected = sum((1 - (1 - q) ** m).sum() for q in qs) / TRIALS
            predicted[bi][wi] = float(expected)
            for t in range(TRIALS):
                for k, v in trial(m, b, t).items():
                    res[k][bi][wi][t] = v
        print(f"B={b:3d} done, {time.time() - start:.0f} s", flush=True)
    data = {"settings": {"dataset": "digits", "model": "mlp 64 -> m (relu) -> 10",
                         "loss": "ce (mean)", "dtype": "float64", "trials": TRIALS,
                         "fresh_rows": FRESH_ROWS, "exact_tol": EXACT_TOL},
            "widths": WIDTHS, "batch_sizes": BATCHES, **res, "predicted": predicted,
            "seconds": round(time.time() - start, 1)}
    out = write("fc_isolation.json", data, record, cheap())
    print(f"wrote {out} in {data['seconds']} s")


if __name__ == "__main__":
    main()
