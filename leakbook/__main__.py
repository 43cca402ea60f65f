"""Command line of leakbook: ``python -m leakbook audit MODEL --input-shape C H W``.

MODEL is ``module:callable`` (the callable returns an nn.Module) or the name
of a zoo model such as ``cnn6``. Taught in chapter 08.
"""
from __future__ import annotations

import argparse
import importlib
import math
import sys

import torch
from torch import nn

from . import models, security


def load_model(spec: str, input_shape) -> nn.Module:
    """An nn.Module from ``module:callable`` or a zoo name sized for input_shape."""
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ValueError(f"cannot import module {module_name!r}: {err}") from None
        if not hasattr(module, attr):
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}")
        try:
            model = getattr(module, attr)()
        except TypeError as err:
            raise TypeError(f"calling {spec}() failed: {err}") from None
        if not isinstance(model, nn.Module):
            raise TypeError(f"{spec} returned a {type(model).__name__}, "
                            "not an nn.Module")
        return model
    if spec not in models.ZOO:
        raise ValueError(f"{spec!r} is neither module:callable nor a zoo model "
                         f"({', '.join(sorted(models.ZOO))})")
    if len(input_shape) == 1 or spec in ("mlp", "fcn3"):
        return models.build(spec, in_features=math.prod(input_shape))
    c, h, w = input_shape
    if h != w:
        raise ValueError(f"zoo models take square images, got {h}x{w}")
    return models.build(spec, in_channels=c, image_size=h)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m leakbook",
                                     description="leakbook command line")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("audit", help="per-layer security audit of a model (chapter 08)")
    p.add_argument("model",
                   help="module:callable returning an nn.Module, or a zoo name")
    p.add_argument("--input-shape", type=int, nargs="+", required=True,
                   help="shape of one input: C H W (or n for an MLP)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and delta")
    p.add_argument("--rtol", type=float, default=1e-6, help="relative rank tolerance")
    p.add_argument("--weights", choices=["random", "model"], default="random")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1)")
    p.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))
    try:
        model = load_model(args.model, args.input_shape)
        result = security.audit(model, args.input_shape, seed=args.seed, rtol=args.rtol,
                                weights=args.weights)
    except (ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result.to_markdown() if args.markdown else result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
