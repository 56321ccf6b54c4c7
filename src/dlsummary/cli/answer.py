"""``dlsummary answer ID``: one question and its answer in the terminal, with the key
numbers its evidence printed (from the last report, when there is one)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from dlsummary.cli._common import EXIT_OK, CLIError, print_json

EXAMPLE = """examples:
  dlsummary answer dropout.1
  dlsummary answer opt.4 --report build/summary_questions.ipynb
  dlsummary answer --list
"""


def add_parser(subparsers, parents) -> None:
    p = subparsers.add_parser(
        "answer", parents=parents,
        help="print one question and its answer",
        description="Print a question of the answer key, its answer (Markdown rendered for "
                    "the terminal) and the text its evidence printed in the last report.",
        epilog=EXAMPLE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("qid", nargs="?", metavar="ID", help="question id, e.g. cnn.3")
    p.add_argument("--list", action="store_true", help="list every id with its one-line answer")
    p.add_argument("--notebook", default=None, metavar="PATH",
                   help="the answer key's folder or one source (default: notebooks/)")
    p.add_argument("--report", default=None, metavar="IPYNB",
                   help="an executed notebook for the evidence's output "
                        "(default: build/summary_questions.ipynb if it exists)")
    p.add_argument("--no-evidence", action="store_true", help="only the question and answer")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(run=run)


def _style(use_color: bool):
    def bold(text: str) -> str:
        return f"\033[1m{text}\033[0m" if use_color else text

    def dim(text: str) -> str:
        return f"\033[2m{text}\033[0m" if use_color else text

    return bold, dim


def render_markdown(text: str, use_color: bool = False, macros: dict | None = None) -> str:
    """Markdown for a terminal: bold kept as bold, headings underlined, code fences
    indented, formulas as Unicode (the preamble's macros expanded)."""
    from dlsummary.mathml import markdown_math_to_unicode

    bold, dim = _style(use_color)
    out: list[str] = []
    in_code = False
    text = markdown_math_to_unicode(text, macros)
    for line in text.splitlines():
        if line.strip().startswith("```"):
            in_code = not in_code
            continue
        if in_code:
            out.append("    " + dim(line))
            continue
        heading = re.match(r"^(#+)\s+(.*)", line)
        if heading:
            out.append(bold(heading.group(2)))
            continue
        line = re.sub(r"\*\*(.+?)\*\*", lambda m: bold(m.group(1)), line)
        line = re.sub(r"(?<!\*)\*(?!\s)(.+?)(?<!\s)\*(?!\*)", r"\1", line)
        line = re.sub(r"<[^>]+>", "", line)
        out.append(line)
    return "\n".join(out).strip()


def suggest_ids(wanted: str, known: list[str]) -> list[str]:
    """The ids the user probably meant: ``CNN.3`` and ``cnn3`` mean ``cnn.3``; else the
    closest spellings."""
    import difflib

    canonical = re.sub(r"^([a-z]+)\.?(\d+)", r"\1.\2", wanted.strip().lower().replace(" ", ""))
    canonical = re.sub(r"\.([a-z])$", lambda m: "." + m.group(1).upper(), canonical)
    base = ".".join(canonical.split(".")[:2])
    if base in known:
        return [base]
    close = difflib.get_close_matches(base, known, n=3, cutoff=0.6)
    return close or [q for q in known if q.startswith(base.split(".")[0] + ".")]


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(1, width - 1)].rstrip() + "\u2026"


def _plain_summary(summary: str, macros: dict) -> str:
    from dlsummary.mathml import markdown_math_to_unicode

    text = markdown_math_to_unicode(summary, macros)
    return re.sub(r"\*\*(.+?)\*\*|`([^`]*)`", lambda m: m.group(1) or m.group(2) or "", text)


def run(args: argparse.Namespace) -> int:
    import shutil

    from dlsummary.mathml import parse_macros
    from dlsummary.notebook import cell_text_output, find_key, questions, read_key, read_notebook

    source = find_key(args.notebook)
    key = read_key(source)
    macros = parse_macros("\n".join(c.source for c in key.cells if c.cell_type == "markdown"
                                     and "\\newcommand" in c.source))
    found = questions(key)
    if args.list or not args.qid:
        if args.json:
            print_json([{"id": q.qid, "topic": q.topic, "answer": q.summary} for q in found])
            return EXIT_OK
        columns = shutil.get_terminal_size((100, 24)).columns
        width = max(len(q.qid) for q in found)
        for q in found:
            topic = f"{q.topic}: " if q.topic else ""
            line = f"{q.qid:{width}s}  {topic}{_plain_summary(q.summary, macros)}"
            print(_fit(line, columns))
        return EXIT_OK
    by_id = {q.qid: q for q in found}
    wanted = args.qid
    if wanted not in by_id:
        guesses = suggest_ids(wanted, list(by_id))
        if len(guesses) == 1 and guesses[0].lower() == re.sub(
                r"^([a-z]+)\.?(\d+).*", r"\1.\2", wanted.lower()):
            wanted = guesses[0]  # only the spelling differs (CNN.3, cnn3, cnn.3.a)
        else:
            hint = f"; did you mean {' or '.join(guesses)}?" if guesses else \
                f"; known ids: {', '.join(by_id)}"
            raise CLIError(f"no question {args.qid!r} in {source}{hint}")
    q = by_id[wanted]

    evidence = ""
    root = source if source.is_dir() else source.parent
    report_path = Path(args.report) if args.report else root.parent / "build" / \
        "summary_questions.ipynb"
    if args.report and not report_path.is_file():
        raise CLIError(f"--report {args.report!r} does not exist; run 'dlsummary report' first")
    if not args.no_evidence and report_path.is_file():
        executed = read_notebook(report_path)
        match = {x.qid: x for x in questions(executed)}.get(q.qid)
        if match is not None:
            evidence = "\n".join(cell_text_output(executed.cells[i]) for i in match.evidence_cells)
    if args.json:
        print_json({"id": q.qid, "topic": q.topic, "section": q.section,
                    "question": q.question, "answer": q.answer, "summary": q.summary,
                    "evidence_output": evidence})
        return EXIT_OK
    use_color = sys.stdout.isatty()
    bold, dim = _style(use_color)
    print(bold(f"{q.title}  ({q.section})"))
    print(render_markdown(q.question, use_color, macros))
    print()
    print(render_markdown(q.answer, use_color, macros))
    if evidence.strip():
        print()
        print(bold(f"Evidence (printed by the experiment, from {report_path}):"))
        print(evidence.rstrip())
    elif not args.no_evidence:
        print()
        print(dim("(run 'dlsummary report' to see the numbers the evidence measures)"))
    return EXIT_OK
