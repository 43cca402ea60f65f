"""How many inputs of a batch a ReLU layer's gradient gives back exactly.

Taught in chapter 02 (and swept by ``benchmarks/fc_isolation.py``). Setting:
digits (64 pixels) through an MLP 64 -> m (ReLU) -> 10 at its seeded PyTorch
initialisation, cross-entropy averaged over a batch of B images, float64.
A row of the first layer that exactly one sample switches on returns that
sample through the ratio of ``attacks.invert_fc``.
"""
from __future__ import annotations

import torch

from . import checks, data, fl, models
from .attacks.analytic import invert_fc
from .threads import one_thread

__all__ = ["isolation_trial", "isolation_probabilities", "EXACT_TOL"]

#: relative error below which a ratio counts as an input returned exactly
EXACT_TOL = 1e-8
_EXACT = "donot_use_mm_for_euclid_dist"  # cdist's fast mode loses ~1e-8 relative


def _check_sizes(**sizes: int) -> None:
    for name, value in sizes.items():
        checks.integer(value, name, minimum=1)


def isolation_trial(width: int, batch: int, seed: int) -> dict:
    """One measurement for layer width m, batch size B and a seed.

    The batch is ``data.load("digits", batch, seed=seed)``, the model
    ``models.build("mlp", seed=seed, widths=(width,))``. Returns a dict of ints:

    - leaked: samples some usable row of the gradient returns exactly
      (relative error < ``EXACT_TOL``); a metric, it reads the true batch;
    - certified: true samples the attacker certifies without the truth
      (two rows agree); false_certified: certified ratios that are no input;
    - isolating_rows: rows that exactly one sample switches on (forward pass).
    """
    with one_thread():
        _check_sizes(width=width, batch=batch)
        seed = checks.integer(seed, "seed", 0, 2 ** 32 - 1)
        x, y = data.load("digits", batch, seed=seed, dtype=torch.float64)
        net = models.build("mlp", seed=seed, in_features=64, widths=(width,),
                           dtype=torch.float64)
        gw, gb = fl.shared_gradients(net, x, y)[:2]
        xf = x.flatten(1)
        active = net[1](xf) > 0
        rows_alone = int((active.sum(0) == 1).sum())
        if not gb.abs().max() > 0:  # every row dead for the whole batch: nothing leaks
            return {"leaked": 0, "certified": 0, "false_certified": 0,
                    "isolating_rows": rows_alone}
        out = invert_fc(gw, gb)
        dist = torch.cdist(out.ratios, xf, compute_mode=_EXACT) / xf.norm(dim=1)
        leaked = int(((dist < EXACT_TOL).sum(0) > 0).sum())
        if len(out.samples):
            sdist = torch.cdist(out.samples, xf, compute_mode=_EXACT) / xf.norm(dim=1)
            good = sdist.min(1).values < EXACT_TOL
            certified = len(set(sdist.argmin(1)[good].tolist()))
            false_cert = int((~good).sum())
        else:
            certified, false_cert = 0, 0
        return {"leaked": leaked, "certified": certified, "false_certified": false_cert,
                "isolating_rows": rows_alone}


def isolation_probabilities(batch: int, seed: int, rows: int = 20_000) -> torch.Tensor:
    """q (B,): the share of fresh random rows that sample k alone switches on.

    Rows are drawn like ``nn.Linear(64, m)``'s initialisation (weights and bias
    uniform in +-1/8) from a generator seeded with 10**6 + seed; the batch is
    ``data.load("digits", batch, seed=seed)``. Only a forward pass, no gradient.
    """
    with one_thread():
        _check_sizes(batch=batch, rows=rows)
        seed = checks.integer(seed, "seed", 0, 2 ** 32 - 1)
        x, _ = data.load("digits", batch, seed=seed, dtype=torch.float64)
        gen = torch.Generator().manual_seed(10**6 + seed)
        bound = 64 ** -0.5
        a = (torch.rand(rows, 64, generator=gen, dtype=torch.float64) * 2 - 1) * bound
        c = (torch.rand(rows, generator=gen, dtype=torch.float64) * 2 - 1) * bound
        active = (x.flatten(1) @ a.T + c) > 0                        # (B, rows)
        alone = active & (active.sum(0, keepdim=True) == 1)
        return alone.double().mean(1)
