"""Bit-identical results at any thread count: run a computation on one thread.

Several CPU kernels split their sums by thread (oneDNN convolutions and their
gradients, large reductions, some LAPACK routines), so the last bits of a
result depend on ``torch.get_num_threads()``: measured on the zoo, a conv
net's shared gradient differs by up to 6e-8 between 1 and 2 threads. NumPy
and SciPy's BLAS (used by the layer-wise attacks) have thread pools of their
own, which torch's setting does not reach: COPA's fit differed between a
process started with ``OMP_NUM_THREADS=1`` and one without. Every public
entry point whose output the book compares bit for bit runs its work inside
``with one_thread():``, which sets one thread for torch and for every BLAS
and OpenMP pool for the block (``threadpoolctl``) and restores the caller's
settings afterwards (also on error). On the book's small
models one thread is also the faster choice on a shared CPU.

Use it as a ``with`` block inside the function body, not as a decorator: a
decorator's wrapper shares one code object among all decorated functions,
and ``leakbook.exercises`` recognises a forbidden helper by its code object.
"""
from __future__ import annotations

import contextlib
import threading

import torch
from threadpoolctl import threadpool_limits

__all__ = ["one_thread"]


_depth = threading.local()


@contextlib.contextmanager
def one_thread():
    """Context manager: run the ``with`` block on one thread (torch and BLAS).

    Nested use costs nothing (only the outermost block changes settings); the
    caller's thread counts come back on exit. A graph built inside
    (``create_graph=True``) is differentiated later at the caller's thread
    count: wrap that backward pass too.
    """
    depth = getattr(_depth, "value", 0)
    if depth:
        _depth.value = depth + 1
        try:
            yield
        finally:
            _depth.value = depth
        return
    before = torch.get_num_threads()
    _depth.value = 1
    try:
        with threadpool_limits(limits=1):
            torch.set_num_threads(1)
            try:
                yield
            finally:
                torch.set_num_threads(before)
    finally:
        _depth.value = 0
