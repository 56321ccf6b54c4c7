"""``dlsummary rf``: the receptive field of a user's CNN, layer by layer."""

from __future__ import annotations

import argparse

from dlsummary.cli._common import (
    EXIT_OK,
    load_model,
    model_parent,
    parse_input_size,
    parse_kwargs,
    print_json,
)

EXAMPLE = """example:
  dlsummary rf mypackage.models:resnet18 --input-size 1,3,224,224
  dlsummary rf path/to/net.py:build --kwargs '{"depth": 4}' --input-size 1,1,64,64 --json
  dlsummary rf net.py:build --input-size 1,3,224,224 --measure   # also measure the footprint
  dlsummary rf examples/unet.py:unet --input-size 1,1,96,96 --kwargs '{"decoder": "bilinear"}'

With --measure, a model the analysis refuses is measured instead (the output says so).
"""


def add_parser(subparsers, parents) -> None:
    p = subparsers.add_parser(
        "rf", parents=[*parents, model_parent()],
        help="receptive field of a CNN, layer by layer",
        description="Trace MODEL with torch.fx and compute, from the layers' geometry, the "
                    "receptive field of its output: size, effective stride and padding per "
                    "spatial dimension, with a per-layer table. Outputs that depend on the "
                    "whole input (global pooling, flatten + linear) are reported as global. "
                    "--measure also measures the footprint of the centre output from the "
                    "gradient, as a check, and measures the field instead where the analysis "
                    "refuses the model.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--measure", action="store_true",
                   help="also measure the footprint of the centre output (slower); where the "
                        "analysis refuses, measure the field instead")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dlsummary.errors import DLSummaryError
    from dlsummary.receptive_field import empirical_receptive_field, receptive_field

    size = parse_input_size(args.input_size)
    model = load_model(args.model, parse_kwargs(args.kwargs), args.device)
    result = receptive_field(model, size, fallback="measure" if args.measure else None)
    measured, not_measured = None, None
    if args.measure and result.method == "analytic":
        try:
            measured = empirical_receptive_field(model, size)
        except DLSummaryError as err:  # e.g. a classifier: no spatial output to measure
            not_measured = str(err)
    if args.json:
        data = result.to_dict()
        if args.measure and result.method == "analytic":
            data["measured"] = measured.to_dict() if measured is not None else None
            if not_measured:
                data["not_measured"] = not_measured
        print_json(data)
    else:
        print(result)
        if measured is not None:
            print(measured)
        if not_measured:
            print(f"not measured: {not_measured}")
    return EXIT_OK
