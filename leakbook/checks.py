"""Input validation shared by the package: clear errors, never silent answers.

Every public entry point checks its arguments with these helpers before any
expensive work. Each helper takes the argument's name and, on bad input,
raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (right
kind, wrong value) with one message pattern::

    <name> must be <what was expected>, got <what came>

so an error always says which argument, what it should have been and what it
was. Helpers return the value normalised (an ``int``, a ``float``, a long
label tensor ...), so a caller writes ``n = checks.integer(n, "n", minimum=1)``.

Scalars: :func:`integer`, :func:`number`, :func:`flag`, :func:`choice`,
:func:`seed`, :func:`float_dtype`, :func:`shape`, :func:`function`.
Tensors: :func:`tensor`, :func:`float_tensor`, :func:`batch`,
:func:`check_batch`, :func:`labels`, :func:`soft_labels`, :func:`weights`.
Models and gradients: :func:`module`, :func:`model_dtype`,
:func:`check_grads`, :func:`tensor_lists`.
"""
from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["describe", "fail", "integer", "number", "flag", "choice", "seed",
           "float_dtype", "shape", "function", "tensor", "float_tensor", "batch",
           "check_batch", "labels", "soft_labels", "weights", "module", "model_dtype",
           "check_grads", "tensor_lists"]

#: the range torch.manual_seed accepts
SEED_RANGE = (-0x8000_0000_0000_0000, 0xFFFF_FFFF_FFFF_FFFF)


# --- messages ---------------------------------------------------------------------

def _article(word: str) -> str:
    return f"{'an' if word[:1] in 'aeiou' else 'a'} {word}"


def describe(value) -> str:
    """A short description of what came, for an error message.

    Tensors and arrays give dtype and shape (and their values when there are
    at most 8), short lists their values, other objects their repr or type.
    """
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).replace("torch.", "")
        if value.dim() == 0:
            return f"{_article(dtype)} scalar tensor ({value.item()!r})"
        text = f"{_article(dtype)} tensor of shape {tuple(value.shape)}"
        if 0 < value.numel() <= 8 and value.dim() == 1:
            text += f" {value.tolist()}"
        return text
    if isinstance(value, np.ndarray):
        return f"a NumPy {value.dtype} array of shape {value.shape}"
    if isinstance(value, (list, tuple)):
        kind = type(value).__name__
        if len(value) == 0:
            return f"an empty {kind}"
        if len(value) <= 8 and all(isinstance(v, (numbers.Number, str)) for v in value):
            text = repr(value)
            if len(text) <= 60:
                return text
        return f"a {kind} of {len(value)} {_describe_kind(value[0])}"
    if isinstance(value, torch.nn.Module):
        return f"a {type(value).__name__} module"
    if value is None or isinstance(value, (bool, numbers.Number, str, torch.dtype)):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return _article(type(value).__name__)


def _describe_kind(first) -> str:
    """What a sequence holds, judged by its first item ("tensors", "ints" ...)."""
    if isinstance(first, torch.Tensor):
        return "tensors"
    if isinstance(first, (list, tuple)):
        return f"{type(first).__name__}s"
    return f"{type(first).__name__}s"


def fail(name: str, expected: str, value, error: type = ValueError):
    """Raise ``error("<name> must be <expected>, got <what value is>")``."""
    raise error(f"{name} must be {expected}, got {describe(value)}")


# --- scalars ----------------------------------------------------------------------

def integer(value, name: str, minimum: int | None = None,
            maximum: int | None = None, what: str | None = None) -> int:
    """An int (bools refused; NumPy ints and 0-d integer tensors accepted).

    what: the expected value in words for the message (default: the bounds).
    """
    if isinstance(value, (bool, np.bool_)):
        fail(name, what or "an integer", value, TypeError)
    try:
        out = operator.index(value)
    except TypeError:
        fail(name, what or "an integer", value, TypeError)
    if minimum is not None and out < minimum:
        fail(name, what or f"at least {minimum}", out)
    if maximum is not None and out > maximum:
        fail(name, what or f"at most {maximum}", out)
    return out


