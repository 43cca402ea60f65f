"""leakbook: training-data leakage from gradients, the package behind the book.

Importing it has no side effects: nothing is seeded, downloaded or configured.
Call :func:`seed_everything` yourself (every chapter does in its first cell).
"""
import random

import numpy as np
import torch

from . import (attacks, checks, data, defenses, exercises, fl, isolation, metrics,
               models, optim, security, threads, train, viz)
from .attacks.result import Reconstruction

__version__ = "0.1.0"
__all__ = ["attacks", "checks", "data", "defenses", "exercises", "fl", "isolation",
           "metrics", "models", "optim", "security", "threads", "train", "viz",
           "Reconstruction", "seed_everything", "__version__"]


def seed_everything(seed: int = 0, threads: int = 2) -> None:
    """Seed Python, NumPy and torch, and cap torch at ``threads`` CPU threads.

    seed: an int in 0..2**32 - 1 (NumPy's range); threads: an int >= 1.
    Changing the global state is this function's purpose (no other function
    of the package does).
    """
    from . import checks
    seed = checks.integer(seed, "seed", 0, 2 ** 32 - 1)
    threads = checks.integer(threads, "threads", minimum=1)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
