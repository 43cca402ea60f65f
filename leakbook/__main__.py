"""Command line of leakbook: ``python -m leakbook audit MODEL --input-shape C H W``.

MODEL is ``module:callable`` (the callable returns an nn.Module) or the name
of a zoo model such as ``cnn6``. Errors (bad arguments included) are reported
in one line on stderr with a non-zero exit status (``--debug`` shows the
traceback). The audit computes on one thread (``threads.one_thread``), so
calling :func:`main` in-process leaves torch's thread count as it was.
Taught in chapter 08.
"""
from __future__ import annotations

import argparse
import importlib
import math
import sys
import traceback

import torch
from torch import nn

from . import checks, models, security

#: inputs larger than this many entries are refused before a model is built
MAX_INPUT_ENTRIES = 2 ** 22
#: zoo models with more weight bytes than this (float32) are refused unbuilt
MAX_MODEL_BYTES = 2 ** 30


class _UsageError(Exception):
    """A command-line usage error (argparse's message), reported in one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _UsageError(f"{self.prog}: {message} (see --help)")


def check_shape(input_shape) -> tuple[int, ...]:
    """(C, H, W) or (n,) of positive ints, not absurdly large; else ValueError."""
    if isinstance(input_shape, (list, tuple)) and len(input_shape) not in (1, 3):
        raise ValueError(f"--input-shape must be C H W (or n for an MLP), got "
                         f"{len(input_shape)} numbers {tuple(input_shape)}")
    shape = checks.shape(input_shape, "--input-shape", dims=(1, 3))
    if math.prod(shape) > MAX_INPUT_ENTRIES:
        raise ValueError(f"--input-shape {shape} has {math.prod(shape):,} entries; the "
                         f"audit's dense ranks need far less (at most "
                         f"{MAX_INPUT_ENTRIES:,} accepted, ~3x64x64 is already slow)")
    return shape


def load_model(spec: str, input_shape) -> nn.Module:
    """An nn.Module from ``module:callable`` or a zoo name sized for input_shape."""
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except SyntaxError as err:
            raise ValueError(f"cannot import module {module_name!r}: syntax error in "
                             f"{err.filename}, line {err.lineno}: {err.msg}") from None
        except Exception as err:  # anything the module raises while importing
            raise ValueError(f"cannot import module {module_name!r}: "
                             f"{type(err).__name__}: {err}") from err
        if not hasattr(module, attr):
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}")
        try:
            model = getattr(module, attr)()
        except Exception as err:  # the user's factory failed: say so in one line
            raise ValueError(f"calling {spec}() raised {type(err).__name__}: "
                             f"{err}") from err
        if not isinstance(model, nn.Module):
            raise TypeError(f"{spec} returned a {type(model).__name__}, "
                            "not an nn.Module")
        return model
    if spec not in models.ZOO:
        raise ValueError(f"{spec!r} is neither module:callable nor a zoo model "
                         f"({', '.join(sorted(models.ZOO))})")
    if len(input_shape) == 1 or spec in ("mlp", "fcn3"):
        sizes = dict(in_features=math.prod(input_shape))
    else:
        c, h, w = input_shape
        if h != w:
            raise ValueError(f"--input-shape must be a square image for a zoo model, "
                             f"got {h}x{w}")
        sizes = dict(in_channels=c, image_size=h)
    with torch.device("meta"):            # shapes only: count before allocating
        params = sum(p.numel() for p in models.ZOO[spec](**sizes).parameters())
    if 4 * params > MAX_MODEL_BYTES:
        raise ValueError(f"--input-shape {tuple(input_shape)} gives {spec} "
                         f"{params:,} parameters (about {4 * params / 2**30:.1f} GB); "
                         f"at most {MAX_MODEL_BYTES // 2**20} MB of weights is built")
    return models.build(spec, **sizes)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m leakbook", description="leakbook command line")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("audit", help="per-layer security audit of a model (chapter 08)")
    p.add_argument("model",
                   help="module:callable returning an nn.Module, or a zoo name")
    p.add_argument("--input-shape", type=int, nargs="+", required=True,
                   help="shape of one input: C H W (or n for an MLP)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and delta")
    p.add_argument("--rtol", type=float, default=1e-6, help="relative rank tolerance")
    p.add_argument("--weights", choices=["random", "model"], default="random")
    p.add_argument("--max-memory-gb", type=float, default=2.0,
                   help="refuse audits estimated to need more memory (default 2)")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    p.add_argument("--debug", action="store_true",
                   help="show the full traceback of an error")
    return parser


def _audit(args) -> str:
    shape = check_shape(args.input_shape)
    model = load_model(args.model, shape)
    result = security.audit(model, shape, seed=args.seed, rtol=args.rtol,
                            weights=args.weights, max_memory_gb=args.max_memory_gb)
    return result.to_markdown() if args.markdown else str(result)


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0 ok, 2 bad input, 1 other).

    Torch's thread count is the caller's again on return (the audit runs in
    ``threads.one_thread``; the count is also restored here, whatever happens).
    """
    try:
        args = _parser().parse_args(argv)
    except _UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    threads = torch.get_num_threads()
    try:
        print(_audit(args))
        return 0
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001  (one line, not a traceback)
        if args.debug:
            traceback.print_exception(err)
        known = isinstance(err, (ValueError, TypeError, MemoryError))
        message = str(err) if known else f"{type(err).__name__}: {err}"
        print("error: " + " ".join(message.split()), file=sys.stderr)
        return 2 if known else 1
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    sys.exit(main())