def number(value, name: str, minimum: float | None = None, maximum: float | None = None,
           above: float | None = None, below: float | None = None,
           finite: bool = True) -> float:
    """A real number as a float; NaN always refused, infinities unless finite=False.

    minimum/maximum are inclusive bounds, above/below exclusive ones.
    """
    if isinstance(value, (bool, np.bool_)) or isinstance(value, complex):
        fail(name, "a real number", value, TypeError)
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool:
            fail(name, "a real number", value, TypeError)
        value = value.item()
    if not isinstance(value, numbers.Real):
        fail(name, "a real number", value, TypeError)
    out = float(value)
    if math.isnan(out):
        fail(name, "a number, not NaN", out)
    if finite and math.isinf(out):
        fail(name, "a finite number", out)
    if minimum is not None and out < minimum:
        fail(name, f"at least {minimum}", out)
    if maximum is not None and out > maximum:
        fail(name, f"at most {maximum}", out)
    if above is not None and not out > above:
        fail(name, f"greater than {above}", out)
    if below is not None and not out < below:
        fail(name, f"less than {below}", out)
    return out


def flag(value, name: str) -> bool:
    """A bool (True/False; 0, 1 and other truthy objects are refused)."""
    if not isinstance(value, (bool, np.bool_)):
        fail(name, "True or False", value, TypeError)
    return bool(value)


def choice(value, name: str, options):
    """One of ``options`` (strings compared exactly); returns value."""
    options = tuple(options)
    try:
        ok = any(value is o or (type(value) is type(o) and value == o) for o in options)
    except (TypeError, RuntimeError):  # tensors and other odd objects compare oddly
        ok = False
    if not ok:
        listed = ", ".join(repr(o) for o in options)
        fail(name, f"one of {listed}", value,
             ValueError if isinstance(value, str) else TypeError)
    return value


def seed(value, name: str = "seed") -> int:
    """An integer seed in the range torch.manual_seed accepts."""
    return integer(value, name, *SEED_RANGE)


def float_dtype(value, name: str = "dtype") -> torch.dtype:
    """A floating-point torch dtype (float32, float64 ...)."""
    if not isinstance(value, torch.dtype):
        fail(name, "a torch dtype such as torch.float32", value, TypeError)
    if not value.is_floating_point:
        fail(name, "a floating-point dtype (torch.float32 or torch.float64)", value,
             TypeError)
    return value


def shape(value, name: str, dims: int | Sequence[int] | None = None) -> tuple[int, ...]:
    """A shape: a tuple of positive ints, of ``dims`` entries if given."""
    if isinstance(value, (torch.Size, tuple, list)):
        items = list(value)
    else:
        fail(name, "a shape (a tuple of positive ints)", value, TypeError)
    allowed = (dims,) if isinstance(dims, int) else dims
    if allowed is not None and len(items) not in allowed:
        want = " or ".join(str(d) for d in allowed)
        fail(name, f"a shape of {want} entries", value)
    out = []
    for i, v in enumerate(items):
        if isinstance(v, (bool, np.bool_)):
            fail(f"{name}[{i}]", "a positive integer", v, TypeError)
        try:
            out.append(operator.index(v))
        except TypeError:
            fail(f"{name}[{i}]", "a positive integer", v, TypeError)
        if out[-1] < 1:
            fail(f"{name}[{i}]", "a positive integer", v)
    return tuple(out)


def function(value, name: str):
    """A callable."""
    if not callable(value):
        fail(name, "callable", value, TypeError)
    return value


# --- tensors ----------------------------------------------------------------------

_KINDS = {
    "float": ("a floating-point tensor", lambda t: t.is_floating_point()),
    "integer": ("an integer tensor",
                lambda t: not t.is_floating_point() and not t.is_complex()
                and t.dtype != torch.bool),
    "real": ("a real (integer, bool or float) tensor", lambda t: not t.is_complex()),
    "any": ("a tensor", lambda t: True),
}


def _dims_text(allowed) -> str:
    return " or ".join(f"{d}-D" for d in allowed)


def tensor(value, name: str, kind: str = "float",
           dims: int | Sequence[int] | None = None, min_dims: int = 0,
           finite: bool = True, nonempty: bool = False) -> torch.Tensor:
    """A torch.Tensor of a kind ("float", "integer", "real", "any") and rank.

    dims: the allowed numbers of dimensions; min_dims: the least number.
    finite: refuse NaN and infinities (floating tensors); nonempty: refuse
    tensors with no entries. Returns the tensor itself (not a copy).
    """
    if not isinstance(value, torch.Tensor):
        fail(name, "a torch.Tensor", value, TypeError)
    text, ok = _KINDS[kind]
    if not ok(value):
        fail(name, text, value, TypeError)
    allowed = (dims,) if isinstance(dims, int) else dims
    if allowed is not None and value.dim() not in allowed:
        fail(name, f"{_dims_text(allowed)}", value)
    if value.dim() < min_dims:
        fail(name, f"at least {min_dims}-D", value)
    if nonempty and value.numel() == 0:
        fail(name, "non-empty", value)
    if finite and value.is_floating_point() and not torch.isfinite(value).all():
        bad = int((~torch.isfinite(value)).sum())
        raise ValueError(f"{name} must be finite, got {bad} NaN or infinite "
                         f"value{'s' if bad > 1 else ''} in {describe(value)}")
    return value


