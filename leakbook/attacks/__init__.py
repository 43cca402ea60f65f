"""Attacks on shared gradients, one module per idea.

Every image attack returns a :class:`Reconstruction`.

- ``analytic``: the input of a fully connected layer from its gradient (ch. 02)
- ``labels``: the labels of a batch from the last layer's gradient (ch. 03)
- ``matching``: DLG, iDLG and inverting gradients by gradient matching (ch. 04-05)
- ``linear_systems``: convolutions as forward and gradient matrices (ch. 07-08)
"""
from . import analytic, labels, linear_systems, matching
from .analytic import (invert_fc, last_layer_deltas, solve_fc_inputs,
                       solve_last_layer_inputs)
from .matching import REGULARIZERS, dlg, idlg, inverting_gradients
from .result import Reconstruction

__all__ = ["Reconstruction", "analytic", "labels", "linear_systems", "matching",
           "invert_fc", "last_layer_deltas", "solve_fc_inputs", "solve_last_layer_inputs",
           "REGULARIZERS", "dlg", "idlg", "inverting_gradients"]
