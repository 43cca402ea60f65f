"""Attacks on shared gradients; each chapter adds its own module.

Every image attack returns a :class:`Reconstruction`.
"""
from . import labels
from .result import Reconstruction

__all__ = ["Reconstruction", "labels"]