def float_tensor(t, name: str, dims: int | Sequence[int] | None = None,
                 nonempty: bool = False) -> torch.Tensor:
    """A finite floating-point tensor, returned detached."""
    return tensor(t, name, "float", dims=dims, nonempty=nonempty).detach()


def batch(x, name: str = "x", dims: int | Sequence[int] | None = None,
          min_dims: int = 2) -> torch.Tensor:
    """A batch of inputs: a finite float tensor (B, ...), B >= 1, no empty sample."""
    tensor(x, name, "float", dims=dims, min_dims=min_dims, finite=False)
    if x.shape[0] == 0:
        fail(name, "a batch of at least one sample", x)
    if x.numel() == 0:
        fail(name, "a batch of non-empty samples", x)
    return tensor(x, name, "float")


def check_batch(x, y=None, x_name: str = "x", y_name: str = "y") -> None:
    """Check a batch x (B, ...) and, if given, that y is a tensor of B entries."""
    batch(x, x_name)
    if y is not None:
        tensor(y, y_name, "real", min_dims=1, finite=False)
        if y.shape[0] != x.shape[0]:
            raise ValueError(f"{y_name} must have one entry per sample of {x_name}, "
                             f"got {y.shape[0]}: {x_name} has {x.shape[0]} samples "
                             f"but {y_name} has {y.shape[0]} labels")


def _as_label_tensor(y, name: str) -> torch.Tensor:
    if isinstance(y, torch.Tensor):
        return y
    if isinstance(y, (list, tuple)) and len(y) == 0:
        return torch.zeros(0, dtype=torch.long)
    if isinstance(y, np.ndarray) or (isinstance(y, (list, tuple))
                                     and all(isinstance(v, (numbers.Integral, np.bool_))
                                             for v in y)):
        try:
            return torch.as_tensor(np.asarray(y))
        except (TypeError, ValueError):
            pass
    fail(name, "integer class labels (a tensor, array or list of ints)", y, TypeError)


def labels(y, name: str = "y", batch_size: int | None = None,
           num_classes: int | None = None, context: str = "") -> torch.Tensor:
    """Integer class labels (B,) as an int64 tensor.

    Accepts a tensor or NumPy array of any integer dtype or bool (True = 1),
    or a list of ints. Refuses floats (they would be truncated), other ranks,
    negative labels, and labels >= num_classes when num_classes is given
    (``context`` is added to that message, e.g. " (the model has 10 outputs)").
    """
    t = _as_label_tensor(y, name)
    if t.is_floating_point() or t.is_complex():
        fail(name, "integer class labels (not floats, which would be truncated)", y,
             TypeError)
    if t.dim() != 1:
        fail(name, "a 1-D tensor of labels (B,)", y)
    if batch_size is not None and len(t) != batch_size:
        fail(name, f"{batch_size} labels, one per sample", y)
    t = t.long()
    if len(t) and int(t.min()) < 0:
        fail(name, "non-negative class labels", t.tolist() if len(t) <= 20 else t)
    if num_classes is not None and len(t) and int(t.max()) >= num_classes:
        values = t.tolist() if len(t) <= 20 else t
        fail(name, f"labels in 0..{num_classes - 1}{context}", values)
    return t


def soft_labels(y, name: str = "y", batch_size: int | None = None,
                num_classes: int | None = None, atol: float = 1e-3) -> torch.Tensor:
    """Soft labels (B, C): finite, non-negative rows that sum to 1 (within atol)."""
    tensor(y, name, "float", dims=2)
    want = (batch_size if batch_size is not None else y.shape[0],
            num_classes if num_classes is not None else y.shape[1])
    if tuple(y.shape) != want:
        fail(name, f"soft labels of shape {want}", y)
    if (y < 0).any():
        fail(name, "soft labels with non-negative entries (probabilities)", y)
    sums = y.detach().sum(1)
    if ((sums - 1).abs() > atol).any():
        raise ValueError(f"{name} must be soft labels whose rows sum to 1 "
                         f"(probabilities), got row sums {sums.tolist()[:8]}")
    return y


