"""Pieces shared by the gradient-matching benchmarks (chapters 04 and 05).

Not a benchmark itself: ``matching_tuning``, ``dlg_speed``, ``matching`` and
``inverting`` import it. Everything that reads the truth lives here, outside
the attacks: a ``Tracker`` scores the current iterate from the attack's
callback and keeps its own time off the attack's clock.
"""
from __future__ import annotations

import math
import time

import torch

import leakbook as lb


class Tracker:
    """Callback that records (attack seconds, iteration, PSNR) of the iterate.

    Scores every ``every``-th call (and every call once PSNR passes 25 dB, so
    times to 30, 40 and 50 dB are resolved to one iteration when ``fine``).
    The time spent scoring, which reads the truth, is excluded from the clock.
    """

    def __init__(self, x_true: torch.Tensor, every: int = 10, fine: bool = False):
        self.x, self.every, self.fine = x_true, every, fine
        self.start, self.excluded = time.perf_counter(), 0.0
        self.times, self.iters, self.psnrs = [], [], []
        self.calls = 0

    def __call__(self, it, images, loss=None):
        t = time.perf_counter()
        near = self.fine and self.psnrs and self.psnrs[-1] > 25
        if self.calls % self.every == 0 or near:
            x_hat = images.detach().float()
            if torch.isfinite(x_hat).all():
                x_hat = x_hat.clamp(0, 1)
                perm = lb.metrics.match(x_hat, self.x)
                p = lb.metrics.psnr(x_hat[perm], self.x)
            else:
                p = float("nan")
            self.times.append(round(t - self.start - self.excluded, 4))
            self.iters.append(it)
            self.psnrs.append(round(p, 3))
        self.calls += 1
        self.excluded += time.perf_counter() - t

    def elapsed(self) -> float:
        """Attack seconds so far (scoring excluded)."""
        return time.perf_counter() - self.start - self.excluded

    def first(self, db: float, what: str = "times"):
        """Attack seconds (or iteration) at which PSNR first reached ``db``."""
        values = getattr(self, what)
        return next((v for v, p in zip(values, self.psnrs) if p >= db), None)

    def curve(self, points: int = 200) -> list:
        """[times, psnrs] thinned to about ``points`` points (for a figure)."""
        step = max(1, math.ceil(len(self.times) / points))
        keep = list(range(0, len(self.times), step))
        if self.times and keep[-1] != len(self.times) - 1:
            keep.append(len(self.times) - 1)
        return [[self.times[i] for i in keep], [self.psnrs[i] for i in keep]]


def lenet(size: int = 32, classes: int = 100, activation: str = "sigmoid",
          init: str = "dlg", seed: int = 0, scale: float = 1.0) -> torch.nn.Module:
    """DLG's LeNet: weights U(-0.5, 0.5) as in DLG's code ("dlg"), or PyTorch's
    default initialisation of each layer ("default"), optionally scaled."""
    net = lb.models.build("lenet_dlg", seed=seed, image_size=size, num_classes=classes,
                          activation=activation)
    if init == "default":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for m in net.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
    elif init != "dlg":
        raise ValueError(f"init must be 'dlg' or 'default', got {init!r}")
    if scale != 1.0:
        with torch.no_grad():
            for p in net.parameters():
                p.mul_(scale)
    return net


def as_uint8(images: torch.Tensor) -> list:
    """Images (B, C, H, W) as nested lists of 0..255 integers (a small JSON)."""
    return (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).tolist()


def score(images: torch.Tensor, x: torch.Tensor, labels_hat=None, labels=None) -> dict:
    """PSNR, SSIM and their flat baselines (reads the truth), rounded for JSON."""
    images = torch.nan_to_num(images.detach().float(), nan=0.5)
    rep = lb.metrics.report(images, x, labels_hat, labels)
    out = {"psnr": round(rep["psnr"], 2), "ssim": round(rep["ssim"], 4),
           "psnr_baseline": round(rep["psnr_baseline"], 2),
           "ssim_baseline": round(rep["ssim_baseline"], 4)}
    if rep["label_acc"] is not None:
        out["label_acc"] = rep["label_acc"]
    return out, rep["order"]


def summary(values) -> dict:
    """Median and range, rounded, of finite values."""
    v = [float(a) for a in values if a is not None and math.isfinite(a)]
    s = lb.metrics.summarize(v)
    return {k: (round(x, 2) if isinstance(x, float) else x) for k, x in s.items()}


def run_sections(file: str, sections: dict, names: list, cheap) -> None:
    """Run the named sections (all if none), merge them into ``file`` and write it
    with its provenance and cheap section; each section keeps its own provenance
    and seconds, so sections may run as separate processes."""
    from .common import command_line, load, provenance, write
    unknown = sorted(set(names) - set(sections))
    if unknown:
        raise SystemExit(f"unknown sections {unknown}; known: {sorted(sections)}")
    torch.set_num_threads(1)
    record = provenance(command_line())
    start = time.time()
    fresh, seconds = {}, {}
    for name in names or list(sections):
        t = time.time()
        fresh[name] = sections[name]()
        seconds[name] = round(time.time() - t, 1)
    try:  # re-read: another process may have written another section meanwhile
        previous = load(file) if names else {}
    except FileNotFoundError:
        previous = {}
    result = {k: v for k, v in previous.items() if k in sections}
    result.update(fresh)
    provenances = {**previous.get("section_provenance", {}),
                   **{name: record for name in fresh}}
    payload = {**result, "seconds": {**previous.get("seconds", {}), **seconds},
               "section_provenance": provenances}
    out = write(file, payload, record, cheap())
    print(f"wrote {out} in {time.time() - start:.0f} s")
