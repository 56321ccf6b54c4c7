"""Regenerate the README's example outputs: ``make readme``.

Each example is a ``dlsummary`` command line on a model of ``examples/my_models.py``. Its
output, shortened to the lines the README shows, is written into the ```console block
between ``<!-- example: NAME -->`` and ``<!-- /example -->``. The printed numbers come from
this machine: another machine's kernels round differently in the last digits, so
``tests/test_examples.py`` runs the same commands and compares only what is stable (the
text, integers, verdicts and exit codes exactly; measured values within ``rtol``; the
rounding noise named in ``noise`` not at all). Run it after changing a tool's output.
"""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
OMITTED = "..."


@dataclass(frozen=True)
class Example:
    """One command of the README and how its output is shown and compared."""

    name: str
    args: tuple[str, ...]
    returncode: int  # the verdict: 0 passed/healthy, 1 a check failed
    head: int  # lines shown from the start of the output ...
    tail: int = 0  # ... and from its end, with "..." between when lines are left out
    rtol: float = 0.0  # relative tolerance on decimal numbers; 0: exact
    # regular expressions for rounding noise (differs between kernels and thread counts):
    # what they match is not compared, only the text around it
    noise: tuple[str, ...] = ()

    @property
    def command(self) -> str:
        return shlex.join(["dlsummary", *self.args])


EXAMPLES = {
    example.name: example
    for example in (
        Example(
            name="rf",
            args=("rf", "examples/my_models.py:small_resnet_features", "--input-size",
                  "1,3,64,64"),
            returncode=0, head=17,
        ),
        Example(
            name="gradflow",
            args=("gradflow", "examples/my_models.py:deep_sigmoid_mlp", "--input-size", "256,32",
                  "--kwargs", '{"depth": 8}'),
            # float32 norms printed to 3 digits: 1 % covers a last digit that rounds the
            # other way, and no real change of the model or the tool
            returncode=1, head=6, tail=4, rtol=0.01,
        ),
        Example(
            name="gradcheck",
            args=("gradcheck", "examples/my_models.py:small_resnet", "--input-size", "2,3,16,16",
                  "--kwargs", '{"width": 4, "blocks": 2}'),
            returncode=0, head=5, tail=2, rtol=1e-4,
            noise=(
                # max abs and max rel error: finite-difference rounding, ~1e-10 and ~1e-8,
                # whose digits change with the kernels; their bound is the verdict
                r"(?<=\))\s+\S+\s+\S+(?=\s+\d+/\d+\s)",
                # the worst entry and its values: which entry is worst is rounding noise
                r"\[[\d, ]*\]: \S+ vs \S+$",
            ),
        ),
    )
}


def run(example: Example) -> subprocess.CompletedProcess:
    """Run the example's command from the repository root, as the README shows it."""
    return subprocess.run([sys.executable, "-m", "dlsummary", *example.args], cwd=ROOT,
                          capture_output=True, text=True)


def shorten(lines: list[str], head: int, tail: int) -> list[str]:
    """The first ``head`` and last ``tail`` lines, "..." for what lies between."""
    if len(lines) <= head + tail:
        return list(lines)
    return [*lines[:head], OMITTED, *(lines[-tail:] if tail else [])]


def shown_lines(example: Example, stdout: str) -> list[str]:
    """The output lines the README shows for ``example``."""
    return shorten([line.rstrip() for line in stdout.splitlines()], example.head, example.tail)


def console_block(example: Example, stdout: str) -> str:
    return "\n".join(["```console", f"$ {example.command}",
                      *shown_lines(example, stdout), "```"])


def _marked(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- example: {re.escape(name)} -->\n)(.*?)(\n<!-- /example -->)",
                      re.DOTALL)


def readme_block(name: str, text: str) -> list[str]:
    """The output lines of the README's block ``name`` (without the ``$`` line)."""
    match = _marked(name).search(text)
    if match is None:
        raise LookupError(f"README.md has no '<!-- example: {name} -->' ... "
                          "'<!-- /example -->' block")
    lines = match.group(2).strip().splitlines()
    if len(lines) < 2 or lines[0] != "```console" or lines[-1] != "```":
        raise LookupError(f"README.md's example {name!r} is not one ```console block")
    return lines[1:-1]


def replace_block(name: str, text: str, block: str) -> str:
    if _marked(name).search(text) is None:
        readme_block(name, text)  # raises, naming the missing markers
    return _marked(name).sub(lambda m: m.group(1) + block + m.group(3), text, count=1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help=f"examples to regenerate (default: all of {', '.join(EXAMPLES)})")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(EXAMPLES))
    if unknown:
        parser.error(f"no example {unknown[0]!r}; the examples: {', '.join(EXAMPLES)}")
    text = args.readme.read_text()
    for name in args.names or EXAMPLES:
        example = EXAMPLES[name]
        print(f"readme: $ {example.command}", file=sys.stderr, flush=True)
        proc = run(example)
        if proc.returncode != example.returncode:
            print(f"readme: {name}: exit code {proc.returncode}, expected "
                  f"{example.returncode}; README left unchanged\n{proc.stderr}", file=sys.stderr)
            return 1
        text = replace_block(name, text, console_block(example, proc.stdout))
    args.readme.write_text(text)
    print(f"readme: wrote {args.readme}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
