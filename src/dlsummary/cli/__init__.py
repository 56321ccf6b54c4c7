"""The ``dlsummary`` command: one entry point, one module per subcommand.

Each subcommand module defines ``add_parser(subparsers, parents)`` and ``run(args) -> int``.
Exit codes: 0 success, 1 a check failed, 2 bad usage or input (a one-line message;
``--debug``, before or after the subcommand, shows the traceback), 141 the reader of the
output went away (``dlsummary ... | head``: quiet, as for any Unix tool killed by SIGPIPE).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback
from collections.abc import Sequence

from dlsummary.cli._common import EXIT_BAD_INPUT, EXIT_BROKEN_PIPE, OneLineArgumentParser
from dlsummary.errors import DLSummaryError

# subcommand name -> module; order is the order of `dlsummary --help`
SUBCOMMANDS = {
    "report": "dlsummary.cli.report",
    "answer": "dlsummary.cli.answer",
    "rf": "dlsummary.cli.rf",
    "gradflow": "dlsummary.cli.gradflow",
    "gradcheck": "dlsummary.cli.gradcheck",
    "assignment": "dlsummary.cli.assignment",
    "grade": "dlsummary.cli.grade",
}


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="dlsummary",
        description="The dlsummary answer key and its tools.",
        epilog="Run 'dlsummary COMMAND --help' for a command's options and an example.",
    )
    # After the subcommand too; SUPPRESS: when absent there, the top-level value stands
    # (a default here would overwrite `dlsummary --debug COMMAND`).
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show the traceback on errors")
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
    """Run one command; return its exit code. Output into a closed pipe ends quietly."""
    try:
        try:
            return _main(argv)
        finally:
            sys.stdout.flush()  # a closed pipe shows here, not as noise at interpreter exit
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE


def _discard_stdout() -> None:
    """Point stdout at /dev/null so that Python's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor behind stdout
        pass


def _main(argv: Sequence[str] | None) -> int:
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
