"""Attacks on shared gradients; each chapter adds its own module.

Every image attack returns a :class:`Reconstruction`.
"""
from .result import Reconstruction

__all__ = ["Reconstruction"]

# chapter 02: the analytic inversion of an FC layer
from . import analytic  # noqa: E402
from .analytic import (invert_fc, last_layer_deltas, solve_fc_inputs,  # noqa: E402
                       solve_last_layer_inputs)

__all__ += ["analytic", "invert_fc", "last_layer_deltas", "solve_fc_inputs",
            "solve_last_layer_inputs"]

# chapter 09: moment tensors from one gradient of a random two-layer network
from . import tensor  # noqa: E402
from .tensor import (direction_cosines, hermite_coefficient,  # noqa: E402
                     moment_tensor, random_two_layer, symmetric_cp,
                     tensor_decomposition)

__all__ += ["tensor", "direction_cosines", "hermite_coefficient", "moment_tensor",
            "random_two_layer", "symmetric_cp", "tensor_decomposition"]
