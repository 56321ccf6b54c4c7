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
                   help="the answer key's source (default: notebooks/summary_questions.py)")
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


def render_markdown(text: str, use_color: bool = False) -> str:
    """Markdown for a terminal: bold kept as bold, headings underlined, code fences
    indented, TeX left readable."""
    bold, dim = _style(use_color)
    out: list[str] = []
    in_code = False
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


def run(args: argparse.Namespace) -> int:
    from dlsummary.notebook import cell_text_output, find_notebook, questions, read_notebook

    source = find_notebook(args.notebook)
    found = questions(read_notebook(source))
    if args.list or not args.qid:
        if args.json:
            print_json([{"id": q.qid, "answer": q.summary} for q in found])
        else:
            width = max(len(q.qid) for q in found)
            for q in found:
                print(f"{q.qid:{width}s}  {q.summary}")
        return EXIT_OK
    by_id = {q.qid: q for q in found}
    if args.qid not in by_id:
        close = [q for q in by_id if q.startswith(args.qid.split(".")[0])]
        hint = f"; ids in that section: {', '.join(close)}" if close else \
            f"; known ids: {', '.join(by_id)}"
        raise CLIError(f"no question {args.qid!r} in {source}{hint}")
    q = by_id[args.qid]

    evidence = ""
    report_path = Path(args.report) if args.report else source.parent.parent / "build" / \
        "summary_questions.ipynb"
    if args.report and not report_path.is_file():
        raise CLIError(f"--report {args.report!r} does not exist; run 'dlsummary report' first")
    if not args.no_evidence and report_path.is_file():
        executed = read_notebook(report_path)
        match = {x.qid: x for x in questions(executed)}.get(q.qid)
        if match is not None:
            evidence = "\n".join(cell_text_output(executed.cells[i]) for i in match.evidence_cells)
    if args.json:
        print_json({"id": q.qid, "section": q.section, "question": q.question,
                    "answer": q.answer, "summary": q.summary, "evidence_output": evidence})
        return EXIT_OK
    use_color = sys.stdout.isatty()
    bold, dim = _style(use_color)
    print(bold(f"{q.qid}  ({q.section})"))
    print(render_markdown(q.question, use_color))
    print()
    print(render_markdown(q.answer, use_color))
    if evidence.strip():
        print()
        print(bold(f"Evidence (printed by the experiment, from {report_path}):"))
        print(evidence.rstrip())
    elif not args.no_evidence:
        print()
        print(dim("(run 'dlsummary report' to see the numbers the evidence measures)"))
    return EXIT_OK
