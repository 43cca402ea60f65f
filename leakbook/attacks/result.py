"""The result type every attack returns."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .. import checks


@dataclass
class Reconstruction:
    """What an attack recovered from a shared update.

    images: (B, C, H, W) tensor, the reconstructed inputs (``None`` when the
        attack recovers labels only).
    labels: (B,) integer tensor of recovered labels, or ``None``.
    loss_history: the attack's objective after each iteration (may be empty
        for closed-form attacks).
    wall_time: seconds the attack took.
    stats: anything else the attack reports (ranks, residuals, restarts ...).
    """

    images: torch.Tensor | None
    labels: torch.Tensor | None = None
    loss_history: list[float] = field(default_factory=list)
    wall_time: float = 0.0
    stats: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("images", "labels"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, torch.Tensor):
                checks.fail(name, "a torch.Tensor or None", value, TypeError)
        if isinstance(self.loss_history, tuple):
            self.loss_history = list(self.loss_history)
        if not isinstance(self.loss_history, list):
            checks.fail("loss_history", "a list of numbers", self.loss_history,
                        TypeError)
        self.wall_time = checks.number(self.wall_time, "wall_time", minimum=0)
        if not isinstance(self.stats, dict):
            checks.fail("stats", "a dict", self.stats, TypeError)

    def __repr__(self) -> str:
        shape = None if self.images is None else tuple(self.images.shape)
        last = self.loss_history[-1] if self.loss_history else None
        return (f"Reconstruction(images={shape}, labels={self.labels}, "
                f"iterations={len(self.loss_history)}, final_loss={last}, "
                f"wall_time={self.wall_time:.2f}s)")
