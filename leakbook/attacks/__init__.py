"""Attacks on shared gradients; each chapter adds its own module.

Every image attack returns a :class:`Reconstruction`.
"""
from . import labels, matching
from .hybrid import copa
from .matching import REGULARIZERS, dlg, idlg, inverting_gradients
from .recursive import rgap
from .result import Reconstruction

__all__ = ["Reconstruction", "labels", "matching", "dlg", "idlg", "inverting_gradients",
           "REGULARIZERS", "copa", "rgap"]
