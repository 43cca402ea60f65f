"""Bit-identical results at any thread count: run a computation on one thread.

Several CPU kernels split their sums by thread (oneDNN convolutions and their
gradients, large reductions, some LAPACK routines), so the last bits of a
result depend on ``torch.get_num_threads()``: measured on the zoo, a conv
net's shared gradient differs by up to 6e-8 between 1 and 2 threads. Every
public entry point whose output the book compares bit for bit runs its work
inside ``with one_thread():``, which sets one thread for the block and
restores the caller's setting afterwards (also on error). On the book's small
models one thread is also the faster choice on a shared CPU.

Use it as a ``with`` block inside the function body, not as a decorator: a
decorator's wrapper shares one code object among all decorated functions,
and ``leakbook.exercises`` recognises a forbidden helper by its code object.
"""
from __future__ import annotations

import contextlib

import torch

__all__ = ["one_thread"]


@contextlib.contextmanager
def one_thread():
    """Context manager: run the ``with`` block on one torch thread.

    Nested use costs nothing; the caller's thread count comes back on exit.
    A graph built inside (``create_graph=True``) is differentiated later at
    the caller's thread count: wrap that backward pass too.
    """
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
