"""``dlsummary report``: execute the answer key's sections in parallel fresh kernels and
write the HTML page, the stitched notebook and checks.json."""

from __future__ import annotations

import argparse
import sys

from dlsummary.cli._common import EXIT_CHECK_FAILED, EXIT_OK, CLIError, print_json

EXAMPLE = """examples:
  dlsummary report --output build/
  # writes build/summary_questions.ipynb (executed), build/summary_questions.html and
  # build/checks.json
  dlsummary report --only cnn,dropout --jobs 2     # a subset, for quick work
  dlsummary report --notebooks                     # only write notebooks/NN_*.ipynb (no run)
"""


def add_parser(subparsers, parents) -> None:
    p = subparsers.add_parser(
        "report", parents=parents,
        help="execute the answer key and write a self-contained HTML report",
        description="Execute the answer key's sections (notebooks/NN_*.py), each in a fresh "
                    "kernel, several at once, and write the stitched executed notebook, one "
                    "self-contained HTML page (plots embedded, equations as MathML, nothing "
                    "loaded from the network) and checks.json. A failing cell names its "
                    "question and exits with code 1.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--output", "-o", default="build", metavar="DIR",
                   help="folder for the executed notebook, the HTML and checks.json "
                        "(default: build/)")
    p.add_argument("--notebook", default=None, metavar="PATH",
                   help="the answer key's folder, or one jupytext source to run "
                        "(default: notebooks/)")
    p.add_argument("--jobs", "-j", type=int, default=None, metavar="N",
                   help="kernels run at once (default: one per core)")
    p.add_argument("--only", default=None, metavar="SECTIONS",
                   help="comma-separated sections to run, by file name or question prefix "
                        "(cnn,dropout,opt); the page says it is partial")
    p.add_argument("--notebooks", action="store_true",
                   help="do not execute: write each section's .ipynb (no outputs) beside its "
                        "source, to open in Jupyter")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from dlsummary.report import ReportCellError, render_report, write_section_notebooks

    if args.jobs is not None and args.jobs < 1:
        raise CLIError(f"--jobs {args.jobs}: give at least 1 (or leave it out: one per core)")
    if args.notebooks:
        for path in write_section_notebooks(args.notebook):
            print(path)
        return EXIT_OK

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        report = render_report(args.notebook, args.output,
                               progress=None if args.quiet else progress,
                               jobs=args.jobs, only=args.only)
    except ReportCellError as err:
        print(f"dlsummary report: FAILED: {err}", file=sys.stderr)
        return EXIT_CHECK_FAILED
    if args.json:
        print_json(report.to_dict())
    else:
        print(report)
    return EXIT_OK
