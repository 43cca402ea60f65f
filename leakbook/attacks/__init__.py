"""Attacks on shared gradients, one module per idea.

Every image attack returns a :class:`Reconstruction`.

- ``analytic``: the input of a fully connected layer from its gradient (ch. 02)
- ``labels``: the labels of a batch from the last layer's gradient (ch. 03)
- ``matching``: DLG, iDLG and inverting gradients by gradient matching (ch. 04-05)
- ``group``: GradInversion-style group consistency over seeds (ch. 05)
- ``fedavg``: FedAvg updates by unrolled local steps; several pairs of one batch (ch. 06)
- ``linear_systems``: convolutions as forward and gradient matrices (ch. 07-08)
- ``layers``, ``layer_system``: a network as blocks; one layer's linear system (ch. 07)
- ``recursive``: R-GAP, layer by layer from the output (ch. 07)
- ``hybrid``: COPA, linear solves corrected by gradient matching (ch. 07)
- ``tensor``: moment tensors of a random two-layer network, CP decomposition (ch. 09)
"""
from . import (analytic, fedavg, group, hybrid, labels, layer_system, layers,
               linear_systems, matching, recursive, tensor)
from .analytic import (invert_fc, last_layer_deltas, solve_fc_inputs,
                       solve_last_layer_inputs)
from .fedavg import invert_fedavg, invert_pairs
from .group import gradinversion
from .hybrid import copa
from .matching import REGULARIZERS, dlg, idlg, inverting_gradients
from .recursive import rgap
from .result import Reconstruction
from .tensor import (direction_cosines, hermite_coefficient, input_span, moment_tensor,
                     projected_moment_tensor, random_two_layer, symmetric_cp,
                     tensor_decomposition)

__all__ = ["Reconstruction", "analytic", "hybrid", "labels", "layer_system", "layers",
           "linear_systems", "matching", "recursive", "invert_fc", "last_layer_deltas",
           "solve_fc_inputs", "solve_last_layer_inputs", "REGULARIZERS", "dlg", "idlg",
           "inverting_gradients", "copa", "rgap", "tensor", "tensor_decomposition",
           "direction_cosines", "hermite_coefficient", "moment_tensor", "random_two_layer",
           "symmetric_cp", "fedavg", "group", "gradinversion", "invert_fedavg", "invert_pairs",
           "input_span", "projected_moment_tensor"]
