"""``dlsummary assignment``: write the student notebook (or its solution), the original or a
variant drawn from a seed, with the variant's key derived and confirmed."""

from __future__ import annotations

import argparse

from dlsummary.cli._common import EXIT_OK, CLIError, print_json

EXAMPLE = """examples:
  dlsummary assignment --output handout/                 # handout/assignment.ipynb
  dlsummary assignment --output handout/ --variant 7     # next term's version
  dlsummary assignment --output key/ --variant 7 --solution
  dlsummary assignment --variant 7 --key --json          # the variant's numeric answers
"""


def add_parser(subparsers, parents) -> None:
    p = subparsers.add_parser(
        "assignment", parents=parents,
        help="write the students' notebook: the questions without answers, or a variant",
        description="Write the assignment a student fills in: every question in order with its "
                    "own code cells and an empty **Answer:** cell, runnable offline. "
                    "--variant N draws new parameters for cnn.3's network, dropout.1's p1, p2 "
                    "and the pirate MLP's depth (the same N gives the same variant anywhere); "
                    "its key is derived by the library and confirmed by measurement.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--output", "-o", default="assignment", metavar="DIR",
                   help="folder to write assignment.ipynb (or solution.ipynb) into "
                        "(default: assignment/)")
    p.add_argument("--variant", type=int, default=None, metavar="N",
                   help="draw variant N (a non-negative integer); default: the original")
    p.add_argument("--solution", action="store_true",
                   help="write solution.ipynb: the assignment filled in with our answers")
    p.add_argument("--key", action="store_true",
                   help="print the variant's numeric answers (derived and measured); write nothing")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dlsummary.assignment import draw_variant, variant_key, write_assignment

    if args.variant is not None and args.variant < 0:
        raise CLIError(f"--variant {args.variant}: give a non-negative integer")
    if args.key:
        key = variant_key(draw_variant(args.variant)).to_dict()
        if args.json:
            print_json(key)
        else:
            for name, value in key.items():
                print(f"{name:20s} {value:.6g}" if isinstance(value, float) else
                      f"{name:20s} {value}")
        return EXIT_OK
    path = write_assignment(args.output, args.variant, solution=args.solution)
    if args.json:
        print_json({"notebook": str(path), "variant": args.variant, "solution": args.solution})
    else:
        what = "solution" if args.solution else "assignment"
        variant = "the original" if args.variant is None else f"variant {args.variant}"
        print(f"wrote {path} ({what}, {variant})")
    return EXIT_OK
