"""``dlsummary gradcheck``: check a model's parameter gradients against finite differences."""

from __future__ import annotations

import argparse
import copy
import sys
import time
from typing import Any

from dlsummary.cli._common import (
    EXIT_CHECK_FAILED,
    EXIT_OK,
    CLIError,
    load_model,
    model_parent,
    parse_kwargs,
    print_json,
)
from dlsummary.cli._inputs import add_input_arguments, make_inputs

NAME = "gradcheck"
_FAST_HINT_SECONDS = 30.0  # suggest --fast when a full check may take longer than this


def _parent_without_required_size() -> argparse.ArgumentParser:
    """The common MODEL arguments, with ``--input-size`` optional: ``--input`` or
    ``--input-fn`` may give the inputs instead."""
    parent = model_parent()
    for action in parent._actions:
        if action.dest == "input_size":
            action.required = False
    return parent


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    """Register ``gradcheck`` with its options."""
    p = subparsers.add_parser(
        NAME,
        parents=[*parents, _parent_without_required_size()],
        help="check a model's autograd gradients against finite differences",
        description=(
            "Run MODEL on a random input (--input-size, or --input once per argument of "
            "forward, with a dtype for token ids and masks, or --input-fn), take a fixed "
            "random projection of its output as the loss, and compare autograd's gradient "
            "of every trainable parameter with finite differences (on a float64 copy). A "
            "progress bar with an ETA shows on the terminal (never with --json).\n"
            "Exit code 0: every parameter passed; 1: a gradient is wrong; 2: bad input."
        ),
        epilog=(
            "example:\n"
            "  dlsummary gradcheck torch.nn:Linear --input-size 4,10 \\\n"
            "      --kwargs '{\"in_features\": 10, \"out_features\": 3}'\n"
            "  dlsummary gradcheck my_model.py:build --input-size 4,10 --kwargs '{\"width\": 8}'\n"
            "  dlsummary gradcheck my_model.py:tagger --input 2,7:long:0..100 --input 2,7:bool"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_input_arguments(p)
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

    from dlsummary.gradients import check_module_gradients

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
    inputs, described = make_inputs(args, params[0].device)
    count = sum(p.numel() for p in params)
    if not args.fast and not args.json:
        _suggest_fast(model, inputs, count, args.directions)
    report = check_module_gradients(
        model, None, *inputs, fast=args.fast, directions=args.directions, atol=args.atol,
        rtol=args.rtol, eps=args.eps, seed=args.seed,
        progress=not args.json and sys.stderr.isatty(),
    )
    shown = (str(tuple(inputs[0].shape)) if args.input_size and not args.input
             else ", ".join(described))
    if args.json:
        given = {"input_size": list(inputs[0].shape)} if args.input_size else {}
        print_json({"model": args.model, **given, "inputs": described, **report.to_dict()})
    else:
        print(f"{args.model}  input {shown}  {count:,} trainable parameters")
        print(report)
    return EXIT_OK if report.passed else EXIT_CHECK_FAILED


def _suggest_fast(model: Any, inputs: tuple[Any, ...], count: int, directions: int) -> None:
    """Estimate the full check's time from one timed forward pass of a float64 copy (one
    evaluation per parameter, each at most a forward pass: batching makes them cheaper)
    and suggest --fast when it may be long. Only this message depends on the clock."""
    import torch

    work = copy.deepcopy(model).double()
    cast = tuple(v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
                 for v in inputs)
    try:
        with torch.no_grad():
            work(*cast)  # warm-up
            start = time.perf_counter()
            work(*cast)
            per_forward = time.perf_counter() - start
    except Exception:
        return  # the check itself reports the error, with its context
    estimate = count * per_forward
    if estimate > _FAST_HINT_SECONDS:
        print(f"note: the full check takes up to ~{estimate:,.0f} s ({count:,} evaluations, "
              f"{per_forward * 1e3:.1f} ms per forward pass, less when batched); --fast "
              f"checks {directions} random directions per tensor ({2 * directions} "
              "evaluations each) instead", file=sys.stderr)
