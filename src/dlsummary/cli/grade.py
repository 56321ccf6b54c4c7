"""``dlsummary grade``: execute a submission in a fresh kernel and grade what a program can."""

from __future__ import annotations

import argparse

from dlsummary.cli._common import EXIT_OK, CLIError, print_json

EXAMPLE = """examples:
  dlsummary grade alice.ipynb             # per-item table; the variant is read from the notebook
  dlsummary grade alice.ipynb --json      # {"auto_points": ..., "auto_max": ..., "items": [...]}
  dlsummary grade bob.ipynb --timeout 30  # seconds per cell before it is interrupted
"""


def add_parser(subparsers, parents) -> None:
    p = subparsers.add_parser(
        "grade", parents=parents,
        help="grade a submission: numeric, true/false and code items automatically",
        description="Execute SUBMISSION (an .ipynb written from `dlsummary assignment`) in a "
                    "fresh kernel with the network off and a time limit per cell, and grade "
                    "the numeric answers, every true/false sub-item and the code tasks "
                    "(backprop.3, seq.2.B, re-run on hidden inputs); the free-text items are "
                    "listed with our short answer for a person to grade. Exit code 0.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("submission", metavar="SUBMISSION", help="the student's .ipynb")
    p.add_argument("--variant", type=int, default=None, metavar="N",
                   help="the variant it answers (default: read from the notebook's metadata)")
    p.add_argument("--timeout", type=int, default=60, metavar="S",
                   help="seconds a cell may run before it is interrupted (default: 60)")
    p.add_argument("--json", action="store_true", help="print the grade as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dlsummary.grading import grade_submission

    if args.timeout < 1:
        raise CLIError(f"--timeout {args.timeout}: give at least 1 second")
    grade = grade_submission(args.submission,
                             "auto" if args.variant is None else args.variant,
                             timeout=args.timeout)
    if args.json:
        print_json(grade.to_dict())
    else:
        print(grade)
    return EXIT_OK
