"""Attacks on shared gradients; each chapter adds its own module.

Every image attack returns a :class:`Reconstruction`.
"""
from .hybrid import copa
from .recursive import rgap
from .result import Reconstruction

__all__ = ["Reconstruction", "copa", "rgap"]
