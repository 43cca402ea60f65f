"""Attacks on shared gradients; each chapter adds its own module.

Every image attack returns a :class:`Reconstruction`.
"""
from .result import Reconstruction
from .rgap import rgap

__all__ = ["Reconstruction", "rgap"]
