"""``dlsummary gradcheck``: check a model's parameter gradients against finite differences."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from dlsummary.cli._common import (
    EXIT_CHECK_FAILED,
    EXIT_OK,
    CLIError,
    load_model,
    model_parent,
    parse_input_size,
    parse_kwargs,
    print_json,
)

NAME = "gradcheck"
_FULL_CHECK_HINT = 200_000  # above this many parameters, suggest --fast


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``gradcheck`` with its options."""
    p = subparsers.add_parser(
        NAME,
        parents=[*parents, model_parent()],
        help="check a model's autograd gradients against finite differences",
        description=(
            "Run MODEL on a random float64 input batch of --input-size, take a fixed random "
            "projection of its output as the loss, and compare autograd's gradient of every "
            "trainable parameter with central finite differences (on a float64 copy).\n"
            "Exit code 0: every parameter passed; 1: a gradient is wrong; 2: bad input."
        ),
        epilog=(
            "example:\n"
            "  dlsummary gradcheck torch.nn:Linear --input-size 4,10 \\\n"
            "      --kwargs '{\"in_features\": 10, \"out_features\": 3}'\n"
            "  dlsummary gradcheck my_model.py:build --input-size 4,10 --kwargs '{\"width\": 8}'"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--fast", action="store_true",
                   help="check random directional derivatives instead of every coordinate")
    p.add_argument("--directions", type=int, default=4, metavar="K",
                   help="random directions per parameter in --fast mode (default 4)")
    p.add_argument("--atol", type=float, default=1e-5, help="absolute tolerance (default 1e-5)")
    p.add_argument("--rtol", type=float, default=1e-3, help="relative tolerance (default 1e-3)")
    p.add_argument("--eps", type=float, default=None,
                   help="finite-difference step (default: 6e-6, the float64 optimum)")
    p.add_argument("--seed", type=int, default=0, help="seed of the input and directions")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Build the model, check it, print the table (or JSON); 0 pass, 1 fail."""
    import torch

    from dlsummary.gradients import check_module_gradients

    size = parse_input_size(args.input_size)
    kwargs = parse_kwargs(args.kwargs)
    if args.directions < 1:
        raise CLIError(f"--directions {args.directions} must be a positive integer")
    if args.eps is not None and not args.eps > 0:
        raise CLIError(f"--eps {args.eps} must be a positive number, e.g. --eps 1e-6")
    if args.atol < 0 or args.rtol < 0:
        raise CLIError("--atol and --rtol must be >= 0")
    model = load_model(args.model, kwargs, args.device, seed=args.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise CLIError(f"MODEL {args.model!r} has no trainable parameters; nothing to check")
    device = params[0].device
    generator = torch.Generator().manual_seed(args.seed)
    inputs = torch.randn(size, generator=generator, dtype=torch.float64).to(device)
    count = sum(p.numel() for p in params)
    if not args.fast and count > _FULL_CHECK_HINT and not args.json:
        print(f"note: {count:,} parameters: the full check needs {2 * count:,} forward "
              "passes; --fast checks random directions instead", file=sys.stderr)
    report = check_module_gradients(
        model, None, inputs, fast=args.fast, directions=args.directions, atol=args.atol,
        rtol=args.rtol, eps=args.eps, seed=args.seed,
    )
    if args.json:
        print_json({"model": args.model, "input_size": list(size), **report.to_dict()})
    else:
        print(f"{args.model}  input {tuple(size)}  {count:,} trainable parameters")
        print(report)
    return EXIT_OK if report.passed else EXIT_CHECK_FAILED
