"""The ``dlsummary`` command: one entry point, one module per subcommand.

Each subcommand module defines ``add_parser(subparsers, parents)`` and ``run(args) -> int``.
Exit codes: 0 success, 1 a check failed, 2 bad usage or input (a one-line message;
``--debug`` shows the traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence

from dlsummary.cli._common import EXIT_BAD_INPUT, OneLineArgumentParser
from dlsummary.errors import DLSummaryError

# subcommand name -> module; order is the order of `dlsummary --help`
SUBCOMMANDS = {
    "report": "dlsummary.cli.report",
    "answer": "dlsummary.cli.answer",
    "rf": "dlsummary.cli.rf",
    "gradflow": "dlsummary.cli.gradflow",
    "gradcheck": "dlsummary.cli.gradcheck",
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="dlsummary",
        description="The dlsummary answer key and its tools.",
        epilog="Run 'dlsummary COMMAND --help' for a command's options and an example.",
    )
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", help="show the traceback on errors")
    parser.add_argument("--debug", action="store_true", help="show the traceback on errors")
    parser.add_argument("--version", action="version", version=_version())
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND",
                                       parser_class=OneLineArgumentParser)
    for module_name in SUBCOMMANDS.values():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name == module_name:  # a subcommand not built yet
                continue
            raise
        module.add_parser(subparsers, [debug])
    return parser


def _version() -> str:
    from dlsummary import __version__

    return f"dlsummary {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_BAD_INPUT
    try:
        return int(args.run(args) or 0)
    except DLSummaryError as err:
        if args.debug:
            traceback.print_exc()
        print(f"dlsummary {args.command}: error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"dlsummary {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