def weights(value, name: str, count: int) -> torch.Tensor:
    """``count`` finite non-negative weights, positive sum, as float64 (count,)."""
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__len__"):
        fail(name, f"{count} non-negative numbers", value, TypeError)
    try:
        w = torch.as_tensor(value if isinstance(value, torch.Tensor)
                            else np.asarray(value, dtype=float), dtype=torch.float64)
    except (TypeError, ValueError):
        fail(name, f"{count} non-negative numbers", value, TypeError)
    if w.dim() != 1 or len(w) != count:
        fail(name, f"{count} non-negative numbers, one per entry", value)
    if not torch.isfinite(w).all():
        fail(name, "finite numbers (no NaN or infinity)", w.tolist())
    if (w < 0).any():
        fail(name, "non-negative numbers", w.tolist())
    if not w.sum() > 0:
        fail(name, "non-negative numbers with a positive sum", w.tolist())
    return w


# --- models and gradients ---------------------------------------------------------

def module(model, name: str = "model", parameters: bool = True) -> torch.nn.Module:
    """A torch.nn.Module (with at least one floating parameter, by default)."""
    if not isinstance(model, torch.nn.Module):
        fail(name, "a torch.nn.Module", model, TypeError)
    if parameters:
        params = list(model.parameters())
        if not params:
            fail(name, "a model with at least one parameter", model)
        for pname, p in model.named_parameters():
            if not p.is_floating_point():
                raise TypeError(f"{name} must have floating-point parameters, got "
                                f"{pname} of dtype {p.dtype}")
    return model


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the model's first parameter (float32 if it has none)."""
    for p in model.parameters():
        return p.dtype
    return torch.float32


def _tensor_list(value, name: str) -> list:
    if isinstance(value, torch.Tensor):
        fail(name, "a list of tensors (one per parameter), not a single tensor",
             value, TypeError)
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        fail(name, "a list of tensors", value, TypeError)
    return list(value)


def check_grads(model: torch.nn.Module, grads,
                name: str = "grads") -> list[torch.Tensor]:
    """Check that ``grads`` lines up with ``model.parameters()``; return it as a list.

    Each entry must be a finite floating tensor of its parameter's shape.
    The list is a new list; the tensors are the caller's (not copied).
    """
    module(model)
    grads = _tensor_list(grads, name)
    params = list(model.parameters())
    if len(grads) != len(params):
        raise ValueError(f"{name} must hold one tensor per parameter of the model "
                         f"({len(params)} parameter tensors), got {len(grads)} "
                         f"gradient tensors: gradients of another model?")
    for i, (g, p) in enumerate(zip(grads, params)):
        tensor(g, f"{name}[{i}]", "float")
        if g.shape != p.shape:
            raise ValueError(f"{name}[{i}] must have the shape of parameter {i}, "
                             f"{tuple(p.shape)}, got shape {tuple(g.shape)}: "
                             f"gradients of another model?")
    return grads


def tensor_lists(value, name: str) -> list[list[torch.Tensor]]:
    """A non-empty list of equally long lists of tensors, aligned in shape and dtype.

    For a list of client updates (each a list of tensors, one per parameter).
    A flat list of tensors is refused: wrap a single update as ``[update]``.
    Every tensor must be floating and finite.
    """
    if isinstance(value, torch.Tensor) or not isinstance(value, (list, tuple)):
        fail(name, "a list of updates, each a list of tensors", value, TypeError)
    if len(value) == 0:
        fail(name, "a non-empty list of updates", value)
    if any(isinstance(u, torch.Tensor) for u in value):
        fail(name, "a list of updates, each a list of tensors (a flat list of tensors "
                   "is one update: wrap it as [update])", value, TypeError)
    lists = [_tensor_list(u, f"{name}[{i}]") for i, u in enumerate(value)]
    first = lists[0]
    if not first:
        fail(f"{name}[0]", "a non-empty list of tensors", first)
    for i, u in enumerate(lists):
        if len(u) != len(first):
            raise ValueError(f"{name}[{i}] must have as many tensors as {name}[0] "
                             f"({len(first)}), got {len(u)}")
        for j, (t, ref) in enumerate(zip(u, first)):
            tensor(t, f"{name}[{i}][{j}]", "float")
            if t.shape != ref.shape or t.dtype != ref.dtype:
                raise ValueError(
                    f"{name}[{i}][{j}] must match {name}[0][{j}] ({describe(ref)}), "
                    f"got {describe(t)}")
    return lists
