"""Attacks on shared gradients; each chapter adds its own module.

Every image attack returns a :class:`Reconstruction`.
"""
from . import matching
from .matching import REGULARIZERS, dlg, idlg, inverting_gradients
from .result import Reconstruction
from .rgap import rgap

__all__ = ["Reconstruction", "matching", "dlg", "idlg", "inverting_gradients",
           "REGULARIZERS", "rgap"]
