"""``dlsummary report``: execute the answer key in a fresh kernel and write the HTML page."""

from __future__ import annotations

import argparse
import sys

from dlsummary.cli._common import EXIT_CHECK_FAILED, EXIT_OK, print_json

EXAMPLE = """example:
  dlsummary report --output build/
  # writes build/summary_questions.ipynb (executed) and build/summary_questions.html
"""


def add_parser(subparsers, parents) -> None:
    p = subparsers.add_parser(
        "report", parents=parents,
        help="execute the answer key and write a self-contained HTML report",
        description="Execute notebooks/summary_questions.py in a fresh kernel and write the "
                    "executed notebook and one self-contained HTML page (plots embedded, "
                    "equations as MathML, nothing loaded from the network). A failing cell "
                    "names its question and exits with code 1.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--output", "-o", default="build", metavar="DIR",
                   help="folder for the executed notebook and the HTML (default: build/)")
    p.add_argument("--notebook", default=None, metavar="PATH",
                   help="the jupytext source to run (default: notebooks/summary_questions.py)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dlsummary.report import ReportCellError, render_report

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        report = render_report(args.notebook, args.output,
                               progress=None if args.quiet else progress)
    except ReportCellError as err:
        print(f"dlsummary report: FAILED: {err}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    if args.json:
        print_json(report.to_dict())
    else:
        print(report)
    return EXIT_OK
